//! ESM's contact head (fair-esm `ContactPredictionHead`, Rao et al. 2021), per sequence:
//!
//! 1. channels `c = layer·H + head` of the attention probabilities `A_c` (`L × L`),
//!    with the `<cls>` and `<eos>` rows and columns removed (`L' = L − 2`);
//! 2. symmetrise: `S = A + Aᵀ`;
//! 3. average product correction (Dunn et al. 2008): `F_ij = S_ij − r_i·c_j / T` with row
//!    sums `r`, column sums `c` and total `T` of `S`;
//! 4. logistic regression over channels: `logit_ij = Σ_c w_c·F_c,ij + b`.
//!
//! Backward, with `G = ∂L/∂logit`: `∂w_c = Σ G⊙F_c`, `∂b = Σ G`, `∂F_c = w_c·G`;
//! APC: `∂S_ab = ∂F_ab − (Σ_j ∂F_aj c_j)/T − (Σ_i ∂F_ib r_i)/T + (Σ_ij ∂F_ij r_i c_j)/T²`;
//! symmetrisation: `∂A = ∂S + ∂Sᵀ`, placed back inside the `<cls>`/`<eos>` border.

use rayon::prelude::*;

use super::{Real, SharedMut};

/// One sequence's place in the packed inputs and outputs.
#[derive(Clone, Copy, Debug)]
pub struct SeqSlot {
    /// Tokens in the sequence (including `<cls>` and `<eos>`).
    pub len: usize,
    /// Start of the sequence's blocks in each layer's probability tensor.
    pub prob_offset: usize,
    /// Start of its `L' × L'` logits.
    pub out_offset: usize,
}

/// `S = A + Aᵀ` of channel `(layer, head)` with the border removed, then APC in place.
fn apc_features<T: Real>(probs: &[T], slot: &SeqSlot, head: usize, out: &mut [T]) -> (Vec<T>, Vec<T>, T) {
    let (l, lp) = (slot.len, slot.len - 2);
    let a = &probs[slot.prob_offset + head * l * l..][..l * l];
    for i in 0..lp {
        for j in 0..lp {
            out[i * lp + j] = a[(i + 1) * l + (j + 1)] + a[(j + 1) * l + (i + 1)];
        }
    }
    let r: Vec<T> = (0..lp).map(|i| out[i * lp..][..lp].iter().copied().sum()).collect();
    let c: Vec<T> = (0..lp).map(|j| (0..lp).map(|i| out[i * lp + j]).sum()).collect();
    let total: T = r.iter().copied().sum();
    let inv = T::one() / total;
    for i in 0..lp {
        for j in 0..lp {
            out[i * lp + j] -= r[i] * c[j] * inv;
        }
    }
    (r, c, total)
}

/// Logits of every sequence; `layers[k]` are the probabilities of layer k.
pub fn forward<T: Real>(out: &mut [T], layers: &[&[T]], slots: &[SeqSlot], n_heads: usize, w: &[T], b: T) {
    let out_ptr = SharedMut(out.as_mut_ptr());
    slots.par_iter().for_each(|slot| {
        let lp = slot.len - 2;
        // Safety: each sequence owns its output block.
        let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.at(slot.out_offset), lp * lp) };
        o.iter_mut().for_each(|v| *v = b);
        let mut f = vec![T::zero(); lp * lp];
        for (li, probs) in layers.iter().enumerate() {
            for h in 0..n_heads {
                apc_features(probs, slot, h, &mut f);
                let wc = w[li * n_heads + h];
                for (o, &fv) in o.iter_mut().zip(&f) {
                    *o += wc * fv;
                }
            }
        }
    });
}

/// Accumulates into `dlayers[k]` (same layout as the probabilities; may be empty when
/// no gradient is wanted), `dw` and `db`.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(
    dlayers: &mut [&mut [T]],
    dw: &mut [T],
    db: &mut T,
    dlogits: &[T],
    layers: &[&[T]],
    slots: &[SeqSlot],
    n_heads: usize,
    w: &[T],
) {
    let want_dprobs = dlayers.iter().any(|d| !d.is_empty());
    let dptrs: Vec<SharedMut<T>> = dlayers.iter_mut().map(|d| SharedMut(d.as_mut_ptr())).collect();
    let n_ch = layers.len() * n_heads;
    let (dw_sum, db_sum) = slots
        .par_iter()
        .map(|slot| {
            let (l, lp) = (slot.len, slot.len - 2);
            let g = &dlogits[slot.out_offset..][..lp * lp];
            let mut dw = vec![T::zero(); n_ch];
            let mut f = vec![T::zero(); lp * lp];
            let mut ds = vec![T::zero(); lp * lp];
            for (li, probs) in layers.iter().enumerate() {
                for h in 0..n_heads {
                    let ch = li * n_heads + h;
                    let (r, c, total) = apc_features(probs, slot, h, &mut f);
                    dw[ch] = f.iter().zip(g).map(|(&a, &b)| a * b).sum();
                    if !want_dprobs {
                        continue;
                    }
                    apc_backward(&mut ds, g, w[ch], &r, &c, total, lp);
                    // Safety: each sequence owns its probability blocks.
                    let d =
                        unsafe { std::slice::from_raw_parts_mut(dptrs[li].at(slot.prob_offset + h * l * l), l * l) };
                    for i in 0..lp {
                        for j in 0..lp {
                            let v = ds[i * lp + j] + ds[j * lp + i];
                            d[(i + 1) * l + (j + 1)] += v;
                        }
                    }
                }
            }
            // In f64: the pair gradients cancel over thousands of terms.
            (dw, T::from_f64(g.iter().map(|v| v.to_f64()).sum::<f64>()))
        })
        // Partials are summed in a fixed order so results are bit-for-bit repeatable.
        .collect::<Vec<_>>()
        .into_iter()
        .fold((vec![T::zero(); n_ch], T::zero()), |(mut a, ab), (b, bb)| {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
            (a, ab + bb)
        });
    for (d, s) in dw.iter_mut().zip(dw_sum) {
        *d += s;
    }
    *db += db_sum;
}

/// `∂S` of the APC step for `∂F = w·G`.
fn apc_backward<T: Real>(ds: &mut [T], g: &[T], w: T, r: &[T], c: &[T], total: T, lp: usize) {
    let inv = T::one() / total;
    // u_i = Σ_j ∂F_ij c_j, v_j = Σ_i ∂F_ij r_i, k = Σ_ij ∂F_ij r_i c_j
    let u: Vec<T> = (0..lp).map(|i| (0..lp).map(|j| w * g[i * lp + j] * c[j]).sum()).collect();
    let v: Vec<T> = (0..lp).map(|j| (0..lp).map(|i| w * g[i * lp + j] * r[i]).sum()).collect();
    let k: T = (0..lp).map(|i| u[i] * r[i]).sum();
    for i in 0..lp {
        for j in 0..lp {
            ds[i * lp + j] = w * g[i * lp + j] - u[i] * inv - v[j] * inv + k * inv * inv;
        }
    }
}
