//! Rotary position embedding, GPT-NeoX "rotate half" form, as Hugging Face ESM-2
//! (Su et al. 2021, RoFormer, eq. 34 with the halves paired instead of interleaved).
//!
//! For head dimension `d`, pair `(i, i + d/2)` of every head is rotated by
//! `θ = pos · inv_freq[i]`, `inv_freq[i] = 1 / 10000^(2i/d)`:
//! `y₁ = x₁·cosθ − x₂·sinθ`, `y₂ = x₂·cosθ + x₁·sinθ`, then multiplied by `scale`
//! (ESM-2 scales q by `d^-½` before the rotation). The backward applies the inverse
//! rotation (θ → −θ). `pos` is the token's true position, so a crop keeps its offset.

use std::any::{Any, TypeId};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::{simd, Real};

/// `inv_freq` exactly as HF computes it, in f32: `1 / 10000^(float(2i) / d)`.
pub fn inv_freq(head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2).map(|i| 1.0 / 10000f32.powf((2 * i) as f32 / head_dim as f32)).collect()
}

/// cos/sin of `pos · inv_freq[i]` for every position up to at least `max_pos`,
/// `[pos][i]`. The angle is formed in f32 like HF's `torch.outer(t, inv_freq)` and then
/// evaluated in T.
struct Tables<T> {
    max_pos: usize,
    cos: Vec<T>,
    sin: Vec<T>,
}

impl<T: Real> Tables<T> {
    fn new(max_pos: usize, head_dim: usize) -> Self {
        let f = inv_freq(head_dim);
        let half = head_dim / 2;
        let mut cos = vec![T::zero(); (max_pos + 1) * half];
        let mut sin = vec![T::zero(); (max_pos + 1) * half];
        for p in 0..=max_pos {
            for (i, &fi) in f.iter().enumerate() {
                let angle = T::from_f64((p as f32 * fi) as f64);
                let (s, c) = angle.sin_cos();
                cos[p * half + i] = c;
                sin[p * half + i] = s;
            }
        }
        Tables { max_pos, cos, sin }
    }
}

/// The tables for `head_dim` in `T` covering `max_pos`, computed once per process (and again
/// only for longer proteins): every layer rotates q and k with the same angles, and the
/// `sin_cos` calls cost more than the rotation itself.
fn tables<T: Real>(max_pos: usize, head_dim: usize) -> Arc<Tables<T>> {
    type Cache = Vec<((TypeId, usize), Arc<dyn Any + Send + Sync>)>;
    static CACHE: Mutex<Cache> = Mutex::new(Vec::new());
    let key = (TypeId::of::<T>(), head_dim);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let hit = cache.iter().find(|(k, _)| *k == key).and_then(|(_, t)| Arc::clone(t).downcast::<Tables<T>>().ok());
    match hit {
        Some(t) if t.max_pos >= max_pos => t,
        old => {
            // Grow geometrically so a run of ever-longer proteins recomputes rarely.
            let grown = old.map_or(0, |t| 2 * t.max_pos).max(max_pos).max(1023);
            let t = Arc::new(Tables::<T>::new(grown, head_dim));
            cache.retain(|(k, _)| *k != key);
            cache.push((key, Arc::clone(&t) as Arc<dyn Any + Send + Sync>));
            t
        }
    }
}

/// Shape of one rotary application.
#[derive(Clone, Copy, Debug)]
pub struct RotaryDims {
    pub n_heads: usize,
    pub head_dim: usize,
    /// Row stride of the input (≥ n_heads·head_dim).
    pub in_stride: usize,
    /// Row stride of the output.
    pub out_stride: usize,
}

/// `out[t] = R(pos[t])·x[t]·scale` for every head.
pub fn forward<T: Real>(out: &mut [T], x: &[T], positions: &[i32], dims: RotaryDims, scale: T) {
    // Safety: `rotate` stores only rotated values.
    rotate(unsafe { super::as_slots(out) }, x, positions, dims, scale, false, false);
}

/// `dx[t] += R(pos[t])ᵀ·dout[t]·scale`.
pub fn backward<T: Real>(dx: &mut [T], dout: &[T], positions: &[i32], dims: RotaryDims, scale: T) {
    // Safety: `rotate` stores only valid values; with `accumulate` it reads `dx`'s own.
    rotate(unsafe { super::as_slots(dx) }, dout, positions, dims, scale, true, true);
}

