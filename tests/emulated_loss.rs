//! The loss, reduction, gradient-norm, cast and elementwise kernels
//! (`kernels/{cross_entropy,bce,grad_norm,cast,elementwise}.cu`) — every
//! `extern "C"` entry point, every dtype it is instantiated for — run on the CPU through
//! the host emulation of `tests/kernel_emu`, with the argument lists and launch shapes of
//! their Rust launchers (`src/backend/cuda/{cross_entropy,bce,elementwise,optim,storage}.rs`),
//! against the engine's CPU implementation in f64 or a naive f64 reference.
//!
//! * Shapes that depend on the device's multiprocessor count (`flat_config`, the
//!   optimizer's `capped_config`) are rebuilt here for 132 SMs (H100) and for 1–2 SMs, so
//!   that the grid-stride loops run several passes.
//! * The vectorised maps of `common.cuh` run on 16-byte-aligned buffers and on buffers
//!   deliberately misaligned by one element, with lengths that are not multiples of the
//!   vector width (the scalar tail runs).
//! * Outputs start as NaN, buffers a kernel ACCUMULATES into start from random values
//!   (old + delta is checked), and every output buffer carries guard bytes on both sides
//!   that must come back untouched.
//! * Tolerances (docs/ARCHITECTURE.md): relative L2 error ≤ 1e-5 for f32 against an f64 reference,
//!   ≤ 1e-2 for f16/bf16 against a reference computed from the inputs rounded to the
//!   dtype; NaN never passes. Casts are bit-exact against `half` (round to nearest even),
//!   and the single-operation maps (add, accumulate, scale, fill) are bit-exact against
//!   the same fp32 operation rounded once.
//! * Sizes are kept small because every emulated CUDA thread is a fiber on one CPU core
//!   (the 5,000-class head runs 5 rows of 1,024-thread blocks, the 33-token vocabulary
//!   37 rows in f32).

mod common;
mod kernel_emu;

use std::collections::BTreeSet;

use common::{rel_err, TestRng};
use half::{bf16, f16};
use kernel_emu::{ptr, to_elem, to_f32, Element, Emulator, Shape};
use qf_engine::backend::cpu;
use qf_engine::backend::cuda::launch::{block_rows_config, single_thread_config, vec_width, Arg, BLOCK, NULL};
use qf_engine::ops::cross_entropy::IGNORE_INDEX;
use qf_engine::tensor::DType;

/// A `long long` argument.
fn long(n: usize) -> Arg {
    Arg::I64(n as i64)
}

/// An `int` argument from a size.
fn int(n: usize) -> anyhow::Result<Arg> {
    Ok(Arg::I32(qf_engine::backend::cuda::launch::int(n)?))
}

/// One emulated launch (the emulator serialises launches across the tests' threads).
fn launch(emu: &Emulator, name: &str, shape: Shape, args: &[Arg]) {
    emu.run(name, shape, args);
}

/// Multiprocessors of an H100 SXM.
const H100_SMS: usize = 132;

// ---------------------------------------------------------------------------------
// Launch shapes: the launchers' formulas, for a given multiprocessor count.
// ---------------------------------------------------------------------------------

/// `launch::flat_config(dev, n, per_thread, blocks_per_sm)` on a device with `sms`
/// multiprocessors (also the optimizer's `capped_config(dev, ceil(n / 256), per_sm)`).
fn flat_shape(n: usize, per_thread: usize, blocks_per_sm: usize, sms: usize) -> Shape {
    let blocks = n.div_ceil(BLOCK as usize * per_thread.max(1));
    let grid = blocks.min(sms * blocks_per_sm).clamp(1, (1 << 31) - 1);
    Shape::flat(grid as u32, BLOCK)
}

/// `elementwise::map_config`: `flat_config(dev, n, vec_width(T), 32)`.
fn map_shape<T: Element>(n: usize, sms: usize) -> Shape {
    flat_shape(n, vec_width(dtype_of::<T>()), 32, sms)
}

/// `CudaStorage::to_dtype` (cast.cu): `flat_config(dev, n, 4, 32)`.
fn cast_shape(n: usize, sms: usize) -> Shape {
    flat_shape(n, 4, 32, sms)
}

/// `cross_entropy::row_config`: one block per row, 1,024 threads above 4,096 classes.
fn ce_shape(rows: usize, classes: usize) -> Shape {
    Shape::of(block_rows_config(rows, if classes > 4096 { 1024 } else { 256 }))
}

/// `bce_with_logits`: `flat_config(dev, n, 1, 8)`.
fn bce_shape(n: usize, sms: usize) -> Shape {
    flat_shape(n, 1, 8, sms)
}

/// `backend::cuda::grad_norm::sum_squares`: `flat_config(dev, n, 1, 8)`.
fn sum_squares_shape(n: usize, sms: usize) -> Shape {
    flat_shape(n, 1, 8, sms)
}

/// `sum_f32` as `cross_entropy` launches it: `block_rows_config(1, 256)`, one block.
fn one_block() -> Shape {
    Shape::of(block_rows_config(1, 256))
}

fn dtype_of<T: Element>() -> DType {
    match T::SUFFIX {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        s => panic!("unknown suffix {s}"),
    }
}

/// The tolerance of a dtype (docs/ARCHITECTURE.md, numerics).
fn tol<T: Element>() -> f64 {
    if T::SUFFIX == "f32" {
        1e-5
    } else {
        1e-2
    }
}

fn kname<T: Element>(name: &str) -> String {
    format!("{name}_{}", T::SUFFIX)
}

/// Values rounded to `T` and back: the inputs a `T` kernel sees.
fn rounded<T: Element>(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| T::from_f32(x).to_f32()).collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Relative L2 error (infinite on NaN), printed and checked against `tol`.
fn check_close(what: &str, got: &[f32], want: &[f64], tol: f64) -> f64 {
    let e = rel_err(got, &f32s(want));
    eprintln!("rel err {e:.3e} (tol {tol:.0e}): {what}");
    assert!(e <= tol, "{what}: relative L2 error {e:.3e} > {tol:.0e}");
    e
}

/// Scalar version of [`check_close`].
fn check_scalar(what: &str, got: f32, want: f64, tol: f64) -> f64 {
    check_close(what, &[got], &[want], tol)
}

/// Bits of a value of the compute type (f16/bf16 → f32 is exact and injective).
fn bits<T: Element>(x: T) -> u32 {
    x.to_f32().to_bits()
}

/// Bit-exact comparison (NaN matches NaN).
fn check_bits<T: Element>(what: &str, got: &[T], want: &[T]) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = bits(g) == bits(w) || (g.to_f32().is_nan() && w.to_f32().is_nan());
        assert!(ok, "{what}: element {i}: got {} ({:#x}), want {} ({:#x})", g.to_f32(), bits(g), w.to_f32(), bits(w));
    }
}

// ---------------------------------------------------------------------------------
// A host buffer whose data starts `misalign` elements past a 16-byte boundary, with
// guard bytes before and after it.
// ---------------------------------------------------------------------------------

const GUARD_BYTE: u8 = 0xA5;
const GUARD_ELEMS: usize = 8;

struct Buf<T: Copy> {
    store: Vec<T>,
    off: usize,
    len: usize,
}

impl<T: Copy> Buf<T> {
    fn new(data: &[T], misalign: usize) -> Self {
        let size = std::mem::size_of::<T>();
        assert!(size <= 16 && 16 % size == 0);
        let per16 = 16 / size;
        assert!(misalign < per16, "a misalignment of {misalign} elements is aligned again");
        let total = data.len() + 2 * GUARD_ELEMS + per16 + misalign;
        let mut store: Vec<T> = Vec::with_capacity(total);
        // Safety: T is a plain number type (f32, f16, bf16, i32): any bytes are a value.
        unsafe {
            std::ptr::write_bytes(store.as_mut_ptr(), GUARD_BYTE, total);
            store.set_len(total);
        }
        let base = store.as_ptr() as usize;
        let first = (GUARD_ELEMS..GUARD_ELEMS + per16).find(|i| (base + i * size) % 16 == 0).expect("no aligned slot");
        let off = first + misalign;
        store[off..off + data.len()].copy_from_slice(data);
        let b = Buf { store, off, len: data.len() };
        assert_eq!(b.aligned16(), misalign == 0);
        b
    }

    fn aligned16(&self) -> bool {
        (self.get().as_ptr() as usize) % 16 == 0
    }

    fn get(&self) -> &[T] {
        &self.store[self.off..self.off + self.len]
    }

    fn arg(&mut self) -> Arg {
        Arg::Ptr(self.store[self.off..].as_mut_ptr() as u64)
    }

