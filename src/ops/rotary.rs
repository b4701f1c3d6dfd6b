//! Rotary position embedding with per-token positions (see `backend/cpu/rotary.rs`).

use anyhow::{bail, Result};

use super::{out_grad, with_real};
use crate::autograd::Tape;
use crate::backend::cpu::rotary::{self as cpu, RotaryDims};
use crate::backend::cpu::Real;
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
    if !x.is_cpu() {
        return crate::backend::cuda::rotary::rotary(tape, x, positions, n_heads, scale);
    }
    let pos = positions.as_slice::<i32>()?;
    if pos.iter().any(|&p| p < 0) {
        bail!("rotary: negative position");
    }
    let dims = RotaryDims { n_heads, head_dim: width / n_heads, in_stride: width, out_stride: width };
    with_real!(x.dtype(), T => {
        let mut y = vec![T::zero(); n * width];
        cpu::forward(&mut y, x.as_slice::<T>()?, pos, dims, T::from_f64(scale));
        let y = Tensor::from_vec(y, &[n, width])?.with_requires_grad(tape.needs_grad(&[x]));
        if y.requires_grad() {
            let (x, positions) = (x.clone(), positions.clone());
            tape.record("rotary", &[&y], move |outs, grads| {
                let dy = out_grad(outs, 0)?.as_slice::<T>()?;
                cpu::backward(grads.acc_slice::<T>(&x)?, dy, positions.as_slice::<i32>()?, dims, T::from_f64(scale));
                Ok(())
            });
        }
        Ok(y)
    })
}
