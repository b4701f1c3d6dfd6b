//! Element-type conversion on the tape: `y = x` in another dtype, whose backward converts
//! the gradient back (CPU twin `backend/cpu/cast.rs`: f32 ↔ f64; kernels `kernels/cast.cu`:
//! f32 ↔ f16/bf16). `Tensor::to_dtype` is the same conversion off the tape (parameters'
//! compute copies, loading).

use anyhow::Result;

use super::out_grad;
use crate::autograd::Tape;
use crate::tensor::{DType, Tensor};

/// `x` as `dtype`; the gradient flows back converted to `x`'s dtype.
pub fn cast(tape: &Tape, x: &Tensor, dtype: DType) -> Result<Tensor> {
    let y = x.to_dtype(dtype)?;
    if dtype == x.dtype() {
        return Ok(y);
    }
    let y = y.with_requires_grad(tape.needs_grad(&[x]));
    if y.requires_grad() {
        let x = x.clone();
        tape.record("cast", &[&y], move |outs, grads| {
            let dx = out_grad(outs, 0)?.to_dtype(x.dtype())?;
            grads.accumulate(&x, &dx)
        });
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::Grads;
    use crate::tensor::Device;

    #[test]
    fn f64_to_f32_and_back_carries_values_and_gradients() {
        let tape = Tape::new();
        let x = Tensor::from_vec(vec![0.1f64, -2.5, 1e-3], &[1, 3]).unwrap().with_requires_grad(true);
        let y = cast(&tape, &x, DType::F32).unwrap();
        assert_eq!(y.dtype(), DType::F32);
        assert_eq!(y.as_slice::<f32>().unwrap(), &[0.1f32, -2.5, 1e-3]);
        // L = Σ w·y with w = (1, 2, 3): dL/dx = w, in f64.
        let w = Tensor::from_f32(vec![1.0, 2.0, 3.0], &[1, 3], DType::F32, &Device::Cpu).unwrap();
        let loss = crate::ops::linear(&tape, &y, &w, None).unwrap();
        let mut grads = Grads::new();
        tape.backward(&loss, &mut grads).unwrap();
        let dx = grads.get(&x).expect("x has a gradient");
        assert_eq!(dx.dtype(), DType::F64);
        assert_eq!(dx.as_slice::<f64>().unwrap(), &[1.0, 2.0, 3.0]);
    }
}