    /// The bytes around the data are untouched.
    fn check_guards(&self, what: &str) {
        let size = std::mem::size_of::<T>();
        // Safety: reading the plain bytes of plain number types.
        let bytes = unsafe { std::slice::from_raw_parts(self.store.as_ptr() as *const u8, self.store.len() * size) };
        let (lo, hi) = (self.off * size, (self.off + self.len) * size);
        for (i, &b) in bytes.iter().enumerate() {
            if i < lo || i >= hi {
                assert_eq!(
                    b,
                    GUARD_BYTE,
                    "{what}: a write outside the buffer (byte {} from its start)",
                    i as isize - lo as isize
                );
            }
        }
    }
}

impl<T: Element> Buf<T> {
    /// `n` NaNs (the poison of an output).
    fn nan(n: usize) -> Self {
        Buf::new(&vec![T::from_f32(f32::NAN); n], 0)
    }

    fn f32s(&self) -> Vec<f32> {
        to_f32(self.get())
    }
}

fn normals(rng: &mut TestRng, n: usize, std: f64) -> Vec<f32> {
    (0..n).map(|_| (rng.normal() * std) as f32).collect()
}

fn uniforms(rng: &mut TestRng, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    (0..n).map(|_| (lo + (hi - lo) * rng.uniform()) as f32).collect()
}

// ---------------------------------------------------------------------------------
// Every kernel of these files is tested here, with the argument kinds of its launcher.
// ---------------------------------------------------------------------------------

/// (module, kernel without dtype suffix, per-dtype?, argument kinds).
const KERNELS: &[(&str, &str, bool, &str)] = &[
    ("cross_entropy", "cross_entropy_forward_backward", true, "PPPPPIIIP"),
    ("cross_entropy", "cross_entropy_backward", true, "PPPPIIIPP"),
    ("cross_entropy", "label_weight_sum", false, "PPPIII"),
    ("bce", "bce_with_logits_forward_backward", true, "PPPPPLF"),
    ("bce", "bce_with_logits_backward", true, "PPPPLFP"),
    ("cross_entropy", "sum_f32", false, "PPL"),
    ("grad_norm", "sum_squares_f32", false, "PPPL"),
    ("grad_norm", "clip_and_scale", false, "PPPPFFP"),
    ("cast", "cast_f32_to_f16", false, "PPL"),
    ("cast", "cast_f32_to_bf16", false, "PPL"),
    ("cast", "cast_f16_to_f32", false, "PPL"),
    ("cast", "cast_bf16_to_f32", false, "PPL"),
    ("elementwise", "add", true, "PPPL"),
    ("elementwise", "accumulate", true, "PPL"),
    ("elementwise", "scale", true, "PPFL"),
    ("elementwise", "scale_by_device_scalar", true, "PPL"),
    ("elementwise", "tanh_forward", true, "PPL"),
    ("elementwise", "tanh_backward", true, "PPPL"),
    ("elementwise", "fill", true, "PFL"),
];

#[test]
fn every_kernel_of_these_files_is_covered_with_its_launcher_abi() {
    kernel_emu::schedules("every_kernel_of_these_files_is_covered_with_its_launcher_abi", |emu| {
        let modules: BTreeSet<&str> = KERNELS.iter().map(|k| k.0).collect();
        let mut expected = BTreeSet::new();
        for &(module, name, per_dtype, kinds) in KERNELS {
            let names: Vec<String> = if per_dtype {
                ["f32", "f16", "bf16"].iter().map(|s| format!("{name}_{s}")).collect()
            } else {
                vec![name.to_string()]
            };
            for n in names {
                assert_eq!(emu.kernel_kinds(&n).as_deref(), Some(kinds), "argument kinds of `{n}`");
                expected.insert((module.to_string(), n));
            }
        }
        let registered: BTreeSet<(String, String)> =
            emu.kernels().into_iter().filter(|(m, _)| modules.contains(m.as_str())).collect();
        assert_eq!(registered, expected, "the kernels of {modules:?} and the ones this file tests differ");
    });
}

// ---------------------------------------------------------------------------------
// cross_entropy.cu
// ---------------------------------------------------------------------------------

/// Per-row losses, dlogits for an upstream gradient of 1, and Σ w over the kept rows,
/// in f64; cross-checked against the engine's CPU implementation.
fn ce_reference(logits: &[f32], labels: &[i32], weights: Option<&[f32]>, classes: usize) -> (Vec<f64>, Vec<f64>, f64) {
    let w_all = weights.unwrap_or(&[]);
    let wsum = cpu::cross_entropy::weight_sum(labels, w_all);
    let inv = if wsum > 0.0 { 1.0 / wsum } else { 0.0 };
    let mut loss = vec![0.0; labels.len()];
    let mut d = vec![0.0; logits.len()];
    for (r, &y) in labels.iter().enumerate() {
        if y == IGNORE_INDEX {
            continue;
        }
        let y = y as usize;
        let x = &logits[r * classes..(r + 1) * classes];
        let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let lse = m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        let coef = weights.map_or(1.0, |w| w[y] as f64) * inv;
        loss[r] = coef * (lse - x[y] as f64);
        for j in 0..classes {
            d[r * classes + j] = coef * ((x[j] as f64 - lse).exp() - if j == y { 1.0 } else { 0.0 });
        }
    }
    let mut d_cpu = vec![0.0f64; logits.len()];
    let total = cpu::cross_entropy::forward_backward::<f64>(&mut d_cpu, &f64s(logits), labels, w_all, classes);
    let sum: f64 = loss.iter().sum();
    assert!((total - sum).abs() <= 1e-12 * (1.0 + sum.abs()), "reference: CPU loss {total} vs {sum}");
    let worst = d.iter().zip(&d_cpu).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst <= 1e-12, "reference: CPU dlogits differ by {worst}");
    (loss, d, wsum)
}

/// Random cross-entropy inputs (logits already rounded to `T`): row 2 (and row
/// `rows / 2 + 1` from 7 rows on) ignored, row 1 with −inf logits (every third class but the label),
/// the first and last classes used as labels, and (when `weighted`) class weights in
/// [0.2, 2) with one used class weighted 0.
fn ce_inputs<T: Element>(
    rng: &mut TestRng,
    rows: usize,
    classes: usize,
    weighted: bool,
) -> (Vec<f32>, Vec<i32>, Option<Vec<f32>>) {
    assert!(rows >= 5);
    let mut labels: Vec<i32> = (0..rows).map(|_| rng.below(classes) as i32).collect();
    labels[0] = 0;
    labels[rows - 1] = classes as i32 - 1;
    labels[2] = IGNORE_INDEX;
    if rows >= 7 {
        labels[rows / 2 + 1] = IGNORE_INDEX;
    }
    let mut logits = rounded::<T>(&normals(rng, rows * classes, 2.5));
    let y1 = labels[1] as usize;
    for j in (0..classes).step_by(3).filter(|&j| j != y1) {
        logits[classes + j] = f32::NEG_INFINITY;
    }
    let weights = weighted.then(|| {
        let mut w = uniforms(rng, classes, 0.2, 2.0);
        w[labels[3] as usize] = 0.0;
        w
    });
    (logits, labels, weights)
}

