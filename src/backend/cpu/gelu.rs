//! Exact (erf) GELU with an optional bias folded in, as `torch.nn.functional.gelu`
//! (Hendrycks & Gimpel 2016): `y = u·Φ(u)` with `u = x + b` and `Φ(u) = ½(1 + erf(u/√2))`.
//!
//! Backward: `dy/du = Φ(u) + u·φ(u)`, `φ(u) = exp(−u²/2)/√(2π)`.

use rayon::prelude::*;

use super::Real;

const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// 1/√(2π).
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

#[inline]
fn gelu<T: Real>(u: T) -> T {
    T::from_f64(0.5) * u * (T::one() + (u * T::from_f64(FRAC_1_SQRT_2)).erf())
}

#[inline]
fn gelu_grad<T: Real>(u: T) -> T {
    let cdf = T::from_f64(0.5) * (T::one() + (u * T::from_f64(FRAC_1_SQRT_2)).erf());
    let pdf = (-(u * u) * T::from_f64(0.5)).exp() * T::from_f64(FRAC_1_SQRT_2PI);
    cdf + u * pdf
}

/// `y = gelu(x + bias[col])`; `bias` may be empty (no bias).
pub fn forward<T: Real>(y: &mut [T], x: &[T], bias: &[T], cols: usize) {
    y.par_chunks_mut(cols).zip(x.par_chunks(cols)).for_each(|(y, x)| {
        for (j, (y, &x)) in y.iter_mut().zip(x).enumerate() {
            let u = if bias.is_empty() { x } else { x + bias[j] };
            *y = gelu(u);
        }
    });
}

/// `dx += du` and `dbias += Σ_rows du` (when `dbias` is non-empty), with `du = dy·gelu'(x + b)`.
pub fn backward<T: Real>(dx: &mut [T], dbias: &mut [T], dy: &[T], x: &[T], bias: &[T], cols: usize) {
    if dbias.is_empty() {
        if dx.is_empty() {
            return;
        }
        dx.par_chunks_mut(cols).zip(dy.par_chunks(cols)).zip(x.par_chunks(cols)).for_each(|((dx, dy), x)| {
            for (j, ((dx, &dy), &x)) in dx.iter_mut().zip(dy).zip(x).enumerate() {
                let u = if bias.is_empty() { x } else { x + bias[j] };
                *dx += dy * gelu_grad(u);
            }
        });
        return;
    }
    let mut du = vec![T::zero(); dy.len()];
    du.par_chunks_mut(cols).zip(dy.par_chunks(cols)).zip(x.par_chunks(cols)).for_each(|((du, dy), x)| {
        for (j, ((du, &dy), &x)) in du.iter_mut().zip(dy).zip(x).enumerate() {
            *du = dy * gelu_grad(x + bias[j]);
        }
    });
    if !dx.is_empty() {
        super::elementwise::axpy(dx, T::one(), &du);
    }
    super::elementwise::column_sums_into(dbias, &du, cols);
}
