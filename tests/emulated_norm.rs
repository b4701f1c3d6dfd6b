//! The row-wise and column-wise kernels of `kernels/layer_norm.cu`, `embedding.cu`,
//! `gather.cu`, `linear.cu` (the bias kernels) and `bias_gelu.cu`, every entry point in every compute dtype
//! (f32, f16, bf16), run on the CPU through the host emulation of `tests/kernel_emu`
//! and compared with a naive f64 reference written here.
//!
//! Each launch uses exactly the argument list and launch shape of its Rust launcher
//! (`src/backend/cuda/{layer_norm,embedding,gather,bias_gelu,linear}.rs`); the shapes
//! that depend on the device (2·SMs cap of the LayerNorm backward, `column_config`) are
//! rebuilt here for an H100 (132 SMs) and for a 1-SM device (grids of 1–2 blocks), so
//! that the grid-stride loops make several passes. Extra shapes that the kernel headers
//! declare correct (smaller grids, other block sizes) are run too.
//!
//! Outputs are poisoned with NaN before each launch (NaN never passes); buffers the
//! kernels accumulate into start from random non-zero values and must come back as
//! old + delta. Tolerances (docs/ARCHITECTURE.md): relative L2 error ≤ 1e-5 for f32 outputs,
//! ≤ 1e-2 for f16/bf16 outputs, whose reference is computed from the inputs rounded
//! to the dtype. The fp32 side outputs of the half kernels (LayerNorm statistics and
//! dw/db, embedding table gradient, bias gradients) are computed in fp32 from values
//! that are exact in fp32, so they are held to 1e-5 in every dtype.

mod common;
mod kernel_emu;

use common::{rel_err, TestRng};
use half::{bf16, f16};
use kernel_emu::{ptr, ptr_mut, to_elem, to_f32, Element, Emulator, Shape};
use qf_engine::backend::cuda::launch::{block_rows_config, warp_rows_config, Arg, BLOCK, NULL, ROW_BLOCK};

/// An `int` argument from a size.
fn int(n: usize) -> anyhow::Result<Arg> {
    Ok(Arg::I32(qf_engine::backend::cuda::launch::int(n)?))
}

/// Tolerance for outputs in the compute dtype `T`.
fn tol<T: Element>() -> f64 {
    if T::SUFFIX == "f32" {
        1e-5
    } else {
        1e-2
    }
}

/// Tolerance for fp32 outputs computed in fp32 from fp32-exact inputs.
const F32_TOL: f64 = 1e-5;

/// Relative L2 error of `got` against the f64 reference `want`; panics above `tol`.
/// Prints `rel_err <dtype> <what>: <err>` (see `--nocapture`).
fn check(dtype: &str, what: &str, got: &[f32], want: &[f64], tol: f64) {
    let want32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
    let e = rel_err(got, &want32);
    eprintln!("rel_err {dtype} {what}: {e:.3e}");
    assert!(e <= tol, "{dtype} {what}: relative L2 error {e:.3e} > {tol:.0e}");
}

fn nan_vec<T: Element>(n: usize) -> Vec<T> {
    vec![T::from_f32(f32::NAN); n]
}

/// `n` values `mean + std·N(0, 1)` rounded to `T`.
fn randn<T: Element>(rng: &mut TestRng, n: usize, mean: f64, std: f64) -> Vec<T> {
    let v: Vec<f32> = rng.normals(n, std).iter().map(|&x| (mean + x) as f32).collect();
    to_elem(&v)
}

/// Exact f64 values of a buffer.
fn f64s<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|&x| x.to_f32() as f64).collect()
}

/// Start values of an fp32 accumulator that the kernel will add `delta` to: random,
/// non-zero, and of the delta's sign, so that old + delta never cancels (a relative
/// error over a one-column output would otherwise measure that cancellation).
fn acc_old(rng: &mut TestRng, delta: &[f64]) -> Vec<f32> {
    delta
        .iter()
        .map(|&d| {
            let m = (0.5 + 2.0 * rng.uniform()) as f32;
            if d < 0.0 {
                -m
            } else {
                m
            }
        })
        .collect()
}

/// `old + delta`, in f64.
fn plus(old: &[f32], delta: &[f64]) -> Vec<f64> {
    old.iter().zip(delta).map(|(&o, &d)| o as f64 + d).collect()
}

fn i32_arg(n: usize) -> Arg {
    int(n).unwrap()
}

/// Pointer argument, or null.
fn opt<T>(v: Option<&[T]>) -> Arg {
    v.map_or(NULL, ptr)
}

/// Pointer argument of a buffer the kernel writes, or null.
fn opt_mut<T>(v: Option<&mut Vec<T>>) -> Arg {
    v.map_or(NULL, |v| ptr_mut(v))
}

/// `layer_norm.rs::backward`'s shape: warp_rows_config with grid capped at 2·SMs.
fn ln_backward_shape(rows: usize, sms: u32, smem: u32) -> Shape {
    let mut cfg = warp_rows_config(rows);
    cfg.grid_dim.0 = cfg.grid_dim.0.min((2 * sms).max(1));
    assert_eq!(cfg.block_dim.0, BLOCK);
    Shape::of(cfg).with_smem(smem)
}

