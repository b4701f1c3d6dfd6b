//! Rotary embedding on the GPU (`kernels/rotary.cu`), positions per token (offsets
//! included). One block of 128 threads per token (grid min(tokens, 65535)); the block
//! computes the token's d/2 (sin, cos) pairs once into shared memory.

use anyhow::{bail, Result};

use super::kernels;
use super::launch::{block_rows_config, device_of, empty, int, p};
use super::nvtx;
use crate::tensor::Tensor;

/// Threads per block of the rotary kernels (their header's efficient shape).
const ROTARY_BLOCK: u32 = 128;
/// Largest head dimension the kernels take (`2·kMaxHalf`); beyond it they do nothing.
const MAX_HEAD_DIM: usize = 512;

/// `(tokens, width, head_dim)` of `x`, checked against what the kernels take.
fn dims(x: &Tensor, n_heads: usize) -> Result<(usize, usize, usize)> {
    let (n, width) = x.dims2()?;
    let head_dim = width / n_heads;
    if head_dim % 2 != 0 || !(2..=MAX_HEAD_DIM).contains(&head_dim) {
        bail!("rotary on CUDA needs an even head dimension in 2..={MAX_HEAD_DIM}, got {head_dim}");
    }
    Ok((n, width, head_dim))
}

/// `y = rotate(x, positions)·scale`, a new tensor.
pub fn forward(x: &Tensor, positions: &Tensor, n_heads: usize, scale: f64) -> Result<Tensor> {
    let _r = nvtx::fwd("rotary");
    let dev = device_of(x)?;
    let (n, width, head_dim) = dims(x, n_heads)?;
    let y = empty(&dev, &[n, width], x.dtype())?;
    // rotary_forward_T(out, x, positions, n_tokens, n_heads, head_dim, x_row_stride, out_row_stride, scale)
    kernels::rotary::rotary_forward(
        &dev,
        block_rows_config(n, ROTARY_BLOCK),
        p(&y)?,
        p(x)?,
        p(positions)?,
        int(n)?,
        int(n_heads)?,
        int(head_dim)?,
        int(width)?,
        int(width)?,
        scale as f32,
    )?;
    Ok(y)
}

/// `dx += rotate⁻¹(dy, positions)·scale`.
pub fn backward(dx: &Tensor, dy: &Tensor, positions: &Tensor, n_heads: usize, scale: f64) -> Result<()> {
    let _r = nvtx::bwd("rotary");
    let dev = device_of(dy)?;
    let (n, width, head_dim) = dims(dy, n_heads)?;
    // rotary_backward_T(dx, dout, positions, n_tokens, n_heads, head_dim, dx_row_stride,
    //                   dout_row_stride, scale)
    kernels::rotary::rotary_backward(
        &dev,
        block_rows_config(n, ROTARY_BLOCK),
        p(dx)?,
        p(dy)?,
        p(positions)?,
        int(n)?,
        int(n_heads)?,
        int(head_dim)?,
        int(width)?,
        int(width)?,
        scale as f32,
    )
}
