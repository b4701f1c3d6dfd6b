//! Gather rows of a `[tokens, dim]` matrix (the `<cls>` pooling of the classifier).
//! Backward scatters the gradient back (`dx[rows[i]] += dout[i]`).

use anyhow::{bail, Result};

use super::{out_grad, with_real};
use crate::autograd::Tape;
use crate::backend::cpu::elementwise as cpu;
use crate::backend::cpu::Real;
use crate::tensor::{DType, Tensor};

/// `out[i] = x[rows[i]]`, `rows` an i32 tensor.
pub fn gather_rows(tape: &Tape, x: &Tensor, rows: &Tensor) -> Result<Tensor> {
    let (n_rows, dim) = x.dims2()?;
    if rows.dtype() != DType::I32 {
        bail!("gather_rows: row indices must be i32, got {}", rows.dtype());
    }
    super::ensure_same_device("gather_rows", &[x, rows])?;
    if !x.is_cpu() {
        return crate::backend::cuda::gather::gather_rows(tape, x, rows);
    }
    let idx = rows.as_slice::<i32>()?;
    if let Some(bad) = idx.iter().find(|&&r| r < 0 || r as usize >= n_rows) {
        bail!("gather_rows: row {bad} is outside 0..{n_rows}");
    }
    with_real!(x.dtype(), T => {
        let mut y = vec![T::zero(); idx.len() * dim];
        cpu::gather_rows(&mut y, x.as_slice::<T>()?, idx, dim);
        let y = Tensor::from_vec(y, &[idx.len(), dim])?.with_requires_grad(tape.needs_grad(&[x]));
        if y.requires_grad() {
            let (x, rows) = (x.clone(), rows.clone());
            tape.record("gather_rows", &[&y], move |outs, grads| {
                let dy = out_grad(outs, 0)?.as_slice::<T>()?;
                cpu::scatter_add_rows(grads.acc_slice::<T>(&x)?, dy, rows.as_slice::<i32>()?, dim);
                Ok(())
            });
        }
        Ok(y)
    })
}