/// `launch.rs::column_config` for a device with `sms` multiprocessors.
fn column_shape(sms: u32, rows: usize, cols: usize) -> Shape {
    let gx = cols.div_ceil(32).clamp(1, (1 << 31) - 1);
    let gy = (4 * sms as usize).div_ceil(gx).clamp(1, rows.div_ceil(8).max(1)).min(65_535);
    Shape { grid: (gx as u32, gy as u32, 1), block: (32, 8, 1), smem: 0 }
}

/// Column counts of the column-sum kernels: one, below/at/above a warp, a few tiles, many.
const COLS: [usize; 6] = [1, 31, 32, 45, 77, 300];

/// The shapes the column-sum kernels (`bias_grad`, `bias_gelu_backward`) are run with:
/// the launchers' `column_config` for an H100 and a 1-SM device (the H100 one only up to
/// a few column tiles, to keep the emulated thread count down), and two shapes the
/// headers declare correct: fewer column tiles than the columns need (tiles
/// grid-strided) and a 1-D block of 256 threads.
fn column_shapes(rows: usize, cols: usize) -> Vec<Shape> {
    let mut shapes = vec![column_shape(1, rows, cols), Shape::flat(1, 256)];
    if cols <= 100 {
        shapes.push(column_shape(132, rows, cols));
    }
    if cols > 64 {
        shapes.push(Shape { grid: (2, 3, 1), block: (32, 8, 1), smem: 0 });
    }
    shapes
}

/// The row-kernel shape of the launchers: block 256, grid min(rows, 65535).
fn row_shape(rows: usize) -> Shape {
    Shape::of(block_rows_config(rows, ROW_BLOCK))
}

fn gelu(u: f64) -> f64 {
    0.5 * u * (1.0 + libm::erf(u * std::f64::consts::FRAC_1_SQRT_2))
}

fn gelu_grad(u: f64) -> f64 {
    let cdf = 0.5 * (1.0 + libm::erf(u * std::f64::consts::FRAC_1_SQRT_2));
    let pdf = (-0.5 * u * u).exp() / (2.0 * std::f64::consts::PI).sqrt();
    cdf + u * pdf
}

