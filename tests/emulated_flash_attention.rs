//! The flash-attention kernels (`kernels/flash_attention.cu`) in fp16 and bf16, every head
//! dim, on the CPU emulation of `tests/kernel_emu` — mma and ldmatrix assembled from the
//! whole warp's registers by the PTX fragment layouts — launched with the argument lists
//! and launch shapes of their Rust launcher (`src/backend/cuda/flash_attention.rs`), and
//! compared with the CPU twin (`backend/cpu/flash_attention.rs`) in f64 on the same
//! inputs (rounded to the dtype).
//!
//! Batches pack many sequences (lengths 1, 2, shorter than a tile, across tile borders,
//! and one long protein in the long-batch test), with crop offsets in the positions.
//! Outputs are poisoned with NaN, gradient buffers start from random values (the kernels
//! accumulate), inputs are fresh random values. Tolerances are the relative L2 errors
//! measured here (each `tol_*` says the measured figure) times 2 to 3.

mod common;
mod kernel_emu;

use common::{rel_err, TestRng};
use half::{bf16, f16};
use kernel_emu::{ptr, ptr_mut, Aligned16, Element, Emulator, Shape};
use qf_engine::backend::cpu::attention::prob_offsets;
use qf_engine::backend::cpu::flash_attention::{self as twin, FlashDims};
use qf_engine::backend::cuda::flash_attention::{flash_config, FlashStage, FLASH_HEAD_DIMS};
use qf_engine::backend::cuda::launch::{warp_rows_config, Arg, NULL};
use qf_engine::ops::SeqLayout;
use qf_engine::Device;

/// A packed batch: sequences end to end, positions counted from each crop's offset.
struct Batch {
    cu: Vec<i32>,
    positions: Vec<i32>,
    heads: usize,
    d: usize,
}

impl Batch {
    fn new(lens: &[usize], offsets: &[i32], heads: usize, d: usize) -> Batch {
        let mut cu = vec![0i32];
        let mut positions = Vec::new();
        for (&l, &off) in lens.iter().zip(offsets.iter().cycle()) {
            cu.push(cu.last().unwrap() + l as i32);
            positions.extend((0..l as i32).map(|i| off + i));
        }
        Batch { cu, positions, heads, d }
    }
    fn tokens(&self) -> usize {
        *self.cu.last().unwrap() as usize
    }
    fn width(&self) -> usize {
        self.heads * self.d
    }
    fn cu_usize(&self) -> Vec<usize> {
        self.cu.iter().map(|&c| c as usize).collect()
    }
    fn layout(&self) -> SeqLayout {
        SeqLayout::new(&self.cu.iter().map(|&c| c as u32).collect::<Vec<_>>(), &Device::Cpu).unwrap()
    }
    fn n_probs(&self) -> usize {
        prob_offsets(&self.cu_usize(), self.heads).1
    }
    fn dims(&self) -> FlashDims {
        FlashDims { n_heads: self.heads, head_dim: self.d }
    }
    fn q_scale(&self) -> f32 {
        (self.d as f32).powf(-0.5)
    }
    /// The same batch with every position moved by `shift`.
    fn shifted(&self, shift: i32) -> Batch {
        Batch { cu: self.cu.clone(), positions: self.positions.iter().map(|p| p + shift).collect(), ..*self }
    }
}

/// The kernels' compute types.
trait Half: Element + bytemuck::Pod {}
impl Half for f16 {}
impl Half for bf16 {}

fn i(n: usize) -> Arg {
    Arg::I32(n as i32)
}

fn randn<T: Element>(rng: &mut TestRng, n: usize, std: f64) -> Vec<T> {
    (0..n).map(|_| T::from_f32((rng.normal() * std) as f32)).collect()
}

fn f64s<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f32() as f64).collect()
}

fn f32s<T: Element>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

/// The kernel name the launcher's `match` gives for this stage, head dim and dtype.
fn kernel(stage: &str, d: usize, suffix: &str) -> String {
    format!("flash_attention_{stage}_d{d}_{suffix}")
}

/// One batch's inputs in the dtype, 16-byte aligned as device buffers are.
struct Inputs<T: Half> {
    q: Aligned16<T>,
    k: Aligned16<T>,
    v: Aligned16<T>,
}

