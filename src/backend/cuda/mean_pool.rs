//! Per-sequence residue mean on the GPU (`kernels/mean_pool.cu`): one block per sequence
//! (block 256, grid min(n_seqs, 65535)), threads over the hidden dimension. Each row
//! belongs to one sequence, so the backward needs no atomics.

use anyhow::Result;

use super::kernels;
use super::launch::{block_rows_config, device_of, empty, int, p, ROW_BLOCK};
use super::nvtx;
use crate::autograd::Tape;
use crate::ops::{out_grad, SeqLayout};
use crate::tensor::Tensor;

pub fn mean_pool(tape: &Tape, x: &Tensor, layout: &SeqLayout) -> Result<Tensor> {
    let _r = nvtx::fwd("mean_pool");
    let dev = device_of(x)?;
    let (_, dim) = x.dims2()?;
    let n = layout.n_seqs();
    let cu = layout.cu_device.clone();
    let y = empty(&dev, &[n, dim], x.dtype())?;
    // mean_pool_forward_T(out, x, cu_seqlens, n_seqs, dim)
    kernels::mean_pool::mean_pool_forward(
        &dev,
        block_rows_config(n, ROW_BLOCK),
        p(&y)?,
        p(x)?,
        p(&cu)?,
        int(n)?,
        int(dim)?,
    )?;
    let y = y.with_requires_grad(tape.needs_grad(&[x]));
    if y.requires_grad() {
        let x = x.clone();
        tape.record("mean_pool", &[&y], move |outs, grads| {
            let _r = nvtx::bwd("mean_pool");
            let dy = out_grad(outs, 0)?;
            let dx = grads.acc(&x)?;
            // mean_pool_backward_T(dx, dout, cu_seqlens, n_seqs, dim)
            kernels::mean_pool::mean_pool_backward(
                &dev,
                block_rows_config(n, ROW_BLOCK),
                p(dx)?,
                p(dy)?,
                p(&cu)?,
                int(n)?,
                int(dim)?,
            )
        });
    }
    Ok(y)
}
