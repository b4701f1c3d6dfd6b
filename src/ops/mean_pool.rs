//! Mean over the residues of each packed sequence (`<cls>` and `<eos>` left out): the
//! `--pool mean` sequence vector of the classifier, fair-esm's `mean` representation.
//! See `backend/cpu/mean_pool.rs` and `kernels/mean_pool.cu`.

use anyhow::{bail, Result};

use super::{out_grad, with_real, SeqLayout};
use crate::autograd::Tape;
use crate::backend::cpu::mean_pool as cpu;
use crate::backend::cpu::Real;
use crate::tensor::Tensor;

/// `[n_seqs, dim]` means of the residue rows of `x: [tokens, dim]`, sequences as `layout` says.
pub fn mean_pool(tape: &Tape, x: &Tensor, layout: &SeqLayout) -> Result<Tensor> {
    let (tokens, dim) = x.dims2()?;
    if tokens != layout.n_tokens() {
        bail!("mean_pool: {tokens} rows for a layout of {} tokens", layout.n_tokens());
    }
    super::ensure_same_device("mean_pool", &[x, &layout.cu_device])?;
    if !x.is_cpu() {
        return crate::backend::cuda::mean_pool::mean_pool(tape, x, layout);
    }
    let n_seqs = layout.n_seqs();
    with_real!(x.dtype(), T => {
        let mut y = vec![T::zero(); n_seqs * dim];
        cpu::forward(&mut y, x.as_slice::<T>()?, &layout.cu, dim);
        let y = Tensor::from_vec(y, &[n_seqs, dim])?.with_requires_grad(tape.needs_grad(&[x]));
        if y.requires_grad() {
            let (x, cu) = (x.clone(), layout.cu.clone());
            tape.record("mean_pool", &[&y], move |outs, grads| {
                let dy = out_grad(outs, 0)?.as_slice::<T>()?;
                cpu::backward(grads.acc_slice::<T>(&x)?, dy, &cu, dim);
                Ok(())
            });
        }
        Ok(y)
    })
}