impl<T: Half> Inputs<T> {
    /// q, k ~ N(0, 1) and N(0, 1.5²) (a softmax spread like a trained model's), v ~ N(0, 1).
    fn random(rng: &mut TestRng, b: &Batch) -> Self {
        let n = b.tokens() * b.width();
        Inputs {
            q: Aligned16::from_slice(&randn::<T>(rng, n, 1.0)),
            k: Aligned16::from_slice(&randn::<T>(rng, n, 1.5)),
            v: Aligned16::from_slice(&randn::<T>(rng, n, 1.0)),
        }
    }
}

/// Sentinel elements after every output buffer: a kernel that writes past the end of
/// its output changes them.
const GUARD: usize = 8;
const SENTINEL: f32 = -77.0;

fn guarded<T: Element>(n: usize, fill: f32) -> Vec<T> {
    let mut v = vec![T::from_f32(fill); n];
    v.extend(std::iter::repeat_n(T::from_f32(SENTINEL), GUARD));
    v
}

/// `v` without its guard, after checking the guard is intact.
fn unguard<T: Element>(what: &str, mut v: Vec<T>) -> Vec<T> {
    let n = v.len() - GUARD;
    assert!(v[n..].iter().all(|x| x.to_f32() == SENTINEL), "{what}: a kernel wrote past the end of the buffer");
    v.truncate(n);
    v
}

/// The forward kernel's outputs.
struct Forward<T: Half> {
    out: Aligned16<T>,
    lse: Vec<f32>,
    probs: Option<Vec<T>>,
}

/// `run_forward` in flash_attention.rs: flash_attention_forward_dD_T(out, lse, probs, q, k,
/// v, positions, cu_seqlens, n_seqs, n_tokens, n_heads, q_scale) over flash_config.
fn forward<T: Half>(emu: &Emulator, b: &Batch, x: &Inputs<T>, want_probs: bool) -> Forward<T> {
    let n = b.tokens();
    let mut out = Aligned16::from_slice(&guarded::<T>(n * b.width(), f32::NAN));
    let mut lse = guarded::<f32>(b.heads * n, f32::NAN);
    let mut probs = want_probs.then(|| guarded::<T>(b.n_probs(), f32::NAN));
    let cfg = flash_config(FlashStage::Forward, b.d, &b.layout(), b.heads).unwrap();
    emu.run(
        &kernel("forward", b.d, T::SUFFIX),
        Shape::of(cfg),
        &[
            ptr_mut(out.as_mut_slice()),
            ptr_mut(&mut lse),
            probs.as_mut().map_or(NULL, |p| ptr_mut(p)),
            ptr(x.q.as_slice()),
            ptr(x.k.as_slice()),
            ptr(x.v.as_slice()),
            ptr(&b.positions),
            ptr(&b.cu),
            i(b.cu.len() - 1),
            i(n),
            i(b.heads),
            Arg::F32(b.q_scale()),
        ],
    );
    let out_all = unguard("out", out.as_slice().to_vec());
    Forward {
        out: Aligned16::from_slice(&out_all),
        lse: unguard("lse", lse),
        probs: probs.map(|p| unguard("probs", p)),
    }
}

/// The twin's forward in f64: (out, lse, probs).
fn forward_reference<T: Half>(b: &Batch, x: &Inputs<T>) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let n = b.tokens();
    let (mut out, mut lse, mut probs) = (vec![0.0; n * b.width()], vec![0.0; b.heads * n], vec![0.0; b.n_probs()]);
    let (q, k, v) = (f64s(x.q.as_slice()), f64s(x.k.as_slice()), f64s(x.v.as_slice()));
    twin::forward(
        &mut out,
        &mut lse,
        &mut probs,
        &q,
        &k,
        &v,
        &b.positions,
        &b.cu_usize(),
        b.dims(),
        b.q_scale() as f64,
    );
    (out, lse, probs)
}

/// Gradients of the backward kernels: the buffers they accumulate into.
struct Grads<T: Half> {
    dq: Vec<T>,
    dk: Vec<T>,
    dv: Vec<T>,
}