/// The launcher's sequence: `label_weight_sum`, `cross_entropy_forward_backward_T` (no
/// dlogits), `sum_f32` of the row losses (into a non-zero accumulator here), and
/// `cross_entropy_backward_T` with an upstream gradient in device memory.
fn run_cross_entropy<T: Element>(emu: &Emulator, rows: usize, classes: usize, weighted: bool, seed: u64) {
    let tag = format!("cross_entropy {rows}x{classes} {} weighted={weighted}", T::SUFFIX);
    let mut rng = TestRng::new(seed);
    let (logits, labels, weights) = ce_inputs::<T>(&mut rng, rows, classes, weighted);
    let (want_loss, want_d, want_wsum) = ce_reference(&logits, &labels, weights.as_deref(), classes);
    let x: Vec<T> = to_elem(&logits);
    let w_arg = weights.as_ref().map_or(NULL, |w| ptr(w));

    let mut wsum = Buf::<f32>::nan(1);
    launch(
        emu,
        "label_weight_sum",
        one_block(),
        &[wsum.arg(), ptr(&labels), w_arg, int(rows).unwrap(), int(classes).unwrap(), Arg::I32(IGNORE_INDEX)],
    );
    wsum.check_guards("label_weight_sum");
    check_scalar(&format!("{tag}: label_weight_sum"), wsum.get()[0], want_wsum, 1e-5);

    let mut loss_rows = Buf::<f32>::nan(rows);
    launch(
        emu,
        &kname::<T>("cross_entropy_forward_backward"),
        ce_shape(rows, classes),
        &[
            loss_rows.arg(),
            NULL,
            ptr(&x),
            ptr(&labels),
            w_arg,
            int(rows).unwrap(),
            int(classes).unwrap(),
            Arg::I32(IGNORE_INDEX),
            wsum.arg(),
        ],
    );
    loss_rows.check_guards("loss_rows");
    check_close(&format!("{tag}: loss_rows"), loss_rows.get(), &want_loss, tol::<T>());
    for (r, &y) in labels.iter().enumerate() {
        if y == IGNORE_INDEX {
            assert_eq!(loss_rows.get()[r], 0.0, "{tag}: ignored row {r} has a loss");
        }
    }

    let old = 0.5 + rng.uniform() as f32;
    let mut loss = Buf::new(&[old], 0);
    launch(emu, "sum_f32", one_block(), &[loss.arg(), loss_rows.arg(), long(rows)]);
    loss.check_guards("loss");
    check_scalar(
        &format!("{tag}: old + mean loss"),
        loss.get()[0],
        old as f64 + want_loss.iter().sum::<f64>(),
        tol::<T>(),
    );

    // Upstream gradient: a loss scale for f16, a plain factor otherwise.
    let dl = if T::SUFFIX == "f16" { 4096.0f32 } else { 0.75 };
    let dloss = [dl];
    let mut d = Buf::<T>::nan(rows * classes);
    launch(
        emu,
        &kname::<T>("cross_entropy_backward"),
        ce_shape(rows, classes),
        &[
            d.arg(),
            ptr(&x),
            ptr(&labels),
            w_arg,
            int(rows).unwrap(),
            int(classes).unwrap(),
            Arg::I32(IGNORE_INDEX),
            wsum.arg(),
            ptr(&dloss),
        ],
    );
    d.check_guards("dlogits");
    let got = d.f32s();
    let want: Vec<f64> = want_d.iter().map(|v| v * dl as f64).collect();
    check_close(&format!("{tag}: dlogits (dL = {dl})"), &got, &want, tol::<T>());
    for (r, &y) in labels.iter().enumerate() {
        if y == IGNORE_INDEX {
            assert!(
                got[r * classes..(r + 1) * classes].iter().all(|&v| v == 0.0),
                "{tag}: ignored row {r} has a gradient"
            );
        }
    }
    // −inf logits have probability 0: their gradient is exactly 0.
    for j in (0..classes).filter(|&j| logits[classes + j] == f32::NEG_INFINITY) {
        assert_eq!(got[classes + j], 0.0, "{tag}: gradient of a −inf logit");
    }
    if T::SUFFIX == "f16" {
        // dL·w/Σw is applied in fp32 before the one rounding: gradients whose unscaled
        // value would be an f16 subnormal keep full f16 precision once scaled.
        let mut checked = 0;
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let unscaled = w / dl as f64;
            if unscaled.abs() < 6.1e-5 && w.abs() > 1e-3 {
                let e = ((g as f64 - w) / w).abs();
                assert!(e < 2e-3, "{tag}: loss-scaled gradient {i}: {g} vs {w} (relative error {e:.2e})");
                checked += 1;
            }
        }
        assert!(checked > 0, "{tag}: no loss-scaled small gradients to check");
    }
}

#[test]
fn cross_entropy_esm_vocab_37_rows() {
    kernel_emu::schedules("cross_entropy_esm_vocab_37_rows", |emu| {
        run_cross_entropy::<f32>(emu, 37, 33, false, 11);
        run_cross_entropy::<f16>(emu, 11, 33, true, 12);
        run_cross_entropy::<bf16>(emu, 11, 33, true, 13);
    });
}

#[test]
fn cross_entropy_pfam_head_5000_classes() {
    kernel_emu::schedules("cross_entropy_pfam_head_5000_classes", |emu| {
        run_cross_entropy::<f32>(emu, 5, 5000, true, 21);
        run_cross_entropy::<f16>(emu, 5, 5000, true, 22);
        run_cross_entropy::<bf16>(emu, 5, 5000, false, 23);
    });
}

/// The fused kernel with dlogits aliasing logits (in place), rows grid-strided over
/// fewer blocks than rows (any grid is correct), a row whose logits are all −inf but
/// the label's (loss and gradient exactly 0), a batch whose rows are all ignored
/// (loss and gradient 0, not NaN), and labels outside [0, classes) (NaN loss and
/// gradient rows, NaN weight sum).
fn run_cross_entropy_edges<T: Element>(emu: &Emulator, seed: u64) {
    let tag = format!("cross_entropy edges {}", T::SUFFIX);
    let (rows, classes) = (7usize, 100usize);
    let shape = Shape::flat(3, 64);
    let mut rng = TestRng::new(seed);
    let labels: Vec<i32> = vec![5, IGNORE_INDEX, 99, 0, 42, 17, 63];
    let mut logits = rounded::<T>(&normals(&mut rng, rows * classes, 2.0));
    for j in (0..classes).filter(|&j| j != 42) {
        logits[4 * classes + j] = f32::NEG_INFINITY;
    }
    let weights = uniforms(&mut rng, classes, 0.5, 1.5);
    let (want_loss, want_d, want_wsum) = ce_reference(&logits, &labels, Some(&weights), classes);

    let mut wsum = Buf::<f32>::nan(1);
    let lws_args = |wsum: Arg, labels: &[i32], rows: usize| {
        [wsum, ptr(labels), ptr(&weights), int(rows).unwrap(), int(classes).unwrap(), Arg::I32(IGNORE_INDEX)]
    };
    launch(emu, "label_weight_sum", one_block(), &lws_args(wsum.arg(), &labels, rows));
    check_scalar(&format!("{tag}: label_weight_sum"), wsum.get()[0], want_wsum, 1e-5);

    // In place: dlogits = logits.
    let mut x = Buf::new(&to_elem::<T>(&logits), 0);
    let mut loss_rows = Buf::<f32>::nan(rows);
    let xa = x.arg();
    let ce_args = |loss: Arg, d: Arg, x: Arg, labels: &[i32], rows: usize, ws: Arg| {
        [loss, d, x, ptr(labels), ptr(&weights), int(rows).unwrap(), int(classes).unwrap(), Arg::I32(IGNORE_INDEX), ws]
    };
    launch(
        emu,
        &kname::<T>("cross_entropy_forward_backward"),
        shape,
        &ce_args(loss_rows.arg(), xa, xa, &labels, rows, wsum.arg()),
    );
    x.check_guards("in-place dlogits");
    loss_rows.check_guards("loss_rows");
    check_close(&format!("{tag}: loss_rows (in place, grid-strided)"), loss_rows.get(), &want_loss, tol::<T>());
    check_close(&format!("{tag}: dlogits (in place, grid-strided)"), &x.f32s(), &want_d, tol::<T>());
    assert_eq!(loss_rows.get()[4], 0.0, "{tag}: a row certain of its label has no loss");
    assert!(x.f32s()[4 * classes..5 * classes].iter().all(|&v| v == 0.0), "{tag}: … and no gradient");

    // Every row ignored: Σw = 0, loss and gradients 0.
    let ignored = vec![IGNORE_INDEX; 3];
    let xi: Vec<T> = to_elem(&logits[..3 * classes]);
    let mut ws0 = Buf::<f32>::nan(1);
    launch(emu, "label_weight_sum", one_block(), &lws_args(ws0.arg(), &ignored, 3));
    assert_eq!(ws0.get()[0], 0.0, "{tag}: Σw of an all-ignored batch");
    let mut l0 = Buf::<f32>::nan(3);
    let mut d0 = Buf::<T>::nan(3 * classes);
    launch(
        emu,
        &kname::<T>("cross_entropy_forward_backward"),
        shape,
        &ce_args(l0.arg(), d0.arg(), ptr(&xi), &ignored, 3, ws0.arg()),
    );
    assert!(l0.get().iter().all(|&v| v == 0.0), "{tag}: all-ignored loss rows {:?}", l0.get());
    assert!(d0.f32s().iter().all(|&v| v == 0.0), "{tag}: all-ignored dlogits");
    let mut d0b = Buf::<T>::nan(3 * classes);
    let one = [1.0f32];
    launch(
        emu,
        &kname::<T>("cross_entropy_backward"),
        shape,
        &[
            d0b.arg(),
            ptr(&xi),
            ptr(&ignored),
            ptr(&weights),
            int(3).unwrap(),
            int(classes).unwrap(),
            Arg::I32(IGNORE_INDEX),
            ws0.arg(),
            ptr(&one),
        ],
    );
    assert!(d0b.f32s().iter().all(|&v| v == 0.0), "{tag}: all-ignored backward dlogits");

    // Labels outside [0, classes): NaN loss and gradient rows, NaN Σw.
    let bad: Vec<i32> = vec![3, classes as i32, 7, -1, 42];
    let xb: Vec<T> = to_elem(&logits[..5 * classes]);
    let mut wsb = Buf::<f32>::nan(1);
    launch(emu, "label_weight_sum", one_block(), &lws_args(wsb.arg(), &bad, 5));
    assert!(wsb.get()[0].is_nan(), "{tag}: Σw with a bad label is {}", wsb.get()[0]);
    // The valid rows, normalised by their own Σw, are still right.
    let valid_ws = [(weights[3] + weights[7] + weights[42])];
    let mut lb = Buf::<f32>::nan(5);
    let mut db = Buf::<T>::nan(5 * classes);
    launch(
        emu,
        &kname::<T>("cross_entropy_forward_backward"),
        shape,
        &ce_args(lb.arg(), db.arg(), ptr(&xb), &bad, 5, ptr(&valid_ws)),
    );
    let (gl, gd) = (lb.get().to_vec(), db.f32s());
    for r in [1usize, 3] {
        assert!(gl[r].is_nan(), "{tag}: loss of a row labelled {} is {}", bad[r], gl[r]);
        assert!(gd[r * classes..(r + 1) * classes].iter().all(|v| v.is_nan()), "{tag}: gradient of a bad row");
    }
    let good = [0usize, 2, 4];
    let good_labels: Vec<i32> = good.iter().map(|&r| bad[r]).collect();
    let good_logits: Vec<f32> = good.iter().flat_map(|&r| logits[r * classes..(r + 1) * classes].to_vec()).collect();
    let (wl, wd, _) = ce_reference(&good_logits, &good_labels, Some(&weights), classes);
    let got_l: Vec<f32> = good.iter().map(|&r| gl[r]).collect();
    let got_d: Vec<f32> = good.iter().flat_map(|&r| gd[r * classes..(r + 1) * classes].to_vec()).collect();
    check_close(&format!("{tag}: valid rows beside bad labels (loss)"), &got_l, &wl, tol::<T>());
    check_close(&format!("{tag}: valid rows beside bad labels (dlogits)"), &got_d, &wd, tol::<T>());
}

