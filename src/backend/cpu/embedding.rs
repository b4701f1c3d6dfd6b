//! Token embedding with ESM-2's per-token scale (token-dropout rescaling).
//!
//! Forward: `out[t, :] = weight[ids[t], :] · row_scale[t]`.
//! Backward: `dweight[ids[t], :] += dout[t, :] · row_scale[t]`.

use rayon::prelude::*;

use super::Real;

pub fn forward<T: Real>(out: &mut [T], weight: &[T], ids: &[i32], row_scale: &[T], dim: usize) {
    out.par_chunks_mut(dim).zip(ids.par_iter()).zip(row_scale.par_iter()).for_each(|((o, &id), &s)| {
        for (o, &w) in o.iter_mut().zip(&weight[id as usize * dim..][..dim]) {
            *o = w * s;
        }
    });
}

pub fn backward<T: Real>(dweight: &mut [T], dout: &[T], ids: &[i32], row_scale: &[T], dim: usize) {
    // Sequential over tokens: rows of `dweight` repeat (33-token vocabulary), and the
    // work is tiny next to the transformer layers.
    for ((g, &id), &s) in dout.chunks(dim).zip(ids).zip(row_scale) {
        for (d, &g) in dweight[id as usize * dim..][..dim].iter_mut().zip(g) {
            *d += g * s;
        }
    }
}
