//! Exact (erf) GELU with an optional bias folded in, as `torch.nn.functional.gelu`
//! (Hendrycks & Gimpel 2016): `y = u·Φ(u)` with `u = x + b` and `Φ(u) = ½(1 + erf(u/√2))`.
//!
//! Backward: `dy/du = Φ(u) + u·φ(u)`, `φ(u) = exp(−u²/2)/√(2π)`.

use rayon::prelude::*;

use super::{simd, Real};

/// 1/√(2π).
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

#[inline(always)]
fn gelu<T: Real>(u: T) -> T {
    u * u.normal_cdf()
}

#[inline(always)]
fn gelu_grad<T: Real>(u: T) -> T {
    let pdf = (-(u * u) * T::from_f64(0.5)).exp_fast() * T::from_f64(FRAC_1_SQRT_2PI);
    u.normal_cdf() + u * pdf
}

/// One row of the forward: `y = gelu(x + b)` (`b` empty: no bias).
struct ForwardRow<'a, T> {
    y: &'a mut [T],
    x: &'a [T],
    bias: &'a [T],
}

impl<T: Real> simd::Kernel for ForwardRow<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        if self.bias.is_empty() {
            for (y, &x) in self.y.iter_mut().zip(self.x) {
                *y = gelu(x);
            }
        } else {
            for ((y, &x), &b) in self.y.iter_mut().zip(self.x).zip(self.bias) {
                *y = gelu(x + b);
            }
        }
    }
}

/// One row of the backward: `du = dy·gelu'(x + b)`.
struct BackwardRow<'a, T> {
    du: &'a mut [T],
    dy: &'a [T],
    x: &'a [T],
    bias: &'a [T],
}

impl<T: Real> simd::Kernel for BackwardRow<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        if self.bias.is_empty() {
            for ((du, &dy), &x) in self.du.iter_mut().zip(self.dy).zip(self.x) {
                *du = dy * gelu_grad(x);
            }
        } else {
            for (((du, &dy), &x), &b) in self.du.iter_mut().zip(self.dy).zip(self.x).zip(self.bias) {
                *du = dy * gelu_grad(x + b);
            }
        }
    }
}

/// `y = gelu(x + bias[col])`; `bias` may be empty (no bias).
pub fn forward<T: Real>(y: &mut [T], x: &[T], bias: &[T], cols: usize) {
    y.par_chunks_mut(cols).zip(x.par_chunks(cols)).for_each(|(y, x)| simd::dispatch(ForwardRow { y, x, bias }));
}

/// `dx += du` and `dbias += Σ_rows du` (when `dbias` is non-empty), with `du = dy·gelu'(x + b)`.
pub fn backward<T: Real>(dx: &mut [T], dbias: &mut [T], dy: &[T], x: &[T], bias: &[T], cols: usize) {
    if dx.is_empty() && dbias.is_empty() {
        return;
    }
    let mut du = crate::backend::cpu::filled(dy.len(), T::zero());
    du.par_chunks_mut(cols)
        .zip(dy.par_chunks(cols))
        .zip(x.par_chunks(cols))
        .for_each(|((du, dy), x)| simd::dispatch(BackwardRow { du, dy, x, bias }));
    if !dx.is_empty() {
        super::elementwise::axpy(dx, T::one(), &du);
    }
    if !dbias.is_empty() {
        super::elementwise::column_sums_into(dbias, &du, cols);
    }
}
