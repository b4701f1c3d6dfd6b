//! Launchers of `kernels/grad_norm.cu`: the global gradient norm, clipping coefficient
//! and overflow flag of an optimizer step, computed and kept on the device (the update
//! kernels read them, so a step needs no host synchronisation). The CPU twin is
//! `backend/cpu/grad_norm.rs`; `ops/grad_norm.rs` dispatches.
//!
//! Launch shapes as the kernel file documents: `sum_squares_f32` on 256-thread blocks,
//! grid `min(ceil(n/256), 8·num_SMs)` (grid-stride); `clip_and_scale` on one thread.

use anyhow::Result;

use super::device::CudaDevice;
use super::kernels;
use super::launch::{flat_config, long, p, single_thread_config};
use crate::tensor::Tensor;

/// `*acc += Σ x²`; `*nonfinite = 1` if any element of `x` is inf/nan.
pub fn sum_squares(dev: &CudaDevice, acc: &Tensor, nonfinite: &Tensor, x: &Tensor) -> Result<()> {
    let n = x.numel();
    kernels::grad_norm::sum_squares_f32(dev, flat_config(dev, n, 1, 8), p(acc)?, p(nonfinite)?, p(x)?, long(n))
}

/// From the sum of squares: the gradient multiplier (clip × 1/loss-scale), the skip flag
/// and the unscaled norm, all written on the device. `max_norm <= 0`: no clipping.
#[allow(clippy::too_many_arguments)]
pub fn clip_and_scale(
    dev: &CudaDevice,
    coef: &Tensor,
    sumsq: &Tensor,
    nonfinite: &Tensor,
    skip: &Tensor,
    max_norm: f32,
    inv_loss_scale: f32,
    norm: &Tensor,
) -> Result<()> {
    kernels::grad_norm::clip_and_scale(
        dev,
        single_thread_config(),
        p(coef)?,
        p(sumsq)?,
        p(nonfinite)?,
        p(skip)?,
        max_norm,
        inv_loss_scale,
        p(norm)?,
    )
}