/// [`forward`] (`inverse` off) or the input gradient `R(pos[t])ᵀ·dout[t]·scale` (on) as a
/// new buffer of `positions.len()` rows, written once (not zero-filled first). Panics
/// unless the rows are dense (`out_stride = n_heads·head_dim`).
pub fn rotated_new<T: Real>(x: &[T], positions: &[i32], dims: RotaryDims, scale: T, inverse: bool) -> Vec<T> {
    let width = dims.n_heads * dims.head_dim;
    assert_eq!(dims.out_stride, width, "rotary: a new output has dense rows");
    assert!(dims.head_dim % 2 == 0, "rotary: an odd head width leaves a column unrotated");
    let n = positions.len() * width;
    let mut out = Vec::with_capacity(n);
    rotate(&mut out.spare_capacity_mut()[..n], x, positions, dims, scale, inverse, false);
    // Safety: `rotate` wrote every element of each dense row.
    unsafe { out.set_len(n) };
    out
}

/// `out[t] (+)= R(±pos[t])·x[t]·scale` for the rows of `positions`.
fn rotate<T: Real>(
    out: &mut [std::mem::MaybeUninit<T>],
    x: &[T],
    positions: &[i32],
    dims: RotaryDims,
    scale: T,
    inverse: bool,
    accumulate: bool,
) {
    let RotaryDims { n_heads, head_dim, in_stride, out_stride } = dims;
    let max_pos = positions.iter().copied().max().unwrap_or(0).max(0) as usize;
    let t = tables::<T>(max_pos, head_dim);
    // The inverse rotation is the rotation by −θ: sin changes sign, cos does not.
    let sign = if inverse { -T::one() } else { T::one() };
    let rows = out.par_chunks_mut(out_stride * ROWS_PER_TASK).zip(x.par_chunks(in_stride * ROWS_PER_TASK));
    rows.zip(positions.par_chunks(ROWS_PER_TASK)).for_each(|((out, x), positions)| {
        let dims = RotaryDims { n_heads, head_dim, in_stride, out_stride };
        simd::dispatch(RotateRows { out, x, positions, dims, cos: &t.cos, sin: &t.sin, sign, scale, accumulate });
    });
}

/// Rows a parallel task rotates (one row is a few hundred floats: too little work alone).
const ROWS_PER_TASK: usize = 64;

/// A run of rows of [`rotate`], compiled per SIMD level: each head's halves are contiguous
/// columns, so every step is a vector over `i`.
struct RotateRows<'a, T> {
    out: &'a mut [std::mem::MaybeUninit<T>],
    x: &'a [T],
    positions: &'a [i32],
    dims: RotaryDims,
    cos: &'a [T],
    sin: &'a [T],
    sign: T,
    scale: T,
    accumulate: bool,
}

impl<T: Real> simd::Kernel for RotateRows<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let RotaryDims { n_heads, head_dim, in_stride, out_stride } = self.dims;
        let half = head_dim / 2;
        let (sign, scale) = (self.sign, self.scale);
        for (r, &p) in self.positions.iter().enumerate() {
            let c = &self.cos[p as usize * half..][..half];
            let s = &self.sin[p as usize * half..][..half];
            let x = &self.x[r * in_stride..];
            let o = &mut self.out[r * out_stride..];
            for h in 0..n_heads {
                let base = h * head_dim;
                let (x1, x2) = (&x[base..][..half], &x[base + half..][..half]);
                let (o1, o2) = o[base..][..head_dim].split_at_mut(half);
                // Eight columns at a time as fixed-width steps (vectorised as such; a loop
                // of `half` = 8–32 columns is too short for the compiler's own vector loop).
                let mut i = 0;
                while i + LANES <= half {
                    let cols = i..i + LANES;
                    let (o1, o2) = (&mut o1[cols.clone()], &mut o2[cols.clone()]);
                    let (x1, x2, c, s) = (&x1[cols.clone()], &x2[cols.clone()], &c[cols.clone()], &s[cols]);
                    rotate_columns::<T, LANES>(o1, o2, x1, x2, c, s, sign, scale, self.accumulate);
                    i += LANES;
                }
                for i in i..half {
                    let (o1, o2) = (&mut o1[i..i + 1], &mut o2[i..i + 1]);
                    rotate_columns::<T, 1>(o1, o2, &x1[i..], &x2[i..], &c[i..], &s[i..], sign, scale, self.accumulate);
                }
            }
        }
    }
}

