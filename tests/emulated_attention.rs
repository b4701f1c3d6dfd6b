//! The attention, rotary and dropout kernels (`kernels/attention.cu`, `kernels/rotary.cu`,
//! `kernels/dropout.cu`), every entry point in f32, f16 and bf16, run on the CPU through
//! the host emulation of `tests/kernel_emu` with exactly the argument lists and launch
//! shapes of their Rust launchers (`src/backend/cuda/{attention,rotary,dropout}.rs`;
//! `flat_config` replicated here for an H100's 132 SMs and for one SM, where the
//! grid-stride loops take several passes), against the CPU twins of
//! `qf_engine::backend::cpu` or a reference computed here in f64.
//!
//! Tolerances (docs/ARCHITECTURE.md): relative L2 error ≤ 1e-5 in f32 against f64, ≤ 1e-2 in
//! f16/bf16 (reference from the inputs rounded to the dtype); NaN never passes. Outputs
//! are poisoned with NaN before each launch, gradient buffers start from random values
//! (accumulation checked), and data movement (pack/unpack) and dropout are checked bit
//! for bit. Packed batches hold sequences of different lengths (1, shorter and longer
//! than a warp, longer than two warps), crops start mid-protein (rotary offsets).

mod common;
mod kernel_emu;

use std::collections::BTreeSet;

use common::{rel_err, TestRng};
use half::{bf16, f16};
use kernel_emu::{ptr, ptr_mut, to_f32, Element, Emulator, Shape};
use qf_engine::backend::cpu;
use qf_engine::backend::cuda::launch::{block_rows_config, warp_rows_config, Arg, BLOCK};

/// A `long long` argument.
fn long(n: usize) -> Arg {
    Arg::I64(n as i64)
}

/// An `int` argument from a size.
fn int(n: usize) -> anyhow::Result<Arg> {
    Ok(Arg::I32(qf_engine::backend::cuda::launch::int(n)?))
}

/// SM counts the flat launches are shaped for: an H100, and one SM (several passes).
const H100_SMS: u32 = 132;
const TINY_SMS: u32 = 1;
/// Threads per block of the rotary launcher (`ROTARY_BLOCK` in rotary.rs).
const ROTARY_BLOCK: u32 = 128;

fn tol<T: Element>() -> f64 {
    if T::SUFFIX == "f32" {
        1e-5
    } else {
        1e-2
    }
}

fn i(n: usize) -> Arg {
    int(n).unwrap()
}

fn nan_buf<T: Element>(n: usize) -> Vec<T> {
    vec![T::from_f32(f32::NAN); n]
}

/// Sentinel elements after the end of output buffers: a kernel that writes past the
/// end of its output changes them.
const GUARD: usize = 8;
const SENTINEL: f32 = -77.0;

/// `v` followed by the guard.
fn guarded<T: Element>(mut v: Vec<T>) -> Vec<T> {
    v.extend(std::iter::repeat_n(T::from_f32(SENTINEL), GUARD));
    v
}

/// The first `n` elements of a guarded buffer, after checking that its guard is intact.
fn unguard<'a, T: Element>(what: &str, v: &'a [T], n: usize) -> &'a [T] {
    assert_eq!(v.len(), n + GUARD, "{what}: not a guarded buffer of {n}");
    assert!(v[n..].iter().all(|x| x.to_f32() == SENTINEL), "{what}: wrote past the end of its output");
    &v[..n]
}

fn randn<T: Element>(rng: &mut TestRng, n: usize, std: f64) -> Vec<T> {
    (0..n).map(|_| T::from_f32((rng.normal() * std) as f32)).collect()
}

/// Relative L2 error of `got` against `want`, printed, and asserted ≤ `tol`.
fn check(what: &str, got: &[f32], want: &[f64], tol: f64) -> f64 {
    let want32: Vec<f32> = want.iter().map(|&x| x as f32).collect();
    let e = rel_err(got, &want32);
    println!("{what}: rel err {e:.2e} (tol {tol:.0e})");
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
    e
}

/// `flat_config` (launch.rs) for a device with `sms` multiprocessors: blocks of 256,
/// grid min(ceil(n / (256·per_thread)), blocks_per_sm·sms).
fn flat_shape(n: usize, per_thread: usize, blocks_per_sm: u32, sms: u32) -> Shape {
    let blocks = n.div_ceil(BLOCK as usize * per_thread.max(1));
    let cap = (sms * blocks_per_sm) as usize;
    Shape::flat(blocks.min(cap).clamp(1, i32::MAX as usize) as u32, BLOCK)
}

/// The grid-stride loop of a flat launch takes more than one pass.
fn assert_several_passes(shape: Shape, per_thread: usize, n: usize) {
    let per_pass = (shape.grid.0 * shape.block.0) as usize * per_thread;
    assert!(per_pass < n, "{shape:?} covers all {n} elements in one pass");
}

/// Packed sequences end to end (`SeqLayout`): cu_seqlens as the launcher's i32 tensor.
struct Layout {
    cu: Vec<i32>,
    max_len: usize,
    heads: usize,
    hd: usize,
}

impl Layout {
    fn new(lens: &[usize], heads: usize, hd: usize) -> Self {
        let mut cu = vec![0i32];
        for &l in lens {
            cu.push(cu.last().unwrap() + l as i32);
        }
        Layout { cu, max_len: *lens.iter().max().unwrap(), heads, hd }
    }
    fn n_seqs(&self) -> usize {
        self.cu.len() - 1
    }
    fn tokens(&self) -> usize {
        *self.cu.last().unwrap() as usize
    }
    fn width(&self) -> usize {
        self.heads * self.hd
    }
    fn start(&self, s: usize) -> usize {
        self.cu[s] as usize
    }
    fn len(&self, s: usize) -> usize {
        (self.cu[s + 1] - self.cu[s]) as usize
    }
    fn cu_usize(&self) -> Vec<usize> {
        self.cu.iter().map(|&c| c as usize).collect()
    }
    /// Elements of the padded `[n_seqs, heads, max_len, hd]` blocks.
    fn padded_len(&self) -> usize {
        self.n_seqs() * self.heads * self.max_len * self.hd
    }
    /// Elements of the padded `[n_seqs, heads, max_len, max_len]` scores.
    fn probs_len(&self) -> usize {
        self.n_seqs() * self.heads * self.max_len * self.max_len
    }
    /// Score rows (`Dims::row_blocks` in attention.rs).
    fn rows(&self) -> usize {
        self.n_seqs() * self.heads * self.max_len
    }
    fn padded_index(&self, s: usize, h: usize, i: usize, dd: usize) -> usize {
        ((s * self.heads + h) * self.max_len + i) * self.hd + dd
    }
    fn score_index(&self, s: usize, h: usize, i: usize, j: usize) -> usize {
        ((s * self.heads + h) * self.max_len + i) * self.max_len + j
    }
}

// ---------------------------------------------------------------------------------------
// The launchers' argument lists
// ---------------------------------------------------------------------------------------

