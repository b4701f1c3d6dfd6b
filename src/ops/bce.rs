//! Binary cross-entropy with logits over masked entries (CPU twin `backend/cpu/bce.rs`,
//! kernels `kernels/bce.cu`). The CPU computes the gradient with the loss and keeps it;
//! CUDA recomputes it in the backward from the saved inputs.

use anyhow::Result;

use super::{out_grad, with_real};
use crate::autograd::Tape;
use crate::backend::cpu::bce as cpu;
use crate::backend::cpu::Real;
use crate::backend::cuda::bce as cuda;
use crate::tensor::{ensure_same_shape, Tensor};

/// Mean BCE of `logits` against `targets` (0/1) over the entries where `mask` is non-zero;
/// all three of the same shape and dtype. Returns a one-element tensor.
pub fn bce_with_logits(tape: &Tape, logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    ensure_same_shape(logits, targets, "bce targets")?;
    ensure_same_shape(logits, mask, "bce mask")?;
    super::ensure_same_device("bce_with_logits", &[logits, targets, mask])?;
    if !logits.is_cpu() {
        return on_cuda(tape, logits, targets, mask);
    }
    with_real!(logits.dtype(), T => {
        let mut d = vec![T::zero(); logits.numel()];
        let loss = cpu::forward_backward(&mut d, logits.as_slice::<T>()?, targets.as_slice::<T>()?, mask.as_slice::<T>()?);
        let loss = Tensor::from_vec(vec![T::from_f64(loss)], &[1])?.with_requires_grad(tape.needs_grad(&[logits]));
        if loss.requires_grad() {
            let logits = logits.clone();
            tape.record("bce_with_logits", &[&loss], move |outs, grads| {
                let g = out_grad(outs, 0)?.as_slice::<T>()?[0];
                crate::backend::cpu::elementwise::axpy(grads.acc_slice::<T>(&logits)?, g, &d);
                Ok(())
            });
        }
        Ok(loss)
    })
}

fn on_cuda(tape: &Tape, logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (loss, inv) = cuda::forward(logits, targets, mask)?;
    let loss = loss.with_requires_grad(tape.needs_grad(&[logits]));
    if loss.requires_grad() {
        let (logits, targets, mask) = (logits.clone(), targets.clone(), mask.clone());
        tape.record("bce_with_logits", &[&loss], move |outs, grads| {
            let d = cuda::backward(out_grad(outs, 0)?, &logits, &targets, &mask, inv)?;
            grads.accumulate(&logits, &d)
        });
    }
    Ok(loss)
}
