//! Elementwise kernels: residual add, scaling, tanh.

use rayon::prelude::*;

use super::Real;

/// Chunk size for parallel elementwise loops (elements).
const CHUNK: usize = 1 << 14;

/// `a + b` as a new buffer, written once (not zero-filled first).
pub fn add<T: Real>(a: &[T], b: &[T]) -> Vec<T> {
    assert_eq!(a.len(), b.len(), "add: operands of different lengths");
    // Safety: each chunk writes every one of its elements.
    unsafe {
        super::written(a.len(), CHUNK, |start, o| {
            for ((o, &a), &b) in o.iter_mut().zip(&a[start..]).zip(&b[start..]) {
                o.write(a + b);
            }
        })
    }
}

/// `dst += alpha · src`.
pub fn axpy<T: Real>(dst: &mut [T], alpha: T, src: &[T]) {
    dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| {
        for (d, &s) in d.iter_mut().zip(s) {
            *d += alpha * s;
        }
    });
}

/// `out = alpha · x`.
pub fn scale<T: Real>(out: &mut [T], alpha: T, x: &[T]) {
    out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, x)| {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = alpha * x;
        }
    });
}

/// `out[j] += Σ_rows x[row, j]` for a row-major `[rows, cols]` matrix (bias gradients).
pub fn column_sums_into<T: Real>(out: &mut [T], x: &[T], cols: usize) {
    let rows_per_task = (CHUNK / cols.max(1)).max(1);
    let sums = x
        .par_chunks(cols * rows_per_task)
        .map(|block| {
            let mut s = vec![T::zero(); cols];
            for row in block.chunks(cols) {
                for (s, &v) in s.iter_mut().zip(row) {
                    *s += v;
                }
            }
            s
        })
        // Partials are summed in a fixed order so results are bit-for-bit repeatable.
        .collect::<Vec<_>>()
        .into_iter()
        .fold(vec![T::zero(); cols], |mut a, b| {
            for (a, b) in a.iter_mut().zip(b) {
                *a += b;
            }
            a
        });
    for (o, s) in out.iter_mut().zip(sums) {
        *o += s;
    }
}

/// `y = tanh(x)`.
pub fn tanh_forward<T: Real>(y: &mut [T], x: &[T]) {
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = x.tanh();
        }
    });
}

/// `dx += dy · (1 − y²)`.
pub fn tanh_backward<T: Real>(dx: &mut [T], dy: &[T], y: &[T]) {
    dx.par_chunks_mut(CHUNK).zip(dy.par_chunks(CHUNK)).zip(y.par_chunks(CHUNK)).for_each(|((dx, dy), y)| {
        for ((dx, &dy), &y) in dx.iter_mut().zip(dy).zip(y) {
            *dx += dy * (T::one() - y * y);
        }
    });
}

#[cfg(test)]
mod tests {
    /// Every element is `a + b`, over several chunks and a short last one.
    #[test]
    fn add_writes_every_sum() {
        let n = 3 * super::CHUNK + 5;
        let a: Vec<f32> = super::super::test_values(n, 1).into_iter().map(|v| v as f32).collect();
        let b: Vec<f32> = super::super::test_values(n, 2).into_iter().map(|v| v as f32).collect();
        let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        assert_eq!(super::add(&a, &b), want);
        assert!(super::add::<f32>(&[], &[]).is_empty());
    }
}
