//! Masked binary cross-entropy with logits on the GPU (`kernels/bce.cu`); targets and
//! mask in f32. The forward sums the loss on the device; the backward writes
//! `dL·m·(σ(x) − t)/count`, reading `dL` from device memory and multiplying it in fp32
//! before the rounding to the logits' dtype (fp16 loss scaling stays exact). Flat
//! grid-stride launches: block 256, grid min(ceil(n/256), 8·SMs).

use anyhow::{bail, Result};

use super::elementwise::check_scalar;
use super::kernels;
use super::launch::{device_of, empty, flat_config, long, null, p, zeros};
use super::nvtx;
use crate::tensor::{DType, Tensor};

/// The mean loss (a one-element f32 tensor) and `1/count`, the mean's factor that the
/// backward needs.
pub fn forward(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<(Tensor, f32)> {
    if targets.dtype() != DType::F32 || mask.dtype() != DType::F32 {
        bail!("bce_with_logits on CUDA takes f32 targets and mask");
    }
    let _r = nvtx::fwd("bce_with_logits");
    let dev = device_of(logits)?;
    let n = logits.numel();
    // The mean is over the mask's non-zero entries; the mask is built on the host, so
    // counting it there costs one small copy.
    let count = mask.to_vec_f32()?.iter().filter(|&&m| m != 0.0).count();
    let inv = if count > 0 { 1.0 / count as f32 } else { 0.0 };
    let loss = zeros(&dev, &[1], DType::F32)?;
    // bce_with_logits_forward_backward_T(loss_sum, dlogits = null, logits, targets, mask, n, inv_count)
    kernels::bce::bce_with_logits_forward_backward(
        &dev,
        flat_config(&dev, n, 1, 8),
        p(&loss)?,
        null(),
        p(logits)?,
        p(targets)?,
        p(mask)?,
        long(n),
        inv,
    )?;
    Ok((loss, inv))
}

/// A new tensor `dL·m·(σ(x) − t)·inv` for the loss gradient `dloss` (device scalar).
pub fn backward(dloss: &Tensor, logits: &Tensor, targets: &Tensor, mask: &Tensor, inv: f32) -> Result<Tensor> {
    let _r = nvtx::bwd("bce_with_logits");
    check_scalar(dloss)?;
    let dev = device_of(logits)?;
    let n = logits.numel();
    let d = empty(&dev, logits.shape(), logits.dtype())?;
    // bce_with_logits_backward_T(dlogits, logits, targets, mask, n, inv_count, dloss)
    kernels::bce::bce_with_logits_backward(
        &dev,
        flat_config(&dev, n, 1, 8),
        p(&d)?,
        p(logits)?,
        p(targets)?,
        p(mask)?,
        long(n),
        inv,
        p(dloss)?,
    )?;
    Ok(d)
}
