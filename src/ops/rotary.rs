//! Rotary position embedding with per-token positions (Su et al. 2021, RoFormer; the maths
//! in `backend/cpu/rotary.rs`, the kernels in `kernels/rotary.cu`).

use anyhow::{bail, Result};

use super::{out_grad, with_real};
use crate::autograd::Tape;
use crate::backend::cpu::rotary::{self as cpu, RotaryDims};
use crate::backend::cpu::Real;
use crate::backend::cuda::rotary as cuda;
use crate::tensor::{DType, Tensor};

/// Rotate every head of `x: [tokens, n_heads·head_dim]` by its token's position
/// (`positions`: i32 `[tokens]`, offsets included) and multiply by `scale`.
pub fn rotary(tape: &Tape, x: &Tensor, positions: &Tensor, n_heads: usize, scale: f64) -> Result<Tensor> {
    let (n, width) = x.dims2()?;
    if n_heads == 0 || width % n_heads != 0 || (width / n_heads) % 2 != 0 {
        bail!("rotary: width {width} is not {n_heads} heads of an even dimension");
    }
    if positions.dtype() != DType::I32 || positions.numel() != n {
        bail!("rotary: need {n} i32 positions, got {} {}", positions.numel(), positions.dtype());
    }
    super::ensure_same_device("rotary", &[x, positions])?;
    let y = forward(x, positions, n_heads, scale)?.with_requires_grad(tape.needs_grad(&[x]));
    if y.requires_grad() {
        let (x, positions) = (x.clone(), positions.clone());
        tape.record("rotary", &[&y], move |outs, grads| {
            let dy = out_grad(outs, 0)?;
            if dy.is_cpu() && !grads.has(&x) {
                // The first contribution is written into a fresh buffer, not added to zeros.
                let dx = with_real!(dy.dtype(), T => {
                    let dims = cpu_dims(dy.dims2()?.1, n_heads);
                    let pos = positions.as_slice::<i32>()?;
                    Tensor::from_vec(cpu::rotated_new(dy.as_slice::<T>()?, pos, dims, T::from_f64(scale), true), x.shape())?
                });
                grads.put(&x, Some(dx));
                return Ok(());
            }
            backward(grads.acc(&x)?, dy, &positions, n_heads, scale)
        });
    }
    Ok(y)
}

fn cpu_dims(width: usize, n_heads: usize) -> RotaryDims {
    RotaryDims { n_heads, head_dim: width / n_heads, in_stride: width, out_stride: width }
}

fn forward(x: &Tensor, positions: &Tensor, n_heads: usize, scale: f64) -> Result<Tensor> {
    if !x.is_cpu() {
        return cuda::forward(x, positions, n_heads, scale);
    }
    let (n, width) = x.dims2()?;
    let pos = positions.as_slice::<i32>()?;
    if pos.iter().any(|&p| p < 0) {
        bail!("rotary: negative position");
    }
    with_real!(x.dtype(), T => {
        let y = cpu::rotated_new(x.as_slice::<T>()?, pos, cpu_dims(width, n_heads), T::from_f64(scale), false);
        Tensor::from_vec(y, &[n, width])
    })
}

/// `dx += ∂y/∂x · dy`.
fn backward(dx: &mut Tensor, dy: &Tensor, positions: &Tensor, n_heads: usize, scale: f64) -> Result<()> {
    if !dy.is_cpu() {
        return cuda::backward(dx, dy, positions, n_heads, scale);
    }
    let (_, width) = dy.dims2()?;
    with_real!(dy.dtype(), T => {
        let dims = cpu_dims(width, n_heads);
        cpu::backward(dx.as_mut_slice::<T>()?, dy.as_slice::<T>()?, positions.as_slice::<i32>()?, dims, T::from_f64(scale));
        Ok(())
    })
}
