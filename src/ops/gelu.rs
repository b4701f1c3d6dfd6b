//! Exact (erf) GELU of `x + bias` (see `backend/cpu/gelu.rs`); the bias is folded in so
//! that the CUDA path fuses it with the activation after a bias-free GEMM.

use anyhow::{bail, Result};

use super::{grad_slice, out_grad, with_real};
use crate::autograd::Tape;
use crate::backend::cpu::gelu as cpu;
use crate::backend::cpu::Real;
use crate::tensor::Tensor;

/// `gelu(x + bias)` with `x: [rows, cols]`, `bias: [cols]` or none.
pub fn bias_gelu(tape: &Tape, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (rows, cols) = x.dims2()?;
    if let Some(b) = bias {
        if b.shape() != [cols] {
            bail!("bias_gelu: bias {:?} must be [{cols}]", b.shape());
        }
    }
    let mut inputs = vec![x];
    inputs.extend(bias);
    super::ensure_same_device("bias_gelu", &inputs)?;
    if !x.is_cpu() {
        return crate::backend::cuda::bias_gelu::bias_gelu(tape, x, bias);
    }
    with_real!(x.dtype(), T => {
        let bs: Vec<T> = match bias {
            Some(b) => b.as_slice::<T>()?.to_vec(),
            None => Vec::new(),
        };
        let mut y = vec![T::zero(); rows * cols];
        cpu::forward(&mut y, x.as_slice::<T>()?, &bs, cols);
        let y = Tensor::from_vec(y, &[rows, cols])?.with_requires_grad(tape.needs_grad(&inputs));
        if y.requires_grad() {
            let (x, bias) = (x.clone(), bias.cloned());
            tape.record("bias_gelu", &[&y], move |outs, grads| {
                let dy = out_grad(outs, 0)?;
                let mut dx = grads.take_acc(&x)?;
                let mut db = match &bias {
                    Some(b) => grads.take_acc(b)?,
                    None => None,
                };
                cpu::backward(grad_slice::<T>(&mut dx)?, grad_slice::<T>(&mut db)?, dy.as_slice::<T>()?, x.as_slice::<T>()?, &bs, cols);
                grads.put(&x, dx);
                if let Some(b) = &bias {
                    grads.put(b, db);
                }
                Ok(())
            });
        }
        Ok(y)
    })
}
