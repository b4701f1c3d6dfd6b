//! Rotary embedding on the GPU (`kernels/rotary.cu`), positions per token.

use anyhow::Result;

use super::launch::{device_of, empty, grid_stride_config, int, kname, launch, p, Arg};
use crate::autograd::Tape;
use crate::ops::out_grad;
use crate::tensor::Tensor;

pub fn rotary(tape: &Tape, x: &Tensor, positions: &Tensor, n_heads: usize, scale: f64) -> Result<Tensor> {
    let dev = device_of(x)?;
    let (n, width) = x.dims2()?;
    let head_dim = width / n_heads;
    let y = empty(&dev, &[n, width], x.dtype())?;
    let work = n * n_heads * head_dim / 2;
    launch(
        &dev,
        "rotary",
        &kname("rotary_forward", x.dtype())?,
        grid_stride_config(work),
        &[
            p(&y)?,
            p(x)?,
            p(positions)?,
            int(n)?,
            int(n_heads)?,
            int(head_dim)?,
            int(width)?,
            int(width)?,
            Arg::F32(scale as f32),
        ],
    )?;
    let y = y.with_requires_grad(tape.needs_grad(&[x]));
    if y.requires_grad() {
        let (x, positions) = (x.clone(), positions.clone());
        tape.record("rotary", &[&y], move |outs, grads| {
            let dy = out_grad(outs, 0)?;
            let dx = grads.acc(&x)?;
            launch(
                &dev,
                "rotary",
                &kname("rotary_backward", dy.dtype())?,
                grid_stride_config(work),
                &[
                    p(dx)?,
                    p(dy)?,
                    p(&positions)?,
                    int(n)?,
                    int(n_heads)?,
                    int(head_dim)?,
                    int(width)?,
                    int(width)?,
                    Arg::F32(scale as f32),
                ],
            )
        });
    }
    Ok(y)
}