/// The emulator (which serialises launches across the tests' threads).
struct Emu(&'static Emulator);

impl Emu {
    fn run(&self, name: &str, shape: Shape, args: &[Arg]) {
        self.0.run(name, shape, args);
    }
}

/// Runs `f` for each compute dtype.
macro_rules! for_each_dtype {
    ($f:ident($($arg:expr),*)) => {
        $f::<f32>($($arg),*);
        $f::<f16>($($arg),*);
        $f::<bf16>($($arg),*);
    };
}

// ---------------------------------------------------------------------------------
// coverage
// ---------------------------------------------------------------------------------

/// Every kernel of the five files, as tested below.
const COVERED: &[&str] = &[
    "layer_norm_forward",
    "layer_norm_backward",
    "embedding_forward",
    "embedding_backward",
    "gather_rows",
    "scatter_add_rows",
    "bias_add",
    "bias_grad",
    "bias_gelu_forward",
    "bias_gelu_backward",
];

#[test]
fn every_kernel_of_these_files_is_covered() {
    kernel_emu::schedules("every_kernel_of_these_files_is_covered", |emu| {
        let modules = ["layer_norm", "embedding", "gather", "linear", "bias_gelu"];
        let mut want: Vec<String> =
            COVERED.iter().flat_map(|b| ["f32", "f16", "bf16"].map(|s| format!("{b}_{s}"))).collect();
        want.sort();
        let mut have: Vec<String> =
            emu.kernels().into_iter().filter(|(m, _)| modules.contains(&m.as_str())).map(|(_, n)| n).collect();
        have.sort();
        assert_eq!(have, want, "kernels of {modules:?} vs the ones this file tests");
    });
}

/// Zero rows / tokens with the launchers' shapes (grid clamped to 1 block): every kernel
/// must leave the buffers it would accumulate into as they were.
#[test]
fn empty_inputs_change_nothing() {
    kernel_emu::schedules("empty_inputs_change_nothing", |emu| {
        let emu = Emu(emu);
        let dim = 45;
        let dw0: Vec<f32> = (0..dim).map(|i| 1.0 + i as f32).collect();
        let db0: Vec<f32> = (0..dim).map(|i| 2.0 - i as f32).collect();
        let (mut dw, mut db) = (dw0.clone(), db0.clone());
        let none_f32: Vec<f32> = Vec::new();
        let none_i32: Vec<i32> = Vec::new();
        let w = vec![1f32; dim];
        let mut dx: Vec<f32> = Vec::new();
        let z = i32_arg(0);
        let d = i32_arg(dim);
        let e = ptr(&none_f32);
        emu.run(
            "layer_norm_forward_f32",
            Shape::of(warp_rows_config(0)),
            &[e, e, e, e, ptr(&w), ptr(&w), z, d, Arg::F32(1e-5)],
        );
        let shape = ln_backward_shape(0, 132, (2 * dim * 4) as u32);
        let args = [ptr_mut(&mut dx), ptr_mut(&mut dw), ptr_mut(&mut db), e, e, ptr(&w), e, e, z, d];
        emu.run("layer_norm_backward_f32", shape, &args);
        assert_eq!((&dw, &db), (&dw0, &db0), "layer_norm_backward over 0 rows");
        emu.run("embedding_forward_f32", row_shape(0), &[e, ptr(&w), ptr(&none_i32), e, z, d]);
        emu.run("embedding_backward_f32", row_shape(0), &[ptr_mut(&mut dw), e, ptr(&none_i32), e, z, d]);
        assert_eq!(dw, dw0, "embedding_backward over 0 tokens");
        emu.run("gather_rows_f32", row_shape(0), &[e, ptr(&w), ptr(&none_i32), z, d]);
        emu.run("scatter_add_rows_f32", row_shape(0), &[ptr_mut(&mut dw), e, ptr(&none_i32), z, d]);
        assert_eq!(dw, dw0, "scatter_add_rows over 0 rows");
        emu.run("bias_add_f32", row_shape(0), &[e, e, ptr(&w), z, d]);
        emu.run("bias_grad_f32", column_shape(132, 0, dim), &[ptr_mut(&mut db), e, z, d]);
        assert_eq!(db, db0, "bias_grad over 0 rows");
        emu.run("bias_gelu_forward_f32", row_shape(0), &[e, e, ptr(&w), z, d]);
        emu.run("bias_gelu_backward_f32", column_shape(132, 0, dim), &[e, ptr_mut(&mut db), e, e, ptr(&w), z, d]);
        assert_eq!(db, db0, "bias_gelu_backward over 0 rows");
    });
}

// ---------------------------------------------------------------------------------
// layer_norm.cu
// ---------------------------------------------------------------------------------

/// `layer_norm_forward_T(y, mean, rstd, x, w, b, rows, dim, eps)`.
#[allow(clippy::too_many_arguments)]
fn ln_forward_case<T: Element>(
    emu: &Emu,
    rows: usize,
    dim: usize,
    shape: Shape,
    affine: bool,
    stats: bool,
    in_place: bool,
    seed: u64,
) {
    let dt = T::SUFFIX;
    let what =
        format!("layer_norm_forward rows={rows} dim={dim} affine={affine} stats={stats} in_place={in_place} {shape:?}");
    let mut rng = TestRng::new(seed);
    // A large offset: a one-pass variance would lose digits.
    let mut x: Vec<T> = randn(&mut rng, rows * dim, 3.0, 1.5);
    let w: Vec<f32> = to_f32(&randn::<f32>(&mut rng, dim, 1.0, 0.3));
    let b: Vec<f32> = to_f32(&randn::<f32>(&mut rng, dim, 0.0, 0.2));
    let eps = 1e-5f32;
    let x64 = f64s(&x);

    let mut y: Vec<T> = nan_vec(rows * dim);
    let mut mean = vec![f32::NAN; rows];
    let mut rstd = vec![f32::NAN; rows];
    let y_arg = if in_place { ptr_mut(&mut x) } else { ptr_mut(&mut y) };
    emu.run(
        &format!("layer_norm_forward_{dt}"),
        shape,
        &[
            y_arg,
            if stats { ptr_mut(&mut mean) } else { NULL },
            if stats { ptr_mut(&mut rstd) } else { NULL },
            ptr(&x),
            if affine { ptr(&w) } else { NULL },
            if affine { ptr(&b) } else { NULL },
            i32_arg(rows),
            i32_arg(dim),
            Arg::F32(eps),
        ],
    );
    let y = if in_place { x } else { y };

    let (mut y_ref, mut m_ref, mut r_ref) = (vec![0f64; rows * dim], vec![0f64; rows], vec![0f64; rows]);
    for r in 0..rows {
        let row = &x64[r * dim..(r + 1) * dim];
        let m = row.iter().sum::<f64>() / dim as f64;
        let var = row.iter().map(|v| (v - m).powi(2)).sum::<f64>() / dim as f64;
        let rs = 1.0 / (var + eps as f64).sqrt();
        m_ref[r] = m;
        r_ref[r] = rs;
        for d in 0..dim {
            let (wd, bd) = if affine { (w[d] as f64, b[d] as f64) } else { (1.0, 0.0) };
            y_ref[r * dim + d] = (row[d] - m) * rs * wd + bd;
        }
    }
    check(dt, &format!("{what} y"), &to_f32(&y), &y_ref, tol::<T>());
    if stats {
        check(dt, &format!("{what} mean"), &mean, &m_ref, F32_TOL);
        check(dt, &format!("{what} rstd"), &rstd, &r_ref, F32_TOL);
    } else {
        assert!(mean.iter().chain(&rstd).all(|v| v.is_nan()), "{what}: null mean/rstd, yet the buffers were written");
    }
}

fn ln_forward_all<T: Element>(emu: &Emu) {
    let rows = 21;
    for (i, dim) in [1usize, 31, 32, 33, 45, 1000].into_iter().enumerate() {
        let seed = 100 + i as u64;
        // The launcher's shape (layer_norm.rs: warp_rows_config(rows)).
        ln_forward_case::<T>(emu, rows, dim, Shape::of(warp_rows_config(rows)), true, true, false, seed);
        // In place (the ABI allows y == x), without affine parameters.
        ln_forward_case::<T>(emu, rows, dim, Shape::of(warp_rows_config(rows)), false, true, true, seed + 10);
        // Null statistics; a small grid of 2-warp blocks: each of the 4 warps strides over ~5 rows.
        ln_forward_case::<T>(emu, rows, dim, Shape::flat(2, 64), true, false, false, seed + 20);
    }
    // rows < warps of one block, and a single row.
    ln_forward_case::<T>(emu, 3, 77, Shape::of(warp_rows_config(3)), true, true, false, 7);
    ln_forward_case::<T>(emu, 1, 1000, Shape::of(warp_rows_config(1)), true, true, false, 8);
}

#[test]
fn layer_norm_forward_all_dtypes() {
    kernel_emu::schedules("layer_norm_forward_all_dtypes", |emu| {
        let emu = Emu(emu);
        for_each_dtype!(ln_forward_all(&emu));
    });
}

#[derive(Clone, Copy, Debug)]
struct LnBwd {
    dw: bool,
    db: bool,
    w: bool,
    /// Dynamic shared memory: `None` = the launcher's (2·dim·4 with dw/db, else 0).
    smem: Option<u32>,
    sms: u32,
}

/// `layer_norm_backward_T(dx, dw, db, dy, x, w, mean, rstd, rows, dim)`.
fn ln_backward_case<T: Element>(emu: &Emu, rows: usize, dim: usize, v: LnBwd, seed: u64) {
    let dt = T::SUFFIX;
    let launcher_smem = if v.dw || v.db { (2 * dim * 4) as u32 } else { 0 };
    let smem = v.smem.unwrap_or(launcher_smem);
    let shape = ln_backward_shape(rows, v.sms, smem);
    let what = format!("layer_norm_backward rows={rows} dim={dim} {v:?} {shape:?}");
    let mut rng = TestRng::new(seed);
    let x: Vec<T> = randn(&mut rng, rows * dim, 0.5, 1.2);
    let dy: Vec<T> = randn(&mut rng, rows * dim, 0.1, 1.0);
    let w: Vec<f32> = to_f32(&randn::<f32>(&mut rng, dim, 1.0, 0.4));
    let dx0: Vec<T> = randn(&mut rng, rows * dim, 0.0, 0.5);
    let (x64, dy64) = (f64s(&x), f64s(&dy));
    // Saved statistics (inputs of the backward), in fp32 as the forward stores them.
    let mut mean = vec![0f32; rows];
    let mut rstd = vec![0f32; rows];
    for r in 0..rows {
        let row = &x64[r * dim..(r + 1) * dim];
        let m = row.iter().sum::<f64>() / dim as f64;
        let var = row.iter().map(|v| (v - m).powi(2)).sum::<f64>() / dim as f64;
        mean[r] = m as f32;
        rstd[r] = (1.0 / (var + 1e-5).sqrt()) as f32;
    }

    let mut dx_ref = f64s(&dx0);
    let (mut dw_delta, mut db_delta) = (vec![0f64; dim], vec![0f64; dim]);
    for r in 0..rows {
        let (m, rs) = (mean[r] as f64, rstd[r] as f64);
        let o = r * dim;
        let xhat: Vec<f64> = (0..dim).map(|d| (x64[o + d] - m) * rs).collect();
        let g: Vec<f64> = (0..dim).map(|d| dy64[o + d] * if v.w { w[d] as f64 } else { 1.0 }).collect();
        let mean_g = g.iter().sum::<f64>() / dim as f64;
        let mean_gx = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / dim as f64;
        for d in 0..dim {
            dx_ref[o + d] += rs * (g[d] - mean_g - xhat[d] * mean_gx);
            dw_delta[d] += dy64[o + d] * xhat[d];
            db_delta[d] += dy64[o + d];
        }
    }
    let dw0 = acc_old(&mut rng, &dw_delta);
    let db0 = acc_old(&mut rng, &db_delta);

    let mut dx = dx0.clone();
    let mut dw = dw0.clone();
    let mut db = db0.clone();
    emu.run(
        &format!("layer_norm_backward_{dt}"),
        shape,
        &[
            ptr_mut(&mut dx),
            opt_mut(v.dw.then_some(&mut dw)),
            opt_mut(v.db.then_some(&mut db)),
            ptr(&dy),
            ptr(&x),
            opt(v.w.then_some(&w[..])),
            ptr(&mean),
            ptr(&rstd),
            i32_arg(rows),
            i32_arg(dim),
        ],
    );

    let (dw_ref, db_ref) = (plus(&dw0, &dw_delta), plus(&db0, &db_delta));
    check(dt, &format!("{what} dx"), &to_f32(&dx), &dx_ref, tol::<T>());
    if v.dw {
        check(dt, &format!("{what} dw"), &dw, &dw_ref, F32_TOL);
    } else {
        assert_eq!(dw, dw0, "{what}: dw was not passed, yet changed");
    }
    if v.db {
        check(dt, &format!("{what} db"), &db, &db_ref, F32_TOL);
    } else {
        assert_eq!(db, db0, "{what}: db was not passed, yet changed");
    }
}

fn ln_backward_all<T: Element>(emu: &Emu) {
    let rows = 21;
    let full = LnBwd { dw: true, db: true, w: true, smem: None, sms: 132 };
    for (i, dim) in [1usize, 32, 33, 1000].into_iter().enumerate() {
        let seed = 200 + 10 * i as u64;
        // The launcher's shape: dw/db partials in 2·dim·4 bytes of shared memory.
        ln_backward_case::<T>(emu, rows, dim, full, seed);
        ln_backward_case::<T>(emu, rows, dim, LnBwd { sms: 1, ..full }, seed + 1);
        // The fallback without shared memory (global atomics per element and row).
        ln_backward_case::<T>(emu, rows, dim, LnBwd { smem: Some(0), ..full }, seed + 2);
        ln_backward_case::<T>(emu, rows, dim, LnBwd { smem: Some(0), sms: 1, ..full }, seed + 3);
        // Frozen LayerNorm: null dw/db (the launcher gives no shared memory), and a null w.
        let frozen = LnBwd { dw: false, db: false, w: true, smem: None, sms: 132 };
        ln_backward_case::<T>(emu, rows, dim, frozen, seed + 4);
        ln_backward_case::<T>(emu, rows, dim, LnBwd { w: false, sms: 1, ..frozen }, seed + 5);
        // Only one of dw/db; one word short of the shared memory it needs (fallback).
        ln_backward_case::<T>(emu, rows, dim, LnBwd { db: false, ..full }, seed + 6);
        let short = Some((2 * dim * 4 - 4) as u32);
        ln_backward_case::<T>(emu, rows, dim, LnBwd { dw: false, smem: short, sms: 1, ..full }, seed + 7);
    }
}

#[test]
fn layer_norm_backward_all_dtypes() {
    kernel_emu::schedules("layer_norm_backward_all_dtypes", |emu| {
        let emu = Emu(emu);
        for_each_dtype!(ln_backward_all(&emu));
    });
}

// ---------------------------------------------------------------------------------
// embedding.cu
// ---------------------------------------------------------------------------------

/// Token ids with repeats, a few vocabulary rows never used, and ESM-2-like row
/// scales (0 for masked tokens).
fn embedding_inputs(rng: &mut TestRng, n: usize, vocab: usize) -> (Vec<i32>, Vec<f32>) {
    let mut ids: Vec<i32> = (0..n).map(|_| rng.below(vocab - 5) as i32).collect();
    if n >= 3 {
        // At least three tokens share a row (concurrent atomics on one row).
        ids[n / 2] = ids[0];
        ids[n - 1] = ids[0];
    }
    let scale: Vec<f32> =
        (0..n).map(|_| if rng.below(6) == 0 { 0.0 } else { 0.88 / (1.0 - 0.3 * rng.uniform()) as f32 }).collect();
    (ids, scale)
}

/// `embedding_forward_T(out, weight, ids, row_scale, n_tokens, dim)`.
fn embedding_forward_case<T: Element>(emu: &Emu, n: usize, dim: usize, shape: Shape, scaled: bool, seed: u64) {
    let dt = T::SUFFIX;
    let what = format!("embedding_forward n={n} dim={dim} scaled={scaled} {shape:?}");
    let mut rng = TestRng::new(seed);
    let vocab = 33;
    let weight: Vec<f32> = to_f32(&randn::<f32>(&mut rng, vocab * dim, 0.0, 1.0));
    let (ids, scale) = embedding_inputs(&mut rng, n, vocab);
    let mut out: Vec<T> = nan_vec(n * dim);
    emu.run(
        &format!("embedding_forward_{dt}"),
        shape,
        &[ptr_mut(&mut out), ptr(&weight), ptr(&ids), opt(scaled.then_some(&scale[..])), i32_arg(n), i32_arg(dim)],
    );
    let mut want = vec![0f64; n * dim];
    for t in 0..n {
        let s = if scaled { scale[t] as f64 } else { 1.0 };
        for d in 0..dim {
            want[t * dim + d] = weight[ids[t] as usize * dim + d] as f64 * s;
        }
    }
    check(dt, &what, &to_f32(&out), &want, tol::<T>());
}

/// `embedding_backward_T(dweight, dout, ids, row_scale, n_tokens, dim)`.
fn embedding_backward_case<T: Element>(emu: &Emu, n: usize, dim: usize, shape: Shape, scaled: bool, seed: u64) {
    let dt = T::SUFFIX;
    let what = format!("embedding_backward n={n} dim={dim} scaled={scaled} {shape:?}");
    let mut rng = TestRng::new(seed);
    let vocab = 33;
    let dout: Vec<T> = randn(&mut rng, n * dim, 0.0, 1.0);
    let (ids, scale) = embedding_inputs(&mut rng, n, vocab);
    let dw0: Vec<f32> = to_f32(&randn::<f32>(&mut rng, vocab * dim, 0.0, 3.0));
    let mut dw = dw0.clone();
    emu.run(
        &format!("embedding_backward_{dt}"),
        shape,
        &[ptr_mut(&mut dw), ptr(&dout), ptr(&ids), opt(scaled.then_some(&scale[..])), i32_arg(n), i32_arg(dim)],
    );
    let dout64 = f64s(&dout);
    let mut want: Vec<f64> = dw0.iter().map(|&v| v as f64).collect();
    for t in 0..n {
        let s = if scaled { scale[t] as f64 } else { 1.0 };
        for d in 0..dim {
            want[ids[t] as usize * dim + d] += dout64[t * dim + d] * s;
        }
    }
    let mut repeated = ids.clone();
    repeated.sort();
    repeated.dedup();
    assert!(repeated.len() < n, "{what}: the ids must repeat (atomics)");
    check(dt, &what, &dw, &want, F32_TOL);
    for id in 0..vocab {
        if !ids.contains(&(id as i32)) {
            assert_eq!(dw[id * dim..(id + 1) * dim], dw0[id * dim..(id + 1) * dim], "{what}: unused row {id} changed");
        }
    }
}

fn embedding_all<T: Element>(emu: &Emu) {
    for (i, dim) in [33usize, 1000].into_iter().enumerate() {
        let seed = 300 + 10 * i as u64;
        // The launchers' shape (embedding.rs: block_rows_config(n, 256)), with row scales.
        embedding_forward_case::<T>(emu, 13, dim, row_shape(13), true, seed);
        embedding_backward_case::<T>(emu, 13, dim, row_shape(13), true, seed + 1);
    }
    let n = 45;
    for (i, dim) in [1usize, 31, 32, 45, 1000].into_iter().enumerate() {
        let seed = 400 + 10 * i as u64;
        // Null row scales; a grid of 3 blocks of 64 threads (rows and columns strided).
        embedding_forward_case::<T>(emu, n, dim, Shape::flat(3, 64), false, seed);
        embedding_backward_case::<T>(emu, n, dim, Shape::flat(3, 64), false, seed + 1);
        embedding_forward_case::<T>(emu, n, dim, Shape::flat(2, 32), true, seed + 2);
        embedding_backward_case::<T>(emu, n, dim, Shape::flat(2, 32), true, seed + 3);
    }
}

#[test]
fn embedding_forward_and_backward_all_dtypes() {
    kernel_emu::schedules("embedding_forward_and_backward_all_dtypes", |emu| {
        let emu = Emu(emu);
        for_each_dtype!(embedding_all(&emu));
    });
}

// ---------------------------------------------------------------------------------
// gather.cu
// ---------------------------------------------------------------------------------

/// `gather_rows_T(out, x, rows, n, dim)`: an exact copy, checked bit for bit.
fn gather_case<T: Element>(emu: &Emu, n: usize, dim: usize, shape: Shape, seed: u64) {
    let dt = T::SUFFIX;
    let what = format!("gather_rows n={n} dim={dim} {shape:?}");
    let mut rng = TestRng::new(seed);
    let src_rows = 60;
    let x: Vec<T> = randn(&mut rng, src_rows * dim, 0.0, 1.0);
    let rows: Vec<i32> = (0..n).map(|_| rng.below(src_rows) as i32).collect();
    let mut out: Vec<T> = nan_vec(n * dim);
    emu.run(&format!("gather_rows_{dt}"), shape, &[ptr_mut(&mut out), ptr(&x), ptr(&rows), i32_arg(n), i32_arg(dim)]);
    let x64 = f64s(&x);
    let want: Vec<f64> = (0..n * dim).map(|i| x64[rows[i / dim] as usize * dim + i % dim]).collect();
    check(dt, &what, &to_f32(&out), &want, tol::<T>());
    let got = to_f32(&out);
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.to_bits(), (w as f32).to_bits(), "{what}: element {i} is not an exact copy");
    }
}

