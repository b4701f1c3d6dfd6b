//! Row gather / scatter-add on the GPU (`kernels/gather.cu`).

use anyhow::Result;

use super::launch::{device_of, empty, grid_stride_config, int, kname, launch, p};
use crate::autograd::Tape;
use crate::ops::out_grad;
use crate::tensor::Tensor;

pub fn gather_rows(tape: &Tape, x: &Tensor, rows: &Tensor) -> Result<Tensor> {
    let dev = device_of(x)?;
    let (_, dim) = x.dims2()?;
    let n = rows.numel();
    let y = empty(&dev, &[n, dim], x.dtype())?;
    launch(
        &dev,
        "gather",
        &kname("gather_rows", x.dtype())?,
        grid_stride_config(n * dim),
        &[p(&y)?, p(x)?, p(rows)?, int(n)?, int(dim)?],
    )?;
    let y = y.with_requires_grad(tape.needs_grad(&[x]));
    if y.requires_grad() {
        let (x, rows) = (x.clone(), rows.clone());
        tape.record("gather_rows", &[&y], move |outs, grads| {
            let dy = out_grad(outs, 0)?;
            let dx = grads.acc(&x)?;
            launch(
                &dev,
                "gather",
                &kname("scatter_add_rows", dy.dtype())?,
                grid_stride_config(n * dim),
                &[p(dx)?, p(dy)?, p(&rows)?, int(n)?, int(dim)?],
            )
        });
    }
    Ok(y)
}
