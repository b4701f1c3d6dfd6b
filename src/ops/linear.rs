//! Linear layer `y = x·Wᵀ + b` with PyTorch's weight layout `W: [out, in]`.
//!
//! Backward: `dx += dy·W`, `dW += dyᵀ·x`, `db += Σ_rows dy`.

use anyhow::{bail, Result};

use super::{grad_slice, out_grad, with_real};
use crate::autograd::Tape;
use crate::backend::cpu::matmul::{matmul, MatRef};
use crate::backend::cpu::{elementwise, Real};
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
    if !x.is_cpu() {
        return crate::backend::cuda::linear::linear(tape, x, w, b);
    }
    with_real!(x.dtype(), T => {
        let (xs, ws) = (x.as_slice::<T>()?, w.as_slice::<T>()?);
        let mut y = vec![T::zero(); n * m];
        matmul(&mut y, MatRef::new(xs, n, k), MatRef::new(ws, m, k).t(), false);
        if let Some(b) = b {
            let bs = b.as_slice::<T>()?;
            for row in y.chunks_mut(m) {
                for (v, &bv) in row.iter_mut().zip(bs) {
                    *v += bv;
                }
            }
        }
        let y = Tensor::from_vec(y, &[n, m])?.with_requires_grad(tape.needs_grad(&inputs));
        if y.requires_grad() {
            let (x, w, b) = (x.clone(), w.clone(), b.cloned());
            tape.record("linear", &[&y], move |outs, grads| {
                let dy = out_grad(outs, 0)?.as_slice::<T>()?;
                let (xs, ws) = (x.as_slice::<T>()?, w.as_slice::<T>()?);
                if x.requires_grad() {
                    let dx = grads.acc_slice::<T>(&x)?;
                    matmul(dx, MatRef::new(dy, n, m), MatRef::new(ws, m, k), true);
                }
                if w.requires_grad() {
                    let dw = grads.acc_slice::<T>(&w)?;
                    matmul(dw, MatRef::new(dy, n, m).t(), MatRef::new(xs, n, k), true);
                }
                if let Some(b) = &b {
                    let mut db = grads.take_acc(b)?;
                    elementwise::column_sums_into(grad_slice::<T>(&mut db)?, dy, m);
                    grads.put(b, db);
                }
                Ok(())
            });
        }
        Ok(y)
    })
}
