//! Dropout on the GPU (`kernels/dropout.cu`): the same Philox mask as the CPU. Flat
//! grid-stride over groups of 4 elements: block 256, grid min(ceil(n/1024), 32·SMs).

use anyhow::Result;

use super::kernels;
use super::launch::{device_of, empty, flat_config, long, p};
use super::nvtx;
use crate::tensor::Tensor;

pub fn forward(x: &Tensor, prob: f32, seed: u64, offset: u64) -> Result<Tensor> {
    let _r = nvtx::fwd("dropout");
    let dev = device_of(x)?;
    let y = empty(&dev, x.shape(), x.dtype())?;
    let n = x.numel();
    // dropout_forward_T(y, x, p, seed, offset, n)
    kernels::dropout::dropout_forward(&dev, flat_config(&dev, n, 4, 32), p(&y)?, p(x)?, prob, seed, offset, long(n))?;
    Ok(y)
}

pub fn backward(dx: &Tensor, dy: &Tensor, prob: f32, seed: u64, offset: u64) -> Result<()> {
    let _r = nvtx::bwd("dropout");
    let dev = device_of(dy)?;
    let n = dy.numel();
    // dropout_backward_T(dx, dy, p, seed, offset, n)
    kernels::dropout::dropout_backward(&dev, flat_config(&dev, n, 4, 32), p(dx)?, p(dy)?, prob, seed, offset, long(n))
}
