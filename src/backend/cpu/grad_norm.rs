//! Global gradient norm and clipping coefficient on the host: the CPU twin of
//! `kernels/grad_norm.cu` (launched by `backend/cuda/grad_norm.rs`, dispatched by
//! `ops/grad_norm.rs`).
//!
//! PyTorch's `clip_grad_norm_(max_norm, norm_type=2)` on unscaled gradients (as after
//! `GradScaler.unscale_`): with `S = Σ g²` over every gradient of the step (loss-scaled),
//! `norm = sqrt(S) · inv_loss_scale` and `clip = max_norm / (norm + 1e-6)` when
//! `norm > max_norm`, else 1. Sums are formed in f64 here (the GPU sums in fp32).

/// `Σ x²` of one gradient, in f64 (added in order).
pub fn sum_squares(x: &[f32]) -> f64 {
    x.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>()
}

/// The clipping factor for a global norm: `max_norm / (norm + 1e-6)` above `max_norm`,
/// else 1 (also without a limit).
pub fn clip_coefficient(norm: f64, max_norm: Option<f64>) -> f64 {
    match max_norm {
        Some(max) if norm > max => max / (norm + 1e-6),
        _ => 1.0,
    }
}
