//! Softmax cross-entropy with per-class weights and an ignore index, as
//! `torch.nn.functional.cross_entropy(logits, y, weight=w, ignore_index=-100)`
//! with mean reduction: `L = Σ_i w_{y_i}·(lse_i − x_{i,y_i}) / Σ_i w_{y_i}` over the
//! rows that are not ignored. Backward: `dx_{i,c} = w_{y_i}/Σw · (softmax_{i,c} − [c = y_i])`.
//!
//! Unlike PyTorch (which returns NaN), a batch whose rows are all ignored has loss 0
//! and no gradient.

use rayon::prelude::*;

use super::{simd, Real};

/// Label value of rows that take no part in the loss.
pub const IGNORE_INDEX: i32 = -100;

/// Σ_i w_{y_i} over non-ignored rows (1 per row when `weights` is empty).
pub fn weight_sum(labels: &[i32], weights: &[f32]) -> f64 {
    labels
        .iter()
        .filter(|&&y| y != IGNORE_INDEX)
        .map(|&y| if weights.is_empty() { 1.0 } else { weights[y as usize] as f64 })
        .sum()
}

/// Returns the loss and writes `dlogits` for an upstream gradient of 1 (the op scales it
/// by the real upstream gradient in its backward).
pub fn forward_backward<T: Real>(
    dlogits: &mut [T],
    logits: &[T],
    labels: &[i32],
    weights: &[f32],
    classes: usize,
) -> f64 {
    let wsum = weight_sum(labels, weights);
    let inv = if wsum > 0.0 { 1.0 / wsum } else { 0.0 };
    dlogits
        .par_chunks_mut(classes)
        .zip(logits.par_chunks(classes))
        .zip(labels.par_iter())
        .map(|((d, x), &y)| {
            if y == IGNORE_INDEX {
                d.iter_mut().for_each(|v| *v = T::zero());
                return 0.0;
            }
            let w = if weights.is_empty() { 1.0 } else { weights[y as usize] as f64 };
            let g = T::from_f64(w * inv);
            let lse = simd::dispatch(SoftmaxGradRow { d: &mut *d, x, g });
            d[y as usize] -= g;
            w * inv * (lse - x[y as usize]).to_f64()
        })
        .collect::<Vec<f64>>()
        .iter()
        .sum()
}

/// One row: `d = g·softmax(x)`; returns `logsumexp(x)`. The exponentials go to `d` first so
/// that the loops vectorise (a loop that also accumulates a float sum would not).
struct SoftmaxGradRow<'a, T> {
    d: &'a mut [T],
    x: &'a [T],
    g: T,
}

impl<T: Real> simd::Kernel for SoftmaxGradRow<'_, T> {
    type Output = T;
    #[inline(always)]
    fn run(self) -> T {
        let m = simd::max(self.x);
        for (d, &v) in self.d.iter_mut().zip(self.x) {
            *d = (v - m).exp_fast();
        }
        let sum = simd::sum(self.d);
        let k = self.g / sum;
        for d in self.d.iter_mut() {
            *d *= k;
        }
        m + sum.ln()
    }
}
