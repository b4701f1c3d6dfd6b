//! Criterion benchmark of attention on CUDA: the fused flash kernel (rotary inside,
//! packed sequences) against `--attention unfused` (a rotary kernel, then cuBLAS batched
//! GEMMs over padded per-sequence blocks and a masked softmax), forward and backward
//! separately, at ESM-2 head shapes — 8M (20 heads × 16), 35M (20 × 24), 650M (20 × 64) —
//! on 16,384-token batches of Pfam-like lengths and of fixed lengths 256 and 1,024. Each
//! is reported in TFLOP/s of real (unpadded) work, 4·L²·hidden per sequence forward and
//! twice that backward, beside the GEMM rate measured in the same run. PyTorch's
//! `scaled_dot_product_attention` at the same shapes (padded, as it needs) is timed by
//! `tools/pytorch_attention_bench.py`; `tools/gpu_check.sh` runs both.
//!
//! `cargo bench --bench attention` on a GPU; without one a SKIP line, or with
//! `QF_BENCH_EMULATION=1` the CPU emulation at tiny sizes (CI runs it once, `-- --test`).

mod cuda_bench;

use criterion::Criterion;
use cuda_bench::{lengths, open, print_roofline, references, Bench, Work, TOKENS};
use qf_engine::backend::cuda;
use qf_engine::ops::{self, SeqLayout};
use qf_engine::{Grads, Tape, Tensor};

/// ESM-2 attention shapes: preset, heads, head dim.
const SHAPES: [(&str, usize, usize); 3] = [("8M", 20, 16), ("35M", 20, 24), ("650M", 20, 64)];

fn attention(c: &mut Criterion, b: &Bench, preset: &str, heads: usize, hd: usize, mix: &str, tokens: usize) {
    let dt = b.dtype;
    let cu = lengths(mix, tokens);
    let n = *cu.last().unwrap() as usize;
    let h = heads * hd;
    let layout = SeqLayout::new(&cu, &b.device()).unwrap();
    let positions = b.ints(cu.windows(2).flat_map(|w| 0..(w[1] - w[0]) as i32).collect());
    let (q, k, v) = (b.tensor(&[n, h], dt, 9), b.tensor(&[n, h], dt, 10), b.tensor(&[n, h], dt, 11));
    let (q, k, v) = (q.with_requires_grad(true), k.with_requires_grad(true), v.with_requires_grad(true));
    let forward_flops: f64 = cu.windows(2).map(|w| 4.0 * ((w[1] - w[0]) as f64).powi(2) * h as f64).sum();
    let c_q = (hd as f64).powf(-0.5);
    let tag = format!("{preset} {heads}x{hd} {mix}");
    let flash = |tape: &Tape| ops::flash_attention(tape, &q, &k, &v, &positions, &layout, heads, c_q, false).unwrap().0;
    let unfused = |tape: &Tape| {
        let qr = ops::rotary(tape, &q, &positions, heads, c_q).unwrap();
        let kr = ops::rotary(tape, &k, &positions, heads, 1.0).unwrap();
        ops::attention(tape, &qr, &kr, &v, &layout, heads, 1.0, false).unwrap().0
    };
    let paths: [(&str, &dyn Fn(&Tape) -> Tensor); 2] = [("flash", &flash), ("unfused", &unfused)];
    for (name, path) in paths {
        if name == "flash" && !cuda::flash_attention::supports(dt, hd) {
            continue;
        }
        b.run(c, &format!("attention {name} forward"), &tag, Work::Flops(forward_flops), &mut || {
            path(&Tape::inference());
        });
        // backward alone: a fresh forward per call is recorded outside the timing
        b.run_with_setup(c, &format!("attention {name} backward"), &tag, Work::Flops(2.0 * forward_flops), &mut || {
            let tape = Tape::new();
            let o = path(&tape);
            let seed = Tensor::from_f32(vec![1e-3; o.numel()], o.shape(), o.dtype(), &o.device()).unwrap();
            Box::new(move || {
                tape.backward_from(&o, seed, &mut Grads::new()).unwrap();
            })
        });
    }
}

fn main() {
    let Some(b) = open() else { return };
    let mut c = Criterion::default().configure_from_args();
    if b.emulated {
        attention(&mut c, &b, "8M", 2, 16, "pfam", 48);
    } else {
        for (preset, heads, hd) in SHAPES {
            for mix in ["pfam", "256", "1024"] {
                attention(&mut c, &b, preset, heads, hd, mix, TOKENS);
            }
        }
    }
    c.final_summary();
    let (copy, gemm, shape) = references(&b);
    print_roofline(&b, copy, gemm, &shape);
}
