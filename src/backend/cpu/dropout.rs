//! Dropout with a counter-based RNG (Philox4x32-10, `philox.rs`): element `i` is kept
//! when its uniform number `u(i; seed, offset) ≥ p`, and kept values are scaled by
//! `1/(1−p)`. The mask is a pure function of `(i, seed, offset)`, so the backward
//! regenerates it instead of storing it, and `kernels/dropout.cu` draws the same mask.

use rayon::prelude::*;

use super::philox::{dropout_bits, dropout_scale, word_to_uniform};
use super::Real;

/// Elements per parallel task (a multiple of 4: one Philox call serves 4 elements).
const CHUNK: usize = 1 << 14;

/// `y = x·mask/(1−p)` (write), or `y += x·mask/(1−p)` when `accumulate`.
pub fn apply<T: Real>(y: &mut [T], x: &[T], p: f32, seed: u64, offset: u64, accumulate: bool) {
    let scale = T::from_f64(dropout_scale(p) as f64);
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).enumerate().for_each(|(c, (y, x))| {
        let first_group = (c * CHUNK / 4) as u64;
        for (g, (y4, x4)) in y.chunks_mut(4).zip(x.chunks(4)).enumerate() {
            let r = dropout_bits(first_group + g as u64, seed, offset);
            for k in 0..y4.len() {
                let v = if word_to_uniform(r[k]) >= p { x4[k] * scale } else { T::zero() };
                if accumulate {
                    y4[k] += v;
                } else {
                    y4[k] = v;
                }
            }
        }
    });
}
