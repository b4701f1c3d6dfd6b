//! Global gradient norm, clipping coefficient and overflow flag of an optimizer step
//! (PyTorch's `clip_grad_norm_(max_norm, 2)` on unscaled gradients, as after
//! `GradScaler.unscale_`). Dispatches by device: `backend/cpu/grad_norm.rs` on the host,
//! `kernels/grad_norm.cu` (`backend/cuda/grad_norm.rs`) on the GPU, where the results
//! stay on the device for the update kernels. Not differentiated: records no tape node.

use anyhow::{bail, Context, Result};

use super::ensure_same_device;
use crate::backend::cpu::grad_norm as cpu;
use crate::backend::cuda;
use crate::tensor::{DType, Device, Tensor};

/// The gradient multiplier of a step (`clip / loss_scale`), whether the step is skipped
/// (some gradient is inf or nan), and the unscaled global norm.
pub enum GradScale {
    /// Computed on the host (CPU gradients).
    Host { norm: f64, coef: f64, skip: bool },
    /// `[1]` device scalars (f32 `coef`, i32 `skip`, f32 `norm`) that the CUDA update
    /// kernels read, so the step needs no host synchronisation.
    Device { coef: Tensor, skip: Tensor, norm: Tensor },
}

impl GradScale {
    /// `(norm, skipped)`; on the GPU this copies the two scalars back (a synchronisation:
    /// call it after the updates are queued).
    pub fn read(&self) -> Result<(f64, bool)> {
        Ok(match self {
            GradScale::Host { norm, skip, .. } => (*norm, *skip),
            GradScale::Device { skip, norm, .. } => {
                let skipped = skip.to_vec_i32()?[0] != 0;
                (norm.to_vec_f32()?[0] as f64, skipped)
            }
        })
    }
}

/// Norm, clip coefficient and skip flag over all `grads` (fp32, loss-scaled by
/// `1 / inv_loss_scale`), clipping to `max_norm` when given.
pub fn grad_norm(grads: &[&Tensor], max_norm: Option<f64>, inv_loss_scale: f64) -> Result<GradScale> {
    let Some(first) = grads.first() else { bail!("grad_norm: no gradients") };
    ensure_same_device("grad_norm", grads)?;
    match first.device() {
        Device::Cpu => {
            let mut sumsq = 0f64;
            for g in grads {
                sumsq += cpu::sum_squares(g.as_slice::<f32>().context("grad_norm")?);
            }
            let norm = sumsq.sqrt() * inv_loss_scale;
            let coef = inv_loss_scale * cpu::clip_coefficient(norm, max_norm);
            Ok(GradScale::Host { norm, coef, skip: !norm.is_finite() })
        }
        Device::Cuda(dev) => {
            let d = Device::Cuda(dev.clone());
            let zeros = |dt| Tensor::zeros(&[1], dt, &d);
            let (sumsq, nonfinite) = (zeros(DType::F32)?, zeros(DType::I32)?);
            for g in grads {
                cuda::grad_norm::sum_squares(&dev, &sumsq, &nonfinite, g)?;
            }
            let (coef, skip, norm) = (zeros(DType::F32)?, zeros(DType::I32)?, zeros(DType::F32)?);
            let max = max_norm.unwrap_or(0.0) as f32;
            cuda::grad_norm::clip_and_scale(&dev, &coef, &sumsq, &nonfinite, &skip, max, inv_loss_scale as f32, &norm)?;
            Ok(GradScale::Device { coef, skip, norm })
        }
    }
}
