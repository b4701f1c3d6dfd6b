//! Row gather and its backward, the scatter-add (the `<cls>` pooling of the classifier;
//! the CUDA twin is `kernels/gather.cu`).

use super::Real;

/// `out[i, :] = x[rows[i], :]`.
pub fn gather_rows<T: Real>(out: &mut [T], x: &[T], rows: &[i32], dim: usize) {
    for (o, &r) in out.chunks_mut(dim).zip(rows) {
        o.copy_from_slice(&x[r as usize * dim..][..dim]);
    }
}

/// `dx[rows[i], :] += dout[i, :]` (rows may repeat).
pub fn scatter_add_rows<T: Real>(dx: &mut [T], dout: &[T], rows: &[i32], dim: usize) {
    for (d, &r) in dout.chunks(dim).zip(rows) {
        for (x, &g) in dx[r as usize * dim..][..dim].iter_mut().zip(d) {
            *x += g;
        }
    }
}