#[test]
fn cross_entropy_in_place_grid_strided_and_edge_rows() {
    kernel_emu::schedules("cross_entropy_in_place_grid_strided_and_edge_rows", |emu| {
        run_cross_entropy_edges::<f32>(emu, 31);
        run_cross_entropy_edges::<f16>(emu, 32);
        run_cross_entropy_edges::<bf16>(emu, 33);
    });
}

#[test]
fn label_weight_sum_many_rows_and_no_weights() {
    kernel_emu::schedules("label_weight_sum_many_rows_and_no_weights", |emu| {
        let mut rng = TestRng::new(41);
        let (rows, classes) = (1001usize, 5000usize);
        let labels: Vec<i32> =
            (0..rows).map(|_| if rng.below(5) == 0 { IGNORE_INDEX } else { rng.below(classes) as i32 }).collect();
        let weights = uniforms(&mut rng, classes, 0.1, 3.0);
        for weighted in [true, false] {
            let mut out = Buf::<f32>::nan(1);
            let w_arg = if weighted { ptr(&weights) } else { NULL };
            launch(
                emu,
                "label_weight_sum",
                one_block(),
                &[out.arg(), ptr(&labels), w_arg, int(rows).unwrap(), int(classes).unwrap(), Arg::I32(IGNORE_INDEX)],
            );
            out.check_guards("label_weight_sum");
            let want = cpu::cross_entropy::weight_sum(&labels, if weighted { &weights } else { &[] });
            check_scalar(&format!("label_weight_sum {rows} rows weighted={weighted}"), out.get()[0], want, 1e-5);
            if !weighted {
                assert_eq!(out.get()[0], want as f32, "a count is exact");
            }
        }
    });
}

// ---------------------------------------------------------------------------------
// bce.cu
// ---------------------------------------------------------------------------------

/// (Σ m·ℓ·inv, dlogits for dL = 1) in f64; cross-checked against the CPU implementation.
fn bce_reference(logits: &[f32], targets: &[f32], mask: Option<&[f32]>) -> (f64, Vec<f64>) {
    let ones = vec![1.0f32; logits.len()];
    let mask = mask.unwrap_or(&ones);
    let count = mask.iter().filter(|&&m| m != 0.0).count();
    let inv = if count > 0 { 1.0 / count as f64 } else { 0.0 };
    let mut loss = 0.0;
    let mut d = vec![0.0; logits.len()];
    for i in 0..logits.len() {
        let m = mask[i] as f64;
        if m == 0.0 {
            continue;
        }
        let (x, t) = (logits[i] as f64, targets[i] as f64);
        loss += m * (x.max(0.0) - x * t + (-x.abs()).exp().ln_1p()) * inv;
        d[i] = m * (1.0 / (1.0 + (-x).exp()) - t) * inv;
    }
    let mut d_cpu = vec![0.0f64; logits.len()];
    let total = cpu::bce::forward_backward::<f64>(&mut d_cpu, &f64s(logits), &f64s(targets), &f64s(mask));
    assert!((total - loss).abs() <= 1e-12 * (1.0 + loss.abs()), "reference: CPU loss {total} vs {loss}");
    let worst = d.iter().zip(&d_cpu).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst <= 1e-12, "reference: CPU dlogits differ by {worst}");
    (loss, d)
}

/// Contact-map-like inputs: logits N(0, 3²) with some ±60, targets mostly 0/1 (some
/// soft), mask 0/1 with ~25 % zeros whose logits/targets are NaN/±inf placeholders.
fn bce_inputs<T: Element>(rng: &mut TestRng, n: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut logits = normals(rng, n, 3.0);
    let mut targets: Vec<f32> = (0..n).map(|_| if rng.below(3) == 0 { 1.0 } else { 0.0 }).collect();
    let mut mask: Vec<f32> = (0..n).map(|_| if rng.below(4) == 0 { 0.0 } else { 1.0 }).collect();
    for i in 0..n {
        match i % 97 {
            5 => logits[i] = 60.0,
            6 => logits[i] = -60.0,
            7 => targets[i] = 0.3,
            8 => mask[i] = 0.5,
            _ => {}
        }
        if mask[i] == 0.0 {
            match i % 3 {
                0 => logits[i] = f32::NAN,
                1 => logits[i] = f32::INFINITY,
                _ => targets[i] = f32::NAN,
            }
        }
    }
    (rounded::<T>(&logits), targets, mask)
}

fn inv_count(mask: &[f32]) -> f32 {
    // As the launcher: 1 / (number of non-zero mask entries), in f32.
    let count = mask.iter().filter(|&&m| m != 0.0).count();
    if count > 0 {
        1.0 / count as f32
    } else {
        0.0
    }
}

/// The launcher's forward (loss only, into a non-zero accumulator) and backward (upstream
/// gradient in device memory).
fn run_bce<T: Element>(emu: &Emulator, n: usize, sms: usize, seed: u64) {
    let tag = format!("bce n={n} sms={sms} {}", T::SUFFIX);
    let mut rng = TestRng::new(seed);
    let (logits, targets, mask) = bce_inputs::<T>(&mut rng, n);
    let (want_loss, want_d) = bce_reference(&logits, &targets, Some(&mask));
    let x: Vec<T> = to_elem(&logits);
    let inv = inv_count(&mask);
    let shape = bce_shape(n, sms);

    let old = rng.uniform() as f32 + 0.25;
    let mut loss = Buf::new(&[old], 0);
    launch(
        emu,
        &kname::<T>("bce_with_logits_forward_backward"),
        shape,
        &[loss.arg(), NULL, ptr(&x), ptr(&targets), ptr(&mask), long(n), Arg::F32(inv)],
    );
    loss.check_guards("bce loss");
    check_scalar(&format!("{tag}: old + loss"), loss.get()[0], old as f64 + want_loss, tol::<T>());

    let dl = if T::SUFFIX == "f16" { 65536.0f32 } else { 1.5 };
    let dloss = [dl];
    let mut d = Buf::<T>::nan(n);
    launch(
        emu,
        &kname::<T>("bce_with_logits_backward"),
        shape,
        &[d.arg(), ptr(&x), ptr(&targets), ptr(&mask), long(n), Arg::F32(inv), ptr(&dloss)],
    );
    d.check_guards("bce dlogits");
    let got = d.f32s();
    let want: Vec<f64> = want_d.iter().map(|v| v * dl as f64).collect();
    check_close(&format!("{tag}: dlogits (dL = {dl})"), &got, &want, tol::<T>());
    for i in (0..n).filter(|&i| mask[i] == 0.0) {
        assert_eq!(got[i].to_bits(), 0, "{tag}: masked entry {i} has gradient {}", got[i]);
    }
}

#[test]
fn bce_contact_map_h100_grid() {
    kernel_emu::schedules("bce_contact_map_h100_grid", |emu| {
        run_bce::<f32>(emu, 41 * 41, H100_SMS, 51);
        run_bce::<f16>(emu, 41 * 41, H100_SMS, 52);
        run_bce::<bf16>(emu, 41 * 41, H100_SMS, 53);
    });
}

