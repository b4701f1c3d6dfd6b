//! LayerNorm on the GPU (`kernels/layer_norm.cu`): fp32 statistics, fp32 parameters,
//! activations in the compute dtype.

use anyhow::{bail, Result};

use super::launch::{device_of, empty, int, kname, launch, p, rows_config, zeros, Arg};
use crate::autograd::Tape;
use crate::ops::out_grad;
use crate::tensor::{DType, Tensor};

pub fn layer_norm(tape: &Tape, x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if w.dtype() != DType::F32 || b.dtype() != DType::F32 {
        bail!("layer_norm on CUDA keeps its weight and bias in f32 (got {} and {})", w.dtype(), b.dtype());
    }
    let dev = device_of(x)?;
    let (rows, dim) = x.dims2()?;
    let y = empty(&dev, &[rows, dim], x.dtype())?;
    let mean = empty(&dev, &[rows], DType::F32)?;
    let rstd = empty(&dev, &[rows], DType::F32)?;
    launch(
        &dev,
        "layer_norm",
        &kname("layer_norm_forward", x.dtype())?,
        rows_config(rows)?,
        &[p(&y)?, p(&mean)?, p(&rstd)?, p(x)?, p(w)?, p(b)?, int(rows)?, int(dim)?, Arg::F32(eps as f32)],
    )?;
    let y = y.with_requires_grad(tape.needs_grad(&[x, w, b]));
    if y.requires_grad() {
        let (x, w, b) = (x.clone(), w.clone(), b.clone());
        tape.record("layer_norm", &[&y], move |outs, grads| {
            let dy = out_grad(outs, 0)?;
            // The kernel writes all three gradients; inputs without one get scratch buffers.
            let mut dx = grads.take_acc(&x)?;
            let mut dw = grads.take_acc(&w)?;
            let mut db = grads.take_acc(&b)?;
            let scratch = |t: &Tensor| zeros(&dev, t.shape(), t.dtype());
            let dx_t = match &dx {
                Some(t) => t.clone(),
                None => scratch(&x)?,
            };
            let dw_t = match &dw {
                Some(t) => t.clone(),
                None => scratch(&w)?,
            };
            let db_t = match &db {
                Some(t) => t.clone(),
                None => scratch(&b)?,
            };
            launch(
                &dev,
                "layer_norm",
                &kname("layer_norm_backward", dy.dtype())?,
                rows_config(rows)?,
                &[p(&dx_t)?, p(&dw_t)?, p(&db_t)?, p(dy)?, p(&x)?, p(&w)?, p(&mean)?, p(&rstd)?, int(rows)?, int(dim)?],
            )?;
            drop((dx_t, dw_t, db_t));
            grads.put(&x, dx.take());
            grads.put(&w, dw.take());
            grads.put(&b, db.take());
            Ok(())
        });
    }
    Ok(y)
}