/// `pack` in attention.rs: attn_pack_T(dst, src, cu_seqlens, n_seqs, max_len, n_heads,
/// head_dim, src_row_stride), flat_config(padded_len, 1, 32).
fn launch_pack<T: Element>(emu: &Emulator, shape: Shape, dst: &mut [T], src: &[T], lay: &Layout, stride: usize) {
    emu.run(
        &format!("attn_pack_{}", T::SUFFIX),
        shape,
        &[ptr_mut(dst), ptr(src), ptr(&lay.cu), i(lay.n_seqs()), i(lay.max_len), i(lay.heads), i(lay.hd), i(stride)],
    );
}

/// `unpack_into` in attention.rs: attn_unpack_T(dst, src, cu_seqlens, n_seqs, max_len,
/// n_heads, head_dim, dst_row_stride, accumulate), flat_config(padded_len, 1, 32).
#[allow(clippy::too_many_arguments)]
fn launch_unpack<T: Element>(
    emu: &Emulator,
    shape: Shape,
    dst: &mut [T],
    src: &[T],
    lay: &Layout,
    stride: usize,
    accumulate: bool,
) {
    emu.run(
        &format!("attn_unpack_{}", T::SUFFIX),
        shape,
        &[
            ptr_mut(dst),
            ptr(src),
            ptr(&lay.cu),
            i(lay.n_seqs()),
            i(lay.max_len),
            i(lay.heads),
            i(lay.hd),
            i(stride),
            Arg::I32(accumulate as i32),
        ],
    );
}

/// attn_softmax_forward_T(probs, scores, cu_seqlens, n_seqs, n_heads, max_len, scale).
fn launch_softmax_forward<T: Element>(
    emu: &Emulator,
    shape: Shape,
    probs: &mut [T],
    scores: &[f32],
    lay: &Layout,
    scale: f32,
) {
    emu.run(
        &format!("attn_softmax_forward_{}", T::SUFFIX),
        shape,
        &[ptr_mut(probs), ptr(scores), ptr(&lay.cu), i(lay.n_seqs()), i(lay.heads), i(lay.max_len), Arg::F32(scale)],
    );
}

/// attn_softmax_backward_T(dscores, probs, dprobs, cu_seqlens, n_seqs, n_heads, max_len,
/// scale); `dscores` and `dprobs` are raw pointer arguments (they may alias).
fn launch_softmax_backward<T: Element>(
    emu: &Emulator,
    shape: Shape,
    dscores: Arg,
    probs: &[T],
    dprobs: Arg,
    lay: &Layout,
    scale: f32,
) {
    emu.run(
        &format!("attn_softmax_backward_{}", T::SUFFIX),
        shape,
        &[dscores, ptr(probs), dprobs, ptr(&lay.cu), i(lay.n_seqs()), i(lay.heads), i(lay.max_len), Arg::F32(scale)],
    );
}

/// rotary_{forward,backward}_T(out, in, positions, n_tokens, n_heads, head_dim,
/// first_row_stride, second_row_stride, scale) — forward: (out, x, …, x_row_stride,
/// out_row_stride); backward: (dx, dout, …, dx_row_stride, dout_row_stride).
#[allow(clippy::too_many_arguments)]
fn launch_rotary(
    emu: &Emulator,
    name: &str,
    shape: Shape,
    first: Arg,
    second: Arg,
    positions: &[i32],
    heads: usize,
    hd: usize,
    first_stride: usize,
    second_stride: usize,
    scale: f32,
) {
    emu.run(
        name,
        shape,
        &[
            first,
            second,
            ptr(positions),
            i(positions.len()),
            i(heads),
            i(hd),
            i(first_stride),
            i(second_stride),
            Arg::F32(scale),
        ],
    );
}

/// dropout_{forward,backward}_T(out, in, p, seed, offset, n), flat_config(n, 4, 32).
#[allow(clippy::too_many_arguments)]
fn launch_dropout(
    emu: &Emulator,
    name: &str,
    shape: Shape,
    out: Arg,
    input: Arg,
    p: f32,
    seed: u64,
    offset: u64,
    n: usize,
) {
    emu.run(name, shape, &[out, input, Arg::F32(p), Arg::U64(seed), Arg::U64(offset), long(n)]);
}

// ---------------------------------------------------------------------------------------
// Coverage
// ---------------------------------------------------------------------------------------

#[test]
fn every_attention_rotary_and_dropout_kernel_is_covered_here() {
    kernel_emu::schedules("every_attention_rotary_and_dropout_kernel_is_covered_here", |emu| {
        let have: BTreeSet<String> = emu
            .kernels()
            .into_iter()
            .filter(|(m, _)| ["attention", "rotary", "dropout"].contains(&m.as_str()))
            .map(|(_, n)| n)
            .collect();
        let mut want = BTreeSet::new();
        for suf in ["f32", "f16", "bf16"] {
            for k in [
                "attn_pack",
                "attn_unpack",
                "attn_softmax_forward",
                "attn_softmax_backward",
                "rotary_forward",
                "rotary_backward",
                "dropout_forward",
                "dropout_backward",
            ] {
                want.insert(format!("{k}_{suf}"));
            }
        }
        assert_eq!(have, want, "the kernels of attention.cu, rotary.cu and dropout.cu are not those this file tests");
        // The argument kinds the launchers pass (a mismatch also fails every launch below).
        for suf in ["f32", "f16", "bf16"] {
            for (k, kinds) in [
                ("attn_pack", "PPPIIIII"),
                ("attn_unpack", "PPPIIIIII"),
                ("attn_softmax_forward", "PPPIIIF"),
                ("attn_softmax_backward", "PPPPIIIF"),
                ("rotary_forward", "PPPIIIIIF"),
                ("rotary_backward", "PPPIIIIIF"),
                ("dropout_forward", "PPFUUL"),
                ("dropout_backward", "PPFUUL"),
            ] {
                assert_eq!(emu.kernel_kinds(&format!("{k}_{suf}")).as_deref(), Some(kinds), "{k}_{suf}");
            }
        }
    });
}

// ---------------------------------------------------------------------------------------
// attn_pack / attn_unpack
// ---------------------------------------------------------------------------------------

/// Lengths 5, 70, 1, 33 (one token, shorter and longer than a warp and than two warps),
/// 2 heads of odd dimension 15: 8 400 padded elements, more than one pass of the
/// one-SM grid (32 blocks · 256 threads).
fn pack_layout() -> Layout {
    Layout::new(&[5, 70, 1, 33], 2, 15)
}

/// Every element of the padded blocks `dst` is the source element `src(token, column)`
/// of its valid row, or exactly 0 in a padded row.
fn expect_padded<T: Element>(what: &str, dst: &[T], lay: &Layout, src: impl Fn(usize, usize) -> f32) {
    assert_eq!(dst.len(), lay.padded_len());
    for s in 0..lay.n_seqs() {
        for h in 0..lay.heads {
            for r in 0..lay.max_len {
                for dd in 0..lay.hd {
                    let got = dst[lay.padded_index(s, h, r, dd)].to_f32();
                    let want = if r < lay.len(s) { src(lay.start(s) + r, h * lay.hd + dd) } else { 0.0 };
                    assert!(got == want, "{what}: padded [{s},{h},{r},{dd}] = {got}, want {want}");
                }
            }
        }
    }
}

