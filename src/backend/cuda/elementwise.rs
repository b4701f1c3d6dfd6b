//! Launchers for `kernels/elementwise.cu`: add, accumulate, scale, tanh, and the
//! in-place scaling by a device scalar used to apply an upstream loss gradient.
//! All are flat grid-stride maps: block 256, grid min(ceil(n / (256·N)), 32·SMs) with
//! N = 16/sizeof(T) elements per vector access.

use anyhow::{bail, Result};
use cudarc::driver::LaunchConfig;

use super::device::CudaDevice;
use super::kernels;
use super::launch::{device_of, empty, flat_config, long, p, vec_width};
use super::nvtx;
use crate::tensor::{ensure_same_shape, DType, Tensor};

fn map_config(dev: &CudaDevice, n: usize, dtype: DType) -> LaunchConfig {
    flat_config(dev, n, vec_width(dtype), 32)
}

/// `a + b`.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_dtype(a, b)?;
    let _r = nvtx::fwd("add");
    let dev = device_of(a)?;
    let out = empty(&dev, a.shape(), a.dtype())?;
    let n = a.numel();
    // add_T(out, a, b, n)
    kernels::elementwise::add(&dev, map_config(&dev, n, a.dtype()), p(&out)?, p(a)?, p(b)?, long(n))?;
    Ok(out)
}

/// `dst += src` in place.
pub fn accumulate(dst: &mut Tensor, src: &Tensor) -> Result<()> {
    ensure_same_shape(dst, src, "accumulate")?;
    same_dtype(dst, src)?;
    let _r = nvtx::range("accumulate");
    let dev = device_of(src)?;
    let n = src.numel();
    // accumulate_T(dst, src, n)
    kernels::elementwise::accumulate(&dev, map_config(&dev, n, src.dtype()), p(dst)?, p(src)?, long(n))
}

/// `alpha · x` (a new tensor).
pub fn scale(x: &Tensor, alpha: f32) -> Result<Tensor> {
    let _r = nvtx::range("scale");
    let dev = device_of(x)?;
    let out = empty(&dev, x.shape(), x.dtype())?;
    let n = x.numel();
    // scale_T(out, x, s, n)
    kernels::elementwise::scale(&dev, map_config(&dev, n, x.dtype()), p(&out)?, p(x)?, alpha, long(n))?;
    Ok(out)
}

/// `x *= s` in place, where `s` is a one-element f32 GPU tensor (no host round trip).
pub fn scale_by_device_scalar(x: &Tensor, s: &Tensor) -> Result<()> {
    check_scalar(s)?;
    let dev = device_of(x)?;
    let n = x.numel();
    // scale_by_device_scalar_T(x, s, n)
    kernels::elementwise::scale_by_device_scalar(&dev, map_config(&dev, n, x.dtype()), p(x)?, p(s)?, long(n))
}

/// `tanh(x)`.
pub fn tanh_forward(x: &Tensor) -> Result<Tensor> {
    let _r = nvtx::fwd("tanh");
    let dev = device_of(x)?;
    let out = empty(&dev, x.shape(), x.dtype())?;
    let n = x.numel();
    // tanh_forward_T(y, x, n)
    kernels::elementwise::tanh_forward(&dev, map_config(&dev, n, x.dtype()), p(&out)?, p(x)?, long(n))?;
    Ok(out)
}

/// `dx += dy·(1 − y²)`.
pub fn tanh_backward(dx: &mut Tensor, dy: &Tensor, y: &Tensor) -> Result<()> {
    let _r = nvtx::bwd("tanh");
    let dev = device_of(dy)?;
    let n = dy.numel();
    // tanh_backward_T(dx, dy, y, n)
    kernels::elementwise::tanh_backward(&dev, map_config(&dev, n, dy.dtype()), p(dx)?, p(dy)?, p(y)?, long(n))
}

/// A one-element f32 GPU tensor (an upstream loss gradient).
pub fn check_scalar(s: &Tensor) -> Result<()> {
    if s.numel() != 1 || s.dtype() != DType::F32 {
        bail!("expected a one-element f32 scalar, got {:?} {}", s.shape(), s.dtype());
    }
    Ok(())
}

fn same_dtype(a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        bail!("dtypes {} and {} differ", a.dtype(), b.dtype());
    }
    Ok(())
}
