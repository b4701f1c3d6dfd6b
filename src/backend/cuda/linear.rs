//! Linear layer on the GPU: cuBLAS GemmEx with fp32 accumulation. Weights are fp32
//! masters; the product reads their half-precision compute copy when the run computes
//! in f16/bf16 (made once by [`CudaDevice::compute_copy`], rewritten in place by the
//! AdamW kernel after every update), and the weight gradient is accumulated in fp32
//! straight into the master's gradient buffer (`beta = 1`, fp32 C with half A/B). The
//! bias is added by `kernels/linear.cu` (one block per row) and its gradient summed there
//! in fp32 (block (32, 8), 2-D grid).

use anyhow::{bail, Result};

use super::device::CudaDevice;
use super::gemm::{gemm, Operand};
use super::kernels;
use super::launch::{block_rows_config, column_config, device_of, empty, int, p, ptr, ROW_BLOCK};
use super::nvtx;
use crate::tensor::{DType, Tensor};

/// `y = x·Wᵀ + b` and the weight's compute copy `wc` that the backward reads.
pub fn forward(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
    let _r = nvtx::fwd("linear");
    let dev = device_of(x)?;
    let (n, k) = x.dims2()?;
    let (m, _) = w.dims2()?;
    let dt = x.dtype();
    if w.dtype() != DType::F32 && w.dtype() != dt {
        bail!("linear on CUDA: weight dtype {} must be f32 (master) or the activations' {dt}", w.dtype());
    }
    if let Some(b) = b {
        if b.dtype() != DType::F32 {
            bail!("linear on CUDA keeps its bias in f32, got {}", b.dtype());
        }
    }
    let wc = dev.compute_copy(w, dt)?;
    let y = empty(&dev, &[n, m], dt)?;
    // y (n×m) = x (n×k) · Wᵀ (k×m)
    let xa = Operand { ptr: ptr(x)?, dtype: dt, ld: k, trans: false };
    let wa = Operand { ptr: ptr(&wc)?, dtype: dt, ld: k, trans: true };
    gemm(&dev, n, m, k, xa, wa, ptr(&y)?, dt, m, 1.0, 0.0, None)?;
    if let Some(b) = b {
        bias_add(&dev, &y, b)?;
    }
    Ok((y, wc))
}

/// `dx += dy·W`, `dW += dyᵀ·x` (fp32, the master's gradient), `db += Σ_rows dy`; each
/// skipped when `None`. `wc` is the weight's compute copy from [`forward`].
pub fn backward(
    dx: Option<&Tensor>,
    dw: Option<&Tensor>,
    db: Option<&Tensor>,
    dy: &Tensor,
    x: &Tensor,
    wc: &Tensor,
) -> Result<()> {
    let _r = nvtx::bwd("linear");
    let dev = device_of(dy)?;
    let (n, k) = x.dims2()?;
    let (_, m) = dy.dims2()?;
    let dt = dy.dtype();
    let dya = Operand { ptr: ptr(dy)?, dtype: dt, ld: m, trans: false };
    if let Some(dx) = dx {
        // dx (n×k) += dy (n×m) · W (m×k)
        let wa = Operand { ptr: ptr(wc)?, dtype: dt, ld: k, trans: false };
        gemm(&dev, n, k, m, dya, wa, ptr(dx)?, dt, k, 1.0, 1.0, None)?;
    }
    if let Some(dw) = dw {
        // dW (m×k, the master's dtype: fp32) += dyᵀ (m×n) · x (n×k)
        let dyt = Operand { trans: true, ..dya };
        let xa = Operand { ptr: ptr(x)?, dtype: dt, ld: k, trans: false };
        gemm(&dev, m, k, n, dyt, xa, ptr(dw)?, dw.dtype(), k, 1.0, 1.0, None)?;
    }
    if let Some(db) = db {
        bias_grad(&dev, db, dy)?;
    }
    Ok(())
}

/// `y[r, :] += b` in place (`bias_add_T(y, x = y, bias, rows, cols)`).
fn bias_add(dev: &CudaDevice, y: &Tensor, b: &Tensor) -> Result<()> {
    let (rows, cols) = y.dims2()?;
    kernels::linear::bias_add(dev, block_rows_config(rows, ROW_BLOCK), p(y)?, p(y)?, p(b)?, int(rows)?, int(cols)?)
}

/// `db += Σ_rows dy` in fp32 (`bias_grad_T(dbias, dy, rows, cols)`).
fn bias_grad(dev: &CudaDevice, db: &Tensor, dy: &Tensor) -> Result<()> {
    let (rows, cols) = dy.dims2()?;
    kernels::linear::bias_grad(dev, column_config(dev, rows, cols), p(db)?, p(dy)?, int(rows)?, int(cols)?)
}