#[test]
fn bce_contact_map_one_sm_grid_strided() {
    kernel_emu::schedules("bce_contact_map_one_sm_grid_strided", |emu| {
        // 8 blocks of 256 threads over 5,001 entries: three passes.
        run_bce::<f32>(emu, 5001, 1, 54);
        run_bce::<f16>(emu, 5001, 1, 55);
        run_bce::<bf16>(emu, 5001, 1, 56);
    });
}

/// The fused forward with dlogits aliasing logits (in place) and a null mask, and the
/// backward with a null upstream gradient (= 1) and a null mask.
fn run_bce_fused_in_place<T: Element>(emu: &Emulator, seed: u64) {
    let tag = format!("bce fused in place, no mask, {}", T::SUFFIX);
    let n = 1001;
    let mut rng = TestRng::new(seed);
    let logits = rounded::<T>(&normals(&mut rng, n, 4.0));
    let targets: Vec<f32> = (0..n).map(|_| rng.below(2) as f32).collect();
    let (want_loss, want_d) = bce_reference(&logits, &targets, None);
    let inv = 1.0 / n as f32;
    let shape = bce_shape(n, 2);

    let old = -0.75f32;
    let mut loss = Buf::new(&[old], 0);
    let mut x = Buf::new(&to_elem::<T>(&logits), 0);
    let xa = x.arg();
    launch(
        emu,
        &kname::<T>("bce_with_logits_forward_backward"),
        shape,
        &[loss.arg(), xa, xa, ptr(&targets), NULL, long(n), Arg::F32(inv)],
    );
    x.check_guards("in-place dlogits");
    check_scalar(&format!("{tag}: old + loss"), loss.get()[0], old as f64 + want_loss, tol::<T>());
    check_close(&format!("{tag}: dlogits"), &x.f32s(), &want_d, tol::<T>());

    let xs: Vec<T> = to_elem(&logits);
    let mut d = Buf::<T>::nan(n);
    launch(
        emu,
        &kname::<T>("bce_with_logits_backward"),
        shape,
        &[d.arg(), ptr(&xs), ptr(&targets), NULL, long(n), Arg::F32(inv), NULL],
    );
    d.check_guards("bce dlogits");
    check_close(&format!("{tag}: backward, dloss = null"), &d.f32s(), &want_d, tol::<T>());
}

#[test]
fn bce_fused_in_place_without_mask() {
    kernel_emu::schedules("bce_fused_in_place_without_mask", |emu| {
        run_bce_fused_in_place::<f32>(emu, 57);
        run_bce_fused_in_place::<f16>(emu, 58);
        run_bce_fused_in_place::<bf16>(emu, 59);
    });
}

// ---------------------------------------------------------------------------------
// cross_entropy.cu: sum_f32 (the mean loss of the per-row losses)
// ---------------------------------------------------------------------------------

#[test]
fn sum_f32_accumulates_over_one_block_and_flat_grids() {
    kernel_emu::schedules("sum_f32_accumulates_over_one_block_and_flat_grids", |emu| {
        let mut rng = TestRng::new(61);
        let big = uniforms(&mut rng, 4099, 0.0, 2.0);
        let cases: [(usize, Shape, &str); 5] = [
            (37, one_block(), "one block (cross_entropy)"),
            (4099, one_block(), "one block, 17 passes"),
            (4099, flat_shape(4099, 1, 8, H100_SMS), "flat grid, 132 SMs"),
            (4099, flat_shape(4099, 1, 8, 2), "flat grid, 2 SMs, 2 passes"),
            (0, one_block(), "empty"),
        ];
        for (n, shape, what) in cases {
            let x = &big[..n];
            let old = rng.normal() as f32;
            let mut out = Buf::new(&[old], 0);
            launch(emu, "sum_f32", shape, &[out.arg(), ptr(x), long(n)]);
            out.check_guards("sum_f32");
            let want = old as f64 + x.iter().map(|&v| v as f64).sum::<f64>();
            check_scalar(&format!("sum_f32 n={n} {what}"), out.get()[0], want, 1e-5);
            if n == 0 {
                assert_eq!(out.get()[0], old, "an empty sum changes the accumulator");
            }
        }
    });
}

// ---------------------------------------------------------------------------------
// grad_norm.cu
// ---------------------------------------------------------------------------------

fn sum_squares(emu: &Emulator, out: &mut Buf<f32>, nonfinite: Arg, x: &[f32], sms: usize) {
    launch(emu, "sum_squares_f32", sum_squares_shape(x.len(), sms), &[out.arg(), nonfinite, ptr(x), long(x.len())]);
}

/// f64 `clip_and_scale`: (coef, skip, norm).
fn clip_reference(s: f64, nonfinite: bool, max_norm: f64, inv: f64) -> (f64, i32, f64) {
    let norm = s.sqrt() * inv;
    let clip = if max_norm > 0.0 { (max_norm / (norm + 1e-6)).min(1.0) } else { 1.0 };
    (inv * clip, (nonfinite || !s.is_finite()) as i32, norm)
}

const POISON_I32: i32 = 0x5a5a_5a5a;

/// Runs `clip_and_scale` (launcher shape, or `shape`) and checks it against the f64
/// formula.
#[allow(clippy::too_many_arguments)]
fn check_clip(
    emu: &Emulator,
    what: &str,
    shape: Shape,
    s: f32,
    nonfinite: Option<i32>,
    max_norm: f32,
    inv: f32,
    with_norm: bool,
) {
    let sumsq = [s];
    let nf = nonfinite.map(|v| [v]);
    let mut coef = Buf::<f32>::nan(1);
    let mut skip = Buf::new(&[POISON_I32], 0);
    let mut norm = Buf::<f32>::nan(1);
    launch(
        emu,
        "clip_and_scale",
        shape,
        &[
            coef.arg(),
            ptr(&sumsq),
            nf.as_ref().map_or(NULL, |v| ptr(v)),
            skip.arg(),
            Arg::F32(max_norm),
            Arg::F32(inv),
            if with_norm { norm.arg() } else { NULL },
        ],
    );
    coef.check_guards("coef");
    skip.check_guards("skip");
    norm.check_guards("norm");
    let (want_coef, want_skip, want_norm) =
        clip_reference(s as f64, nonfinite.unwrap_or(0) != 0, max_norm as f64, inv as f64);
    assert_eq!(skip.get()[0], want_skip, "clip_and_scale {what}: skip");
    if want_norm.is_finite() {
        check_scalar(&format!("clip_and_scale {what}: coef"), coef.get()[0], want_coef, 1e-5);
        if with_norm {
            check_scalar(&format!("clip_and_scale {what}: norm"), norm.get()[0], want_norm, 1e-5);
        }
    } else if with_norm {
        // A non-finite S skips the step (the coefficient is then unused); the logged
        // norm reports it: inf for inf, NaN for NaN.
        let g = norm.get()[0];
        assert_eq!(g.is_nan(), want_norm.is_nan(), "clip_and_scale {what}: norm {g}");
        assert!(g.is_nan() || g == f32::INFINITY, "clip_and_scale {what}: norm {g}");
    }
    if !with_norm {
        assert!(norm.get()[0].is_nan(), "clip_and_scale {what}: a null norm_out, yet something was written");
    }
}

/// The optimizer's sequence: Σ g² over several gradient tensors into one accumulator
/// (launcher grid for 132 SMs and for 1 SM), then `clip_and_scale`.
#[test]
fn grad_norm_sum_squares_over_tensors_then_clip_and_scale() {
    kernel_emu::schedules("grad_norm_sum_squares_over_tensors_then_clip_and_scale", |emu| {
        let mut rng = TestRng::new(71);
        let scale = 1024.0; // loss-scaled gradients
        let tensors: Vec<(Vec<f32>, usize)> = vec![
            (normals(&mut rng, 4099, scale), H100_SMS),
            (normals(&mut rng, 3001, 0.1 * scale), 1),
            (normals(&mut rng, 37, scale), 1),
        ];
        let old = (rng.uniform() * 1e6) as f32;
        let mut acc = Buf::new(&[old], 0);
        let mut nonfinite = Buf::new(&[0i32], 0);
        let mut want = old as f64;
        for (i, (g, sms)) in tensors.iter().enumerate() {
            let nf = nonfinite.arg();
            sum_squares(emu, &mut acc, nf, g, *sms);
            want += g.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
            check_scalar(&format!("sum_squares after tensor {i} (n={}, {sms} SMs)", g.len()), acc.get()[0], want, 1e-5);
        }
        acc.check_guards("sumsq");
        nonfinite.check_guards("nonfinite");
        assert_eq!(nonfinite.get()[0], 0, "finite gradients flagged");
        let s = acc.get()[0];
        let inv = 1.0 / scale as f32;
        let norm = (want.sqrt() * inv as f64) as f32;
        check_clip(
            emu,
            "from the sums (clipping)",
            Shape::of(single_thread_config()),
            s,
            Some(0),
            0.5 * norm,
            inv,
            true,
        );
        check_clip(
            emu,
            "from the sums (no clipping)",
            Shape::of(single_thread_config()),
            s,
            Some(0),
            2.0 * norm,
            inv,
            true,
        );
    });
}