/// Columns rotated together by [`RotateRows`].
const LANES: usize = 8;

/// The first `N` columns `i` of these slices of one head: `y₁ = (x₁·cos − x₂·sin)·scale`,
/// `y₂ = (x₂·cos + x₁·sin)·scale` (`sin` times `sign`), written to or added onto `o₁`, `o₂`.
/// Every slice is cut to `N` first, so the loop has a constant length and no bounds checks.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rotate_columns<T: Real, const N: usize>(
    o1: &mut [std::mem::MaybeUninit<T>],
    o2: &mut [std::mem::MaybeUninit<T>],
    x1: &[T],
    x2: &[T],
    c: &[T],
    s: &[T],
    sign: T,
    scale: T,
    accumulate: bool,
) {
    let (o1, o2) = (&mut o1[..N], &mut o2[..N]);
    let (x1, x2, c, s) = (&x1[..N], &x2[..N], &c[..N], &s[..N]);
    for i in 0..N {
        let sn = s[i] * sign;
        let y1 = (x1[i] * c[i] - x2[i] * sn) * scale;
        let y2 = (x2[i] * c[i] + x1[i] * sn) * scale;
        if accumulate {
            // Safety: with `accumulate` the caller's buffer is initialised.
            let (a1, a2) = unsafe { (o1[i].assume_init(), o2[i].assume_init()) };
            o1[i].write(a1 + y1);
            o2[i].write(a2 + y2);
        } else {
            o1[i].write(y1);
            o2[i].write(y2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorised rows equal the plain per-pair formula bit for bit (no fused
    /// multiply-adds), forward and inverse, for head widths whose halves take the
    /// eight-column steps, their remainder, or both (8, 11, 12, 32 pairs).
    #[test]
    fn rows_equal_the_plain_formula_at_every_head_width() {
        for (n_heads, head_dim) in [(2, 16), (3, 22), (20, 24), (1, 64)] {
            let (width, rows, half) = (n_heads * head_dim, 9, head_dim / 2);
            let dims = RotaryDims { n_heads, head_dim, in_stride: width, out_stride: width };
            let x: Vec<f32> = super::super::test_values(rows * width, 5).into_iter().map(|v| v as f32).collect();
            let positions: Vec<i32> = (0..rows as i32).map(|p| 100 * p + 3).collect();
            let f = inv_freq(head_dim);
            for inverse in [false, true] {
                let got = rotated_new(&x, &positions, dims, 0.3, inverse);
                for (r, &p) in positions.iter().enumerate() {
                    for h in 0..n_heads {
                        for i in 0..half {
                            let (s, c) = (p as f32 * f[i]).sin_cos();
                            let s = if inverse { -s } else { s };
                            let (j1, j2) = (r * width + h * head_dim + i, r * width + h * head_dim + i + half);
                            assert_eq!(got[j1], (x[j1] * c - x[j2] * s) * 0.3, "{n_heads}x{head_dim} row {r} pair {i}");
                            assert_eq!(got[j2], (x[j2] * c + x[j1] * s) * 0.3, "{n_heads}x{head_dim} row {r} pair {i}");
                        }
                    }
                }
            }
        }
    }

    /// The new-buffer rotation equals the in-place kernels bit for bit: the forward into a
    /// buffer, and the input gradient accumulated onto zeros.
    #[test]
    fn new_buffers_equal_the_in_place_kernels() {
        let (n_heads, head_dim, rows) = (3, 8, 11);
        let width = n_heads * head_dim;
        let dims = RotaryDims { n_heads, head_dim, in_stride: width, out_stride: width };
        let x: Vec<f32> = super::super::test_values(rows * width, 3).into_iter().map(|v| v as f32).collect();
        let positions: Vec<i32> = (0..rows as i32).map(|p| (p * 7) % 40).collect();
        let mut y = vec![0f32; rows * width];
        forward(&mut y, &x, &positions, dims, 0.5);
        assert_eq!(rotated_new(&x, &positions, dims, 0.5, false), y);
        let mut dx = vec![0f32; rows * width];
        backward(&mut dx, &x, &positions, dims, 0.5);
        assert_eq!(rotated_new(&x, &positions, dims, 0.5, true), dx);
    }
}