fn pack_case<T: Element>(seed: u64) {
    kernel_emu::schedules("attn_pack", |emu| {
        let lay = pack_layout();
        let (n, w) = (lay.tokens(), lay.width());
        let mut rng = TestRng::new(seed);
        let src: Vec<T> = randn(&mut rng, n * w, 1.0);
        let qkv: Vec<T> = randn(&mut rng, n * 3 * w, 1.0);
        for sms in [H100_SMS, TINY_SMS] {
            let shape = flat_shape(lay.padded_len(), 1, 32, sms);
            let what = format!("attn_pack_{} ({sms} SMs)", T::SUFFIX);
            // As the launcher packs q, k, v: [tokens, H·d] tensors, row stride H·d.
            let mut dst = guarded(nan_buf::<T>(lay.padded_len()));
            launch_pack(emu, shape, &mut dst, &src, &lay, w);
            expect_padded(&what, unguard(&what, &dst, lay.padded_len()), &lay, |t, c| src[t * w + c].to_f32());
            if sms == TINY_SMS {
                assert_several_passes(shape, 1, lay.padded_len());
                // The k column slice of a fused [tokens, 3·H·d] QKV buffer (the ABI allows it).
                let mut dst = guarded(nan_buf::<T>(lay.padded_len()));
                launch_pack(emu, shape, &mut dst, &qkv[w..], &lay, 3 * w);
                let dst = unguard(&what, &dst, lay.padded_len());
                expect_padded(&format!("{what} fused-QKV k slice"), dst, &lay, |t, c| qkv[t * 3 * w + w + c].to_f32());
            }
        }
        println!("attn_pack_{}: bit-exact, padded rows 0", T::SUFFIX);
    });
}

#[test]
fn attn_pack_scatters_packed_tokens_into_zero_padded_head_blocks_f32() {
    pack_case::<f32>(11);
}
#[test]
fn attn_pack_scatters_packed_tokens_into_zero_padded_head_blocks_f16() {
    pack_case::<f16>(12);
}
#[test]
fn attn_pack_scatters_packed_tokens_into_zero_padded_head_blocks_bf16() {
    pack_case::<bf16>(13);
}

fn unpack_case<T: Element>(seed: u64) {
    kernel_emu::schedules("attn_unpack", |emu| {
        let lay = pack_layout();
        let (n, w) = (lay.tokens(), lay.width());
        let mut rng = TestRng::new(seed);
        // Padded blocks; the padded rows hold NaN, which the kernel must ignore.
        let mut src: Vec<T> = randn(&mut rng, lay.padded_len(), 1.0);
        for s in 0..lay.n_seqs() {
            for h in 0..lay.heads {
                for r in lay.len(s)..lay.max_len {
                    for dd in 0..lay.hd {
                        src[lay.padded_index(s, h, r, dd)] = T::from_f32(f32::NAN);
                    }
                }
            }
        }
        // (token, column) -> the padded source element.
        let mut from = vec![usize::MAX; n * w];
        for s in 0..lay.n_seqs() {
            for h in 0..lay.heads {
                for r in 0..lay.len(s) {
                    for dd in 0..lay.hd {
                        from[(lay.start(s) + r) * w + h * lay.hd + dd] = lay.padded_index(s, h, r, dd);
                    }
                }
            }
        }
        assert!(from.iter().all(|&e| e != usize::MAX));
        let old: Vec<T> = randn(&mut rng, n * w, 1.0);
        let grad3: Vec<T> = randn(&mut rng, n * 3 * w, 1.0);
        for sms in [H100_SMS, TINY_SMS] {
            let shape = flat_shape(lay.padded_len(), 1, 32, sms);
            let what = format!("attn_unpack_{} ({sms} SMs)", T::SUFFIX);
            // WRITE (the forward's output), row stride H·d: every element written.
            let mut dst = guarded(nan_buf::<T>(n * w));
            launch_unpack(emu, shape, &mut dst, &src, &lay, w, false);
            unguard(&what, &dst, n * w);
            for (e, &f) in from.iter().enumerate() {
                assert!(dst[e].to_f32() == src[f].to_f32(), "{what} write: element {e} = {}", dst[e].to_f32());
            }
            if sms == H100_SMS {
                // ACCUMULATE (the gradients): old + src, in fp32, rounded once.
                let mut dst = guarded(old.clone());
                launch_unpack(emu, shape, &mut dst, &src, &lay, w, true);
                unguard(&what, &dst, n * w);
                for (e, &f) in from.iter().enumerate() {
                    let want = T::from_f32(old[e].to_f32() + src[f].to_f32()).to_f32();
                    assert!(
                        dst[e].to_f32() == want,
                        "{what} accumulate: element {e} = {}, want {want}",
                        dst[e].to_f32()
                    );
                }
                continue;
            }
            assert_several_passes(shape, 1, lay.padded_len());
            // ACCUMULATE into the v slice of a fused [tokens, 3·H·d] gradient: the other
            // columns are not touched.
            let mut g = guarded(grad3.clone());
            launch_unpack(emu, shape, &mut g[2 * w..], &src, &lay, 3 * w, true);
            unguard(&what, &g, n * 3 * w);
            for t in 0..n {
                for c in 0..3 * w {
                    let e = t * 3 * w + c;
                    let want = if c >= 2 * w {
                        T::from_f32(grad3[e].to_f32() + src[from[t * w + c - 2 * w]].to_f32()).to_f32()
                    } else {
                        grad3[e].to_f32()
                    };
                    assert!(g[e].to_f32() == want, "{what} fused slice: token {t} column {c} = {}", g[e].to_f32());
                }
            }
        }
        println!("attn_unpack_{}: bit-exact (write, accumulate, strided slice)", T::SUFFIX);
    });
}

#[test]
fn attn_unpack_gathers_head_blocks_and_accumulates_f32() {
    unpack_case::<f32>(21);
}
#[test]
fn attn_unpack_gathers_head_blocks_and_accumulates_f16() {
    unpack_case::<f16>(22);
}
#[test]
fn attn_unpack_gathers_head_blocks_and_accumulates_bf16() {
    unpack_case::<bf16>(23);
}

// ---------------------------------------------------------------------------------------
// Masked softmax
// ---------------------------------------------------------------------------------------

/// Lengths 5, 70, 1, 33 in 2 heads: rows of 1, < 32, > 32 and > 64 valid entries.
fn softmax_layout() -> Layout {
    Layout::new(&[5, 70, 1, 33], 2, 1)
}

/// Random fp32 scores, NaN outside the valid blocks (the kernels must not read them).
/// Sequence 3's scores sit near 270, so that scale·S ≈ 100 and exp overflows fp32
/// unless the row maximum is subtracted.
fn random_scores(rng: &mut TestRng, lay: &Layout) -> Vec<f32> {
    let mut scores = vec![f32::NAN; lay.probs_len()];
    for s in 0..lay.n_seqs() {
        let (mean, std) = if s == 3 { (270.0, 5.0) } else { (0.0, 3.0) };
        for h in 0..lay.heads {
            for r in 0..lay.len(s) {
                for j in 0..lay.len(s) {
                    scores[lay.score_index(s, h, r, j)] = (mean + std * rng.normal()) as f32;
                }
            }
        }
    }
    scores
}

