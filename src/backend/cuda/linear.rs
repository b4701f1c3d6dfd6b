//! Linear layer on the GPU: cuBLAS GemmEx with fp32 accumulation. Weights are fp32
//! masters; the product reads their half-precision compute copy when the run computes
//! in f16/bf16, and the weight gradient is accumulated in fp32 straight into the
//! master's gradient buffer (`beta = 1`). The bias is added by `kernels/bias.cu`.

use anyhow::Result;

use super::gemm::{gemm, Operand};
use super::launch::{device_of, empty, grid_stride_config, int, kname, launch, p, ptr};
use crate::autograd::Tape;
use crate::ops::out_grad;
use crate::tensor::{DType, Tensor};

pub fn linear(tape: &Tape, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dev = device_of(x)?;
    let (n, k) = x.dims2()?;
    let (m, _) = w.dims2()?;
    let dt = x.dtype();
    let wc = dev.compute_copy(w, dt)?;
    let y = empty(&dev, &[n, m], dt)?;
    let xa = Operand { ptr: ptr(x)?, dtype: dt, ld: k, trans: false };
    let wa = Operand { ptr: ptr(&wc)?, dtype: dt, ld: k, trans: true };
    gemm(&dev, n, m, k, xa, wa, ptr(&y)?, dt, m, 1.0, 0.0, None)?;
    if let Some(b) = b {
        launch(
            &dev,
            "bias",
            &kname("bias_add", dt)?,
            grid_stride_config(n * m),
            &[p(&y)?, p(&y)?, p(b)?, int(n)?, int(m)?],
        )?;
    }
    let mut inputs = vec![x, w];
    inputs.extend(b);
    let y = y.with_requires_grad(tape.needs_grad(&inputs));
    if y.requires_grad() {
        let (x, w, b) = (x.clone(), w.clone(), b.cloned());
        tape.record("linear", &[&y], move |outs, grads| {
            let dy = out_grad(outs, 0)?;
            let dya = Operand { ptr: ptr(dy)?, dtype: dt, ld: m, trans: false };
            if x.requires_grad() {
                // dx (n×k) += dy (n×m) · W (m×k)
                let dx = grads.acc(&x)?;
                let wa = Operand { ptr: ptr(&wc)?, dtype: dt, ld: k, trans: false };
                gemm(&dev, n, k, m, dya, wa, ptr(dx)?, dt, k, 1.0, 1.0, None)?;
            }
            if w.requires_grad() {
                // dW (m×k, fp32) += dyᵀ (m×n) · x (n×k)
                let dw = grads.acc(&w)?;
                let dyt = Operand { trans: true, ..dya };
                let xa = Operand { ptr: ptr(&x)?, dtype: dt, ld: k, trans: false };
                gemm(&dev, m, k, n, dyt, xa, ptr(dw)?, DType::F32, k, 1.0, 1.0, None)?;
            }
            if let Some(b) = &b {
                if b.requires_grad() {
                    let db = grads.acc(b)?;
                    launch(
                        &dev,
                        "bias",
                        &kname("bias_grad", dt)?,
                        grid_stride_config(m),
                        &[p(db)?, p(dy)?, int(n)?, int(m)?],
                    )?;
                }
            }
            Ok(())
        });
    }
    Ok(y)
}
