//! Linear layer `y = x·Wᵀ + b` with PyTorch's weight layout `W: [out, in]` (CPU twin
//! `backend/cpu/linear.rs`; CUDA: cuBLAS plus `kernels/linear.cu` for the bias).
//!
//! Backward: `dx += dy·W`, `dW += dyᵀ·x`, `db += Σ_rows dy`.

use anyhow::{bail, Result};

use super::{grad_slice, out_grad, with_real};
use crate::autograd::Tape;
use crate::backend::cpu::linear::{self as cpu, LinearDims};
use crate::backend::cpu::Real;
use crate::backend::cuda::linear as cuda;
use crate::tensor::Tensor;

/// `x: [n, in]`, `w: [out, in]`, `b: [out]` or none → `[n, out]`.
pub fn linear(tape: &Tape, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (n, k) = x.dims2()?;
    let (m, k2) = w.dims2()?;
    if k != k2 {
        bail!("linear: input has {k} features but the weight {:?} expects {k2}", w.shape());
    }
    if let Some(b) = b {
        if b.shape() != [m] {
            bail!("linear: bias {:?} must be [{m}]", b.shape());
        }
    }
    let mut inputs = vec![x, w];
    inputs.extend(b);
    super::ensure_same_device("linear", &inputs)?;
    let dims = LinearDims { n, k, m };
    // On CUDA the backward reads the weight's compute copy; on the CPU, the weight itself.
    let (y, w_used) = if x.is_cpu() { (cpu_forward(x, w, b, dims)?, w.clone()) } else { cuda::forward(x, w, b)? };
    let y = y.with_requires_grad(tape.needs_grad(&inputs));
    if y.requires_grad() {
        let (x, w, b) = (x.clone(), w.clone(), b.cloned());
        tape.record("linear", &[&y], move |outs, grads| {
            let mut dx = grads.take_acc(&x)?;
            let mut dw = grads.take_acc(&w)?;
            let mut db = match &b {
                Some(b) => grads.take_acc(b)?,
                None => None,
            };
            backward(&mut dx, &mut dw, &mut db, out_grad(outs, 0)?, &x, &w_used, dims)?;
            grads.put(&x, dx);
            grads.put(&w, dw);
            if let Some(b) = &b {
                grads.put(b, db);
            }
            Ok(())
        });
    }
    Ok(y)
}

fn cpu_forward(x: &Tensor, w: &Tensor, b: Option<&Tensor>, dims: LinearDims) -> Result<Tensor> {
    with_real!(x.dtype(), T => {
        let bs = match b {
            Some(b) => b.as_slice::<T>()?,
            None => &[],
        };
        let mut y = vec![T::zero(); dims.n * dims.m];
        cpu::forward(&mut y, x.as_slice::<T>()?, w.as_slice::<T>()?, bs, dims);
        Tensor::from_vec(y, &[dims.n, dims.m])
    })
}

/// Accumulate the three gradients (each skipped when `None`); `w` is what the forward
/// multiplied with.
fn backward(
    dx: &mut Option<Tensor>,
    dw: &mut Option<Tensor>,
    db: &mut Option<Tensor>,
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    dims: LinearDims,
) -> Result<()> {
    if !dy.is_cpu() {
        return cuda::backward(dx.as_ref(), dw.as_ref(), db.as_ref(), dy, x, w);
    }
    with_real!(dy.dtype(), T => {
        let (dys, xs, ws) = (dy.as_slice::<T>()?, x.as_slice::<T>()?, w.as_slice::<T>()?);
        cpu::backward(grad_slice::<T>(dx)?, grad_slice::<T>(dw)?, grad_slice::<T>(db)?, dys, xs, ws, dims);
        Ok(())
    })
}