/// f64 masked softmax of `scale·scores` (0 outside the valid blocks).
fn softmax_reference(scores: &[f32], lay: &Layout, scale: f32) -> Vec<f64> {
    let mut p = vec![0f64; lay.probs_len()];
    for s in 0..lay.n_seqs() {
        let len = lay.len(s);
        for h in 0..lay.heads {
            for r in 0..len {
                let row = lay.score_index(s, h, r, 0);
                let x: Vec<f64> = (0..len).map(|j| scale as f64 * scores[row + j] as f64).collect();
                let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = x.iter().map(|v| (v - m).exp()).sum();
                for j in 0..len {
                    p[row + j] = (x[j] - m).exp() / sum;
                }
            }
        }
    }
    p
}

/// Per sequence: the relative error of the valid block against `want`, and exact zeros
/// everywhere else. Returns the worst error.
fn expect_score_blocks<T: Element>(what: &str, got: &[T], want: &[f64], lay: &Layout, tol: f64) -> f64 {
    let mut worst = 0f64;
    for s in 0..lay.n_seqs() {
        let (mut g, mut w) = (Vec::new(), Vec::new());
        for h in 0..lay.heads {
            for r in 0..lay.max_len {
                for j in 0..lay.max_len {
                    let e = lay.score_index(s, h, r, j);
                    if r < lay.len(s) && j < lay.len(s) {
                        g.push(got[e].to_f32());
                        w.push(want[e]);
                    } else {
                        let v = got[e].to_f32();
                        assert!(v == 0.0, "{what}: padded [{s},{h},{r},{j}] = {v}, not 0");
                    }
                }
            }
        }
        worst = worst.max(check(&format!("{what} sequence {s} (length {})", lay.len(s)), &g, &w, tol));
    }
    worst
}

fn assert_same<T: Element>(what: &str, a: &[T], b: &[T]) {
    assert_eq!(a.len(), b.len());
    for (e, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(x.to_f32() == y.to_f32(), "{what}: element {e}: {} vs {}", x.to_f32(), y.to_f32());
    }
}

fn softmax_forward_case<T: Element>(seed: u64) {
    kernel_emu::schedules("attn_softmax_forward", |emu| {
        let lay = softmax_layout();
        let mut rng = TestRng::new(seed);
        let scores = random_scores(&mut rng, &lay);
        let scale = 0.37f32;
        let what = format!("attn_softmax_forward_{}", T::SUFFIX);
        let mut probs = guarded(nan_buf::<T>(lay.probs_len()));
        launch_softmax_forward(emu, Shape::of(warp_rows_config(lay.rows())), &mut probs, &scores, &lay, scale);
        let probs = unguard(&what, &probs, lay.probs_len());
        let want = softmax_reference(&scores, &lay, scale);
        expect_score_blocks(&what, probs, &want, &lay, tol::<T>());
        // Any multiple of 32 threads and any grid: 5 blocks of 4 warps stride over the rows.
        let mut again = nan_buf::<T>(lay.probs_len());
        launch_softmax_forward(emu, Shape::flat(5, 128), &mut again, &scores, &lay, scale);
        assert_same(&format!("{what} on a 5×128 grid"), &again, probs);
    });
}

#[test]
fn attn_softmax_forward_masks_and_normalises_rows_f32() {
    softmax_forward_case::<f32>(31);
}
#[test]
fn attn_softmax_forward_masks_and_normalises_rows_f16() {
    softmax_forward_case::<f16>(32);
}
#[test]
fn attn_softmax_forward_masks_and_normalises_rows_bf16() {
    softmax_forward_case::<bf16>(33);
}

fn softmax_backward_case<T: Element>(seed: u64) {
    kernel_emu::schedules("attn_softmax_backward", |emu| {
        let lay = softmax_layout();
        let mut rng = TestRng::new(seed);
        let scale = 0.37f32;
        // Probabilities as the forward makes them (rows summing to 1, rounded to T), and a
        // random upstream gradient; NaN outside the valid blocks of both.
        let p64 = softmax_reference(&random_scores(&mut rng, &lay), &lay, scale);
        let mut probs = nan_buf::<T>(lay.probs_len());
        let mut dprobs = nan_buf::<T>(lay.probs_len());
        for s in 0..lay.n_seqs() {
            for h in 0..lay.heads {
                for r in 0..lay.len(s) {
                    for j in 0..lay.len(s) {
                        let e = lay.score_index(s, h, r, j);
                        probs[e] = T::from_f32(p64[e] as f32);
                        dprobs[e] = T::from_f32(rng.normal() as f32);
                    }
                }
            }
        }
        // dS_ij = c·P_ij·(dP_ij − Σ_k dP_ik·P_ik) in f64 from the T-rounded inputs.
        let mut want = vec![0f64; lay.probs_len()];
        for s in 0..lay.n_seqs() {
            let len = lay.len(s);
            for h in 0..lay.heads {
                for r in 0..len {
                    let row = lay.score_index(s, h, r, 0);
                    let p = |j: usize| probs[row + j].to_f32() as f64;
                    let dp = |j: usize| dprobs[row + j].to_f32() as f64;
                    let dot: f64 = (0..len).map(|j| p(j) * dp(j)).sum();
                    for j in 0..len {
                        want[row + j] = scale as f64 * p(j) * (dp(j) - dot);
                    }
                }
            }
        }
        let what = format!("attn_softmax_backward_{}", T::SUFFIX);
        let shape = Shape::of(warp_rows_config(lay.rows()));
        let mut ds = guarded(nan_buf::<T>(lay.probs_len()));
        launch_softmax_backward(emu, shape, ptr_mut(&mut ds), &probs, ptr(&dprobs), &lay, scale);
        let ds = unguard(&what, &ds, lay.probs_len());
        expect_score_blocks(&what, ds, &want, &lay, tol::<T>());
        // dscores may alias dprobs; on a grid of 5 blocks of 4 warps that stride over the
        // rows (any multiple of 32 threads and any grid).
        let mut inplace = dprobs.clone();
        let alias = ptr_mut(&mut inplace);
        launch_softmax_backward(emu, Shape::flat(5, 128), alias, &probs, alias, &lay, scale);
        assert_same(&format!("{what} with dscores = dprobs on a 5×128 grid"), &inplace, ds);
    });
}

#[test]
fn attn_softmax_backward_matches_the_softmax_jacobian_f32() {
    softmax_backward_case::<f32>(41);
}
#[test]
fn attn_softmax_backward_matches_the_softmax_jacobian_f16() {
    softmax_backward_case::<f16>(42);
}
#[test]
fn attn_softmax_backward_matches_the_softmax_jacobian_bf16() {
    softmax_backward_case::<bf16>(43);
}