/// `scatter_add_rows_T(dx, dout, rows, n, dim)` with distinct rows: += at the listed
/// rows, every other row bit-identical.
fn scatter_add_case<T: Element>(emu: &Emu, n: usize, dim: usize, shape: Shape, seed: u64) {
    let dt = T::SUFFIX;
    let what = format!("scatter_add_rows n={n} dim={dim} {shape:?}");
    let mut rng = TestRng::new(seed);
    let dst_rows = 60;
    // n distinct rows out of dst_rows, in random order.
    let mut perm: Vec<i32> = (0..dst_rows as i32).collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, rng.below(i + 1));
    }
    let rows: Vec<i32> = perm[..n].to_vec();
    let dout: Vec<T> = randn(&mut rng, n * dim, 0.0, 1.0);
    let dx0: Vec<T> = randn(&mut rng, dst_rows * dim, 0.0, 1.0);
    let mut dx = dx0.clone();
    emu.run(
        &format!("scatter_add_rows_{dt}"),
        shape,
        &[ptr_mut(&mut dx), ptr(&dout), ptr(&rows), i32_arg(n), i32_arg(dim)],
    );
    let mut want = f64s(&dx0);
    let dout64 = f64s(&dout);
    for (k, &r) in rows.iter().enumerate() {
        for d in 0..dim {
            want[r as usize * dim + d] += dout64[k * dim + d];
        }
    }
    check(dt, &what, &to_f32(&dx), &want, tol::<T>());
    let (got, old) = (to_f32(&dx), to_f32(&dx0));
    for r in 0..dst_rows {
        if !rows.contains(&(r as i32)) {
            let same = (0..dim).all(|d| got[r * dim + d].to_bits() == old[r * dim + d].to_bits());
            assert!(same, "{what}: row {r} is not listed, yet changed");
        }
    }
}