/// `run_backward` in flash_attention.rs: the Δ kernel (warp_rows_config), then the kv and
/// q kernels (flash_config), accumulating into `g`.
#[allow(clippy::too_many_arguments)]
fn backward<T: Half>(
    emu: &Emulator,
    b: &Batch,
    x: &Inputs<T>,
    fwd: &Forward<T>,
    dout: &Aligned16<T>,
    dprobs: Option<&[T]>,
    g: &mut Grads<T>,
) {
    let n = b.tokens();
    let layout = b.layout();
    let mut delta = vec![f32::NAN; b.heads * n];
    let probs = if dprobs.is_some() { fwd.probs.as_deref() } else { None };
    emu.run(
        &format!("flash_attention_backward_dot_{}", T::SUFFIX),
        Shape::of(warp_rows_config(b.heads * n)),
        &[
            ptr_mut(&mut delta),
            ptr(fwd.out.as_slice()),
            ptr(dout.as_slice()),
            probs.map_or(NULL, ptr),
            dprobs.map_or(NULL, ptr),
            ptr(&b.cu),
            i(b.cu.len() - 1),
            i(n),
            i(b.heads),
            i(b.d),
        ],
    );
    let tail = |delta: &[f32]| {
        vec![
            ptr(x.q.as_slice()),
            ptr(x.k.as_slice()),
            ptr(x.v.as_slice()),
            ptr(dout.as_slice()),
            ptr(&fwd.lse),
            ptr(delta),
            dprobs.map_or(NULL, ptr),
            ptr(&b.positions),
            ptr(&b.cu),
            i(b.cu.len() - 1),
            i(n),
            i(b.heads),
            Arg::F32(b.q_scale()),
        ]
    };
    let cfg = flash_config(FlashStage::BackwardKv, b.d, &layout, b.heads).unwrap();
    let mut args = vec![ptr_mut(&mut g.dk), ptr_mut(&mut g.dv)];
    args.extend(tail(&delta));
    emu.run(&kernel("backward_kv", b.d, T::SUFFIX), Shape::of(cfg), &args);
    let cfg = flash_config(FlashStage::BackwardQ, b.d, &layout, b.heads).unwrap();
    let mut args = vec![ptr_mut(&mut g.dq)];
    args.extend(tail(&delta));
    emu.run(&kernel("backward_q", b.d, T::SUFFIX), Shape::of(cfg), &args);
}

/// What one forward + backward comparison measured.
#[derive(Default, Debug)]
struct Errors {
    out: f64,
    lse: f64,
    probs: f64,
    dq: f64,
    dk: f64,
    dv: f64,
}

impl std::fmt::Display for Errors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "out {:.1e} lse {:.1e} probs {:.1e} dq {:.1e} dk {:.1e} dv {:.1e}",
            self.out, self.lse, self.probs, self.dq, self.dk, self.dv
        )
    }
}

impl Errors {
    fn worst(&mut self, o: &Errors) {
        for (a, b) in [
            (&mut self.out, o.out),
            (&mut self.lse, o.lse),
            (&mut self.probs, o.probs),
            (&mut self.dq, o.dq),
            (&mut self.dk, o.dk),
            (&mut self.dv, o.dv),
        ] {
            *a = a.max(b);
        }
    }
}

fn err(got: &[f32], want: &[f64]) -> f64 {
    rel_err(got, &want.iter().map(|&w| w as f32).collect::<Vec<_>>())
}

