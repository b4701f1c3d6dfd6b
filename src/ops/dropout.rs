//! Dropout (Srivastava et al. 2014) with a counter-based mask (see
//! `backend/cpu/dropout.rs`). Active only on a recording (training) tape; each call
//! takes a fresh offset from the tape so that every site and step draws new bits.

use anyhow::{bail, Result};

use super::{out_grad, with_real};
use crate::autograd::Tape;
use crate::backend::cpu::dropout as cpu;
use crate::tensor::Tensor;

/// `x` with each element zeroed with probability `p` and the rest scaled by `1/(1−p)`.
pub fn dropout(tape: &Tape, x: &Tensor, p: f64) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        bail!("dropout probability must be in [0, 1), got {p}");
    }
    if p == 0.0 || !tape.is_recording() {
        return Ok(x.clone());
    }
    let (seed, offset) = tape.dropout_stream(x.numel());
    let pf = p as f32;
    let y = if x.is_cpu() {
        with_real!(x.dtype(), T => {
            let mut y = vec![<T as crate::backend::cpu::Real>::zero(); x.numel()];
            cpu::apply(&mut y, x.as_slice::<T>()?, pf, seed, offset, false);
            Tensor::from_vec(y, x.shape())?
        })
    } else {
        crate::backend::cuda::dropout::forward(x, pf, seed, offset)?
    };
    let y = y.with_requires_grad(x.requires_grad());
    if y.requires_grad() {
        let x = x.clone();
        tape.record("dropout", &[&y], move |outs, grads| {
            let dy = out_grad(outs, 0)?;
            if dy.is_cpu() {
                with_real!(dy.dtype(), T => {
                    cpu::apply(grads.acc_slice::<T>(&x)?, dy.as_slice::<T>()?, pf, seed, offset, true);
                    Ok(())
                })
            } else {
                crate::backend::cuda::dropout::backward(grads.acc(&x)?, dy, pf, seed, offset)
            }
        });
    }
    Ok(y)
}
