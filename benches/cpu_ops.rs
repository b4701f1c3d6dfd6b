//! Criterion benchmarks of the CPU backend: the ops of one ESM-2 8M layer at a Pfam-like
//! batch (forward + backward, and inference in fp32 and bf16), the linear layer's products
//! at 8M/35M shapes beside the CPU's bf16 peak (`bf16_peak`), bf16 attention at 8M/35M
//! head widths (training and inference), and a whole training step.
//!
//! `cargo bench --bench cpu_ops` (add `-- <filter>` for one group). CUDA kernel benchmarks
//! live in `benches/cuda_ops.rs` and skip without a GPU.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qf_engine::data::batch::PackedBatch;
use qf_engine::data::tokenizer::encode_ids;
use qf_engine::model::{EsmConfig, HeadKind, ModelInputs, SequenceClassifier};
use qf_engine::ops::{self, SeqLayout};
use qf_engine::{Device, Grads, Tape, Tensor};

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            let r = qf_engine::data::rng::splitmix64(&mut s);
            (r >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn param(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(values(n, seed), shape).unwrap().with_requires_grad(true)
}

/// Packed layout of `n` sequences of Pfam-like lengths (≈ 156 tokens on average).
fn layout(n: usize) -> Vec<u32> {
    let mut cu = vec![0u32];
    for i in 0..n {
        let len = 60 + ((i * 97) % 200) as u32;
        cu.push(cu.last().unwrap() + len);
    }
    cu
}

/// Forward + backward of `f` over fresh inputs.
fn fwd_bwd(f: &dyn Fn(&Tape) -> Tensor) {
    let tape = Tape::new();
    let y = f(&tape);
    let seed = Tensor::from_vec(vec![1.0f32; y.numel()], y.shape()).unwrap();
    let mut g = Grads::new();
    tape.backward_from(&y, seed, &mut g).unwrap();
}

fn layer_ops(c: &mut Criterion) {
    let cu = layout(32);
    let t = *cu.last().unwrap() as usize;
    let (h, f, heads) = (320usize, 1280usize, 20usize);
    let lay = SeqLayout::new(&cu, &Device::Cpu).unwrap();
    let x = param(&[t, h], 1);
    let w = param(&[f, h], 2);
    let b = param(&[f], 3);
    let xf = param(&[t, f], 4);
    let ln_w = param(&[h], 5);
    let ln_b = param(&[h], 6);
    let pos = Tensor::from_vec((0..t as i32).map(|i| i % 300).collect::<Vec<i32>>(), &[t]).unwrap();
    let mut g = c.benchmark_group("esm2_8M_layer_ops");
    g.throughput(Throughput::Elements(t as u64));
    g.sample_size(10);
    g.bench_function("linear_320x1280_fwd_bwd", |bch| {
        bch.iter(|| fwd_bwd(&|tp| ops::linear(tp, &x, &w, Some(&b)).unwrap()))
    });
    g.bench_function("layer_norm_fwd_bwd", |bch| {
        bch.iter(|| fwd_bwd(&|tp| ops::layer_norm(tp, &x, &ln_w, &ln_b, 1e-5).unwrap()))
    });
    g.bench_function("bias_gelu_fwd_bwd", |bch| bch.iter(|| fwd_bwd(&|tp| ops::bias_gelu(tp, &xf, Some(&b)).unwrap())));
    g.bench_function("rotary_fwd_bwd", |bch| {
        bch.iter(|| fwd_bwd(&|tp| ops::rotary(tp, &x, &pos, heads, 0.25).unwrap()))
    });
    g.bench_function("attention_fwd_bwd", |bch| {
        bch.iter(|| fwd_bwd(&|tp| ops::attention(tp, &x, &x, &x, &lay, heads, 1.0, false).unwrap().0))
    });
    g.finish();
}

/// Inference (no tape) of the same layer's products: fp32, bf16 (`--precision bf16`, on
/// CPUs with AVX512-BF16) and the attention kernel that keeps no probabilities.
/// Throughput is in multiply-adds.
fn inference_ops(c: &mut Criterion) {
    let cu = layout(32);
    let t = *cu.last().unwrap() as usize;
    let (h, f, heads) = (320usize, 1280usize, 20usize);
    let lay = SeqLayout::new(&cu, &Device::Cpu).unwrap();
    let fixed = |shape: &[usize], seed| param(shape, seed).with_requires_grad(false);
    let (x, w, b) = (fixed(&[t, h], 1), fixed(&[f, h], 2), fixed(&[f], 3));
    let tape = Tape::inference();
    let mut g = c.benchmark_group("esm2_8M_inference_ops");
    g.throughput(Throughput::Elements((t * h * f) as u64));
    g.bench_function("linear_320x1280_fp32", |bch| bch.iter(|| ops::linear(&tape, &x, &w, Some(&b)).unwrap()));
    if qf_engine::backend::cpu::matmul_bf16::supported() {
        ops::linear::set_cpu_bf16(ops::linear::CpuBf16::Inference).unwrap();
        g.bench_function("linear_320x1280_bf16", |bch| bch.iter(|| ops::linear(&tape, &x, &w, Some(&b)).unwrap()));
        ops::linear::set_cpu_bf16(ops::linear::CpuBf16::Off).unwrap();
    } else {
        println!("esm2_8M_inference_ops/linear_320x1280_bf16: skipped, this CPU has no AVX512-BF16");
    }
    let pairs: usize = cu.windows(2).map(|w| ((w[1] - w[0]) as usize).pow(2)).sum();
    g.throughput(Throughput::Elements((2 * pairs * h) as u64));
    g.bench_function("attention_no_probabilities", |bch| {
        bch.iter(|| ops::attention(&tape, &x, &x, &x, &lay, heads, 1.0, false).unwrap().0)
    });
    g.finish();
}

/// The passes between the products of one ESM-2 35M layer at inference (no tape) over a
/// Pfam-like batch of ≈ 4,000 tokens: LayerNorm, bias + GELU over the 1,920-wide
/// feed-forward rows, the residual add and rotary. Throughput in elements of the output.
fn inference_passes_35m(c: &mut Criterion) {
    let cu = layout(26);
    let t = *cu.last().unwrap() as usize;
    let (h, f, heads) = (480usize, 1920usize, 20usize);
    let fixed = |shape: &[usize], seed| param(shape, seed).with_requires_grad(false);
    let (x, y, xf, b) = (fixed(&[t, h], 1), fixed(&[t, h], 2), fixed(&[t, f], 3), fixed(&[f], 4));
    let (ln_w, ln_b) = (fixed(&[h], 5), fixed(&[h], 6));
    let pos = Tensor::from_vec((0..t as i32).map(|i| i % 300).collect::<Vec<i32>>(), &[t]).unwrap();
    let tape = Tape::inference();
    let mut g = c.benchmark_group("esm2_35M_inference_passes");
    g.throughput(Throughput::Elements((t * h) as u64));
    g.bench_function("layer_norm", |bch| bch.iter(|| ops::layer_norm(&tape, &x, &ln_w, &ln_b, 1e-5).unwrap()));
    g.bench_function("add", |bch| bch.iter(|| ops::add(&tape, &x, &y).unwrap()));
    g.bench_function("rotary", |bch| bch.iter(|| ops::rotary(&tape, &x, &pos, heads, 0.25).unwrap()));
    g.throughput(Throughput::Elements((t * f) as u64));
    g.bench_function("bias_gelu", |bch| bch.iter(|| ops::bias_gelu(&tape, &xf, Some(&b)).unwrap()));
    g.finish();
}

/// The roofline of `linear_products`: `vdpbf16ps` on registers only (16 independent sums,
/// no memory traffic) on every rayon thread at once; throughput in multiply-adds (32 an
/// instruction), so a product's rate over this one is its fraction of the CPU's bf16 peak.
fn bf16_peak(c: &mut Criterion) {
    if !qf_engine::backend::cpu::matmul_bf16::supported() {
        println!("bf16_peak: skipped, this CPU has no AVX512-BF16");
        return;
    }
    const ITERS: u64 = 1 << 20;
    let threads = rayon::current_num_threads() as u64;
    let mut g = c.benchmark_group("bf16_peak");
    g.sample_size(10);
    g.throughput(Throughput::Elements(ITERS * 16 * 32 * threads));
    // Safety: AVX512-BF16 was checked above.
    g.bench_function("vdpbf16ps_registers", |b| {
        b.iter(|| rayon::broadcast(|_| unsafe { vdpbf16ps_loop(std::hint::black_box(ITERS)) }))
    });
    g.finish();
}

/// `iters` rounds of 16 independent `vdpbf16ps` (more chains than its latency needs, few
/// enough to stay in registers).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn vdpbf16ps_loop(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); 16];
    let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80)); // (1, 1)
    let b: __m512bh = std::mem::transmute(_mm512_set1_epi32(std::hint::black_box(0x0001_0001)));
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_dpbf16_ps(*x, a, b);
        }
        std::arch::asm!("", options(nomem, nostack)); // one round per iteration, not folded
    }
    acc.iter().map(|x| _mm512_reduce_add_ps(*x)).sum()
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn vdpbf16ps_loop(_: u64) -> f32 {
    unreachable!("bf16_peak checks for AVX512-BF16 first")
}

