//! Criterion benchmarks of every CUDA kernel at ESM-2 shapes, each with its roofline
//! fraction: achieved GB/s against the device's copy bandwidth, or TFLOP/s against its
//! dense GEMM rate, both measured in the same run.
//!
//! Shapes: the layers of ESM-2 8M, 35M, 150M and 650M (hidden 320, 480, 640, 1280; 20
//! heads; FFN 4×), on batches of 16,384 tokens of Pfam-like lengths (a fixed sample of a
//! log-normal with mean ≈ 156, as Pfam domains) and of fixed lengths 256 and 1,024.
//! Kernels: layer norm, bias+GELU, weighted cross-entropy over 5,000 classes, embedding, dropout, the f32 →
//! half cast, AdamW and 8-bit AdamW over a layer's parameters, and the cuBLAS GEMMs of a
//! layer (q/k/v/out projections, FFN in and out). Attention is in `benches/attention.rs`.
//!
//! `cargo bench --bench cuda_ops` on a GPU. Without one it prints a SKIP line, unless
//! `QF_BENCH_EMULATION=1`: then it runs on the CPU emulation of CUDA at tiny sizes (what
//! CI does once with `-- --test`, so the benchmarks cannot rot; the numbers mean nothing).

mod cuda_bench;

use criterion::Criterion;
use cuda_bench::{backward, bytes, lengths, open, print_roofline, references, Bench, Work, PRESETS, TOKENS};
use qf_engine::backend::cpu::adam8bit::QuantizedMoments;
use qf_engine::backend::cpu::adamw::{AdamConsts, AdamHyper};
use qf_engine::backend::cuda;
use qf_engine::ops;
use qf_engine::tensor::Storage;
use qf_engine::{DType, Tape};

const CLASSES: usize = 5_000;

fn layer_kernels(c: &mut Criterion, b: &Bench, preset: &str, h: usize, mix: &str, tokens: usize) {
    let dt = b.dtype;
    let cu = lengths(mix, tokens);
    let n = *cu.last().unwrap() as usize;
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
        cuda::adamw::adamw_step(&b.dev, &p, &g, &m, &v, Some(&half), &consts, &one, &skip).unwrap();
    });
    let mut state =
        cuda::adam8bit::DeviceQuantizedMoments::upload(&b.dev, &QuantizedMoments::zeros(layer_params)).unwrap();
    let maps = qf_engine::ops::adam8bit::upload_maps(&b.dev).unwrap();
    let bytes8 = (layer_params * (4 + 4 + 4 + 2 + 2) + layer_params * dt.size_in_bytes()) as f64;
    b.run(c, "adam8bit step", preset, Work::Bytes(bytes8), &mut || {
        cuda::adam8bit::adam8bit_step(&b.dev, &p, &g, &mut state, &maps, Some(&half), &consts, &one, &skip).unwrap();
    });
}

fn main() {
    let Some(b) = open() else { return };
    let mut c = Criterion::default().configure_from_args();
    if b.emulated {
        layer_kernels(&mut c, &b, "8M", 32, "pfam", 64);
        model_kernels(&mut c, &b, "8M", 32, 64);
    } else {
        for (preset, h, _) in PRESETS {
            for mix in ["pfam", "256", "1024"] {
                layer_kernels(&mut c, &b, preset, h, mix, TOKENS);
            }
            model_kernels(&mut c, &b, preset, h, TOKENS);
        }
    }
    c.final_summary();
    let (copy, gemm, shape) = references(&b);
    print_roofline(&b, copy, gemm, &shape);
}
