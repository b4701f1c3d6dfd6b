//! Linear layer `y = x·Wᵀ + b` with PyTorch's weight layout `W: [out, in]` (the CUDA twin
//! is `backend/cuda/linear.rs`: cuBLAS for the products, `kernels/linear.cu` for the bias).
//!
//! Backward: `dx += dy·W`, `dW += dyᵀ·x`, `db += Σ_rows dy`.

use super::elementwise::column_sums_into;
use super::matmul::{matmul, MatRef};
use super::Real;

/// Shapes: `x: [n, k]`, `w: [m, k]`, `b: [m]` or empty, `y: [n, m]`.
#[derive(Clone, Copy, Debug)]
pub struct LinearDims {
    pub n: usize,
    pub k: usize,
    pub m: usize,
}

/// `y = x·Wᵀ + b` (`b` empty: no bias).
pub fn forward<T: Real>(y: &mut [T], x: &[T], w: &[T], b: &[T], d: LinearDims) {
    matmul(y, MatRef::new(x, d.n, d.k), MatRef::new(w, d.m, d.k).t(), false);
    if !b.is_empty() {
        for row in y.chunks_mut(d.m) {
            for (v, &bv) in row.iter_mut().zip(b) {
                *v += bv;
            }
        }
    }
}

/// `dx += dy·W`, `dw += dyᵀ·x`, `db += Σ_rows dy`; an empty output is skipped.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(dx: &mut [T], dw: &mut [T], db: &mut [T], dy: &[T], x: &[T], w: &[T], d: LinearDims) {
    if !dx.is_empty() {
        matmul(dx, MatRef::new(dy, d.n, d.m), MatRef::new(w, d.m, d.k), true);
    }
    if !dw.is_empty() {
        matmul(dw, MatRef::new(dy, d.n, d.m).t(), MatRef::new(x, d.n, d.k), true);
    }
    if !db.is_empty() {
        column_sums_into(db, dy, d.m);
    }
}
