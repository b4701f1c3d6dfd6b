//! Fused bias + exact GELU on the GPU (`kernels/bias_gelu.cu`).

use anyhow::Result;

use super::launch::{device_of, empty, grid_stride_config, int, kname, launch, p, p_opt, zeros};
use crate::autograd::Tape;
use crate::ops::out_grad;
use crate::tensor::Tensor;

pub fn bias_gelu(tape: &Tape, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dev = device_of(x)?;
    let (rows, cols) = x.dims2()?;
    let y = empty(&dev, &[rows, cols], x.dtype())?;
    launch(
        &dev,
        "bias_gelu",
        &kname("bias_gelu_forward", x.dtype())?,
        grid_stride_config(rows * cols),
        &[p(&y)?, p(x)?, p_opt(bias)?, int(rows)?, int(cols)?],
    )?;
    let mut inputs = vec![x];
    inputs.extend(bias);
    let y = y.with_requires_grad(tape.needs_grad(&inputs));
    if y.requires_grad() {
        let (x, bias) = (x.clone(), bias.cloned());
        tape.record("bias_gelu", &[&y], move |outs, grads| {
            let dy = out_grad(outs, 0)?;
            let dx = match grads.take_acc(&x)? {
                Some(t) => t,
                None => zeros(&dev, x.shape(), x.dtype())?,
            };
            let db = match &bias {
                Some(b) => grads.take_acc(b)?,
                None => None,
            };
            launch(
                &dev,
                "bias_gelu",
                &kname("bias_gelu_backward", dy.dtype())?,
                grid_stride_config(rows * cols),
                &[p(&dx)?, p_opt(db.as_ref())?, p(dy)?, p(&x)?, p_opt(bias.as_ref())?, int(rows)?, int(cols)?],
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
