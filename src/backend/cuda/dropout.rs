//! Dropout on the GPU (`kernels/dropout.cu`): the same Philox mask as the CPU.

use anyhow::Result;

use super::launch::{device_of, empty, grid_stride_config, kname, launch, long, p, Arg};
use crate::tensor::Tensor;

pub fn forward(x: &Tensor, prob: f32, seed: u64, offset: u64) -> Result<Tensor> {
    let dev = device_of(x)?;
    let y = empty(&dev, x.shape(), x.dtype())?;
    let n = x.numel();
    launch(
        &dev,
        "dropout",
        &kname("dropout_forward", x.dtype())?,
        grid_stride_config(n.div_ceil(4)),
        &[p(&y)?, p(x)?, Arg::F32(prob), Arg::U64(seed), Arg::U64(offset), long(n)],
    )?;
    Ok(y)
}

pub fn backward(dx: &Tensor, dy: &Tensor, prob: f32, seed: u64, offset: u64) -> Result<()> {
    let dev = device_of(dy)?;
    let n = dy.numel();
    launch(
        &dev,
        "dropout",
        &kname("dropout_backward", dy.dtype())?,
        grid_stride_config(n.div_ceil(4)),
        &[p(dx)?, p(dy)?, Arg::F32(prob), Arg::U64(seed), Arg::U64(offset), long(n)],
    )
}
