//! Launchers for `kernels/elementwise.cu`: add, accumulate, scale, tanh, and the
//! in-place scaling by a device scalar used to apply an upstream loss gradient.

use anyhow::{bail, Result};

use super::launch::{device_of, empty, grid_stride_config, kname, launch, long, p, Arg};
use crate::tensor::{ensure_same_shape, DType, Tensor};

/// `a + b`.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_dtype(a, b)?;
    let dev = device_of(a)?;
    let out = empty(&dev, a.shape(), a.dtype())?;
    let n = a.numel();
    launch(&dev, "elementwise", &kname("add", a.dtype())?, grid_stride_config(n), &[p(&out)?, p(a)?, p(b)?, long(n)])?;
    Ok(out)
}

/// `dst += src` in place.
pub fn accumulate(dst: &mut Tensor, src: &Tensor) -> Result<()> {
    ensure_same_shape(dst, src, "accumulate")?;
    same_dtype(dst, src)?;
    let dev = device_of(src)?;
    let n = src.numel();
    launch(&dev, "elementwise", &kname("accumulate", src.dtype())?, grid_stride_config(n), &[p(dst)?, p(src)?, long(n)])
}

/// `alpha · x` (a new tensor).
pub fn scale(x: &Tensor, alpha: f32) -> Result<Tensor> {
    let dev = device_of(x)?;
    let out = empty(&dev, x.shape(), x.dtype())?;
    let n = x.numel();
    launch(
        &dev,
        "elementwise",
        &kname("scale", x.dtype())?,
        grid_stride_config(n),
        &[p(&out)?, p(x)?, Arg::F32(alpha), long(n)],
    )?;
    Ok(out)
}

/// `x *= s` in place, where `s` is a one-element f32 GPU tensor (no host round trip).
pub fn scale_by_device_scalar(x: &Tensor, s: &Tensor) -> Result<()> {
    if s.numel() != 1 || s.dtype() != DType::F32 {
        bail!("scale_by_device_scalar: need a one-element f32 scalar, got {:?} {}", s.shape(), s.dtype());
    }
    let dev = device_of(x)?;
    let n = x.numel();
    launch(
        &dev,
        "elementwise",
        &kname("scale_by_device_scalar", x.dtype())?,
        grid_stride_config(n),
        &[p(x)?, p(s)?, long(n)],
    )
}

/// `tanh(x)`.
pub fn tanh_forward(x: &Tensor) -> Result<Tensor> {
    let dev = device_of(x)?;
    let out = empty(&dev, x.shape(), x.dtype())?;
    let n = x.numel();
    launch(
        &dev,
        "elementwise",
        &kname("tanh_forward", x.dtype())?,
        grid_stride_config(n),
        &[p(&out)?, p(x)?, long(n)],
    )?;
    Ok(out)
}

/// `dx += dy·(1 − y²)`.
pub fn tanh_backward(dx: &mut Tensor, dy: &Tensor, y: &Tensor) -> Result<()> {
    let dev = device_of(dy)?;
    let n = dy.numel();
    launch(
        &dev,
        "elementwise",
        &kname("tanh_backward", dy.dtype())?,
        grid_stride_config(n),
        &[p(dx)?, p(dy)?, p(y)?, long(n)],
    )
}

fn same_dtype(a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        bail!("dtypes {} and {} differ", a.dtype(), b.dtype());
    }
    Ok(())
}
