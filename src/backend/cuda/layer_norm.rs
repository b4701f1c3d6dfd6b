//! LayerNorm on the GPU (`kernels/layer_norm.cu`): fp32 statistics, fp32 parameters,
//! activations in the compute dtype.
//!
//! Launches (from the kernel header): forward one warp per row (block 256, grid
//! ceil(rows/8)); backward one warp per row with grid min(ceil(rows/8), 2·SMs) and
//! 2·dim·4 bytes of dynamic shared memory for the per-block dw/db partials (one global
//! atomic per column and block). A frozen LayerNorm passes null dw/db and gets no
//! shared memory.

use anyhow::{bail, Result};

use super::kernels;
use super::launch::{device_of, dynamic_smem, empty, int, kname, p, p_opt, warp_rows_config, BLOCK};
use super::nvtx;
use crate::tensor::{DType, Tensor};

/// `y = LayerNorm(x)·w + b` and the per-row fp32 `mean` and `rstd` the backward reads.
pub fn forward(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    if w.dtype() != DType::F32 || b.dtype() != DType::F32 {
        bail!("layer_norm on CUDA keeps its weight and bias in f32 (got {} and {})", w.dtype(), b.dtype());
    }
    let _r = nvtx::fwd("layer_norm");
    let dev = device_of(x)?;
    let (rows, dim) = x.dims2()?;
    let y = empty(&dev, &[rows, dim], x.dtype())?;
    let mean = empty(&dev, &[rows], DType::F32)?;
    let rstd = empty(&dev, &[rows], DType::F32)?;
    kernels::layer_norm::layer_norm_forward(
        &dev,
        warp_rows_config(rows),
        p(&y)?,
        p(&mean)?,
        p(&rstd)?,
        p(x)?,
        p(w)?,
        p(b)?,
        int(rows)?,
        int(dim)?,
        eps as f32,
    )?;
    Ok((y, mean, rstd))
}

/// `dx += …`, `dw += Σ dy·x̂`, `db += Σ dy` (dw/db skipped when `None`).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dx: Option<&Tensor>,
    dw: Option<&Tensor>,
    db: Option<&Tensor>,
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
) -> Result<()> {
    let _r = nvtx::bwd("layer_norm");
    let dev = &device_of(dy)?;
    let (rows, dim) = x.dims2()?;
    // dx is not nullable in the kernel: an input without a gradient gets a throw-away
    // buffer (the kernel accumulates into it).
    let scratch;
    let dx = match dx {
        Some(t) => t,
        None => {
            scratch = empty(dev, x.shape(), x.dtype())?;
            &scratch
        }
    };
    let name = kname("layer_norm_backward", dy.dtype())?;
    let mut cfg = warp_rows_config(rows);
    let cap = 2 * dev.sm_count();
    cfg.grid_dim.0 = cfg.grid_dim.0.min(cap.max(1));
    if dw.is_some() || db.is_some() {
        cfg.shared_mem_bytes = dynamic_smem(dev, "layer_norm", &name, 2 * dim * 4)?;
    }
    debug_assert_eq!(cfg.block_dim.0, BLOCK);
    kernels::layer_norm::layer_norm_backward(
        dev,
        cfg,
        p(dx)?,
        p_opt(dw)?,
        p_opt(db)?,
        p(dy)?,
        p(x)?,
        p(w)?,
        p(mean)?,
        p(rstd)?,
        int(rows)?,
        int(dim)?,
    )
}
