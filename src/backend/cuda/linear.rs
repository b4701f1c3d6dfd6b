//! Linear layer on the GPU: cuBLAS GemmEx with fp32 accumulation. Weights are fp32
//! masters; the product reads their half-precision compute copy when the run computes
//! in f16/bf16 (made once by [`CudaDevice::compute_copy`], rewritten in place by the
//! AdamW kernel after every update), and the weight gradient is accumulated in fp32
//! straight into the master's gradient buffer (`beta = 1`, fp32 C with half A/B). The
//! bias is added by `kernels/bias.cu` (one block per row) and its gradient summed there
//! in fp32 (block (32, 8), 2-D grid).

use anyhow::{bail, Result};

use super::device::CudaDevice;
use super::gemm::{gemm, Operand};
use super::kernels;
use super::launch::{block_rows_config, column_config, device_of, empty, int, p, ptr, ROW_BLOCK};
use super::nvtx;
use crate::autograd::Tape;
use crate::ops::out_grad;
use crate::tensor::{DType, Tensor};

pub fn linear(tape: &Tape, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
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
    let mut inputs = vec![x, w];
    inputs.extend(b);
    let y = y.with_requires_grad(tape.needs_grad(&inputs));
    if y.requires_grad() {
        let (x, w, b) = (x.clone(), w.clone(), b.cloned());
        tape.record("linear", &[&y], move |outs, grads| {
            let _r = nvtx::bwd("linear");
            let dy = out_grad(outs, 0)?;
            let dya = Operand { ptr: ptr(dy)?, dtype: dt, ld: m, trans: false };
            if x.requires_grad() {
                // dx (n×k) += dy (n×m) · W (m×k)
                let dx = grads.acc(&x)?;
                let wa = Operand { ptr: ptr(&wc)?, dtype: dt, ld: k, trans: false };
                gemm(&dev, n, k, m, dya, wa, ptr(dx)?, dt, k, 1.0, 1.0, None)?;
            }
            if w.requires_grad() {
                // dW (m×k, the master's dtype: fp32) += dyᵀ (m×n) · x (n×k)
                let dw = grads.acc(&w)?;
                let dyt = Operand { trans: true, ..dya };
                let xa = Operand { ptr: ptr(&x)?, dtype: dt, ld: k, trans: false };
                gemm(&dev, m, k, n, dyt, xa, ptr(dw)?, dw.dtype(), k, 1.0, 1.0, None)?;
            }
            if let Some(b) = &b {
                if b.requires_grad() {
                    bias_grad(&dev, grads.acc(b)?, dy)?;
                }
            }
            Ok(())
        });
    }
    Ok(y)
}

/// `y[r, :] += b` in place (`bias_add_T(y, x = y, bias, rows, cols)`).
fn bias_add(dev: &CudaDevice, y: &Tensor, b: &Tensor) -> Result<()> {
    let (rows, cols) = y.dims2()?;
    kernels::bias::bias_add(dev, block_rows_config(rows, ROW_BLOCK), p(y)?, p(y)?, p(b)?, int(rows)?, int(cols)?)
}

/// `db += Σ_rows dy` in fp32 (`bias_grad_T(dbias, dy, rows, cols)`).
fn bias_grad(dev: &CudaDevice, db: &Tensor, dy: &Tensor) -> Result<()> {
    let (rows, cols) = dy.dims2()?;
    kernels::bias::bias_grad(dev, column_config(dev, rows, cols), p(db)?, p(dy)?, int(rows)?, int(cols)?)
}
