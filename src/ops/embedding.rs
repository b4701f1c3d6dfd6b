//! Token embedding lookup with a per-token scale (ESM-2's token-dropout rescaling; see
//! `model::esm2` for how the scale is computed).

use anyhow::{bail, Result};

use super::{grad_slice, out_grad, with_real};
use crate::autograd::Tape;
use crate::backend::cpu::embedding as cpu;
use crate::backend::cpu::Real;
use crate::tensor::{DType, Storage, Tensor};

/// `out[t] = weight[ids[t]] · row_scale[t]`; `ids` is i32 `[tokens]`, `weight` `[vocab, dim]`,
/// `row_scale` `[tokens]` in the weight's dtype.
pub fn embedding(tape: &Tape, ids: &Tensor, weight: &Tensor, row_scale: &Tensor) -> Result<Tensor> {
    let (vocab, dim) = weight.dims2()?;
    if ids.dtype() != DType::I32 {
        bail!("embedding: token ids must be i32, got {}", ids.dtype());
    }
    let n = ids.numel();
    if row_scale.numel() != n {
        bail!("embedding: {} scales for {} tokens", row_scale.numel(), n);
    }
    super::ensure_same_device("embedding", &[ids, weight, row_scale])?;
    let y = match weight.storage() {
        Storage::Cpu(_) => {
            let idv = ids.as_slice::<i32>()?;
            if let Some(bad) = idv.iter().find(|&&i| i < 0 || i as usize >= vocab) {
                bail!("embedding: token id {bad} is outside the vocabulary of {vocab}");
            }
            with_real!(weight.dtype(), T => {
                let mut y = crate::backend::cpu::filled(n * dim, T::zero());
                cpu::forward(&mut y, weight.as_slice::<T>()?, idv, row_scale.as_slice::<T>()?, dim);
                Tensor::from_vec(y, &[n, dim])?
            })
        }
        Storage::Cuda(_) => crate::backend::cuda::embedding::forward(ids, weight, row_scale)?,
    };
    let y = y.with_requires_grad(tape.needs_grad(&[weight]));
    if y.requires_grad() {
        let (ids, weight, row_scale) = (ids.clone(), weight.clone(), row_scale.clone());
        tape.record("embedding", &[&y], move |outs, grads| {
            let dy = out_grad(outs, 0)?;
            let mut dw = grads.take_acc(&weight)?;
            match dy.storage() {
                Storage::Cpu(_) => with_real!(dy.dtype(), T => {
                    cpu::backward(grad_slice::<T>(&mut dw)?, dy.as_slice::<T>()?, ids.as_slice::<i32>()?, row_scale.as_slice::<T>()?, dim)
                }),
                Storage::Cuda(_) => {
                    if let Some(dw) = dw.as_mut() {
                        crate::backend::cuda::embedding::backward(dw, dy, &ids, &row_scale)?;
                    }
                }
            }
            grads.put(&weight, dw);
            Ok(())
        });
    }
    Ok(y)
}
