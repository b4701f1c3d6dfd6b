//! Fused bias + exact GELU on the GPU (`kernels/bias_gelu.cu`). Forward: one block per
//! row (grid min(rows, 65535)); backward: block (32, 8) over column tiles with a 2-D
//! grid, writing `dx += dy·gelu'(x + b)` and the fp32 column sums into `db`.

use anyhow::Result;

use super::kernels;
use super::launch::{block_rows_config, column_config, device_of, empty, int, p, p_opt, ROW_BLOCK};
use super::nvtx;
use crate::tensor::Tensor;

/// `gelu(x + bias)`, a new tensor.
pub fn forward(x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let _r = nvtx::fwd("bias_gelu");
    let dev = device_of(x)?;
    let (rows, cols) = x.dims2()?;
    let y = empty(&dev, &[rows, cols], x.dtype())?;
    // bias_gelu_forward_T(y, x, bias, rows, cols)
    kernels::bias_gelu::bias_gelu_forward(
        &dev,
        block_rows_config(rows, ROW_BLOCK),
        p(&y)?,
        p(x)?,
        p_opt(bias)?,
        int(rows)?,
        int(cols)?,
    )?;
    Ok(y)
}

/// `dx += dy·gelu'(x + b)` and `db += Σ_rows dy·gelu'(x + b)`, each skipped when `None`.
pub fn backward(
    dx: Option<&Tensor>,
    db: Option<&Tensor>,
    dy: &Tensor,
    x: &Tensor,
    bias: Option<&Tensor>,
) -> Result<()> {
    let _r = nvtx::bwd("bias_gelu");
    let dev = device_of(dy)?;
    let (rows, cols) = x.dims2()?;
    // dx is not nullable in the kernel: without a gradient for x, a throw-away buffer
    // takes the (accumulated) values.
    let scratch;
    let dx = match dx {
        Some(t) => t,
        None => {
            scratch = empty(&dev, x.shape(), x.dtype())?;
            &scratch
        }
    };
    // bias_gelu_backward_T(dx, dbias, dy, x, bias, rows, cols)
    kernels::bias_gelu::bias_gelu_backward(
        &dev,
        column_config(&dev, rows, cols),
        p(dx)?,
        p_opt(db)?,
        p(dy)?,
        p(x)?,
        p_opt(bias)?,
        int(rows)?,
        int(cols)?,
    )
}