/// The linear layer's three products (`y = x·Wᵀ`, `dx += dy·W`, `dW += dyᵀ·x`) at ESM-2
/// 8M/35M layer shapes, bf16 (AVX512-BF16) beside f32; throughput in multiply-adds.
fn linear_products(c: &mut Criterion) {
    use qf_engine::backend::cpu::matmul::{matmul, MatRef};
    use qf_engine::backend::cpu::matmul_bf16 as bf16;
    let mut g = c.benchmark_group("linear_products");
    g.sample_size(10);
    for &(n, k, m) in &[(4096usize, 320usize, 1280usize), (4096, 1280, 320), (4096, 480, 1920)] {
        let (x, w) = (values(n * k, 1), values(m * k, 2));
        let (mut y, mut dx, mut dw) = (vec![0f32; n * m], vec![0f32; n * k], vec![0f32; m * k]);
        g.throughput(Throughput::Elements((n * k * m) as u64));
        let shape = format!("{n}x{k}x{m}");
        g.bench_function(BenchmarkId::new("forward_f32", &shape), |bch| {
            bch.iter(|| matmul(&mut y, MatRef::new(&x, n, k), MatRef::new(&w, m, k).t(), false))
        });
        g.bench_function(BenchmarkId::new("dx_f32", &shape), |bch| {
            bch.iter(|| matmul(&mut dx, MatRef::new(&y, n, m), MatRef::new(&w, m, k), true))
        });
        g.bench_function(BenchmarkId::new("dw_f32", &shape), |bch| {
            bch.iter(|| matmul(&mut dw, MatRef::new(&y, n, m).t(), MatRef::new(&x, n, k), true))
        });
        if !bf16::supported() {
            println!("linear_products/*_bf16/{shape}: skipped, this CPU has no AVX512-BF16");
            continue;
        }
        let packed = bf16::PackedBf16::pack(&w, m, k);
        g.bench_function(BenchmarkId::new("forward_bf16", &shape), |bch| {
            bch.iter(|| bf16::linear(&x, &packed, &[], n))
        });
        g.bench_function(BenchmarkId::new("dx_bf16", &shape), |bch| {
            bch.iter(|| bf16::linear_backward_input(&mut dx, &y, &w, n, m, k))
        });
        g.bench_function(BenchmarkId::new("dw_bf16", &shape), |bch| {
            bch.iter(|| bf16::linear_backward_weight(&mut dw, &y, &x, n, m, k))
        });
    }
    g.finish();
}

