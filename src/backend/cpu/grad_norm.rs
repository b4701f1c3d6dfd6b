//! Global gradient norm and clipping coefficient on the host: the CPU twin of
//! `kernels/grad_norm.cu` (launched by `backend/cuda/grad_norm.rs`, dispatched by
//! `ops/grad_norm.rs`).
//!
//! PyTorch's `clip_grad_norm_(max_norm, norm_type=2)` on unscaled gradients (as after
//! `GradScaler.unscale_`): with `S = Σ g²` over every gradient of the step (loss-scaled),
//! `norm = sqrt(S) · inv_loss_scale` and `clip = max_norm / (norm + 1e-6)` when
//! `norm > max_norm`, else 1. Sums are formed in f64 here (the GPU sums in fp32).

/// `Σ x²` of one gradient, in f64: fixed blocks summed over the rayon pool, each with
/// eight running sums (one serial chain of adds was ≈ 2 % of an ESM-2 8M step, on the
/// main thread), then combined in order, so the result does not depend on the threads.
pub fn sum_squares(x: &[f32]) -> f64 {
    use rayon::prelude::*;
    const BLOCK: usize = 1 << 15;
    let block_sum = |b: &[f32]| {
        let mut lanes = [0f64; 8];
        let chunks = b.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            for (s, &v) in lanes.iter_mut().zip(c) {
                *s += (v as f64) * (v as f64);
            }
        }
        lanes.iter().sum::<f64>() + rest.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>()
    };
    let blocks: Vec<f64> = x.par_chunks(BLOCK).map(block_sum).collect();
    blocks.iter().sum()
}

/// The clipping factor for a global norm: `max_norm / (norm + 1e-6)` above `max_norm`,
/// else 1 (also without a limit).
pub fn clip_coefficient(norm: f64, max_norm: Option<f64>) -> f64 {
    match max_norm {
        Some(max) if norm > max => max / (norm + 1e-6),
        _ => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocked sum against a plain in-order f64 sum (a length that ends mid-block and
    /// mid-lane), and bit for bit the same on one thread as on several.
    #[test]
    fn sum_squares_is_the_sum_and_independent_of_threads() {
        let x: Vec<f32> = super::super::test_values(100_003, 41).into_iter().map(|v| v as f32).collect();
        let plain: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let got = sum_squares(&x);
        assert!((got - plain).abs() <= 1e-12 * plain, "{got} vs {plain}");
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        assert_eq!(one.install(|| sum_squares(&x)).to_bits(), three.install(|| sum_squares(&x)).to_bits());
    }
}