#[test]
fn grad_norm_sum_squares_flags_a_single_inf_or_nan() {
    kernel_emu::schedules("grad_norm_sum_squares_flags_a_single_inf_or_nan", |emu| {
        let mut rng = TestRng::new(72);
        let n = 5001; // 1 SM: 8 blocks of 256 threads, three passes
        let clean = normals(&mut rng, n, 1.0);
        let want_clean: f64 = clean.iter().map(|&v| (v as f64).powi(2)).sum();

        // Clean data: the flag stays 0; a flag already set is never cleared; a null flag is fine.
        for (start, what) in [(0, "clean"), (1, "already set")] {
            let mut acc = Buf::new(&[0.0f32], 0);
            let mut nf = Buf::new(&[start], 0);
            let a = nf.arg();
            sum_squares(emu, &mut acc, a, &clean, 1);
            assert_eq!(nf.get()[0], start, "sum_squares {what}: flag");
            check_scalar(&format!("sum_squares {what}"), acc.get()[0], want_clean, 1e-5);
        }
        let mut acc = Buf::new(&[0.0f32], 0);
        sum_squares(emu, &mut acc, NULL, &clean, 1);
        check_scalar("sum_squares, null flag", acc.get()[0], want_clean, 1e-5);

        // One bad element, at the first, a middle and the last position (the last pass).
        for (pos, bad) in [(0, f32::INFINITY), (n / 2, f32::NAN), (n - 1, f32::NEG_INFINITY), (2600, f32::NAN)] {
            let mut x = clean.clone();
            x[pos] = bad;
            let mut acc = Buf::new(&[0.0f32], 0);
            let mut nf = Buf::new(&[0i32], 0);
            let a = nf.arg();
            sum_squares(emu, &mut acc, a, &x, 1);
            nf.check_guards("nonfinite");
            assert_eq!(nf.get()[0], 1, "a single {bad} at {pos} of {n} is not flagged");
            assert!(!acc.get()[0].is_finite(), "Σx² with {bad} is {}", acc.get()[0]);
            check_clip(
                emu,
                &format!("after {bad} at {pos}"),
                Shape::of(single_thread_config()),
                acc.get()[0],
                Some(1),
                1.0,
                1.0,
                true,
            );
        }
        // Finite gradients whose squares overflow: not flagged per element, but S = inf
        // makes clip_and_scale skip the step.
        let mut x = clean.clone();
        x[17] = 3e19;
        let mut acc = Buf::new(&[0.0f32], 0);
        let mut nf = Buf::new(&[0i32], 0);
        let a = nf.arg();
        sum_squares(emu, &mut acc, a, &x, 1);
        assert_eq!(nf.get()[0], 0);
        assert_eq!(acc.get()[0], f32::INFINITY);
        check_clip(
            emu,
            "after an overflowing square",
            Shape::of(single_thread_config()),
            acc.get()[0],
            Some(0),
            1.0,
            1.0,
            true,
        );
    });
}

#[test]
fn grad_norm_clip_and_scale_cases() {
    kernel_emu::schedules("grad_norm_clip_and_scale_cases", |emu| {
        let one = Shape::of(single_thread_config());
        let inv = 1.0 / 65536.0;
        // S = (3·65536)² → unscaled norm 3.
        let s = (3.0f32 * 65536.0).powi(2);
        check_clip(emu, "clipped to 1", one, s, Some(0), 1.0, inv, true);
        check_clip(emu, "below the maximum", one, s, Some(0), 5.0, inv, true);
        check_clip(emu, "max_norm 0: no clipping", one, s, Some(0), 0.0, inv, true);
        check_clip(emu, "negative max_norm: no clipping", one, s, Some(0), -1.0, inv, true);
        check_clip(emu, "zero gradients", one, 0.0, Some(0), 1.0, inv, true);
        check_clip(emu, "overflow flagged", one, s, Some(1), 1.0, inv, true);
        check_clip(emu, "null flag", one, s, None, 1.0, inv, true);
        check_clip(emu, "S = inf, null flag", one, f32::INFINITY, None, 1.0, inv, true);
        check_clip(emu, "S = NaN", one, f32::NAN, Some(0), 1.0, inv, true);
        check_clip(emu, "null norm_out", one, s, Some(0), 1.0, inv, false);
        // Extra threads and blocks do nothing.
        check_clip(emu, "grid 2 × block 64", Shape::flat(2, 64), s, Some(0), 1.0, inv, true);
    });
}

// ---------------------------------------------------------------------------------
// cast.cu
// ---------------------------------------------------------------------------------

/// A half type's bits.
trait HalfBits: Element {
    fn from_bits16(b: u16) -> Self;
    fn to_bits16(self) -> u16;
    fn is_nan16(self) -> bool {
        self.to_f32().is_nan()
    }
}

impl HalfBits for f16 {
    fn from_bits16(b: u16) -> Self {
        f16::from_bits(b)
    }
    fn to_bits16(self) -> u16 {
        self.to_bits()
    }
}

impl HalfBits for bf16 {
    fn from_bits16(b: u16) -> Self {
        bf16::from_bits(b)
    }
    fn to_bits16(self) -> u16 {
        self.to_bits()
    }
}

/// f32 inputs for a cast to `H`: specials (±0, ±inf, NaNs, f32 subnormals, overflow
/// thresholds, ties), for every finite `H` value v: v, the midpoint to the next value (a
/// tie) and the f32 neighbours of that midpoint, and random bit patterns.
fn cast_inputs<H: HalfBits>(rng: &mut TestRng, random: usize) -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001), // signalling NaN
        f32::from_bits(0xffc1_2345),
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        f32::from_bits(1),            // smallest f32 subnormal
        -f32::from_bits(0x0040_0000), // f32 subnormal
        f32::from_bits(0x007f_ffff),
        65504.0,
        65519.99,
        65520.0, // f16: ties to even → inf
        -65520.0,
        70000.0,
        1e5,
        6.103_515_6e-5, // f16 min normal
        5.960_464_5e-8, // f16 min subnormal
        2.980_232_2e-8, // half of it: tie → 0
        2.980_233e-8,   // just above: → min subnormal
        1e-9,
        1.0 + 1.0 / 2048.0, // f16 tie → 1
        1.0 + 3.0 / 2048.0, // f16 tie → 1 + 2^-9
        1.0 + 1.0 / 256.0,  // bf16 tie → 1
        1.0 + 3.0 / 256.0,  // bf16 tie → 1 + 2^-6
        3.389_531_4e38,     // bf16 max
        3.396_178_8e38,     // above the tie past bf16 max → inf
        std::f32::consts::PI,
        -1.0 / 3.0,
    ];
    for b in 0..=u16::MAX {
        let h = H::from_bits16(b);
        let x = h.to_f32();
        if !x.is_finite() {
            continue;
        }
        v.push(x);
        // The next value away from zero (sign-magnitude bits).
        let next = H::from_bits16(b.wrapping_add(1)).to_f32();
        if next.is_finite() {
            let mid = ((x as f64 + next as f64) / 2.0) as f32;
            assert_eq!(mid as f64, (x as f64 + next as f64) / 2.0, "midpoint not representable");
            v.push(mid);
            v.push(f32::from_bits(mid.to_bits() + 1));
            v.push(f32::from_bits(mid.to_bits() - 1));
        }
    }
    v.extend((0..random).map(|_| f32::from_bits(rng.next_u64() as u32)));
    v
}

fn run_cast_from_f32<H: HalfBits>(emu: &Emulator, input: &[f32], sms: usize, mis_in: usize, mis_out: usize) {
    let name = format!("cast_f32_to_{}", H::SUFFIX);
    let n = input.len();
    let inp = Buf::new(input, mis_in);
    let mut out = Buf::new(&vec![H::from_f32(f32::NAN); n], mis_out);
    launch(emu, &name, cast_shape(n, sms), &[out.arg(), ptr(inp.get()), long(n)]);
    out.check_guards(&name);
    let mut exact = 0;
    for (i, (&x, &got)) in input.iter().zip(out.get()).enumerate() {
        if x.is_nan() {
            assert!(got.is_nan16(), "{name}: NaN input {i} ({:#x}) gave {:#x}", x.to_bits(), got.to_bits16());
        } else {
            let want = H::from_f32(x).to_bits16();
            assert_eq!(
                got.to_bits16(),
                want,
                "{name}: element {i}: {x:e} ({:#x}) gave {:#x}, want {want:#x}",
                x.to_bits(),
                got.to_bits16()
            );
            exact += 1;
        }
    }
    eprintln!(
        "{name}: {n} values (sms {sms}, misaligned in/out {mis_in}/{mis_out}): {exact} bit-exact, the rest NaN → NaN"
    );
}