/// Training attention in bf16 (`train --precision bf16`), forward + backward, over 32
/// Pfam-like sequences: 20 heads of 16 (ESM-2 8M) and of 24 (35M); throughput in the
/// multiply-adds of its six products (`6·l²·d` a head).
fn attention_bf16_training(c: &mut Criterion) {
    if !qf_engine::backend::cpu::attention_bf16::supported() {
        println!("attention_bf16_training: skipped, this CPU has no AVX512-BF16");
        return;
    }
    // As the CLI runs: freed buffers stay in the heap (no fresh pages to fault in).
    qf_engine::backend::cpu::keep_freed_memory();
    let cu = layout(32);
    let t = *cu.last().unwrap() as usize;
    let lay = SeqLayout::new(&cu, &Device::Cpu).unwrap();
    let pairs: usize = cu.windows(2).map(|w| ((w[1] - w[0]) as usize).pow(2)).sum();
    ops::linear::set_cpu_bf16(ops::linear::CpuBf16::Training).unwrap();
    let mut g = c.benchmark_group("attention_bf16_training");
    g.sample_size(10);
    for (model, d) in [("8M", 16usize), ("35M", 24)] {
        let heads = 20;
        let (q, k, v) = (param(&[t, heads * d], 1), param(&[t, heads * d], 2), param(&[t, heads * d], 3));
        g.throughput(Throughput::Elements((6 * pairs * heads * d) as u64));
        g.bench_function(BenchmarkId::new("fwd_bwd", format!("{model}_20x{d}")), |bch| {
            bch.iter(|| fwd_bwd(&|tp| ops::attention(tp, &q, &k, &v, &lay, heads, 0.25, false).unwrap().0))
        });
    }
    g.finish();
    ops::linear::set_cpu_bf16(ops::linear::CpuBf16::Off).unwrap();
}