/// Forward (with probabilities when `probs`) and backward (with a gradient on the
/// probabilities when `probs`) of one batch against the twin in f64.
fn compare<T: Half>(emu: &Emulator, rng: &mut TestRng, b: &Batch, probs: bool) -> Errors {
    let n = b.tokens();
    let x = Inputs::<T>::random(rng, b);
    let fwd = forward(emu, b, &x, probs);
    let (out, lse, p) = forward_reference(b, &x);
    let mut e = Errors { out: err(&f32s(fwd.out.as_slice()), &out), lse: err(&fwd.lse, &lse), ..Default::default() };
    if let Some(kp) = &fwd.probs {
        e.probs = err(&f32s(kp), &p);
    }

    let dout = Aligned16::from_slice(&randn::<T>(rng, n * b.width(), 1.0));
    let dprobs = probs.then(|| randn::<T>(rng, b.n_probs(), 1.0));
    let start = |rng: &mut TestRng| {
        let mut v = randn::<T>(rng, n * b.width(), 0.1);
        v.extend(std::iter::repeat_n(T::from_f32(SENTINEL), GUARD));
        v
    };
    let mut g = Grads { dq: start(rng), dk: start(rng), dv: start(rng) };
    let (dq0, dk0, dv0) = (f64s(&g.dq[..n * b.width()]), f64s(&g.dk[..n * b.width()]), f64s(&g.dv[..n * b.width()]));
    backward(emu, b, &x, &fwd, &dout, dprobs.as_deref(), &mut g);
    let g = Grads { dq: unguard("dq", g.dq), dk: unguard("dk", g.dk), dv: unguard("dv", g.dv) };

    let (mut rq, mut rk, mut rv) = (vec![0.0; n * b.width()], vec![0.0; n * b.width()], vec![0.0; n * b.width()]);
    let dprobs64 = dprobs.as_ref().map(|d| f64s(d));
    twin::backward(
        &mut rq,
        &mut rk,
        &mut rv,
        Some(&f64s(dout.as_slice())),
        dprobs64.as_deref(),
        &p,
        &out,
        &lse,
        &f64s(x.q.as_slice()),
        &f64s(x.k.as_slice()),
        &f64s(x.v.as_slice()),
        &b.positions,
        &b.cu_usize(),
        b.dims(),
        b.q_scale() as f64,
    );
    // The kernels accumulate: compare the increments (the starting values are small).
    let inc = |got: &[T], start: &[f64]| -> Vec<f32> {
        got.iter().zip(start).map(|(g, s)| (g.to_f32() as f64 - s) as f32).collect()
    };
    e.dq = err(&inc(&g.dq, &dq0), &rq);
    e.dk = err(&inc(&g.dk, &dk0), &rk);
    e.dv = err(&inc(&g.dv, &dv0), &rv);
    e
}

/// Lengths of the standard batch: 1 and 2 (single tokens), shorter than a warp's 16 rows,
/// exactly one 64-row tile, one past it, and across two tile borders.
const LENS: [usize; 8] = [1, 2, 13, 64, 65, 3, 150, 31];
/// Crop offsets (a crop keeps its residues' true positions; `<cls>` one before).
const OFFSETS: [i32; 5] = [0, 211, 37, 1023, 5];

/// Every head dim, with and without the probabilities, against the twin.
fn every_head_dim<T: Half>(seed: u64, tol: &Errors) {
    kernel_emu::schedules("flash every head dim", |emu| {
        let mut rng = TestRng::new(seed);
        for d in FLASH_HEAD_DIMS {
            let mut worst = Errors::default();
            for probs in [false, true] {
                let b = Batch::new(&LENS, &OFFSETS, 2, d);
                let e = compare::<T>(emu, &mut rng, &b, probs);
                println!("{} d={d} probs={probs}: {e}", T::SUFFIX);
                worst.worst(&e);
            }
            for (what, got, bound) in [
                ("out", worst.out, tol.out),
                ("lse", worst.lse, tol.lse),
                ("probs", worst.probs, tol.probs),
                ("dq", worst.dq, tol.dq),
                ("dk", worst.dk, tol.dk),
                ("dv", worst.dv, tol.dv),
            ] {
                assert!(got <= bound, "{} d={d}: {what} relative error {got:e} > {bound:e}", T::SUFFIX);
            }
        }
    });
}

// Measured worst relative L2 errors over every head dim, with and without probabilities
// (fp16): out 4.7e-4, lse 4.4e-5, probs 4.5e-4, dq 6.1e-4, dk 5.8e-4, dv 5.0e-4.
const TOL_F16: Errors = Errors { out: 1.2e-3, lse: 1.1e-4, probs: 1.2e-3, dq: 1.5e-3, dk: 1.5e-3, dv: 1.3e-3 };
// Measured (bf16): out 3.7e-3, lse 3.7e-4, probs 3.5e-3, dq 4.8e-3, dk 4.6e-3, dv 4.1e-3.
const TOL_BF16: Errors = Errors { out: 9e-3, lse: 9e-4, probs: 9e-3, dq: 1e-2, dk: 1e-2, dv: 1e-2 };

