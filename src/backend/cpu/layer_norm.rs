//! LayerNorm over the last dimension (Ba et al. 2016), as `torch.nn.LayerNorm`:
//! `y = (x − μ)·rstd·w + b` with `rstd = 1/sqrt(var + eps)` and the biased variance.
//!
//! Backward, with `x̂ = (x − μ)·rstd` and `g = dy·w`:
//! `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))`, `dw = Σ_rows dy·x̂`, `db = Σ_rows dy`.

use rayon::prelude::*;

use super::{simd, Real};

/// Rows per parallel task in the backward's parameter-gradient reduction.
const ROWS_PER_TASK: usize = 64;

/// `y = (x − μ)·rstd·w + b` per row of `dim`, into a new buffer written once (not
/// zero-filled first), with the per-row `μ` and `rstd` the backward reads: `(y, mean, rstd)`.
pub fn forward<T: Real>(x: &[T], w: &[T], b: &[T], dim: usize, eps: f64) -> (Vec<T>, Vec<T>, Vec<T>) {
    let rows = x.len() / dim.max(1);
    let (mut out, mut mean, mut rstd) = (Vec::with_capacity(rows * dim), vec![T::zero(); rows], vec![T::zero(); rows]);
    let y = &mut out.spare_capacity_mut()[..rows * dim];
    let inv_d = T::from_f64(1.0 / dim as f64);
    let eps = T::from_f64(eps);
    y.par_chunks_mut(dim).zip(x.par_chunks(dim)).zip(mean.par_iter_mut().zip(rstd.par_iter_mut())).for_each(
        |((y, x), (mu, rs))| {
            let (m, r) = simd::dispatch(ForwardRow { y, x, w, b, inv_d, eps });
            *mu = m;
            *rs = r;
        },
    );
    // Safety: each row's kernel wrote every element of its row.
    unsafe { out.set_len(rows * dim) };
    (out, mean, rstd)
}

/// Accumulates into `dx`, `dw` and `db`; an empty output slice is not computed.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(
    dx: &mut [T],
    dw: &mut [T],
    db: &mut [T],
    dy: &[T],
    x: &[T],
    w: &[T],
    mean: &[T],
    rstd: &[T],
    dim: usize,
) {
    let inv_d = T::from_f64(1.0 / dim as f64);
    if !dx.is_empty() {
        input_grad(dx, dy, x, w, mean, rstd, dim, inv_d);
    }
    if !dw.is_empty() || !db.is_empty() {
        let (pw, pb) = param_grads(dy, x, mean, rstd, dim);
        for (d, p) in dw.iter_mut().zip(pw) {
            *d += p;
        }
        for (d, p) in db.iter_mut().zip(pb) {
            *d += p;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn input_grad<T: Real>(dx: &mut [T], dy: &[T], x: &[T], w: &[T], mean: &[T], rstd: &[T], dim: usize, inv_d: T) {
    dx.par_chunks_mut(dim)
        .zip(dy.par_chunks(dim))
        .zip(x.par_chunks(dim))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .for_each(|(((dx, dy), x), (&m, &r))| simd::dispatch(InputGradRow { dx, dy, x, w, m, r, inv_d }));
}

/// `(Σ_rows dy·x̂, Σ_rows dy)`, reduced over row blocks in parallel.
fn param_grads<T: Real>(dy: &[T], x: &[T], mean: &[T], rstd: &[T], dim: usize) -> (Vec<T>, Vec<T>) {
    dy.par_chunks(dim * ROWS_PER_TASK)
        .zip(x.par_chunks(dim * ROWS_PER_TASK))
        .zip(mean.par_chunks(ROWS_PER_TASK).zip(rstd.par_chunks(ROWS_PER_TASK)))
        .map(|((dy, x), (mean, rstd))| {
            let (mut pw, mut pb) = (vec![T::zero(); dim], vec![T::zero(); dim]);
            for (((dy, x), &m), &r) in dy.chunks(dim).zip(x.chunks(dim)).zip(mean).zip(rstd) {
                for j in 0..dim {
                    pw[j] += dy[j] * (x[j] - m) * r;
                    pb[j] += dy[j];
                }
            }
            (pw, pb)
        })
        // Partials are summed in a fixed order so results are bit-for-bit repeatable.
        .collect::<Vec<_>>()
        .into_iter()
        .fold((vec![T::zero(); dim], vec![T::zero(); dim]), |(mut aw, mut ab), (bw, bb)| {
            for j in 0..dim {
                aw[j] += bw[j];
                ab[j] += bb[j];
            }
            (aw, ab)
        })
}

/// One row of the forward; returns `(μ, rstd)`.
struct ForwardRow<'a, T> {
    y: &'a mut [std::mem::MaybeUninit<T>],
    x: &'a [T],
    w: &'a [T],
    b: &'a [T],
    inv_d: T,
    eps: T,
}

impl<T: Real> simd::Kernel for ForwardRow<'_, T> {
    type Output = (T, T);
    #[inline(always)]
    fn run(self) -> (T, T) {
        let m = simd::sum(self.x) * self.inv_d;
        let var = simd::sum_map3(self.x, self.x, self.x, |v, _, _| (v - m) * (v - m)) * self.inv_d;
        let r = T::one() / (var + self.eps).sqrt();
        for (((y, &x), &w), &b) in self.y.iter_mut().zip(self.x).zip(self.w).zip(self.b) {
            y.write((x - m) * r * w + b);
        }
        (m, r)
    }
}

/// One row of the input gradient.
struct InputGradRow<'a, T> {
    dx: &'a mut [T],
    dy: &'a [T],
    x: &'a [T],
    w: &'a [T],
    m: T,
    r: T,
    inv_d: T,
}

impl<T: Real> simd::Kernel for InputGradRow<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let (m, r) = (self.m, self.r);
        let sum_g = simd::dot(self.dy, self.w);
        let sum_gx = simd::sum_map3(self.dy, self.w, self.x, |dy, w, x| dy * w * (x - m) * r);
        let (mean_g, mean_gx) = (sum_g * self.inv_d, sum_gx * self.inv_d);
        for (((dx, &dy), &x), &w) in self.dx.iter_mut().zip(self.dy).zip(self.x).zip(self.w) {
            let xhat = (x - m) * r;
            *dx += r * (dy * w - mean_g - xhat * mean_gx);
        }
    }
}