fn gather_all<T: Element>(emu: &Emu) {
    for (i, dim) in [33usize, 1000].into_iter().enumerate() {
        let seed = 500 + 10 * i as u64;
        // The launcher's shape (gather.rs: block_rows_config(n, 256)).
        gather_case::<T>(emu, 13, dim, row_shape(13), seed);
        scatter_add_case::<T>(emu, 13, dim, row_shape(13), seed + 1);
    }
    let n = 45;
    for (i, dim) in [1usize, 31, 32, 45, 1000].into_iter().enumerate() {
        let seed = 600 + 10 * i as u64;
        // Any block size works: a grid of 3 blocks of 50 threads.
        gather_case::<T>(emu, n, dim, Shape::flat(3, 50), seed);
        scatter_add_case::<T>(emu, n, dim, Shape::flat(3, 50), seed + 1);
    }
    // A single listed row.
    gather_case::<T>(emu, 1, 77, row_shape(1), 700);
    scatter_add_case::<T>(emu, 1, 77, row_shape(1), 701);
}

#[test]
fn gather_rows_and_scatter_add_rows_all_dtypes() {
    kernel_emu::schedules("gather_rows_and_scatter_add_rows_all_dtypes", |emu| {
        let emu = Emu(emu);
        for_each_dtype!(gather_all(&emu));
    });
}

