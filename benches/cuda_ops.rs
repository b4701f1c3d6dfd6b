//! Criterion benchmarks of every CUDA kernel at ESM-2 shapes, each with its roofline
//! fraction: achieved GB/s against the device's copy bandwidth, or TFLOP/s against its
//! dense GEMM rate, both measured in the same run.
//!
//! Shapes: the layers of ESM-2 8M, 35M, 150M and 650M (hidden 320, 480, 640, 1280; 20
//! heads; FFN 4×), on batches of 16,384 tokens of Pfam-like lengths (a fixed sample of a
//! log-normal with mean ≈ 156, as Pfam domains) and of fixed lengths 256 and 1,024.
//! Kernels: flash attention (forward, backward) and the unfused path, layer norm,
//! bias+GELU, weighted cross-entropy over 5,000 classes, embedding, dropout, the f32 →
//! half cast, AdamW and 8-bit AdamW over a layer's parameters, and the cuBLAS GEMMs of a
//! layer (q/k/v/out projections, FFN in and out).
//!
//! `cargo bench --bench cuda_ops` on a GPU. Without one it prints a SKIP line, unless
//! `QF_BENCH_EMULATION=1`: then it runs on the CPU emulation of CUDA at tiny sizes (what
//! CI does once with `-- --test`, so the benchmarks cannot rot; the numbers mean nothing).

#[path = "../tests/kernel_emu/mod.rs"]
#[allow(dead_code)]
mod kernel_emu;

use std::cell::RefCell;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use qf_engine::backend::cuda::{self, CudaDevice};
use qf_engine::ops::{self, SeqLayout};
use qf_engine::optim::adamw_step::{AdamConsts, AdamHyper};
use qf_engine::tensor::Storage;
use qf_engine::{DType, Device, Grads, Tape, Tensor};

/// A preset's layer: name, hidden, heads.
const PRESETS: [(&str, usize, usize); 4] = [("8M", 320, 20), ("35M", 480, 20), ("150M", 640, 20), ("650M", 1280, 20)];
const TOKENS: usize = 16_384;
const CLASSES: usize = 5_000;

/// What a benchmark moved or computed per call, for its roofline fraction.
#[derive(Clone, Copy)]
enum Work {
    Bytes(f64),
    Flops(f64),
}

struct Row {
    name: String,
    seconds: f64,
    work: Work,
}

thread_local! {
    static ROWS: RefCell<Vec<Row>> = const { RefCell::new(Vec::new()) };
}

struct Bench {
    dev: CudaDevice,
    emulated: bool,
    dtype: DType,
}

impl Bench {
    fn device(&self) -> Device {
        Device::Cuda(self.dev.clone())
    }

    fn tensor(&self, shape: &[usize], dtype: DType, seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed;
        let v: Vec<f32> = (0..n)
            .map(|_| ((qf_engine::data::rng::splitmix64(&mut s) >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.5)
            .collect();
        Tensor::from_f32(v, shape, dtype, &self.device()).unwrap()
    }

    fn ints(&self, v: Vec<i32>) -> Tensor {
        let n = v.len();
        Tensor::from_i32(v, &[n], &self.device()).unwrap()
    }

    /// Time `f` (waited for) in criterion, and once more by hand for the roofline table.
    fn run(&self, c: &mut Criterion, group: &str, id: &str, work: Work, f: &mut dyn FnMut()) {
        let mut g = c.benchmark_group(group);
        if self.emulated {
            g.sample_size(10).warm_up_time(Duration::from_millis(1)).measurement_time(Duration::from_millis(10));
        }
        g.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                f();
                self.dev.synchronize().unwrap();
            })
        });
        g.finish();
        f();
        self.dev.synchronize().unwrap();
        let reps = if self.emulated { 1 } else { 20 };
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        self.dev.synchronize().unwrap();
        let seconds = t.elapsed().as_secs_f64() / reps as f64;
        ROWS.with(|r| r.borrow_mut().push(Row { name: format!("{group}/{id}"), seconds, work }));
    }
}

