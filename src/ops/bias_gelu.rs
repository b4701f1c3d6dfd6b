//! Exact (erf) GELU of `x + bias` (CPU twin `backend/cpu/bias_gelu.rs`, kernels
//! `kernels/bias_gelu.cu`); the bias is folded in so that the CUDA path fuses it with the
//! activation after a bias-free GEMM.

use anyhow::{bail, Result};

use super::{grad_slice, out_grad, with_real};
use crate::autograd::{Grads, Tape};
use crate::backend::cpu::bias_gelu as cpu;
use crate::backend::cuda::bias_gelu as cuda;
use crate::tensor::Tensor;

/// `gelu(x + bias)` with `x: [rows, cols]`, `bias: [cols]` or none.
pub fn bias_gelu(tape: &Tape, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (_, cols) = x.dims2()?;
    if let Some(b) = bias {
        if b.shape() != [cols] {
            bail!("bias_gelu: bias {:?} must be [{cols}]", b.shape());
        }
    }
    let mut inputs = vec![x];
    inputs.extend(bias);
    super::ensure_same_device("bias_gelu", &inputs)?;
    let y = forward(x, bias)?.with_requires_grad(tape.needs_grad(&inputs));
    if y.requires_grad() {
        let (x, bias) = (x.clone(), bias.cloned());
        tape.record("bias_gelu", &[&y], move |outs, grads| {
            let dy = out_grad(outs, 0)?;
            if dy.is_cpu() && x.requires_grad() && !grads.has(&x) {
                return fresh_cpu_backward(grads, dy, &x, bias.as_ref());
            }
            let mut dx = grads.take_acc(&x)?;
            let mut db = match &bias {
                Some(b) => grads.take_acc(b)?,
                None => None,
            };
            backward(&mut dx, &mut db, dy, &x, bias.as_ref())?;
            grads.put(&x, dx);
            if let Some(b) = &bias {
                grads.put(b, db);
            }
            Ok(())
        });
    }
    Ok(y)
}

/// The bias as a slice (empty: no bias).
fn bias_slice<T: crate::tensor::Element>(bias: Option<&Tensor>) -> Result<&[T]> {
    match bias {
        Some(b) => b.as_slice::<T>(),
        None => Ok(&[]),
    }
}

fn forward(x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    if !x.is_cpu() {
        return cuda::forward(x, bias);
    }
    let (rows, cols) = x.dims2()?;
    with_real!(x.dtype(), T => {
        Tensor::from_vec(cpu::forward(x.as_slice::<T>()?, bias_slice::<T>(bias)?, cols), &[rows, cols])
    })
}

/// The CPU backward when `x` has no gradient yet: `du = dy·gelu'(x + b)` written into a new
/// buffer that becomes `x`'s gradient, and `db += Σ_rows du`.
fn fresh_cpu_backward(grads: &mut Grads, dy: &Tensor, x: &Tensor, bias: Option<&Tensor>) -> Result<()> {
    let (_, cols) = x.dims2()?;
    with_real!(dy.dtype(), T => {
        let du = cpu::input_grad(dy.as_slice::<T>()?, x.as_slice::<T>()?, bias_slice::<T>(bias)?, cols);
        if let Some(b) = bias {
            let mut db = grads.take_acc(b)?;
            let dbs = grad_slice::<T>(&mut db)?;
            if !dbs.is_empty() {
                crate::backend::cpu::elementwise::column_sums_into(dbs, &du, cols);
            }
            grads.put(b, db);
        }
        grads.put(x, Some(Tensor::from_vec(du, x.shape())?));
        Ok(())
    })
}

/// `dx += dy·gelu'(x + b)`, `db += Σ_rows dy·gelu'(x + b)` (skipped when `None`).
fn backward(
    dx: &mut Option<Tensor>,
    db: &mut Option<Tensor>,
    dy: &Tensor,
    x: &Tensor,
    bias: Option<&Tensor>,
) -> Result<()> {
    if !dy.is_cpu() {
        return cuda::backward(dx.as_ref(), db.as_ref(), dy, x, bias);
    }
    let (_, cols) = x.dims2()?;
    with_real!(dy.dtype(), T => {
        let (bs, xs, dys) = (bias_slice::<T>(bias)?, x.as_slice::<T>()?, dy.as_slice::<T>()?);
        cpu::backward(grad_slice::<T>(dx)?, grad_slice::<T>(db)?, dys, xs, bs, cols);
        Ok(())
    })
}