// ---------------------------------------------------------------------------------
// linear.cu (bias_add, bias_grad)
// ---------------------------------------------------------------------------------

/// `bias_add_T(y, x, bias, rows, cols)`; `in_place` as `linear.rs` launches it (y == x).
fn bias_add_case<T: Element>(emu: &Emu, rows: usize, cols: usize, shape: Shape, in_place: bool, seed: u64) {
    let dt = T::SUFFIX;
    let what = format!("bias_add rows={rows} cols={cols} in_place={in_place} {shape:?}");
    let mut rng = TestRng::new(seed);
    let mut x: Vec<T> = randn(&mut rng, rows * cols, 0.0, 1.0);
    let bias: Vec<f32> = to_f32(&randn::<f32>(&mut rng, cols, 0.5, 1.0));
    let x64 = f64s(&x);
    let mut y: Vec<T> = nan_vec(rows * cols);
    let y_arg = if in_place { ptr_mut(&mut x) } else { ptr_mut(&mut y) };
    emu.run(&format!("bias_add_{dt}"), shape, &[y_arg, ptr(&x), ptr(&bias), i32_arg(rows), i32_arg(cols)]);
    let y = if in_place { x } else { y };
    let want: Vec<f64> = (0..rows * cols).map(|i| x64[i] + bias[i % cols] as f64).collect();
    check(dt, &what, &to_f32(&y), &want, tol::<T>());
}

