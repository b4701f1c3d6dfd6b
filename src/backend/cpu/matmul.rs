//! Matrix multiply for the CPU backend, through the `gemm` crate (BLIS-style packed
//! micro-kernels with AVX2/AVX-512, multi-threaded with rayon).
//!
//! `C = α·op(A)·op(B) + β·C` with row-major storage; a transposed operand is the same
//! memory read with swapped strides, so nothing is copied.

use gemm::Parallelism;

use super::Real;

/// A strided read-only matrix view.
#[derive(Clone, Copy)]
pub struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    /// Distance between consecutive rows, in elements.
    pub row_stride: usize,
    /// Distance between consecutive columns, in elements.
    pub col_stride: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// A contiguous row-major `rows × cols` matrix.
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        MatRef { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// A `rows × cols` block starting at `offset` whose rows are `row_stride` apart
    /// (e.g. one attention head's columns of a `[tokens, heads·dim]` matrix).
    pub fn strided(data: &'a [T], offset: usize, rows: usize, cols: usize, row_stride: usize) -> Self {
        MatRef { data: &data[offset..], rows, cols, row_stride, col_stride: 1 }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        MatRef { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }
}

/// How many threads a product may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// Single-threaded (inside an already parallel loop).
    One,
    /// All rayon threads, for products large enough to pay for it.
    All,
}

/// Work below which threading costs more than it saves (multiply-adds).
const PARALLEL_MIN_FLOPS: usize = 1 << 18;

/// `C = α·A·B + β·C` where `C` is the `a.rows × b.cols` matrix at `c[c_offset..]` with rows
/// `c_row_stride` apart. `β = 0` ignores (and overwrites) the old contents of `C`.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Real>(
    c: &mut [T],
    c_offset: usize,
    c_row_stride: usize,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    alpha: T,
    beta: T,
    threads: Threads,
) {
    assert_eq!(a.cols, b.rows, "gemm: inner dimensions differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    a.check();
    b.check();
    assert!(c_offset + (m - 1) * c_row_stride + n <= c.len(), "gemm: output out of bounds");
    if k == 0 {
        for i in 0..m {
            for v in &mut c[c_offset + i * c_row_stride..][..n] {
                *v = if beta == T::zero() { T::zero() } else { beta * *v };
            }
        }
        return;
    }
    let parallelism = match threads {
        Threads::All if m * n * k >= PARALLEL_MIN_FLOPS => Parallelism::Rayon(0),
        _ => Parallelism::None,
    };
    // Safety: the views and the output block were bounds-checked above.
    unsafe { raw_gemm(c.as_mut_ptr().add(c_offset), c_row_stride, a, b, alpha, beta, parallelism) }
}

/// The `gemm` crate call: it computes `dst := α_g·dst + β_g·lhs·rhs`, so our `(α, β)`
/// map to `(β, α)`; `dst` is read only when `β ≠ 0`.
///
/// # Safety
/// `c` must point to a writable `a.rows × b.cols` block with rows `c_row_stride` apart.
unsafe fn raw_gemm<T: Real>(
    c: *mut T,
    c_row_stride: usize,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    alpha: T,
    beta: T,
    parallelism: Parallelism,
) {
    gemm::gemm(
        a.rows,
        b.cols,
        a.cols,
        c,
        1,
        c_row_stride as isize,
        beta != T::zero(),
        a.data.as_ptr(),
        a.col_stride as isize,
        a.row_stride as isize,
        b.data.as_ptr(),
        b.col_stride as isize,
        b.row_stride as isize,
        beta,
        alpha,
        false,
        false,
        false,
        parallelism,
    );
}

/// Like [`gemm`] but into a raw pointer, single-threaded: for parallel loops whose tasks
/// write disjoint blocks of one matrix (attention heads).
///
/// # Safety
/// `c` must point to an `a.rows × b.cols` block with rows `c_row_stride` apart that stays
/// valid, and that no other task reads or writes during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_into_ptr<T: Real>(
    c: *mut T,
    c_row_stride: usize,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    alpha: T,
    beta: T,
) {
    assert_eq!(a.cols, b.rows, "gemm: inner dimensions differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 || k == 0 {
        assert!(k > 0 || m == 0 || n == 0, "gemm_into_ptr: empty inner dimension");
        return;
    }
    a.check();
    b.check();
    raw_gemm(c, c_row_stride, a, b, alpha, beta, Parallelism::None);
}

/// `C (m×n, contiguous) = A·B` or `C += A·B` when `accumulate`.
pub fn matmul<T: Real>(c: &mut [T], a: MatRef<'_, T>, b: MatRef<'_, T>, accumulate: bool) {
    let n = b.cols;
    let beta = if accumulate { T::one() } else { T::zero() };
    gemm(c, 0, n, a, b, T::one(), beta, Threads::All);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn matches_naive_product_with_transposes_and_accumulation() {
        let (m, k, n) = (37, 19, 23);
        let a: Vec<f64> = (0..m * k).map(|i| ((i * 7 % 13) as f64 - 6.0) / 5.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| ((i * 5 % 11) as f64 - 5.0) / 3.0).collect();
        let want = naive(&a, &b, m, k, n);
        let mut c = vec![1.0; m * n];
        matmul(&mut c, MatRef::new(&a, m, k), MatRef::new(&b, k, n), true);
        for (x, y) in c.iter().zip(&want) {
            assert!((x - (y + 1.0)).abs() < 1e-12);
        }
        // Aᵀ stored as k×m, read transposed.
        let at: Vec<f64> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let mut c2 = vec![0.0; m * n];
        matmul(&mut c2, MatRef::new(&at, k, m).t(), MatRef::new(&b, k, n), false);
        for (x, y) in c2.iter().zip(&want) {
            assert!((x - y).abs() < 1e-12);
        }
    }
}
