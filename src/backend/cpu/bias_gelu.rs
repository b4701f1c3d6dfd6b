//! Exact (erf) GELU with an optional bias folded in, as `torch.nn.functional.gelu`
//! (Hendrycks & Gimpel 2016): `y = u·Φ(u)` with `u = x + b` and `Φ(u) = ½(1 + erf(u/√2))`.
//!
//! Backward: `dy/du = Φ(u) + u·φ(u)`, `φ(u) = exp(−u²/2)/√(2π)`.

use std::mem::MaybeUninit;

use super::{simd, Real};

#[cfg(target_arch = "x86_64")]
mod x86;

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
    y: &'a mut [MaybeUninit<T>],
    x: &'a [T],
    bias: &'a [T],
}

impl<T: Real> simd::Kernel for ForwardRow<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        if self.bias.is_empty() {
            for (y, &x) in self.y.iter_mut().zip(self.x) {
                y.write(gelu(x));
            }
        } else {
            for ((y, &x), &b) in self.y.iter_mut().zip(self.x).zip(self.bias) {
                y.write(gelu(x + b));
            }
        }
    }
}

/// One row of the backward: `du = dy·gelu'(x + b)`.
struct BackwardRow<'a, T> {
    du: &'a mut [MaybeUninit<T>],
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
                du.write(dy * gelu_grad(x));
            }
        } else {
            for (((du, &dy), &x), &b) in self.du.iter_mut().zip(self.dy).zip(self.x).zip(self.bias) {
                du.write(dy * gelu_grad(x + b));
            }
        }
    }
}

/// `y = gelu(x + bias[col])` (`bias` empty: no bias) into a new `[rows, cols]` buffer,
/// written once (not zero-filled first).
pub fn forward<T: Real>(x: &[T], bias: &[T], cols: usize) -> Vec<T> {
    let rows = x.len() / cols.max(1);
    // Safety: each row's kernel writes every element of its row.
    unsafe { super::written(rows * cols, cols, |start, y| forward_row(y, &x[start..][..cols], bias)) }
}

/// One row of [`forward`]: fp32 on CPUs with AVX-512 through the explicit 16-lane kernel
/// (its `exp` needs `vscalefps`, which the compiler does not emit for [`ForwardRow`]'s
/// scalar code), everything else through [`ForwardRow`].
fn forward_row<T: Real>(y: &mut [MaybeUninit<T>], x: &[T], bias: &[T]) {
    #[cfg(target_arch = "x86_64")]
    if T::DTYPE == crate::tensor::DType::F32 && simd::level() == simd::Level::V4 {
        // Safety: `T` is f32, so the casts only name the type; level V4 has AVX-512F.
        unsafe {
            let f32s = |v: &[T]| std::slice::from_raw_parts(v.as_ptr() as *const f32, v.len());
            let y = std::slice::from_raw_parts_mut(y.as_mut_ptr() as *mut MaybeUninit<f32>, y.len());
            return x86::forward_row(y, f32s(x), f32s(bias));
        }
    }
    simd::dispatch(ForwardRow { y, x, bias })
}

/// `du = dy·gelu'(x + b)` as a new buffer (written once, not zero-filled first): the input
/// gradient when no other contribution to it exists yet.
pub fn input_grad<T: Real>(dy: &[T], x: &[T], bias: &[T], cols: usize) -> Vec<T> {
    let rows = x.len() / cols.max(1);
    // Safety: each row's kernel writes every element of its row.
    unsafe {
        super::written(rows * cols, cols, |start, du| {
            simd::dispatch(BackwardRow { du, dy: &dy[start..][..cols], x: &x[start..][..cols], bias })
        })
    }
}

/// `dx += du` and `dbias += Σ_rows du` (when `dbias` is non-empty), with `du = dy·gelu'(x + b)`.
pub fn backward<T: Real>(dx: &mut [T], dbias: &mut [T], dy: &[T], x: &[T], bias: &[T], cols: usize) {
    if dx.is_empty() && dbias.is_empty() {
        return;
    }
    let du = input_grad(dy, x, bias, cols);
    if !dx.is_empty() {
        super::elementwise::axpy(dx, T::one(), &du);
    }
    if !dbias.is_empty() {
        super::elementwise::column_sums_into(dbias, &du, cols);
    }
}
