//! Fused bias + exact GELU on the GPU (`kernels/bias_gelu.cu`). Forward: one block per
//! row (grid min(rows, 65535)); backward: block (32, 8) over column tiles with a 2-D
//! grid, writing `dx += dy·gelu'(x + b)` and the fp32 column sums into `db`.

use anyhow::Result;

use super::kernels;
use super::launch::{block_rows_config, column_config, device_of, empty, int, p, p_opt, ROW_BLOCK};
use super::nvtx;
use crate::autograd::Tape;
use crate::ops::out_grad;
use crate::tensor::Tensor;

pub fn bias_gelu(tape: &Tape, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let _r = nvtx::fwd("bias_gelu");
    let dev = device_of(x)?;
    let (rows, cols) = x.dims2()?;
    let y = empty(&dev, &[rows, cols], x.dtype())?;
    // bias_gelu_forward_T(y, x, bias, rows, cols)
    kernels::bias_gelu::bias_gelu_forward(
        &dev,
        block_rows_config(rows, ROW_BLOCK),
        p(&y)?,
        p(x)?,
        p_opt(bias)?,
        int(rows)?,
        int(cols)?,
    )?;
    let mut inputs = vec![x];
    inputs.extend(bias);
    let y = y.with_requires_grad(tape.needs_grad(&inputs));
    if y.requires_grad() {
        let (x, bias) = (x.clone(), bias.cloned());
        tape.record("bias_gelu", &[&y], move |outs, grads| {
            let _r = nvtx::bwd("bias_gelu");
            let dy = out_grad(outs, 0)?;
            // dx is not nullable in the kernel: without a gradient for x, a throw-away
            // buffer takes the (accumulated) values.
            let dx = match grads.take_acc(&x)? {
                Some(t) => t,
                None => empty(&dev, x.shape(), x.dtype())?,
            };
            let db = match &bias {
                Some(b) => grads.take_acc(b)?,
                None => None,
            };
            // bias_gelu_backward_T(dx, dbias, dy, x, bias, rows, cols)
            kernels::bias_gelu::bias_gelu_backward(
                &dev,
                column_config(&dev, rows, cols),
                p(&dx)?,
                p_opt(db.as_ref())?,
                p(dy)?,
                p(&x)?,
                p_opt(bias.as_ref())?,
                int(rows)?,
                int(cols)?,
            )?;
            if x.requires_grad() {
                grads.put(&x, Some(dx));
            }
            if let Some(b) = &bias {
                grads.put(b, db);
            }
            Ok(())
        });
    }
    Ok(y)
}
