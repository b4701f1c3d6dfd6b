//! Binary cross-entropy with logits over masked entries, as
//! `torch.nn.functional.binary_cross_entropy_with_logits(x[m], t[m])` (mean over the
//! entries with mask 1): `l = max(x, 0) − x·t + log(1 + exp(−|x|))`, `dl/dx = σ(x) − t`.
//! An all-zero mask gives loss 0 and no gradient.

use rayon::prelude::*;

use super::Real;

/// Returns the loss and writes `dlogits` for an upstream gradient of 1.
pub fn forward_backward<T: Real>(dlogits: &mut [T], logits: &[T], targets: &[T], mask: &[T]) -> f64 {
    let count = mask.iter().filter(|&&m| m != T::zero()).count();
    let inv = if count > 0 { 1.0 / count as f64 } else { 0.0 };
    let inv_t = T::from_f64(inv);
    dlogits
        .par_iter_mut()
        .zip(logits.par_iter().zip(targets.par_iter()).zip(mask.par_iter()))
        .map(|(d, ((&x, &t), &m))| {
            if m == T::zero() {
                *d = T::zero();
                return 0.0;
            }
            let sig = T::one() / (T::one() + (-x).exp());
            *d = (sig - t) * inv_t * m;
            let l = x.max(T::zero()) - x * t + (-x.abs()).exp().ln_1p();
            (l * m).to_f64() * inv
        })
        .collect::<Vec<f64>>()
        .iter()
        .sum()
}