/// Packed lengths: `tokens` of Pfam-like lengths, or of one fixed length.
fn lengths(mix: &str, tokens: usize) -> Vec<u32> {
    let mut cu = vec![0u32];
    let mut s = 42u64;
    while (*cu.last().unwrap() as usize) < tokens {
        let len = match mix {
            "pfam" => {
                // log-normal, median ≈ 120, mean ≈ 156 (Pfam domains), in [20, 1022] + cls/eos
                let u1 = ((qf_engine::data::rng::splitmix64(&mut s) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
                let u2 = (qf_engine::data::rng::splitmix64(&mut s) >> 11) as f64 / (1u64 << 53) as f64;
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                ((120f64.ln() + 0.7 * z).exp().clamp(20.0, 1022.0) as u32) + 2
            }
            fixed => fixed.parse().unwrap(),
        };
        let len = len.min((tokens - *cu.last().unwrap() as usize) as u32).max(1);
        cu.push(cu.last().unwrap() + len);
    }
    cu
}

fn bytes(ts: &[&Tensor]) -> f64 {
    ts.iter().map(|t| (t.numel() * t.dtype().size_in_bytes()) as f64).sum()
}

/// The backward pass from `outs`, each seeded with a small constant gradient.
fn backward(tape: Tape, outs: &[&Tensor]) {
    let roots: Vec<(&Tensor, Tensor)> = outs
        .iter()
        .map(|y| (*y, Tensor::from_f32(vec![1e-3; y.numel()], y.shape(), y.dtype(), &y.device()).unwrap()))
        .collect();
    tape.backward_from_many(&roots, &mut Grads::new()).unwrap();
}

fn layer_kernels(c: &mut Criterion, b: &Bench, preset: &str, h: usize, heads: usize, mix: &str, tokens: usize) {
    let dt = b.dtype;
    let cu = lengths(mix, tokens);
    let n = *cu.last().unwrap() as usize;
    let layout = SeqLayout::new(&cu, &b.device()).unwrap();
    let positions = b.ints(cu.windows(2).flat_map(|w| 0..(w[1] - w[0]) as i32).collect());
    let x = b.tensor(&[n, h], dt, 1).with_requires_grad(true);
    let tag = format!("{preset} {mix}");

    // layer norm, forward + backward
    let (w, bias) = (
        b.tensor(&[h], DType::F32, 2).with_requires_grad(true),
        b.tensor(&[h], DType::F32, 3).with_requires_grad(true),
    );
    b.run(c, "layer_norm fwd+bwd", &tag, Work::Bytes(4.0 * bytes(&[&x])), &mut || {
        let tape = Tape::new();
        let y = ops::layer_norm(&tape, &x, &w, &bias, 1e-5).unwrap();
        backward(tape, &[&y]);
    });

    // bias + GELU on the FFN activations, forward + backward
    let f = 4 * h;
    let xf = b.tensor(&[n, f], dt, 4).with_requires_grad(true);
    let bf = b.tensor(&[f], DType::F32, 5).with_requires_grad(true);
    b.run(c, "bias_gelu fwd+bwd", &tag, Work::Bytes(4.0 * bytes(&[&xf])), &mut || {
        let tape = Tape::new();
        let y = ops::bias_gelu(&tape, &xf, Some(&bf)).unwrap();
        backward(tape, &[&y]);
    });

    // dropout (training masks), forward + backward
    b.run(c, "dropout fwd+bwd", &tag, Work::Bytes(4.0 * bytes(&[&x])), &mut || {
        let tape = Tape::with_seed(7);
        let y = ops::dropout(&tape, &x, 0.1).unwrap();
        backward(tape, &[&y]);
    });

    // the GEMMs of a layer: q, k, v and out projections (h×h), FFN in (h→4h) and out
    let wh = b.tensor(&[h, h], dt, 6).with_requires_grad(true);
    let wf = b.tensor(&[f, h], dt, 7).with_requires_grad(true);
    let wo = b.tensor(&[h, f], dt, 8).with_requires_grad(true);
    let gemm_flops = 6.0 * n as f64 * (4.0 * (h * h) as f64 + 2.0 * (h * f) as f64);
    b.run(c, "layer GEMMs fwd+bwd (cuBLAS)", &tag, Work::Flops(gemm_flops), &mut || {
        let tape = Tape::new();
        let mut outs = Vec::new();
        for _ in 0..4 {
            outs.push(ops::linear(&tape, &x, &wh, None).unwrap());
        }
        let hidden = ops::linear(&tape, &x, &wf, None).unwrap();
        outs.push(ops::linear(&tape, &hidden, &wo, None).unwrap());
        backward(tape, &outs.iter().collect::<Vec<_>>());
    });

    // attention: flash (rotary inside) and the unfused path, forward + backward
    let hd = h / heads;
    let (q, k, v) = (b.tensor(&[n, h], dt, 9), b.tensor(&[n, h], dt, 10), b.tensor(&[n, h], dt, 11));
    let (q, k, v) = (q.with_requires_grad(true), k.with_requires_grad(true), v.with_requires_grad(true));
    let attn_flops: f64 = 3.0 * cu.windows(2).map(|w| 4.0 * ((w[1] - w[0]) as f64).powi(2) * h as f64).sum::<f64>();
    let c_q = (hd as f64).powf(-0.5);
    if cuda::flash_attention::supports(dt, hd) {
        b.run(c, "flash_attention fwd+bwd", &tag, Work::Flops(attn_flops), &mut || {
            let tape = Tape::new();
            let (o, _) = ops::flash_attention(&tape, &q, &k, &v, &positions, &layout, heads, c_q, false).unwrap();
            backward(tape, &[&o]);
        });
    }
    b.run(c, "unfused attention fwd+bwd", &tag, Work::Flops(attn_flops), &mut || {
        let tape = Tape::new();
        let qr = ops::rotary(&tape, &q, &positions, heads, c_q).unwrap();
        let kr = ops::rotary(&tape, &k, &positions, heads, 1.0).unwrap();
        let (o, _) = ops::attention(&tape, &qr, &kr, &v, &layout, heads, 1.0, false).unwrap();
        backward(tape, &[&o]);
    });
}

fn model_kernels(c: &mut Criterion, b: &Bench, preset: &str, h: usize, tokens: usize) {
    let dt = b.dtype;
    // embedding of a batch, forward + backward (33-token table)
    let ids = b.ints((0..tokens as i32).map(|i| i % 33).collect());
    let table = b.tensor(&[33, h], DType::F32, 12).with_requires_grad(true);
    let scale = b.tensor(&[tokens], DType::F32, 13);
    b.run(c, "embedding fwd+bwd", preset, Work::Bytes(3.0 * (tokens * h * dt.size_in_bytes()) as f64), &mut || {
        let tape = Tape::new();
        let y = ops::embedding(&tape, &ids, &table, &scale).unwrap();
        backward(tape, &[&y]);
    });

    // weighted cross-entropy over 5,000 classes at the <cls> rows of ~105 sequences
    let rows = (tokens / 156).max(2);
    let logits = b.tensor(&[rows, CLASSES], dt, 14).with_requires_grad(true);
    let labels = b.ints((0..rows as i32).map(|i| (i * 37) % CLASSES as i32).collect());
    let weights = b.tensor(&[CLASSES], DType::F32, 15);
    b.run(c, "cross_entropy weighted fwd+bwd", preset, Work::Bytes(3.0 * bytes(&[&logits])), &mut || {
        let tape = Tape::new();
        let loss = ops::cross_entropy(&tape, &logits, &labels, Some(&weights)).unwrap();
        backward(tape, &[&loss]);
    });

    // f32 → compute-dtype cast of a layer's weights (what each step refreshes)
    let layer_params = 12 * h * h;
    let master = b.tensor(&[layer_params], DType::F32, 16);
    b.run(c, "cast f32 to half", preset, Work::Bytes((layer_params * (4 + 2)) as f64), &mut || {
        let Storage::Cuda(s) = master.storage() else { unreachable!() };
        s.to_dtype(dt).unwrap();
    });

    // AdamW and 8-bit AdamW over a layer's parameters (with the half copy rewritten)
    let hp = AdamHyper { lr: 1e-4, step: 3, ..AdamHyper::default() };
    let consts = AdamConsts::new(&hp).unwrap();
    let (p, g) = (b.tensor(&[layer_params], DType::F32, 17), b.tensor(&[layer_params], DType::F32, 18));
    let (m, v) = (b.tensor(&[layer_params], DType::F32, 19), b.tensor(&[layer_params], DType::F32, 20));
    let half = b.tensor(&[layer_params], dt, 21);
    let one = b.tensor(&[1], DType::F32, 22);
    let skip = b.ints(vec![0]);
    let adam_bytes = (layer_params * (4 * 4 + 3 * 4) + layer_params * dt.size_in_bytes()) as f64;
    b.run(c, "adamw step", preset, Work::Bytes(adam_bytes), &mut || {
        cuda::optim::adamw_step(&b.dev, &p, &g, &m, &v, Some(&half), &consts, &one, &skip).unwrap();
    });
    let mut state = cuda::optim::DeviceQuantizedMoments::zeros(&b.dev, layer_params).unwrap();
    let maps = cuda::optim::upload_maps(&b.dev).unwrap();
    let bytes8 = (layer_params * (4 + 4 + 4 + 2 + 2) + layer_params * dt.size_in_bytes()) as f64;
    b.run(c, "adam8bit step", preset, Work::Bytes(bytes8), &mut || {
        cuda::optim::adam8bit_step(&b.dev, &p, &g, &mut state, &maps, Some(&half), &consts, &one, &skip).unwrap();
    });
}

/// Copy bandwidth (a device-to-device copy, read + write) and the dense GEMM rate.
fn references(b: &Bench) -> (f64, f64, String) {
    let n = if b.emulated { 1 << 16 } else { 64 << 20 };
    let t = b.tensor(&[n], DType::F32, 23);
    let Storage::Cuda(s) = t.storage() else { unreachable!() };
    s.duplicate().unwrap();
    b.dev.synchronize().unwrap();
    let reps = if b.emulated { 2 } else { 20 };
    let t0 = Instant::now();
    for _ in 0..reps {
        s.duplicate().unwrap();
    }
    b.dev.synchronize().unwrap();
    let copy = 2.0 * (4 * n) as f64 * reps as f64 / t0.elapsed().as_secs_f64();
    let (gemm, shape) = qf_engine::train::bench::gemm_peak(&b.device(), b.dtype).unwrap();
    (copy, gemm, shape)
}

fn print_roofline(b: &Bench, copy: f64, gemm: f64, shape: &str) {
    println!(
        "\nroofline on {} ({}): copy bandwidth {:.1} GB/s, dense GEMM {:.2} TFLOP/s ({shape}){}",
        b.dev.name(),
        b.dtype.name(),
        copy / 1e9,
        gemm / 1e12,
        if b.emulated { " — CPU emulation: these numbers mean nothing" } else { "" }
    );
    println!("{:<58} {:>10} {:>14} {:>9}", "kernel / shape", "time", "achieved", "roofline");
    ROWS.with(|rows| {
        for r in rows.borrow().iter() {
            let (achieved, frac) = match r.work {
                Work::Bytes(x) => (format!("{:.1} GB/s", x / r.seconds / 1e9), x / r.seconds / copy),
                Work::Flops(x) => (format!("{:.2} TFLOP/s", x / r.seconds / 1e12), x / r.seconds / gemm),
            };
            println!("{:<58} {:>8.3} ms {:>14} {:>8.1}%", r.name, 1e3 * r.seconds, achieved, 100.0 * frac);
        }
    });
}

fn open() -> Option<Bench> {
    let emulated = match CudaDevice::open(0) {
        Ok(_) => false,
        Err(e) if std::env::var("QF_BENCH_EMULATION").is_ok_and(|v| v == "1") => {
            let emu = kernel_emu::emulator("cuda_ops bench")?;
            emu.install_as_cuda().unwrap_or_else(|x| panic!("{e:#}; and the emulation: {x}"));
            true
        }
        Err(e) => {
            println!("SKIP: no CUDA device ({e:#}); set QF_BENCH_EMULATION=1 to run on the CPU emulation");
            return None;
        }
    };
    let dev = CudaDevice::open(0).ok()?;
    let dtype = DType::BF16;
    dev.set_compute_dtype(dtype).unwrap();
    Some(Bench { dev, emulated, dtype })
}

fn main() {
    let Some(b) = open() else { return };
    let mut c = Criterion::default().configure_from_args();
    if b.emulated {
        layer_kernels(&mut c, &b, "8M", 32, 2, "pfam", 64);
        model_kernels(&mut c, &b, "8M", 32, 64);
    } else {
        for (preset, h, heads) in PRESETS {
            for mix in ["pfam", "256", "1024"] {
                layer_kernels(&mut c, &b, preset, h, heads, mix, TOKENS);
            }
            model_kernels(&mut c, &b, preset, h, TOKENS);
        }
    }
    c.final_summary();
    let (copy, gemm, shape) = references(&b);
    print_roofline(&b, copy, gemm, &shape);
}
