//! Gather rows of a `[tokens, dim]` matrix (the `<cls>` pooling of the classifier).
//! Backward scatters the gradient back (`dx[rows[i]] += dout[i]`). CPU twin
//! `backend/cpu/gather.rs`, kernels `kernels/gather.cu`.

use anyhow::{bail, Result};

use super::{out_grad, with_real};
use crate::autograd::Tape;
use crate::backend::cpu::gather as cpu;
use crate::backend::cpu::Real;
use crate::backend::cuda::gather as cuda;
use crate::tensor::{DType, Tensor};

/// `out[i] = x[rows[i]]`, `rows` an i32 tensor.
pub fn gather_rows(tape: &Tape, x: &Tensor, rows: &Tensor) -> Result<Tensor> {
    if rows.dtype() != DType::I32 {
        bail!("gather_rows: row indices must be i32, got {}", rows.dtype());
    }
    super::ensure_same_device("gather_rows", &[x, rows])?;
    let y = forward(x, rows)?.with_requires_grad(tape.needs_grad(&[x]));
    if y.requires_grad() {
        let (x, rows) = (x.clone(), rows.clone());
        tape.record("gather_rows", &[&y], move |outs, grads| backward(grads.acc(&x)?, out_grad(outs, 0)?, &rows));
    }
    Ok(y)
}

fn forward(x: &Tensor, rows: &Tensor) -> Result<Tensor> {
    if !x.is_cpu() {
        return cuda::forward(x, rows);
    }
    let (n_rows, dim) = x.dims2()?;
    let idx = rows.as_slice::<i32>()?;
    if let Some(bad) = idx.iter().find(|&&r| r < 0 || r as usize >= n_rows) {
        bail!("gather_rows: row {bad} is outside 0..{n_rows}");
    }
    with_real!(x.dtype(), T => {
        let mut y = crate::backend::cpu::filled(idx.len() * dim, T::zero());
        cpu::gather_rows(&mut y, x.as_slice::<T>()?, idx, dim);
        Tensor::from_vec(y, &[idx.len(), dim])
    })
}

/// `dx[rows[i]] += dy[i]`.
fn backward(dx: &mut Tensor, dy: &Tensor, rows: &Tensor) -> Result<()> {
    if !dy.is_cpu() {
        return cuda::backward(dx, dy, rows);
    }
    let (_, dim) = dy.dims2()?;
    with_real!(dy.dtype(), T => {
        cpu::scatter_add_rows(dx.as_mut_slice::<T>()?, dy.as_slice::<T>()?, rows.as_slice::<i32>()?, dim);
        Ok(())
    })
}
