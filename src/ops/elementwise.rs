//! Elementwise ops: residual add, scaling by a constant, tanh.

use anyhow::Result;

use super::{grad_slice, out_grad, with_real};
use crate::autograd::Tape;
use crate::backend::cpu::{elementwise as cpu, Real};
use crate::tensor::{ensure_same_shape, Storage, Tensor};

/// `a + b` (same shapes).
pub fn add(tape: &Tape, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    ensure_same_shape(a, b, "add")?;
    super::ensure_same_device("add", &[a, b])?;
    let y = match a.storage() {
        Storage::Cpu(_) => with_real!(a.dtype(), T => {
            Tensor::from_vec(cpu::add(a.as_slice::<T>()?, b.as_slice::<T>()?), a.shape())?
        }),
        Storage::Cuda(_) => crate::backend::cuda::elementwise::add(a, b)?,
    };
    let y = y.with_requires_grad(tape.needs_grad(&[a, b]));
    if y.requires_grad() {
        let (a, b) = (a.clone(), b.clone());
        tape.record("add", &[&y], move |outs, grads| {
            let dy = out_grad(outs, 0)?;
            if a.requires_grad() {
                grads.accumulate(&a, dy)?;
            }
            if b.requires_grad() {
                grads.accumulate(&b, dy)?;
            }
            Ok(())
        });
    }
    Ok(y)
}

/// `alpha · x`.
pub fn scale(tape: &Tape, x: &Tensor, alpha: f64) -> Result<Tensor> {
    let y = scaled_copy(x, alpha)?.with_requires_grad(tape.needs_grad(&[x]));
    if y.requires_grad() {
        let x = x.clone();
        tape.record("scale", &[&y], move |outs, grads| {
            let dy = scaled_copy(out_grad(outs, 0)?, alpha)?;
            grads.accumulate(&x, &dy)
        });
    }
    Ok(y)
}

/// `tanh(x)`.
pub fn tanh(tape: &Tape, x: &Tensor) -> Result<Tensor> {
    let y = match x.storage() {
        Storage::Cpu(_) => with_real!(x.dtype(), T => {
            let mut y = crate::backend::cpu::filled(x.numel(), T::zero());
            cpu::tanh_forward(&mut y, x.as_slice::<T>()?);
            Tensor::from_vec(y, x.shape())?
        }),
        Storage::Cuda(_) => crate::backend::cuda::elementwise::tanh_forward(x)?,
    };
    let y = y.with_requires_grad(tape.needs_grad(&[x]));
    if y.requires_grad() {
        let (x, y_saved) = (x.clone(), y.clone().with_requires_grad(false));
        tape.record("tanh", &[&y], move |outs, grads| {
            let dy = out_grad(outs, 0)?;
            let mut dx = grads.take_acc(&x)?;
            match dy.storage() {
                Storage::Cpu(_) => with_real!(dy.dtype(), T => {
                    cpu::tanh_backward(grad_slice::<T>(&mut dx)?, dy.as_slice::<T>()?, y_saved.as_slice::<T>()?)
                }),
                Storage::Cuda(_) => {
                    if let Some(dx) = dx.as_mut() {
                        crate::backend::cuda::elementwise::tanh_backward(dx, dy, &y_saved)?;
                    }
                }
            }
            grads.put(&x, dx);
            Ok(())
        });
    }
    Ok(y)
}

pub use crate::backend::add_into;

/// A new tensor `alpha · x` (no tape).
pub fn scaled_copy(x: &Tensor, alpha: f64) -> Result<Tensor> {
    match x.storage() {
        Storage::Cpu(_) => with_real!(x.dtype(), T => {
            let mut y = crate::backend::cpu::filled(x.numel(), T::zero());
            cpu::scale(&mut y, T::from_f64(alpha), x.as_slice::<T>()?);
            Tensor::from_vec(y, x.shape())
        }),
        Storage::Cuda(_) => crate::backend::cuda::elementwise::scale(x, alpha as f32),
    }
}