// ---------------------------------------------------------------------------------------
// The attention launcher's composition (pack, GEMMs, softmax, unpack) against the CPU
// ---------------------------------------------------------------------------------------

/// The strided-batched GEMM of `batched` in attention.rs, in f64, over `blocks` blocks:
/// `C_b = op(A_b)·op(B_b)`, row-major; a transposed A is stored k×m, a transposed B n×k.
#[allow(clippy::too_many_arguments)]
fn bgemm(blocks: usize, m: usize, n: usize, k: usize, a: &[f64], ta: bool, b: &[f64], tb: bool) -> Vec<f64> {
    let mut c = vec![0f64; blocks * m * n];
    for bl in 0..blocks {
        let (a, b) = (&a[bl * m * k..][..m * k], &b[bl * k * n..][..k * n]);
        for r in 0..m {
            for col in 0..n {
                let mut acc = 0f64;
                for kk in 0..k {
                    let av = if ta { a[kk * m + r] } else { a[r * k + kk] };
                    let bv = if tb { b[col * k + kk] } else { b[kk * n + col] };
                    acc += av * bv;
                }
                c[(bl * m + r) * n + col] = acc;
            }
        }
    }
    c
}

fn f64s<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f32() as f64).collect()
}

/// f64 values rounded to T (a GEMM's output in the compute dtype).
fn round_to<T: Element>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f32(x as f32)).collect()
}

fn attention_pipeline_case<T: Element>(seed: u64) {
    kernel_emu::schedules("attention_pipeline", |emu| {
        let lay = Layout::new(&[5, 17, 1], 2, 7);
        let (n, w, l, hd, blocks) = (lay.tokens(), lay.width(), lay.max_len, lay.hd, lay.n_seqs() * lay.heads);
        let scale = 0.6f64;
        let mut rng = TestRng::new(seed);
        let (q, k, v): (Vec<T>, Vec<T>, Vec<T>) =
            (randn(&mut rng, n * w, 1.0), randn(&mut rng, n * w, 1.0), randn(&mut rng, n * w, 1.0));
        let flat = flat_shape(lay.padded_len(), 1, 32, H100_SMS);
        let rows = Shape::of(warp_rows_config(lay.rows()));
        let pack = |src: &[T]| {
            let mut dst = nan_buf::<T>(lay.padded_len());
            launch_pack(emu, flat, &mut dst, src, &lay, w);
            dst
        };

        // Forward, as `attention` in attention.rs.
        let (qp, kp, vp) = (pack(&q), pack(&k), pack(&v));
        let scores: Vec<f32> =
            bgemm(blocks, l, l, hd, &f64s(&qp), false, &f64s(&kp), true).iter().map(|&x| x as f32).collect();
        let mut probs = nan_buf::<T>(lay.probs_len());
        launch_softmax_forward(emu, rows, &mut probs, &scores, &lay, scale as f32);
        let op_pad: Vec<T> = round_to(&bgemm(blocks, l, hd, l, &f64s(&probs), false, &f64s(&vp), false));
        let mut out = nan_buf::<T>(n * w);
        launch_unpack(emu, flat, &mut out, &op_pad, &lay, w, false);

        // The CPU twin in f64 on the same (rounded) inputs.
        let cu = lay.cu_usize();
        let dims = cpu::attention::AttnDims { n_heads: lay.heads, head_dim: hd };
        let (q64, k64, v64) = (f64s(&q), f64s(&k), f64s(&v));
        let (offs, total) = cpu::attention::prob_offsets(&cu, lay.heads);
        let mut c_out = vec![0f64; n * w];
        let mut c_probs = vec![0f64; total];
        cpu::attention::forward(&mut c_out, &mut c_probs, &q64, &k64, &v64, &cu, dims, scale);
        let what = format!("attention pipeline [{}]", T::SUFFIX);
        check(&format!("{what} output"), &to_f32(&out), &c_out, tol::<T>());
        // Padded probabilities → the CPU's packed blocks (exact zeros elsewhere).
        let mut c_probs_padded = vec![0f64; lay.probs_len()];
        for s in 0..lay.n_seqs() {
            let len = lay.len(s);
            for h in 0..lay.heads {
                for r in 0..len {
                    for j in 0..len {
                        c_probs_padded[lay.score_index(s, h, r, j)] = c_probs[offs[s] + (h * len + r) * len + j];
                    }
                }
            }
        }
        expect_score_blocks(&format!("{what} probabilities"), &probs, &c_probs_padded, &lay, tol::<T>());

        // Backward with gradients on the output and on the probabilities (contact head).
        let dout: Vec<T> = randn(&mut rng, n * w, 1.0);
        let gp_packed: Vec<f64> = randn::<T>(&mut rng, total, 1.0).iter().map(|x| x.to_f32() as f64).collect();
        let mut gp = vec![T::from_f32(0.0); lay.probs_len()];
        for s in 0..lay.n_seqs() {
            let len = lay.len(s);
            for h in 0..lay.heads {
                for r in 0..len {
                    for j in 0..len {
                        gp[lay.score_index(s, h, r, j)] =
                            T::from_f32(gp_packed[offs[s] + (h * len + r) * len + j] as f32);
                    }
                }
            }
        }
        let (dq0, dk0, dv0): (Vec<T>, Vec<T>, Vec<T>) =
            (randn(&mut rng, n * w, 0.3), randn(&mut rng, n * w, 0.3), randn(&mut rng, n * w, 0.3));
        let dop = pack(&dout);
        // dP = g + dO·Vᵀ (beta 1), in T.
        let dp: Vec<T> = round_to(
            &bgemm(blocks, l, l, hd, &f64s(&dop), false, &f64s(&vp), true)
                .iter()
                .zip(&gp)
                .map(|(a, b)| a + b.to_f32() as f64)
                .collect::<Vec<_>>(),
        );
        // dV = Pᵀ·dO
        let dvp: Vec<T> = round_to(&bgemm(blocks, l, hd, l, &f64s(&probs), true, &f64s(&dop), false));
        let mut dv = dv0.clone();
        launch_unpack(emu, flat, &mut dv, &dvp, &lay, w, true);
        // dS, then dQ = dS·K, dK = dSᵀ·Q.
        let mut ds = nan_buf::<T>(lay.probs_len());
        launch_softmax_backward(emu, rows, ptr_mut(&mut ds), &probs, ptr(&dp), &lay, scale as f32);
        let dqp: Vec<T> = round_to(&bgemm(blocks, l, hd, l, &f64s(&ds), false, &f64s(&kp), false));
        let dkp: Vec<T> = round_to(&bgemm(blocks, l, hd, l, &f64s(&ds), true, &f64s(&qp), false));
        let mut dq = dq0.clone();
        launch_unpack(emu, flat, &mut dq, &dqp, &lay, w, true);
        let mut dk = dk0.clone();
        launch_unpack(emu, flat, &mut dk, &dkp, &lay, w, true);

        let (mut cdq, mut cdk, mut cdv) = (f64s(&dq0), f64s(&dk0), f64s(&dv0));
        cpu::attention::backward(
            &mut cdq,
            &mut cdk,
            &mut cdv,
            Some(f64s(&dout).as_slice()),
            Some(gp_packed.as_slice()),
            &c_probs,
            &q64,
            &k64,
            &v64,
            &cu,
            dims,
            scale,
        );
        check(&format!("{what} dq (accumulated)"), &to_f32(&dq), &cdq, tol::<T>());
        check(&format!("{what} dk (accumulated)"), &to_f32(&dk), &cdk, tol::<T>());
        check(&format!("{what} dv (accumulated)"), &to_f32(&dv), &cdv, tol::<T>());
        // The increments alone (the starts are a third of the gradients' size).
        let delta = |a: &[T], b: &[T]| -> Vec<f32> { a.iter().zip(b).map(|(x, y)| x.to_f32() - y.to_f32()).collect() };
        let cdelta = |a: &[f64], b: &[T]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x - y.to_f32() as f64).collect() };
        check(&format!("{what} dq increment"), &delta(&dq, &dq0), &cdelta(&cdq, &dq0), tol::<T>());
        check(&format!("{what} dk increment"), &delta(&dk, &dk0), &cdelta(&cdk, &dk0), tol::<T>());
        check(&format!("{what} dv increment"), &delta(&dv, &dv0), &cdelta(&cdv, &dv0), tol::<T>());
    });
}