/// Inference attention in bf16 (`predict --precision bf16`, no probabilities kept) over
/// 32 Pfam-like sequences: 20 heads of 16 (ESM-2 8M) and of 24 (35M); throughput in the
/// multiply-adds of its two products (`2·l²·d` a head).
fn attention_bf16_inference(c: &mut Criterion) {
    use qf_engine::backend::cpu::attention::AttnDims;
    use qf_engine::backend::cpu::attention_bf16;
    if !attention_bf16::supported() {
        println!("attention_bf16_inference: skipped, this CPU has no AVX512-BF16");
        return;
    }
    let cu: Vec<usize> = layout(32).into_iter().map(|x| x as usize).collect();
    let t = *cu.last().unwrap();
    let pairs: usize = cu.windows(2).map(|w| (w[1] - w[0]).pow(2)).sum();
    let mut g = c.benchmark_group("attention_bf16_inference");
    g.sample_size(20);
    for (model, d) in [("8M", 16usize), ("35M", 24)] {
        let dims = AttnDims { n_heads: 20, head_dim: d };
        let (q, k, v) = (values(t * 20 * d, 1), values(t * 20 * d, 2), values(t * 20 * d, 3));
        g.throughput(Throughput::Elements((2 * pairs * 20 * d) as u64));
        g.bench_function(BenchmarkId::new("forward", format!("{model}_20x{d}")), |bch| {
            bch.iter(|| attention_bf16::forward_inference_new(&q, &k, &v, &cu, dims, 0.25))
        });
    }
    g.finish();
}

fn cross_entropy(c: &mut Criterion) {
    let mut g = c.benchmark_group("cross_entropy_5000_classes");
    g.sample_size(20);
    for rows in [32usize, 256] {
        let logits = param(&[rows, 5000], 7);
        let labels = Tensor::from_vec((0..rows as i32).map(|i| i * 7 % 5000).collect::<Vec<i32>>(), &[rows]).unwrap();
        g.bench_with_input(BenchmarkId::from_parameter(rows), &rows, |bch, _| {
            bch.iter(|| fwd_bwd(&|tp| ops::cross_entropy(tp, &logits, &labels, None).unwrap()))
        });
    }
    g.finish();
}

fn training_step(c: &mut Criterion) {
    let cfg = EsmConfig::preset("esm2_t6_8M").unwrap();
    let labels: Vec<String> = (0..5000).map(|i| format!("f{i}")).collect();
    let model = SequenceClassifier::new_random(&cfg, labels, HeadKind::Classification, 0.0, 1).unwrap();
    let mut batch = PackedBatch::new();
    let protein = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKALRPDEDRLSPLHSVYVDQWDWERVMGDGERQFSTLKSTVEAIWAGIKATEAAVSEEFGLAPFLPDQIHFVHSQELLSRYPDLDAKGRERAIAKDLGAVFLVGIGGKLSDGHRHDVRAPDYDDWSTPSELGHAGLNGDILVWNPVLEDAFELSSMGIRVDADTLKHQLALTGDEDRLELEWHQALLRGEMPQTIGGGIGQSRLTMLLLQLPHIGQVQAGVWPAACRHRQ";
    for i in 0..16 {
        let len = 80 + (i * 37) % 180;
        batch.push(&encode_ids(&protein[..len]).unwrap(), 0, Some(i as u32), i);
    }
    let inp = ModelInputs::new(&batch, &cfg, &Device::Cpu, qf_engine::DType::F32).unwrap();
    let mut g = c.benchmark_group("training_step_esm2_t6_8M");
    g.throughput(Throughput::Elements(batch.n_seqs() as u64));
    g.sample_size(10);
    g.bench_function("fwd_bwd_16_sequences", |bch| {
        bch.iter(|| {
            let tape = Tape::new();
            let (_, loss) = model.forward_loss(&tape, &inp, None).unwrap();
            let mut gr = Grads::new();
            tape.backward(&loss, &mut gr).unwrap();
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    layer_ops,
    inference_ops,
    inference_passes_35m,
    bf16_peak,
    linear_products,
    attention_bf16_training,
    attention_bf16_inference,
    cross_entropy,
    training_step
);
criterion_main!(benches);
