//! Weighted softmax cross-entropy with an ignore index (CPU twin
//! `backend/cpu/cross_entropy.rs`, kernels `kernels/cross_entropy.cu`). On the CPU the
//! loss and the logits' gradient are computed in one pass in the forward and the backward
//! only scales that gradient by the upstream one; CUDA recomputes the softmax in the
//! backward from the saved logits.

use anyhow::{bail, Result};

use super::{out_grad, with_real};
use crate::autograd::Tape;
use crate::backend::cpu::cross_entropy as cpu;
use crate::backend::cpu::Real;
use crate::backend::cuda::cross_entropy as cuda;
use crate::tensor::{DType, Tensor};

pub use crate::backend::cpu::cross_entropy::IGNORE_INDEX;

/// Mean weighted cross-entropy of `logits: [rows, classes]` against i32 `labels: [rows]`
/// (`IGNORE_INDEX` rows skipped), with optional per-class `weights: [classes]` (f32).
/// Returns a one-element tensor.
pub fn cross_entropy(tape: &Tape, logits: &Tensor, labels: &Tensor, weights: Option<&Tensor>) -> Result<Tensor> {
    let (rows, classes) = logits.dims2()?;
    if labels.dtype() != DType::I32 || labels.numel() != rows {
        bail!("cross_entropy: need {rows} i32 labels, got {} {}", labels.numel(), labels.dtype());
    }
    if let Some(w) = weights {
        if w.shape() != [classes] || w.dtype() != DType::F32 {
            bail!("cross_entropy: class weights must be f32 [{classes}], got {} {:?}", w.dtype(), w.shape());
        }
    }
    if !logits.is_cpu() {
        // On the GPU the labels stay on the device: the kernels compute the weight sum there,
        // and an out-of-range label turns the loss into NaN rather than being checked here.
        return on_cuda(tape, logits, labels, weights);
    }
    let lab = labels.as_slice::<i32>()?.to_vec();
    if let Some(bad) = lab.iter().find(|&&y| y != IGNORE_INDEX && (y < 0 || y as usize >= classes)) {
        bail!("cross_entropy: label {bad} is outside 0..{classes}");
    }
    let w: Vec<f32> = match weights {
        Some(w) => w.as_slice::<f32>()?.to_vec(),
        None => Vec::new(),
    };
    with_real!(logits.dtype(), T => {
        let mut dlogits = crate::backend::cpu::filled(rows * classes, T::zero());
        let loss = cpu::forward_backward(&mut dlogits, logits.as_slice::<T>()?, &lab, &w, classes);
        let loss = Tensor::from_vec(vec![T::from_f64(loss)], &[1])?.with_requires_grad(tape.needs_grad(&[logits]));
        if loss.requires_grad() {
            let logits = logits.clone();
            tape.record("cross_entropy", &[&loss], move |outs, grads| {
                let g = out_grad(outs, 0)?.as_slice::<T>()?[0];
                crate::backend::cpu::elementwise::axpy(grads.acc_slice::<T>(&logits)?, g, &dlogits);
                Ok(())
            });
        }
        Ok(loss)
    })
}

fn on_cuda(tape: &Tape, logits: &Tensor, labels: &Tensor, weights: Option<&Tensor>) -> Result<Tensor> {
    let (loss, wsum) = cuda::forward(logits, labels, weights)?;
    let loss = loss.with_requires_grad(tape.needs_grad(&[logits]));
    if loss.requires_grad() {
        let (logits, labels, weights) = (logits.clone(), labels.clone(), weights.cloned());
        tape.record("cross_entropy", &[&loss], move |outs, grads| {
            let d = cuda::backward(out_grad(outs, 0)?, &logits, &labels, weights.as_ref(), &wsum)?;
            grads.accumulate(&logits, &d)
        });
    }
    Ok(loss)
}
