//! Masked binary cross-entropy with logits on the GPU (`kernels/bce.cu`): the loss and
//! the gradient in one pass; targets and mask in f32.

use anyhow::{bail, Result};

use super::elementwise::scale_by_device_scalar;
use super::launch::{device_of, empty, grid_stride_config, kname, launch, long, p, zeros, Arg};
use crate::autograd::Tape;
use crate::ops::out_grad;
use crate::tensor::{DType, Tensor};

pub fn bce_with_logits(tape: &Tape, logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if targets.dtype() != DType::F32 || mask.dtype() != DType::F32 {
        bail!("bce_with_logits on CUDA takes f32 targets and mask");
    }
    let dev = device_of(logits)?;
    let n = logits.numel();
    // The mean is over the mask's non-zero entries; the mask is built on the host, so
    // counting it there costs one small copy.
    let count = mask.to_vec_f32()?.iter().filter(|&&m| m != 0.0).count();
    let inv = if count > 0 { 1.0 / count as f32 } else { 0.0 };
    let loss = zeros(&dev, &[1], DType::F32)?;
    let d = empty(&dev, logits.shape(), logits.dtype())?;
    launch(
        &dev,
        "bce",
        &kname("bce_with_logits_forward_backward", logits.dtype())?,
        grid_stride_config(n),
        &[p(&loss)?, p(&d)?, p(logits)?, p(targets)?, p(mask)?, long(n), Arg::F32(inv)],
    )?;
    let loss = loss.with_requires_grad(tape.needs_grad(&[logits]));
    if loss.requires_grad() {
        let logits = logits.clone();
        tape.record("bce_with_logits", &[&loss], move |outs, grads| {
            scale_by_device_scalar(&d, out_grad(outs, 0)?)?;
            grads.accumulate(&logits, &d)
        });
    }
    Ok(loss)
}
