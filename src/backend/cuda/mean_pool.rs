//! Per-sequence residue mean on the GPU (`kernels/mean_pool.cu`): one block per sequence
//! (block 256, grid min(n_seqs, 65535)), threads over the hidden dimension. Each row
//! belongs to one sequence, so the backward needs no atomics.

use anyhow::Result;

use super::kernels;
use super::launch::{block_rows_config, device_of, empty, int, p, ROW_BLOCK};
use super::nvtx;
use crate::backend::SeqLayout;
use crate::tensor::Tensor;

/// `[n_seqs, dim]` residue means of `x: [tokens, dim]`.
pub fn forward(x: &Tensor, layout: &SeqLayout) -> Result<Tensor> {
    let _r = nvtx::fwd("mean_pool");
    let dev = device_of(x)?;
    let (_, dim) = x.dims2()?;
    let n = layout.n_seqs();
    let y = empty(&dev, &[n, dim], x.dtype())?;
    // mean_pool_forward_T(out, x, cu_seqlens, n_seqs, dim)
    kernels::mean_pool::mean_pool_forward(
        &dev,
        block_rows_config(n, ROW_BLOCK),
        p(&y)?,
        p(x)?,
        p(&layout.cu_device)?,
        int(n)?,
        int(dim)?,
    )?;
    Ok(y)
}

/// `dx[t] += dy[s] / residues(s)` for every residue row `t` of sequence `s`.
pub fn backward(dx: &Tensor, dy: &Tensor, layout: &SeqLayout) -> Result<()> {
    let _r = nvtx::bwd("mean_pool");
    let dev = device_of(dy)?;
    let (n, dim) = dy.dims2()?;
    // mean_pool_backward_T(dx, dout, cu_seqlens, n_seqs, dim)
    kernels::mean_pool::mean_pool_backward(
        &dev,
        block_rows_config(n, ROW_BLOCK),
        p(dx)?,
        p(dy)?,
        p(&layout.cu_device)?,
        int(n)?,
        int(dim)?,
    )
}
