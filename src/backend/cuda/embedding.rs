//! Launchers for `kernels/embedding.cu`: the lookup reads the fp32 table and writes the
//! run's compute dtype; the backward adds into the fp32 table gradient (atomics).

use anyhow::Result;

use super::launch::{device_of, empty, grid_stride_config, int, kname, launch, p};
use crate::tensor::Tensor;

/// `out[t] = weight[ids[t]]·row_scale[t]` in the device's compute dtype.
pub fn forward(ids: &Tensor, weight: &Tensor, row_scale: &Tensor) -> Result<Tensor> {
    let dev = device_of(weight)?;
    let (_, dim) = weight.dims2()?;
    let n = ids.numel();
    let dtype = dev.compute_dtype();
    let out = empty(&dev, &[n, dim], dtype)?;
    launch(
        &dev,
        "embedding",
        &kname("embedding_forward", dtype)?,
        grid_stride_config(n * dim),
        &[p(&out)?, p(weight)?, p(ids)?, p(row_scale)?, int(n)?, int(dim)?],
    )?;
    Ok(out)
}

/// `dweight[ids[t]] += dout[t]·row_scale[t]`.
pub fn backward(dweight: &mut Tensor, dout: &Tensor, ids: &Tensor, row_scale: &Tensor) -> Result<()> {
    let dev = device_of(dout)?;
    let (n, dim) = dout.dims2()?;
    launch(
        &dev,
        "embedding",
        &kname("embedding_backward", dout.dtype())?,
        grid_stride_config(n * dim),
        &[p(dweight)?, p(dout)?, p(ids)?, p(row_scale)?, int(n)?, int(dim)?],
    )
}
