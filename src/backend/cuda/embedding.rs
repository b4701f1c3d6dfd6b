//! Launchers for `kernels/embedding.cu`: the lookup reads the fp32 table and writes the
//! run's compute dtype; the backward adds into the fp32 table gradient (atomics). Both
//! launch one block per token (block 256, grid min(tokens, 65535)).

use anyhow::{bail, Result};

use super::kernels;
use super::launch::{block_rows_config, device_of, empty, int, p, ROW_BLOCK};
use super::nvtx;
use crate::tensor::{DType, Tensor};

fn check_f32(weight: &Tensor, row_scale: &Tensor) -> Result<()> {
    if weight.dtype() != DType::F32 || row_scale.dtype() != DType::F32 {
        bail!(
            "embedding on CUDA takes an f32 table and f32 row scales, got {} and {}",
            weight.dtype(),
            row_scale.dtype()
        );
    }
    Ok(())
}

/// `out[t] = weight[ids[t]]·row_scale[t]` in the device's compute dtype.
pub fn forward(ids: &Tensor, weight: &Tensor, row_scale: &Tensor) -> Result<Tensor> {
    check_f32(weight, row_scale)?;
    let _r = nvtx::fwd("embedding");
    let dev = device_of(weight)?;
    let (_, dim) = weight.dims2()?;
    let n = ids.numel();
    let dtype = dev.compute_dtype();
    let out = empty(&dev, &[n, dim], dtype)?;
    // embedding_forward_T(out, weight, ids, row_scale, n_tokens, dim)
    kernels::embedding::embedding_forward(
        &dev,
        block_rows_config(n, ROW_BLOCK),
        p(&out)?,
        p(weight)?,
        p(ids)?,
        p(row_scale)?,
        int(n)?,
        int(dim)?,
    )?;
    Ok(out)
}

/// `dweight[ids[t]] += dout[t]·row_scale[t]`.
pub fn backward(dweight: &mut Tensor, dout: &Tensor, ids: &Tensor, row_scale: &Tensor) -> Result<()> {
    check_f32(dweight, row_scale)?;
    let _r = nvtx::bwd("embedding");
    let dev = device_of(dout)?;
    let (n, dim) = dout.dims2()?;
    // embedding_backward_T(dweight, dout, ids, row_scale, n_tokens, dim)
    kernels::embedding::embedding_backward(
        &dev,
        block_rows_config(n, ROW_BLOCK),
        p(dweight)?,
        p(dout)?,
        p(ids)?,
        p(row_scale)?,
        int(n)?,
        int(dim)?,
    )
}