#[test]
fn attention_launcher_pipeline_matches_the_cpu_twin_f32() {
    attention_pipeline_case::<f32>(51);
}
#[test]
fn attention_launcher_pipeline_matches_the_cpu_twin_f16() {
    attention_pipeline_case::<f16>(52);
}
#[test]
fn attention_launcher_pipeline_matches_the_cpu_twin_bf16() {
    attention_pipeline_case::<bf16>(53);
}

// ---------------------------------------------------------------------------------------
// Rotary
// ---------------------------------------------------------------------------------------

/// Per-token positions of four crops: windows start at 300, 0, 1020 and 3000 (a crop
/// keeps its true positions).
fn rotary_positions() -> Vec<i32> {
    let mut pos = Vec::new();
    for (start, len) in [(300, 4), (0, 9), (1020, 1), (3000, 5)] {
        pos.extend(start..start + len);
    }
    pos
}

/// (heads, head_dim): odd half dimension, ESM-2 650M's 20×64 (more pairs than the
/// block's 128 threads), the smallest head.
const ROTARY_CASES: [(usize, usize); 3] = [(3, 22), (20, 64), (1, 2)];

/// The rotation of rotary.cu's header in f64 (its fp32 angle, exact sin/cos):
/// forward `(x1·c − x2·s, x2·c + x1·s)·scale`, backward the rotation by −θ. Rows of
/// `x` are `stride` apart; the result is `[tokens, heads·hd]`.
fn rotary_reference(
    x: &[f64],
    stride: usize,
    pos: &[i32],
    heads: usize,
    hd: usize,
    scale: f32,
    backward: bool,
) -> Vec<f64> {
    let (half, w) = (hd / 2, heads * hd);
    let mut y = vec![0f64; pos.len() * w];
    for (t, &p) in pos.iter().enumerate() {
        for ii in 0..half {
            let e = (2 * ii) as f32 / hd as f32;
            let inv_freq = 1.0f32 / (10000f64.powf(e as f64) as f32);
            let theta = (p as f32 * inv_freq) as f64;
            let (sn, c) = theta.sin_cos();
            let sn = if backward { -sn } else { sn };
            for h in 0..heads {
                let (j1, j2) = (h * hd + ii, h * hd + ii + half);
                let (x1, x2) = (x[t * stride + j1], x[t * stride + j2]);
                y[t * w + j1] = (x1 * c - x2 * sn) * scale as f64;
                y[t * w + j2] = (x2 * c + x1 * sn) * scale as f64;
            }
        }
    }
    y
}

fn rotary_forward_case<T: Element>(seed: u64) {
    kernel_emu::schedules("rotary_forward", |emu| {
        let pos = rotary_positions();
        let n = pos.len();
        let scale = 0.37f32;
        let name = format!("rotary_forward_{}", T::SUFFIX);
        let mut rng = TestRng::new(seed);
        for (heads, hd) in ROTARY_CASES {
            let w = heads * hd;
            let what = format!("{name} {heads}x{hd}");
            let x: Vec<T> = randn(&mut rng, n * w, 1.0);
            let shape = Shape::of(block_rows_config(n, ROTARY_BLOCK));
            // As the launcher: out, x both [tokens, H·d].
            let mut y = guarded(nan_buf::<T>(n * w));
            launch_rotary(emu, &name, shape, ptr_mut(&mut y), ptr(&x), &pos, heads, hd, w, w, scale);
            let y = unguard(&what, &y, n * w);
            let x64 = f64s(&x);
            let want = rotary_reference(&x64, w, &pos, heads, hd, scale, false);
            check(&what, &to_f32(y), &want, tol::<T>());
            // The CPU twin (f64 arithmetic, its own fp32 angles).
            let mut cpu_y = vec![0f64; n * w];
            let dims = cpu::rotary::RotaryDims { n_heads: heads, head_dim: hd, in_stride: w, out_stride: w };
            cpu::rotary::forward(&mut cpu_y, &x64, &pos, dims, scale as f64);
            check(&format!("{what} vs the CPU twin"), &to_f32(y), &cpu_y, tol::<T>());
            // x as the k column slice of a fused [tokens, 3·H·d] QKV buffer.
            let mut qkv: Vec<T> = randn(&mut rng, n * 3 * w, 1.0);
            for t in 0..n {
                qkv[t * 3 * w + w..][..w].copy_from_slice(&x[t * w..][..w]);
            }
            let mut y2 = nan_buf::<T>(n * w);
            launch_rotary(emu, &name, shape, ptr_mut(&mut y2), ptr(&qkv[w..]), &pos, heads, hd, 3 * w, w, scale);
            assert_same(&format!("{what} from a fused-QKV slice"), &y2, y);
            // In place (out = x, same stride), inside the fused buffer: the other columns
            // are not touched.
            let mut inplace = qkv.clone();
            let at = ptr_mut(&mut inplace[w..]);
            launch_rotary(emu, &name, shape, at, at, &pos, heads, hd, 3 * w, 3 * w, scale);
            for t in 0..n {
                for c in 0..3 * w {
                    let e = t * 3 * w + c;
                    let want = if (w..2 * w).contains(&c) { y[t * w + c - w] } else { qkv[e] };
                    assert!(inplace[e].to_f32() == want.to_f32(), "{what} in place: token {t} column {c}");
                }
            }
            // Any grid and block: 3 blocks stride over the tokens (the angle table is
            // refilled per token), 32 threads stride over the pairs.
            for small in [Shape::flat(3, ROTARY_BLOCK), Shape::flat(2, 32)] {
                let mut y3 = nan_buf::<T>(n * w);
                launch_rotary(emu, &name, small, ptr_mut(&mut y3), ptr(&x), &pos, heads, hd, w, w, scale);
                assert_same(&format!("{what} on grid {:?} block {:?}", small.grid, small.block), &y3, y);
            }
        }
    });
}

