//! Fused weighted softmax cross-entropy on the GPU (`kernels/cross_entropy.cu`): one
//! kernel computes each row's loss and the logits' gradient (for a unit upstream
//! gradient, in the logits' dtype, fp32 maths); the loss is summed on the device and
//! the backward scales the saved gradient by the upstream one without a host sync.

use anyhow::Result;

use super::elementwise::scale_by_device_scalar;
use super::launch::{device_of, empty, int, kname, launch, long, p, p_opt, rows_config, zeros, Arg};
use crate::autograd::Tape;
use crate::backend::cpu::cross_entropy::{weight_sum, IGNORE_INDEX};
use crate::ops::out_grad;
use crate::tensor::{DType, Tensor};

pub fn cross_entropy(
    tape: &Tape,
    logits: &Tensor,
    labels: &Tensor,
    weights: Option<&Tensor>,
    host_labels: &[i32],
    host_weights: &[f32],
) -> Result<Tensor> {
    let dev = device_of(logits)?;
    let (rows, classes) = logits.dims2()?;
    let wsum = weight_sum(host_labels, host_weights);
    let inv = if wsum > 0.0 { (1.0 / wsum) as f32 } else { 0.0 };
    let loss_rows = empty(&dev, &[rows], DType::F32)?;
    let dlogits = empty(&dev, &[rows, classes], logits.dtype())?;
    launch(
        &dev,
        "cross_entropy",
        &kname("cross_entropy_forward_backward", logits.dtype())?,
        rows_config(rows)?,
        &[
            p(&loss_rows)?,
            p(&dlogits)?,
            p(logits)?,
            p(labels)?,
            p_opt(weights)?,
            int(rows)?,
            int(classes)?,
            Arg::I32(IGNORE_INDEX),
            Arg::F32(inv),
        ],
    )?;
    let loss = zeros(&dev, &[1], DType::F32)?;
    launch(&dev, "reduce", "sum_f32", rows_config(1)?, &[p(&loss)?, p(&loss_rows)?, long(rows)])?;
    let loss = loss.with_requires_grad(tape.needs_grad(&[logits]));
    if loss.requires_grad() {
        let logits = logits.clone();
        tape.record("cross_entropy", &[&loss], move |outs, grads| {
            scale_by_device_scalar(&dlogits, out_grad(outs, 0)?)?;
            grads.accumulate(&logits, &dlogits)
        });
    }
    Ok(loss)
}
