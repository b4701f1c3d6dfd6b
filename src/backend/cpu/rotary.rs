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

use super::Real;

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
    let half = head_dim / 2;
    let max_pos = positions.iter().copied().max().unwrap_or(0).max(0) as usize;
    let t = tables::<T>(max_pos, head_dim);
    let (cos, sin) = (&t.cos, &t.sin);
    out.par_chunks_mut(out_stride).zip(x.par_chunks(in_stride)).zip(positions.par_iter()).for_each(|((o, x), &p)| {
        let (c, s) = (&cos[p as usize * half..][..half], &sin[p as usize * half..][..half]);
        for h in 0..n_heads {
            let base = h * head_dim;
            for i in 0..half {
                let (x1, x2) = (x[base + i], x[base + i + half]);
                let sn = if inverse { -s[i] } else { s[i] };
                let y1 = (x1 * c[i] - x2 * sn) * scale;
                let y2 = (x2 * c[i] + x1 * sn) * scale;
                if accumulate {
                    // Safety: with `accumulate` the caller's buffer is initialised.
                    let (o1, o2) = unsafe { (o[base + i].assume_init(), o[base + i + half].assume_init()) };
                    o[base + i].write(o1 + y1);
                    o[base + i + half].write(o2 + y2);
                } else {
                    o[base + i].write(y1);
                    o[base + i + half].write(y2);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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