/// `bias_grad_T(dbias, dy, rows, cols)`: dbias += column sums.
fn bias_grad_case<T: Element>(emu: &Emu, rows: usize, cols: usize, shape: Shape, seed: u64) {
    let dt = T::SUFFIX;
    let what = format!("bias_grad rows={rows} cols={cols} {shape:?}");
    let mut rng = TestRng::new(seed);
    let dy: Vec<T> = randn(&mut rng, rows * cols, 0.2, 1.0);
    let mut delta = vec![0f64; cols];
    for (i, g) in f64s(&dy).iter().enumerate() {
        delta[i % cols] += g;
    }
    let db0 = acc_old(&mut rng, &delta);
    let mut db = db0.clone();
    emu.run(&format!("bias_grad_{dt}"), shape, &[ptr_mut(&mut db), ptr(&dy), i32_arg(rows), i32_arg(cols)]);
    check(dt, &what, &db, &plus(&db0, &delta), F32_TOL);
}

fn bias_all<T: Element>(emu: &Emu) {
    for (i, cols) in [33usize, 1000].into_iter().enumerate() {
        let seed = 800 + 10 * i as u64;
        // linear.rs: block_rows_config(rows, 256), y == x.
        bias_add_case::<T>(emu, 13, cols, row_shape(13), true, seed);
        bias_add_case::<T>(emu, 13, cols, row_shape(13), false, seed + 1);
    }
    let rows = 21;
    for (i, cols) in COLS.into_iter().enumerate() {
        let seed = 900 + 10 * i as u64;
        bias_add_case::<T>(emu, rows, cols, Shape::flat(3, 96), i % 2 == 0, seed);
        for (j, shape) in column_shapes(rows, cols).into_iter().enumerate() {
            bias_grad_case::<T>(emu, rows, cols, shape, seed + 1 + j as u64);
        }
    }
    // Many row passes per thread at the H100 shape.
    bias_grad_case::<T>(emu, 101, 7, column_shape(132, 101, 7), 990);
}

#[test]
fn bias_add_and_bias_grad_all_dtypes() {
    kernel_emu::schedules("bias_add_and_bias_grad_all_dtypes", |emu| {
        let emu = Emu(emu);
        for_each_dtype!(bias_all(&emu));
    });
}

// ---------------------------------------------------------------------------------
// bias_gelu.cu
// ---------------------------------------------------------------------------------