#[test]
fn rotary_forward_rotates_with_position_offsets_f32() {
    rotary_forward_case::<f32>(61);
}
#[test]
fn rotary_forward_rotates_with_position_offsets_f16() {
    rotary_forward_case::<f16>(62);
}
#[test]
fn rotary_forward_rotates_with_position_offsets_bf16() {
    rotary_forward_case::<bf16>(63);
}

fn rotary_backward_case<T: Element>(seed: u64) {
    kernel_emu::schedules("rotary_backward", |emu| {
        let pos = rotary_positions();
        let n = pos.len();
        let scale = 0.37f32;
        let name = format!("rotary_backward_{}", T::SUFFIX);
        let mut rng = TestRng::new(seed);
        for (heads, hd) in ROTARY_CASES {
            let w = heads * hd;
            let what = format!("{name} {heads}x{hd}");
            let dout: Vec<T> = randn(&mut rng, n * w, 1.0);
            let dx0: Vec<T> = randn(&mut rng, n * w, 1.0);
            let shape = Shape::of(block_rows_config(n, ROTARY_BLOCK));
            // As the launcher: dx, dout both [tokens, H·d]; dx accumulates.
            let mut dx = guarded(dx0.clone());
            launch_rotary(emu, &name, shape, ptr_mut(&mut dx), ptr(&dout), &pos, heads, hd, w, w, scale);
            let dx = unguard(&what, &dx, n * w);
            let d64 = f64s(&dout);
            let delta = rotary_reference(&d64, w, &pos, heads, hd, scale, true);
            let total: Vec<f64> = delta.iter().zip(&dx0).map(|(d, o)| d + o.to_f32() as f64).collect();
            check(&format!("{what} (accumulated)"), &to_f32(dx), &total, tol::<T>());
            let got_delta: Vec<f32> = dx.iter().zip(&dx0).map(|(a, b)| a.to_f32() - b.to_f32()).collect();
            check(&format!("{what} increment"), &got_delta, &delta, tol::<T>());
            // The CPU twin (f64).
            let mut cpu_dx = f64s(&dx0);
            let dims = cpu::rotary::RotaryDims { n_heads: heads, head_dim: hd, in_stride: w, out_stride: w };
            cpu::rotary::backward(&mut cpu_dx, &d64, &pos, dims, scale as f64);
            check(&format!("{what} vs the CPU twin"), &to_f32(dx), &cpu_dx, tol::<T>());
            // Different row strides: dout the second half of a [tokens, 2·H·d] buffer, dx the
            // k slice of a fused [tokens, 3·H·d] gradient (other columns not touched).
            let mut dout2: Vec<T> = randn(&mut rng, n * 2 * w, 1.0);
            let mut g: Vec<T> = randn(&mut rng, n * 3 * w, 1.0);
            for t in 0..n {
                dout2[t * 2 * w + w..][..w].copy_from_slice(&dout[t * w..][..w]);
                g[t * 3 * w + w..][..w].copy_from_slice(&dx0[t * w..][..w]);
            }
            let g0 = g.clone();
            launch_rotary(
                emu,
                &name,
                shape,
                ptr_mut(&mut g[w..]),
                ptr(&dout2[w..]),
                &pos,
                heads,
                hd,
                3 * w,
                2 * w,
                scale,
            );
            for t in 0..n {
                for c in 0..3 * w {
                    let e = t * 3 * w + c;
                    let want = if (w..2 * w).contains(&c) { dx[t * w + c - w] } else { g0[e] };
                    assert!(g[e].to_f32() == want.to_f32(), "{what} strided: token {t} column {c}");
                }
            }
            // Any grid and block.
            for small in [Shape::flat(3, ROTARY_BLOCK), Shape::flat(2, 32)] {
                let mut dx3 = dx0.clone();
                launch_rotary(emu, &name, small, ptr_mut(&mut dx3), ptr(&dout), &pos, heads, hd, w, w, scale);
                assert_same(&format!("{what} on grid {:?} block {:?}", small.grid, small.block), &dx3, dx);
            }
        }
    });
}

#[test]
fn rotary_backward_accumulates_the_inverse_rotation_f32() {
    rotary_backward_case::<f32>(71);
}
#[test]
fn rotary_backward_accumulates_the_inverse_rotation_f16() {
    rotary_backward_case::<f16>(72);
}
#[test]
fn rotary_backward_accumulates_the_inverse_rotation_bf16() {
    rotary_backward_case::<bf16>(73);
}

/// Head dimensions the kernels do not take (odd, > 512): they leave the output alone.
#[test]
fn rotary_kernels_do_nothing_for_unsupported_head_dims() {
    kernel_emu::schedules("rotary_kernels_do_nothing_for_unsupported_head_dims", |emu| {
        let pos = vec![3, 4, 900];
        let n = pos.len();
        let mut rng = TestRng::new(81);
        for (heads, hd) in [(3usize, 7usize), (1, 514)] {
            let w = heads * hd;
            let x: Vec<f32> = randn(&mut rng, n * w, 1.0);
            let shape = Shape::of(block_rows_config(n, ROTARY_BLOCK));
            let mut y = nan_buf::<f32>(n * w);
            launch_rotary(emu, "rotary_forward_f32", shape, ptr_mut(&mut y), ptr(&x), &pos, heads, hd, w, w, 1.0);
            assert!(y.iter().all(|v| v.is_nan()), "rotary_forward with head_dim {hd} wrote");
            let old: Vec<f32> = randn(&mut rng, n * w, 1.0);
            let mut dx = old.clone();
            launch_rotary(emu, "rotary_backward_f32", shape, ptr_mut(&mut dx), ptr(&x), &pos, heads, hd, w, w, 1.0);
            assert_eq!(dx, old, "rotary_backward with head_dim {hd} wrote");
        }
    });
}

// ---------------------------------------------------------------------------------------
// Dropout
// ---------------------------------------------------------------------------------------

/// 33 001 elements: a partial last group of 4, and more than one pass of the one-SM
/// grid (32 blocks · 256 threads · 4 elements).
const DROPOUT_N: usize = 33_001;
/// Seed and offset with both 32-bit halves non-zero.
const DROPOUT_SEED: u64 = 0x1234_5678_9ABC_DEF0;
const DROPOUT_OFFSET: u64 = 0x0000_0003_0000_0011;

