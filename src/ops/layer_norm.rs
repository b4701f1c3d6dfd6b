//! LayerNorm over the feature dimension (Ba et al. 2016; CPU twin
//! `backend/cpu/layer_norm.rs`, kernels `kernels/layer_norm.cu`).

use anyhow::{bail, Result};

use super::{grad_slice, out_grad, with_real};
use crate::autograd::Tape;
use crate::backend::cpu::layer_norm as cpu;
use crate::backend::cuda::layer_norm as cuda;
use crate::tensor::Tensor;

/// `y = LayerNorm(x)·w + b` for `x` `[rows, dim]`, `w`, `b` `[dim]`.
pub fn layer_norm(tape: &Tape, x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let (_, dim) = x.dims2()?;
    if w.shape() != [dim] || b.shape() != [dim] {
        bail!("layer_norm: weight {:?} and bias {:?} must be [{dim}]", w.shape(), b.shape());
    }
    super::ensure_same_device("layer_norm", &[x, w, b])?;
    let (y, mean, rstd) = forward(x, w, b, eps)?;
    let y = y.with_requires_grad(tape.needs_grad(&[x, w, b]));
    if y.requires_grad() {
        let (x, w, b) = (x.clone(), w.clone(), b.clone());
        tape.record("layer_norm", &[&y], move |outs, grads| {
            let (mut dx, mut dw, mut db) = (grads.take_acc(&x)?, grads.take_acc(&w)?, grads.take_acc(&b)?);
            backward(&mut dx, &mut dw, &mut db, out_grad(outs, 0)?, &x, &w, &mean, &rstd)?;
            grads.put(&x, dx);
            grads.put(&w, dw);
            grads.put(&b, db);
            Ok(())
        });
    }
    Ok(y)
}

/// `y` and the per-row `mean` and `rstd` (1/σ) that the backward reads.
fn forward(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    if !x.is_cpu() {
        return cuda::forward(x, w, b, eps);
    }
    let (rows, dim) = x.dims2()?;
    with_real!(x.dtype(), T => {
        let (y, mean, rstd) = cpu::forward(x.as_slice::<T>()?, w.as_slice::<T>()?, b.as_slice::<T>()?, dim, eps);
        Ok((Tensor::from_vec(y, &[rows, dim])?, Tensor::from_vec(mean, &[rows])?, Tensor::from_vec(rstd, &[rows])?))
    })
}

/// `dx += …`, `dw += Σ dy·x̂`, `db += Σ dy` (each skipped when `None`).
#[allow(clippy::too_many_arguments)]
fn backward(
    dx: &mut Option<Tensor>,
    dw: &mut Option<Tensor>,
    db: &mut Option<Tensor>,
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
) -> Result<()> {
    if !dy.is_cpu() {
        return cuda::backward(dx.as_ref(), dw.as_ref(), db.as_ref(), dy, x, w, mean, rstd);
    }
    let (_, dim) = x.dims2()?;
    with_real!(dy.dtype(), T => {
        cpu::backward(
            grad_slice::<T>(dx)?,
            grad_slice::<T>(dw)?,
            grad_slice::<T>(db)?,
            dy.as_slice::<T>()?,
            x.as_slice::<T>()?,
            w.as_slice::<T>()?,
            mean.as_slice::<T>()?,
            rstd.as_slice::<T>()?,
            dim,
        );
        Ok(())
    })
}