#[test]
fn flash_attention_matches_the_cpu_twin_for_every_head_dim_f16() {
    every_head_dim::<f16>(0xf1a5_0001, &TOL_F16);
}

#[test]
fn flash_attention_matches_the_cpu_twin_for_every_head_dim_bf16() {
    every_head_dim::<bf16>(0xf1a5_0002, &TOL_BF16);
}

/// Lengths 1 to 1,100 in one batch: one long protein beside domains of random lengths
/// (a Pfam-like mix), and lengths on and just off the 64-row tiles.
fn long_batch_lengths(rng: &mut TestRng) -> Vec<usize> {
    let mut lens = vec![1100, 1, 2, 64, 65, 127, 128, 129];
    lens.extend((0..12).map(|_| 3 + rng.below(300)));
    lens
}

fn long_batch<T: Half>(seed: u64, d: usize, probs: bool, tol: &Errors) {
    kernel_emu::schedules("flash long batch", |emu| {
        let mut rng = TestRng::new(seed);
        let lens = long_batch_lengths(&mut rng);
        let b = Batch::new(&lens, &OFFSETS, 1, d);
        let started = std::time::Instant::now();
        let e = compare::<T>(emu, &mut rng, &b, probs);
        println!(
            "{} d={d} probs={probs} lengths {lens:?} ({} tokens): {e} [{:.1} s]",
            T::SUFFIX,
            b.tokens(),
            started.elapsed().as_secs_f64()
        );
        for (what, got, bound) in [
            ("out", e.out, tol.out),
            ("lse", e.lse, tol.lse),
            ("probs", e.probs, tol.probs),
            ("dq", e.dq, tol.dq),
            ("dk", e.dk, tol.dk),
            ("dv", e.dv, tol.dv),
        ] {
            assert!(got <= bound, "{} long batch d={d}: {what} relative error {got:e} > {bound:e}", T::SUFFIX);
        }
    });
}

// Measured on the long batches (3,562 and 3,292 tokens): fp16 d=16 out 5.3e-4, lse 3.2e-5,
// dq 6.5e-4, dk 6.1e-4, dv 5.8e-4 (1.7 s); bf16 d=64 with probabilities out 3.9e-3,
// lse 1.5e-4, probs 3.7e-3, dq 4.5e-3, dk 4.5e-3, dv 4.2e-3 (5.6 s): within the bounds
// of the standard batch.
#[test]
fn flash_attention_over_lengths_1_to_1100_in_one_batch_f16() {
    long_batch::<f16>(0xf1a5_0003, 16, false, &TOL_F16);
}

#[test]
fn flash_attention_over_lengths_1_to_1100_in_one_batch_with_probabilities_bf16() {
    long_batch::<bf16>(0xf1a5_0004, 64, true, &TOL_BF16);
}

/// Forward (with probabilities) and backward (with a gradient on them) of fixed inputs:
/// out, lse, probs, dq, dk, dv as f32, gradients accumulated from zero.
fn outputs<T: Half>(emu: &Emulator, b: &Batch, x: &Inputs<T>, dout: &Aligned16<T>, dprobs: &[T]) -> Vec<Vec<f32>> {
    let fwd = forward(emu, b, x, true);
    let zero = || guarded::<T>(b.tokens() * b.width(), 0.0);
    let mut g = Grads { dq: zero(), dk: zero(), dv: zero() };
    backward(emu, b, x, &fwd, dout, Some(dprobs), &mut g);
    let g = Grads { dq: unguard("dq", g.dq), dk: unguard("dk", g.dk), dv: unguard("dv", g.dv) };
    vec![
        f32s(fwd.out.as_slice()),
        fwd.lse.clone(),
        f32s(fwd.probs.as_ref().unwrap()),
        f32s(&g.dq),
        f32s(&g.dk),
        f32s(&g.dv),
    ]
}

const NAMES: [&str; 6] = ["out", "lse", "probs", "dq", "dk", "dv"];

