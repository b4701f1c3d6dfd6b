//! LayerNorm over the feature dimension (see `backend/cpu/layer_norm.rs` for the maths).

use anyhow::{bail, Result};

use super::{grad_slice, out_grad, with_real};
use crate::autograd::Tape;
use crate::backend::cpu::layer_norm as cpu;
use crate::backend::cpu::Real;
use crate::tensor::Tensor;

/// `y = LayerNorm(x)·w + b` for `x` `[rows, dim]`, `w`, `b` `[dim]`.
pub fn layer_norm(tape: &Tape, x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let (rows, dim) = x.dims2()?;
    if w.shape() != [dim] || b.shape() != [dim] {
        bail!("layer_norm: weight {:?} and bias {:?} must be [{dim}]", w.shape(), b.shape());
    }
    super::ensure_same_device("layer_norm", &[x, w, b])?;
    if !x.is_cpu() {
        return crate::backend::cuda::layer_norm::layer_norm(tape, x, w, b, eps);
    }
    with_real!(x.dtype(), T => {
        let mut y = vec![T::zero(); rows * dim];
        let (mut mean, mut rstd) = (vec![T::zero(); rows], vec![T::zero(); rows]);
        cpu::forward(&mut y, &mut mean, &mut rstd, x.as_slice::<T>()?, w.as_slice::<T>()?, b.as_slice::<T>()?, dim, eps);
        let y = Tensor::from_vec(y, &[rows, dim])?.with_requires_grad(tape.needs_grad(&[x, w, b]));
        if y.requires_grad() {
            let (x, w, b) = (x.clone(), w.clone(), b.clone());
            tape.record("layer_norm", &[&y], move |outs, grads| {
                let dy = out_grad(outs, 0)?;
                let (mut dx, mut dw, mut db) = (grads.take_acc(&x)?, grads.take_acc(&w)?, grads.take_acc(&b)?);
                cpu::backward(
                    grad_slice::<T>(&mut dx)?,
                    grad_slice::<T>(&mut dw)?,
                    grad_slice::<T>(&mut db)?,
                    dy.as_slice::<T>()?,
                    x.as_slice::<T>()?,
                    w.as_slice::<T>()?,
                    &mean,
                    &rstd,
                    dim,
                );
                grads.put(&x, dx);
                grads.put(&w, dw);
                grads.put(&b, db);
                Ok(())
            });
        }
        Ok(y)
    })
}
