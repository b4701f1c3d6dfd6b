//! Mean over the residues of each packed sequence (`<cls>` and `<eos>` left out): the
//! `--pool mean` sequence vector of the classifier, fair-esm's `mean` representation.
//! CPU twin `backend/cpu/mean_pool.rs`, kernels `kernels/mean_pool.cu`.

use anyhow::{bail, Result};

use super::{out_grad, with_real, SeqLayout};
use crate::autograd::Tape;
use crate::backend::cpu::mean_pool as cpu;
use crate::backend::cpu::Real;
use crate::backend::cuda::mean_pool as cuda;
use crate::tensor::Tensor;

/// `[n_seqs, dim]` means of the residue rows of `x: [tokens, dim]`, sequences as `layout` says.
pub fn mean_pool(tape: &Tape, x: &Tensor, layout: &SeqLayout) -> Result<Tensor> {
    let (tokens, _) = x.dims2()?;
    if tokens != layout.n_tokens() {
        bail!("mean_pool: {tokens} rows for a layout of {} tokens", layout.n_tokens());
    }
    super::ensure_same_device("mean_pool", &[x, &layout.cu_device])?;
    let y = forward(x, layout)?.with_requires_grad(tape.needs_grad(&[x]));
    if y.requires_grad() {
        let (x, layout) = (x.clone(), layout.clone());
        tape.record("mean_pool", &[&y], move |outs, grads| backward(grads.acc(&x)?, out_grad(outs, 0)?, &layout));
    }
    Ok(y)
}

fn forward(x: &Tensor, layout: &SeqLayout) -> Result<Tensor> {
    if !x.is_cpu() {
        return cuda::forward(x, layout);
    }
    let (_, dim) = x.dims2()?;
    let n_seqs = layout.n_seqs();
    with_real!(x.dtype(), T => {
        let mut y = vec![T::zero(); n_seqs * dim];
        cpu::forward(&mut y, x.as_slice::<T>()?, &layout.cu, dim);
        Tensor::from_vec(y, &[n_seqs, dim])
    })
}

fn backward(dx: &mut Tensor, dy: &Tensor, layout: &SeqLayout) -> Result<()> {
    if !dy.is_cpu() {
        return cuda::backward(dx, dy, layout);
    }
    let (_, dim) = dy.dims2()?;
    with_real!(dy.dtype(), T => {
        cpu::backward(dx.as_mut_slice::<T>()?, dy.as_slice::<T>()?, &layout.cu, dim);
        Ok(())
    })
}