/// `bias_gelu_forward_T(y, x, bias, rows, cols)`.
#[allow(clippy::too_many_arguments)]
fn bias_gelu_forward_case<T: Element>(
    emu: &Emu,
    rows: usize,
    cols: usize,
    shape: Shape,
    with_bias: bool,
    in_place: bool,
    seed: u64,
) {
    let dt = T::SUFFIX;
    let what = format!("bias_gelu_forward rows={rows} cols={cols} bias={with_bias} in_place={in_place} {shape:?}");
    let mut rng = TestRng::new(seed);
    let mut x: Vec<T> = randn(&mut rng, rows * cols, 0.0, 2.0);
    let bias: Vec<f32> = to_f32(&randn::<f32>(&mut rng, cols, 0.0, 1.0));
    let x64 = f64s(&x);
    let mut y: Vec<T> = nan_vec(rows * cols);
    let y_arg = if in_place { ptr_mut(&mut x) } else { ptr_mut(&mut y) };
    emu.run(
        &format!("bias_gelu_forward_{dt}"),
        shape,
        &[y_arg, ptr(&x), opt(with_bias.then_some(&bias[..])), i32_arg(rows), i32_arg(cols)],
    );
    let y = if in_place { x } else { y };
    let b = |c: usize| if with_bias { bias[c] as f64 } else { 0.0 };
    let want: Vec<f64> = (0..rows * cols).map(|i| gelu(x64[i] + b(i % cols))).collect();
    check(dt, &what, &to_f32(&y), &want, tol::<T>());
}

/// `bias_gelu_backward_T(dx, dbias, dy, x, bias, rows, cols)`.
#[allow(clippy::too_many_arguments)]
fn bias_gelu_backward_case<T: Element>(
    emu: &Emu,
    rows: usize,
    cols: usize,
    shape: Shape,
    with_bias: bool,
    with_dbias: bool,
    seed: u64,
) {
    let dt = T::SUFFIX;
    let what = format!("bias_gelu_backward rows={rows} cols={cols} bias={with_bias} dbias={with_dbias} {shape:?}");
    let mut rng = TestRng::new(seed);
    let x: Vec<T> = randn(&mut rng, rows * cols, 0.0, 2.0);
    let dy: Vec<T> = randn(&mut rng, rows * cols, 0.1, 1.0);
    let bias: Vec<f32> = to_f32(&randn::<f32>(&mut rng, cols, 0.0, 1.0));
    let dx0: Vec<T> = randn(&mut rng, rows * cols, 0.0, 0.5);
    let (x64, dy64) = (f64s(&x), f64s(&dy));
    let mut dx_ref = f64s(&dx0);
    let mut db_delta = vec![0f64; cols];
    for i in 0..rows * cols {
        let c = i % cols;
        let b = if with_bias { bias[c] as f64 } else { 0.0 };
        let g = dy64[i] * gelu_grad(x64[i] + b);
        dx_ref[i] += g;
        db_delta[c] += g;
    }
    let db0 = acc_old(&mut rng, &db_delta);
    let mut dx = dx0.clone();
    let mut db = db0.clone();
    emu.run(
        &format!("bias_gelu_backward_{dt}"),
        shape,
        &[
            ptr_mut(&mut dx),
            opt_mut(with_dbias.then_some(&mut db)),
            ptr(&dy),
            ptr(&x),
            opt(with_bias.then_some(&bias[..])),
            i32_arg(rows),
            i32_arg(cols),
        ],
    );
    check(dt, &format!("{what} dx"), &to_f32(&dx), &dx_ref, tol::<T>());
    if with_dbias {
        check(dt, &format!("{what} dbias"), &db, &plus(&db0, &db_delta), F32_TOL);
    } else {
        assert_eq!(db, db0, "{what}: dbias was not passed, yet changed");
    }
}

fn bias_gelu_all<T: Element>(emu: &Emu) {
    for (i, cols) in [33usize, 1000].into_iter().enumerate() {
        let seed = 1000 + 10 * i as u64;
        // bias_gelu.rs: block_rows_config(rows, 256).
        bias_gelu_forward_case::<T>(emu, 13, cols, row_shape(13), true, false, seed);
        bias_gelu_forward_case::<T>(emu, 13, cols, row_shape(13), false, true, seed + 1);
    }
    let rows = 21;
    for (i, cols) in COLS.into_iter().enumerate() {
        let seed = 1100 + 10 * i as u64;
        bias_gelu_forward_case::<T>(emu, rows, cols, Shape::flat(3, 96), i % 2 == 1, i % 2 == 0, seed);
        for (j, shape) in column_shapes(rows, cols).into_iter().enumerate() {
            bias_gelu_backward_case::<T>(emu, rows, cols, shape, true, true, seed + 1 + j as u64);
        }
        if cols < 100 {
            // Null bias (gelu of x) and null dbias (frozen bias).
            bias_gelu_backward_case::<T>(emu, rows, cols, column_shape(1, rows, cols), false, true, seed + 7);
            bias_gelu_backward_case::<T>(emu, rows, cols, column_shape(132, rows, cols), true, false, seed + 8);
        }
    }
}

#[test]
fn bias_gelu_forward_and_backward_all_dtypes() {
    kernel_emu::schedules("bias_gelu_forward_and_backward_all_dtypes", |emu| {
        let emu = Emu(emu);
        for_each_dtype!(bias_gelu_all(&emu));
    });
}