fn run_cast_to_f32<H: HalfBits>(emu: &Emulator, input: &[H], sms: usize, mis_in: usize, mis_out: usize) {
    let name = format!("cast_{}_to_f32", H::SUFFIX);
    let n = input.len();
    let inp = Buf::new(input, mis_in);
    let mut out = Buf::new(&vec![f32::NAN; n], mis_out);
    launch(emu, &name, cast_shape(n, sms), &[out.arg(), ptr(inp.get()), long(n)]);
    out.check_guards(&name);
    for (i, (&h, &got)) in input.iter().zip(out.get()).enumerate() {
        let want = h.to_f32();
        if want.is_nan() {
            assert!(got.is_nan(), "{name}: NaN input {:#x} gave {got}", h.to_bits16());
        } else {
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{name}: element {i} ({:#x}): {got:e} vs {want:e}",
                h.to_bits16()
            );
        }
    }
}

fn cast_round_trip_checks<H: HalfBits>(emu: &Emulator, seed: u64) {
    let mut rng = TestRng::new(seed);
    let all = cast_inputs::<H>(&mut rng, 20_000);
    // All of it with 1 SM (32 blocks, many grid-stride passes), aligned.
    run_cast_from_f32::<H>(emu, &all, 1, 0, 0);
    // A shuffled subset with the H100 grid: aligned, misaligned in, misaligned out; odd lengths.
    let sub: Vec<f32> = (0..2051).map(|i| if i < 33 { all[i] } else { all[rng.below(all.len())] }).collect();
    run_cast_from_f32::<H>(emu, &sub, H100_SMS, 0, 0);
    run_cast_from_f32::<H>(emu, &sub, H100_SMS, 1, 0);
    run_cast_from_f32::<H>(emu, &sub[..2049], 2, 0, 1);
    run_cast_from_f32::<H>(emu, &sub[..7], H100_SMS, 0, 0);

    // Back to f32: every one of the 65,536 bit patterns, exact.
    let every: Vec<H> = (0..=u16::MAX).map(H::from_bits16).collect();
    run_cast_to_f32::<H>(emu, &every, 1, 0, 0);
    run_cast_to_f32::<H>(emu, &every[..2051], H100_SMS, 0, 0);
    run_cast_to_f32::<H>(emu, &every[31_000..33_051], H100_SMS, 1, 0);
    run_cast_to_f32::<H>(emu, &every[64_000..65_533], 2, 0, 1);
}

#[test]
fn cast_f32_f16_round_to_nearest_even_and_back_exact() {
    kernel_emu::schedules("cast_f32_f16_round_to_nearest_even_and_back_exact", |emu| {
        cast_round_trip_checks::<f16>(emu, 81);
    });
}

#[test]
fn cast_f32_bf16_round_to_nearest_even_and_back_exact() {
    kernel_emu::schedules("cast_f32_bf16_round_to_nearest_even_and_back_exact", |emu| {
        cast_round_trip_checks::<bf16>(emu, 82);
    });
}

// ---------------------------------------------------------------------------------
// elementwise.cu
// ---------------------------------------------------------------------------------

/// (n, SMs, misaligned operand: 0 none, 1 the output, k ≥ 2 input k − 1).
/// 1,027 = 1024 + 3 elements: one pass of the vector loop and a scalar tail of 3 (N = 4
/// and 8); misaligned buffers take the scalar path for every element (2–4 passes over
/// the grid sized for vectors); 13 elements: a few vectors and a tail in one block.
const MAP_CASES: &[(usize, usize, usize)] =
    &[(1_027, H100_SMS, 0), (1_027, H100_SMS, 2), (1_027, 2, 1), (1_027, H100_SMS, 3), (13, H100_SMS, 0)];

/// 70,001 elements on 1 SM (32 blocks of 256 threads): two or more passes of the vector
/// loop, then a tail. Each costs 8,192 emulated threads, so it runs once per map template
/// and vector width (N = 4 for f32, 8 for f16/bf16) rather than for every op × dtype.
const BIG: (usize, usize, usize) = (70_001, 1, 0);

fn mis(case_mis: usize, operand: usize) -> usize {
    (case_mis == operand) as usize
}

fn map_tag<T: Element>(op: &str, n: usize, sms: usize, m: usize) -> String {
    let which = ["aligned", "output misaligned", "input 1 misaligned", "input 2 misaligned", "input 3 misaligned"][m];
    format!("{op}_{} n={n} sms={sms} {which}", T::SUFFIX)
}

/// out = a + b (out may alias a).
fn run_add<T: Element>(emu: &Emulator, rng: &mut TestRng, n: usize, sms: usize, m: usize, in_place: bool) {
    let tag = map_tag::<T>(if in_place { "add (in place)" } else { "add" }, n, sms, m);
    let a = rounded::<T>(&normals(rng, n, 1.0));
    let b = rounded::<T>(&normals(rng, n, 1.0));
    let mut ab = Buf::new(&to_elem::<T>(&a), if in_place { mis(m, 1).max(mis(m, 2)) } else { mis(m, 2) });
    let bb = Buf::new(&to_elem::<T>(&b), mis(m, 3));
    let mut out = (!in_place).then(|| Buf::new(&vec![T::from_f32(f32::NAN); n], mis(m, 1)));
    let a_arg = ab.arg();
    let out_arg = out.as_mut().map_or(a_arg, |o| o.arg());
    launch(emu, &kname::<T>("add"), map_shape::<T>(n, sms), &[out_arg, a_arg, ptr(bb.get()), long(n)]);
    let got = out.as_ref().unwrap_or(&ab);
    got.check_guards(&tag);
    let want = cpu::elementwise::add::<f64>(&f64s(&a), &f64s(&b));
    check_close(&tag, &got.f32s(), &want, tol::<T>());
    let exact: Vec<T> = a.iter().zip(&b).map(|(&x, &y)| T::from_f32(x + y)).collect();
    check_bits(&tag, got.get(), &exact);
}

/// dst += src.
fn run_accumulate<T: Element>(emu: &Emulator, rng: &mut TestRng, n: usize, sms: usize, m: usize) {
    let tag = map_tag::<T>("accumulate", n, sms, m);
    let dst = rounded::<T>(&normals(rng, n, 1.0));
    let src = rounded::<T>(&normals(rng, n, 0.5));
    let mut db = Buf::new(&to_elem::<T>(&dst), mis(m, 1).max(mis(m, 2)));
    let sb = Buf::new(&to_elem::<T>(&src), mis(m, 3));
    launch(emu, &kname::<T>("accumulate"), map_shape::<T>(n, sms), &[db.arg(), ptr(sb.get()), long(n)]);
    db.check_guards(&tag);
    let mut want = f64s(&dst);
    cpu::elementwise::axpy::<f64>(&mut want, 1.0, &f64s(&src));
    check_close(&tag, &db.f32s(), &want, tol::<T>());
    let exact: Vec<T> = dst.iter().zip(&src).map(|(&x, &y)| T::from_f32(x + y)).collect();
    check_bits(&tag, db.get(), &exact);
}

/// out = s·x (out may alias x), and x *= *s with s in device memory.
fn run_scale<T: Element>(emu: &Emulator, rng: &mut TestRng, n: usize, sms: usize, m: usize, variant: usize) {
    let op = ["scale", "scale (in place)", "scale_by_device_scalar"][variant];
    let tag = map_tag::<T>(op, n, sms, m);
    let x = rounded::<T>(&normals(rng, n, 2.0));
    let s = -0.3712f32;
    let in_place = variant > 0;
    let mut xb = Buf::new(&to_elem::<T>(&x), if in_place { mis(m, 1).max(mis(m, 2)) } else { mis(m, 2) });
    let mut out = (!in_place).then(|| Buf::new(&vec![T::from_f32(f32::NAN); n], mis(m, 1)));
    let shape = map_shape::<T>(n, sms);
    match (variant, out.as_mut()) {
        (0, Some(out)) => {
            launch(emu, &kname::<T>("scale"), shape, &[out.arg(), ptr(xb.get()), Arg::F32(s), long(n)]);
        }
        (1, _) => {
            let xa = xb.arg();
            launch(emu, &kname::<T>("scale"), shape, &[xa, xa, Arg::F32(s), long(n)]);
        }
        _ => {
            let dev_s = [s];
            launch(emu, &kname::<T>("scale_by_device_scalar"), shape, &[xb.arg(), ptr(&dev_s), long(n)]);
        }
    }
    let got = out.as_ref().unwrap_or(&xb);
    got.check_guards(&tag);
    let mut want = vec![0.0f64; n];
    cpu::elementwise::scale::<f64>(&mut want, s as f64, &f64s(&x));
    check_close(&tag, &got.f32s(), &want, tol::<T>());
    let exact: Vec<T> = x.iter().map(|&v| T::from_f32(v * s)).collect();
    check_bits(&tag, got.get(), &exact);
}

/// y = tanh(x).
fn run_tanh_forward<T: Element>(emu: &Emulator, rng: &mut TestRng, n: usize, sms: usize, m: usize) {
    let tag = map_tag::<T>("tanh_forward", n, sms, m);
    let mut x = normals(rng, n, 2.0);
    for (i, v) in x.iter_mut().enumerate() {
        match i % 101 {
            3 => *v = 25.0,
            4 => *v = -25.0,
            5 => *v = 1e-4,
            _ => {}
        }
    }
    let x = rounded::<T>(&x);
    let xb = Buf::new(&to_elem::<T>(&x), mis(m, 2));
    let mut y = Buf::new(&vec![T::from_f32(f32::NAN); n], mis(m, 1));
    launch(emu, &kname::<T>("tanh_forward"), map_shape::<T>(n, sms), &[y.arg(), ptr(xb.get()), long(n)]);
    y.check_guards(&tag);
    let mut want = vec![0.0f64; n];
    cpu::elementwise::tanh_forward::<f64>(&mut want, &f64s(&x));
    check_close(&tag, &y.f32s(), &want, tol::<T>());
}

/// dx += dy·(1 − y²).
fn run_tanh_backward<T: Element>(emu: &Emulator, rng: &mut TestRng, n: usize, sms: usize, m: usize) {
    let tag = map_tag::<T>("tanh_backward", n, sms, m);
    let dx = rounded::<T>(&normals(rng, n, 1.0));
    let dy = rounded::<T>(&normals(rng, n, 1.0));
    let y: Vec<f32> = rounded::<T>(&normals(rng, n, 1.5).iter().map(|v| v.tanh()).collect::<Vec<_>>());
    let mut dxb = Buf::new(&to_elem::<T>(&dx), mis(m, 1).max(mis(m, 2)));
    let dyb = Buf::new(&to_elem::<T>(&dy), mis(m, 3));
    let yb = Buf::new(&to_elem::<T>(&y), mis(m, 4));
    launch(
        emu,
        &kname::<T>("tanh_backward"),
        map_shape::<T>(n, sms),
        &[dxb.arg(), ptr(dyb.get()), ptr(yb.get()), long(n)],
    );
    dxb.check_guards(&tag);
    let mut want = f64s(&dx);
    cpu::elementwise::tanh_backward::<f64>(&mut want, &f64s(&dy), &f64s(&y));
    check_close(&tag, &dxb.f32s(), &want, tol::<T>());
}

/// x = v (rounded to T): 0.1 (inexact in every type), an f16 subnormal, and a value
/// beyond f16's range (→ inf for f16), chosen by the length so each runs in several cases.
fn run_fill<T: Element>(emu: &Emulator, n: usize, sms: usize, m: usize) {
    let v = [0.1f32, -7.3e-6, 7.0e4][(n + m) % 3];
    let tag = map_tag::<T>(&format!("fill {v}"), n, sms, m);
    let mut x = Buf::new(&vec![T::from_f32(f32::NAN); n], mis(m, 1));
    launch(emu, &kname::<T>("fill"), map_shape::<T>(n, sms), &[x.arg(), Arg::F32(v), long(n)]);
    x.check_guards(&tag);
    check_bits(&tag, x.get(), &vec![T::from_f32(v); n]);
}

fn all_map_cases(mut f: impl FnMut(usize, usize, usize), max_operand: usize) {
    for &(n, sms, m) in MAP_CASES {
        if m <= max_operand {
            f(n, sms, m);
        }
    }
}

#[test]
fn elementwise_add_aligned_misaligned_and_in_place() {
    kernel_emu::schedules("elementwise_add_aligned_misaligned_and_in_place", |emu| {
        let mut rng = TestRng::new(91);
        all_map_cases(|n, sms, m| run_add::<f32>(emu, &mut rng, n, sms, m, false), 3);
        all_map_cases(|n, sms, m| run_add::<f16>(emu, &mut rng, n, sms, m, false), 3);
        all_map_cases(|n, sms, m| run_add::<bf16>(emu, &mut rng, n, sms, m, false), 3);
        let (n, sms, m) = BIG;
        run_add::<f32>(emu, &mut rng, n, sms, m, false);
        for (n, sms, m) in [(1_027, H100_SMS, 0), (1_027, 2, 1)] {
            run_add::<f32>(emu, &mut rng, n, sms, m, true);
            run_add::<f16>(emu, &mut rng, n, sms, m, true);
            run_add::<bf16>(emu, &mut rng, n, sms, m, true);
        }
    });
}

#[test]
fn elementwise_accumulate_aligned_and_misaligned() {
    kernel_emu::schedules("elementwise_accumulate_aligned_and_misaligned", |emu| {
        let mut rng = TestRng::new(92);
        all_map_cases(|n, sms, m| run_accumulate::<f32>(emu, &mut rng, n, sms, m), 3);
        all_map_cases(|n, sms, m| run_accumulate::<f16>(emu, &mut rng, n, sms, m), 3);
        all_map_cases(|n, sms, m| run_accumulate::<bf16>(emu, &mut rng, n, sms, m), 3);
        let (n, sms, m) = BIG;
        run_accumulate::<bf16>(emu, &mut rng, n, sms, m);
    });
}

#[test]
fn elementwise_scale_in_place_and_by_device_scalar() {
    kernel_emu::schedules("elementwise_scale_in_place_and_by_device_scalar", |emu| {
        let mut rng = TestRng::new(93);
        all_map_cases(|n, sms, m| run_scale::<f32>(emu, &mut rng, n, sms, m, 0), 2);
        all_map_cases(|n, sms, m| run_scale::<f16>(emu, &mut rng, n, sms, m, 0), 2);
        all_map_cases(|n, sms, m| run_scale::<bf16>(emu, &mut rng, n, sms, m, 0), 2);
        for variant in [1, 2] {
            for (n, sms, m) in [(1_027, H100_SMS, 0), (1_027, 2, 1), (13, H100_SMS, 0)] {
                run_scale::<f32>(emu, &mut rng, n, sms, m, variant);
                run_scale::<f16>(emu, &mut rng, n, sms, m, variant);
                run_scale::<bf16>(emu, &mut rng, n, sms, m, variant);
            }
        }
        let (n, sms, m) = BIG;
        run_scale::<f32>(emu, &mut rng, n, sms, m, 0);
        run_scale::<bf16>(emu, &mut rng, n, sms, m, 2);
    });
}

#[test]
fn elementwise_tanh_forward_and_backward() {
    kernel_emu::schedules("elementwise_tanh_forward_and_backward", |emu| {
        let mut rng = TestRng::new(94);
        all_map_cases(|n, sms, m| run_tanh_forward::<f32>(emu, &mut rng, n, sms, m), 2);
        all_map_cases(|n, sms, m| run_tanh_forward::<f16>(emu, &mut rng, n, sms, m), 2);
        all_map_cases(|n, sms, m| run_tanh_forward::<bf16>(emu, &mut rng, n, sms, m), 2);
        let cases =
            [(1_027, H100_SMS, 0), (1_027, 2, 1), (1_027, H100_SMS, 3), (1_027, H100_SMS, 4), (13, H100_SMS, 0)];
        for (n, sms, m) in cases {
            run_tanh_backward::<f32>(emu, &mut rng, n, sms, m);
            run_tanh_backward::<f16>(emu, &mut rng, n, sms, m);
            run_tanh_backward::<bf16>(emu, &mut rng, n, sms, m);
        }
        let (n, sms, m) = BIG;
        run_tanh_forward::<f16>(emu, &mut rng, n, sms, m);
        run_tanh_backward::<f32>(emu, &mut rng, n, sms, m);
        run_tanh_backward::<bf16>(emu, &mut rng, n, sms, m);
    });
}

#[test]
fn elementwise_fill_aligned_and_misaligned() {
    kernel_emu::schedules("elementwise_fill_aligned_and_misaligned", |emu| {
        all_map_cases(|n, sms, m| run_fill::<f32>(emu, n, sms, m), 1);
        all_map_cases(|n, sms, m| run_fill::<f16>(emu, n, sms, m), 1);
        all_map_cases(|n, sms, m| run_fill::<bf16>(emu, n, sms, m), 1);
        let (n, sms, m) = BIG;
        run_fill::<f32>(emu, n, sms, m);
        run_fill::<f16>(emu, n, sms, m);
    });
}