fn dropout_forward_case<T: Element>(seed: u64) {
    kernel_emu::schedules("dropout_forward", |emu| {
        let name = format!("dropout_forward_{}", T::SUFFIX);
        let n = DROPOUT_N;
        let p = 0.3f32;
        let mut rng = TestRng::new(seed);
        let x: Vec<T> = randn(&mut rng, n, 1.0);
        let s = cpu::philox::dropout_scale(p);
        let keep: Vec<bool> =
            (0..n).map(|e| cpu::philox::dropout_keep(e as u64, p, DROPOUT_SEED, DROPOUT_OFFSET)).collect();
        let kept = keep.iter().filter(|&&k| k).count();
        assert!((22_500..23_700).contains(&kept), "implausible keep count {kept} of {n}");
        let want: Vec<f32> =
            (0..n).map(|e| if keep[e] { T::from_f32(x[e].to_f32() * s).to_f32() } else { 0.0 }).collect();
        for sms in [H100_SMS, TINY_SMS] {
            let shape = flat_shape(n, 4, 32, sms);
            if sms == TINY_SMS {
                assert_several_passes(shape, 4, n);
            }
            let mut y = guarded(nan_buf::<T>(n));
            launch_dropout(emu, &name, shape, ptr_mut(&mut y), ptr(&x), p, DROPOUT_SEED, DROPOUT_OFFSET, n);
            unguard(&name, &y, n);
            for e in 0..n {
                assert!(
                    y[e].to_f32() == want[e],
                    "{name} ({sms} SMs): element {e} = {}, want {}",
                    y[e].to_f32(),
                    want[e]
                );
            }
        }
        // The CPU op itself (f32).
        if T::SUFFIX == "f32" {
            let x32 = to_f32(&x);
            let mut cpu_y = vec![f32::NAN; n];
            cpu::dropout::apply(&mut cpu_y, &x32, p, DROPOUT_SEED, DROPOUT_OFFSET, false);
            assert_eq!(cpu_y, want, "the CPU dropout disagrees with philox::dropout_keep");
        }
        // In place (y = x).
        let mut inplace = x.clone();
        let at = ptr_mut(&mut inplace);
        launch_dropout(emu, &name, flat_shape(n, 4, 32, TINY_SMS), at, at, p, DROPOUT_SEED, DROPOUT_OFFSET, n);
        assert!(inplace.iter().zip(&want).all(|(a, b)| a.to_f32() == *b), "{name} in place");
        println!("{name}: bit-identical to the CPU Philox mask ({kept}/{n} kept)");

        // Other (seed, offset) streams draw other masks; each 32-bit half counts.
        let small = 1001;
        let mask = |seed: u64, offset: u64| -> Vec<bool> {
            let mut y = nan_buf::<T>(small);
            let ones = vec![T::from_f32(1.0); small];
            launch_dropout(
                emu,
                &name,
                flat_shape(small, 4, 32, H100_SMS),
                ptr_mut(&mut y),
                ptr(&ones),
                p,
                seed,
                offset,
                small,
            );
            y.iter()
                .enumerate()
                .map(|(e, v)| {
                    let k = cpu::philox::dropout_keep(e as u64, p, seed, offset);
                    assert!(
                        v.to_f32() == if k { T::from_f32(s).to_f32() } else { 0.0 },
                        "{name} seed {seed:#x} offset {offset:#x}: element {e}"
                    );
                    k
                })
                .collect()
        };
        let base = mask(DROPOUT_SEED, DROPOUT_OFFSET);
        for (sd, off) in [
            (DROPOUT_SEED ^ 1, DROPOUT_OFFSET),
            (DROPOUT_SEED ^ (1 << 32), DROPOUT_OFFSET),
            (DROPOUT_SEED, DROPOUT_OFFSET ^ 1),
            (DROPOUT_SEED, DROPOUT_OFFSET ^ (1 << 32)),
        ] {
            let other = mask(sd, off);
            let differ = base.iter().zip(&other).filter(|(a, b)| a != b).count();
            assert!(differ > 300, "seed {sd:#x} offset {off:#x}: only {differ} of {small} mask bits differ");
        }
        // p = 0 keeps everything unscaled; p = 1 drops everything (and writes no NaN).
        for (pp, all_kept) in [(0.0f32, true), (1.0, false)] {
            let mut y = nan_buf::<T>(small);
            launch_dropout(
                emu,
                &name,
                flat_shape(small, 4, 32, H100_SMS),
                ptr_mut(&mut y),
                ptr(&x[..small]),
                pp,
                DROPOUT_SEED,
                DROPOUT_OFFSET,
                small,
            );
            for e in 0..small {
                let want = if all_kept { x[e].to_f32() } else { 0.0 };
                assert!(y[e].to_f32() == want, "{name} p = {pp}: element {e} = {}", y[e].to_f32());
            }
        }
    });
}

#[test]
fn dropout_forward_draws_the_cpu_philox_mask_bit_for_bit_f32() {
    dropout_forward_case::<f32>(91);
}
#[test]
fn dropout_forward_draws_the_cpu_philox_mask_bit_for_bit_f16() {
    dropout_forward_case::<f16>(92);
}
#[test]
fn dropout_forward_draws_the_cpu_philox_mask_bit_for_bit_bf16() {
    dropout_forward_case::<bf16>(93);
}

fn dropout_backward_case<T: Element>(seed: u64) {
    kernel_emu::schedules("dropout_backward", |emu| {
        let name = format!("dropout_backward_{}", T::SUFFIX);
        let n = DROPOUT_N;
        let p = 0.15f32;
        let mut rng = TestRng::new(seed);
        let dy: Vec<T> = randn(&mut rng, n, 1.0);
        let dx0: Vec<T> = randn(&mut rng, n, 1.0);
        let s = cpu::philox::dropout_scale(p);
        // dx += keep·dy·s in fp32, rounded once.
        let want: Vec<f32> = (0..n)
            .map(|e| {
                let keep = cpu::philox::dropout_keep(e as u64, p, DROPOUT_SEED, DROPOUT_OFFSET);
                T::from_f32(dx0[e].to_f32() + if keep { dy[e].to_f32() * s } else { 0.0 }).to_f32()
            })
            .collect();
        for sms in [H100_SMS, TINY_SMS] {
            let mut dx = guarded(dx0.clone());
            launch_dropout(
                emu,
                &name,
                flat_shape(n, 4, 32, sms),
                ptr_mut(&mut dx),
                ptr(&dy),
                p,
                DROPOUT_SEED,
                DROPOUT_OFFSET,
                n,
            );
            unguard(&name, &dx, n);
            for e in 0..n {
                assert!(
                    dx[e].to_f32() == want[e],
                    "{name} ({sms} SMs): element {e} = {}, want {}",
                    dx[e].to_f32(),
                    want[e]
                );
            }
        }
        if T::SUFFIX == "f32" {
            let mut cpu_dx = to_f32(&dx0);
            cpu::dropout::apply(&mut cpu_dx, &to_f32(&dy), p, DROPOUT_SEED, DROPOUT_OFFSET, true);
            assert_eq!(cpu_dx, want, "the CPU dropout backward disagrees with philox::dropout_keep");
        }
        println!("{name}: bit-identical accumulation of the CPU Philox mask");
    });
}

#[test]
fn dropout_backward_accumulates_through_the_same_mask_f32() {
    dropout_backward_case::<f32>(101);
}
#[test]
fn dropout_backward_accumulates_through_the_same_mask_f16() {
    dropout_backward_case::<f16>(102);
}
#[test]
fn dropout_backward_accumulates_through_the_same_mask_bf16() {
    dropout_backward_case::<bf16>(103);
}