/// RoPE depends on position differences only: moving every position by 1000 changes the
/// kernels' outputs and gradients only at rounding level — by no more than the kernels'
/// own error against the twin (the `tol` bounds). The twin itself moves by the fp32
/// rounding of the larger angles (measured ≤ 2e-5).
fn shared_offset<T: Half>(seed: u64, tol: &Errors) {
    kernel_emu::schedules("flash shared offset", |emu| {
        let mut rng = TestRng::new(seed);
        let b = Batch::new(&LENS, &OFFSETS, 2, 32);
        let moved = b.shifted(1000);
        let x = Inputs::<T>::random(&mut rng, &b);
        let dout = Aligned16::from_slice(&randn::<T>(&mut rng, b.tokens() * b.width(), 1.0));
        let dprobs = randn::<T>(&mut rng, b.n_probs(), 1.0);
        let (at0, at1000) = (outputs(emu, &b, &x, &dout, &dprobs), outputs(emu, &moved, &x, &dout, &dprobs));
        let bounds = [tol.out, tol.lse, tol.probs, tol.dq, tol.dk, tol.dv];
        for ((what, (a, c)), bound) in NAMES.iter().zip(at0.iter().zip(&at1000)).zip(bounds) {
            let e = rel_err(c, a);
            println!("{} shared offset 1000: {what} moved by {e:.1e}", T::SUFFIX);
            assert!(e <= bound, "{} a shared offset moved {what} by {e:e} > {bound:e}", T::SUFFIX);
        }
        let (r0, r1) = (forward_reference(&b, &x).0, forward_reference(&moved, &x).0);
        let e = rel_err(
            &r1.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            &r0.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        );
        println!("{} shared offset 1000: the f64 twin's output moved by {e:.1e}", T::SUFFIX);
        assert!(e <= 2e-5, "the twin moved by {e:e} under a shared offset");
    });
}

#[test]
fn a_shared_position_offset_changes_outputs_only_at_rounding_level_f16() {
    shared_offset::<f16>(0xf1a5_0005, &TOL_F16);
}

#[test]
fn a_shared_position_offset_changes_outputs_only_at_rounding_level_bf16() {
    shared_offset::<bf16>(0xf1a5_0006, &TOL_BF16);
}

/// The backward pass is deterministic: no floating-point atomics (each dK/dV row has one
/// writer, the block of its key tile; each dQ row one, the block of its query tile, in a
/// separate pass), so two runs give identical bits. On the emulation blocks run in order
/// anyway; the source check below is what carries over to a GPU.
#[test]
fn flash_attention_is_deterministic_bit_for_bit() {
    kernel_emu::schedules("flash deterministic", |emu| {
        let mut rng = TestRng::new(0xf1a5_0007);
        let b = Batch::new(&LENS, &OFFSETS, 2, 24);
        let x = Inputs::<f16>::random(&mut rng, &b);
        let dout = Aligned16::from_slice(&randn::<f16>(&mut rng, b.tokens() * b.width(), 1.0));
        let dprobs = randn::<f16>(&mut rng, b.n_probs(), 1.0);
        let (first, second) = (outputs(emu, &b, &x, &dout, &dprobs), outputs(emu, &b, &x, &dout, &dprobs));
        for (what, (a, c)) in NAMES.iter().zip(first.iter().zip(&second)) {
            let same = a.iter().zip(c).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "{what} differs between two runs");
        }
        let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/flash_attention.cu")).unwrap();
        let code: String = src.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
        assert!(
            !code.contains("atomic"),
            "kernels/flash_attention.cu uses an atomic: the backward is no longer deterministic"
        );
    });
}

#[test]
fn every_flash_attention_kernel_is_covered_here() {
    kernel_emu::schedules("every_flash_attention_kernel_is_covered_here", |emu| {
        let mut names: Vec<String> =
            emu.kernels().into_iter().filter(|(m, _)| m == "flash_attention").map(|(_, n)| n).collect();
        names.sort();
        let mut want = Vec::new();
        for suffix in ["f16", "bf16"] {
            want.push(format!("flash_attention_backward_dot_{suffix}"));
            for d in FLASH_HEAD_DIMS {
                for stage in ["forward", "backward_kv", "backward_q"] {
                    want.push(kernel(stage, d, suffix));
                }
            }
        }
        want.sort();
        assert_eq!(names, want);
    });
}
