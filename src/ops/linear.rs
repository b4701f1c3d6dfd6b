//! Linear layer `y = x·Wᵀ + b` with PyTorch's weight layout `W: [out, in]` (CPU twin
//! `backend/cpu/linear.rs`; CUDA: cuBLAS plus `kernels/linear.cu` for the bias).
//!
//! Backward: `dx += dy·W`, `dW += dyᵀ·x`, `db += Σ_rows dy`.
//!
//! bf16 on the CPU ([`set_cpu_bf16`], `--precision bf16`; `backend/cpu/matmul_bf16.rs`):
//! both operands of each product are rounded to bf16 and every sum stays fp32, as PyTorch's
//! CPU autocast does; activations, gradients and weights stay fp32 tensors.
//! - [`CpuBf16::Inference`]: a product reads a bf16 copy of the weight, packed on first
//!   use and kept per weight tensor (weights do not change).
//! - [`CpuBf16::Training`]: the weight is packed afresh at every product (the optimizer
//!   changes it in place), and the backward's `dx += dy·W` and `dW += dyᵀ·x` are bf16
//!   products too (`dy` rounded, as autocast's bf16 gradient is); `db` sums in fp32.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};

use super::{grad_slice, out_grad, with_real};
use crate::autograd::Tape;
use crate::backend::cpu::linear::{self as cpu, LinearDims};
use crate::backend::cpu::matmul_bf16::{self, PackedBf16};
use crate::backend::cpu::Real;
use crate::backend::cuda::linear as cuda;
use crate::tensor::{DType, Tensor, TensorId};

/// How the CPU's linear products compute (process-wide, like the thread count: set once by
/// `train::device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuBf16 {
    /// fp32 products.
    Off,
    /// bf16 products that need no gradient, through weights packed once.
    Inference,
    /// Every product and both backward products in bf16, weights packed at each use.
    Training,
}

static CPU_BF16: AtomicU8 = AtomicU8::new(0);

/// Packed bf16 copies of the weights, by tensor (weights do not change during inference).
static PACKED: Mutex<Option<HashMap<TensorId, Arc<PackedBf16>>>> = Mutex::new(None);

/// Set how CPU linear products compute. Fails for bf16 where the CPU has no
/// AVX512-BF16. Leaving [`CpuBf16::Inference`] drops the packed copies.
pub fn set_cpu_bf16(mode: CpuBf16) -> Result<()> {
    if mode != CpuBf16::Off && !matmul_bf16::supported() {
        bail!("--precision bf16 on the CPU needs AVX512-BF16 (vdpbf16ps), which this CPU lacks; use fp32");
    }
    CPU_BF16.store(mode as u8, Ordering::Relaxed);
    if mode != CpuBf16::Inference {
        *PACKED.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
    Ok(())
}

/// The mode [`set_cpu_bf16`] set.
pub fn cpu_bf16() -> CpuBf16 {
    match CPU_BF16.load(Ordering::Relaxed) {
        1 => CpuBf16::Inference,
        2 => CpuBf16::Training,
        _ => CpuBf16::Off,
    }
}

/// `x: [n, in]`, `w: [out, in]`, `b: [out]` or none → `[n, out]`.
pub fn linear(tape: &Tape, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (n, k) = x.dims2()?;
    let (m, k2) = w.dims2()?;
    if k != k2 {
        bail!("linear: input has {k} features but the weight {:?} expects {k2}", w.shape());
    }
    if let Some(b) = b {
        if b.shape() != [m] {
            bail!("linear: bias {:?} must be [{m}]", b.shape());
        }
    }
    let mut inputs = vec![x, w];
    inputs.extend(b);
    super::ensure_same_device("linear", &inputs)?;
    let dims = LinearDims { n, k, m };
    // On CUDA the backward reads the weight's compute copy; on the CPU, the weight itself.
    let needs_grad = tape.needs_grad(&inputs);
    let bf16 = if x.is_cpu() && x.dtype() == DType::F32 { cpu_bf16() } else { CpuBf16::Off };
    let (y, w_used) = if bf16 == CpuBf16::Training || (bf16 == CpuBf16::Inference && !needs_grad) {
        (cpu_bf16_forward(x, w, b, dims, bf16 == CpuBf16::Inference)?, w.clone())
    } else if x.is_cpu() {
        (cpu_forward(x, w, b, dims)?, w.clone())
    } else {
        cuda::forward(x, w, b)?
    };
    let y = y.with_requires_grad(needs_grad);
    if y.requires_grad() {
        let (x, w, b) = (x.clone(), w.clone(), b.cloned());
        tape.record("linear", &[&y], move |outs, grads| {
            let dy = out_grad(outs, 0)?;
            let bf16_backward = bf16 == CpuBf16::Training && dy.dtype() == DType::F32;
            // The first contributions to `dx` and `dW` of a bf16 backward are written into fresh
            // buffers, not added to zeros.
            let fresh_dx = bf16_backward && x.requires_grad() && !grads.has(&x);
            let mut dx = if fresh_dx { None } else { grads.take_acc(&x)? };
            let fresh_dw = bf16_backward && w.requires_grad() && !grads.has(&w);
            let mut dw = if fresh_dw { None } else { grads.take_acc(&w)? };
            let mut db = match &b {
                Some(b) => grads.take_acc(b)?,
                None => None,
            };
            if bf16_backward {
                cpu_bf16_backward(&mut dx, &mut dw, &mut db, dy, &x, &w_used, dims)?;
            } else {
                backward(&mut dx, &mut dw, &mut db, dy, &x, &w_used, dims)?;
            }
            if fresh_dx {
                let (dys, ws) = (dy.as_slice::<f32>()?, w_used.as_slice::<f32>()?);
                let input_grad = matmul_bf16::linear_input_grad(dys, ws, dims.n, dims.m, dims.k);
                dx = Some(Tensor::from_vec(input_grad, x.shape())?);
            }
            if fresh_dw {
                let (dys, xs) = (dy.as_slice::<f32>()?, x.as_slice::<f32>()?);
                let weight_grad = matmul_bf16::linear_weight_grad(dys, xs, dims.n, dims.m, dims.k);
                dw = Some(Tensor::from_vec(weight_grad, w.shape())?);
            }
            grads.put(&x, dx);
            grads.put(&w, dw);
            if let Some(b) = &b {
                grads.put(b, db);
            }
            Ok(())
        });
    }
    Ok(y)
}

fn cpu_forward(x: &Tensor, w: &Tensor, b: Option<&Tensor>, dims: LinearDims) -> Result<Tensor> {
    with_real!(x.dtype(), T => {
        let bs = match b {
            Some(b) => b.as_slice::<T>()?,
            None => &[],
        };
        let mut y = crate::backend::cpu::filled(dims.n * dims.m, T::zero());
        cpu::forward(&mut y, x.as_slice::<T>()?, w.as_slice::<T>()?, bs, dims);
        Tensor::from_vec(y, &[dims.n, dims.m])
    })
}

/// `y = bf16(x)·bf16(W)ᵀ + b` with fp32 sums, through the weight's packed copy (`keep`:
/// the one kept per weight; otherwise packed now).
fn cpu_bf16_forward(x: &Tensor, w: &Tensor, b: Option<&Tensor>, dims: LinearDims, keep: bool) -> Result<Tensor> {
    let packed =
        if keep { packed_copy(w, dims)? } else { Arc::new(PackedBf16::pack(w.as_slice::<f32>()?, dims.m, dims.k)) };
    let bs = match b {
        Some(b) => b.as_slice::<f32>()?,
        None => &[],
    };
    Tensor::from_vec(matmul_bf16::linear(x.as_slice::<f32>()?, &packed, bs, dims.n), &[dims.n, dims.m])
}

/// The packed bf16 copy of `w`, made on first use.
fn packed_copy(w: &Tensor, dims: LinearDims) -> Result<Arc<PackedBf16>> {
    if let Some(p) = PACKED.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_default().get(&w.id()) {
        return Ok(p.clone());
    }
    let p = Arc::new(PackedBf16::pack(w.as_slice::<f32>()?, dims.m, dims.k));
    PACKED.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_default().insert(w.id(), p.clone());
    Ok(p)
}

/// [`backward`] with the two products in bf16 (fp32 sums) and `db` in fp32.
fn cpu_bf16_backward(
    dx: &mut Option<Tensor>,
    dw: &mut Option<Tensor>,
    db: &mut Option<Tensor>,
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    dims: LinearDims,
) -> Result<()> {
    let (dys, xs, ws) = (dy.as_slice::<f32>()?, x.as_slice::<f32>()?, w.as_slice::<f32>()?);
    let LinearDims { n, k, m } = dims;
    let dxs = grad_slice::<f32>(dx)?;
    if !dxs.is_empty() {
        matmul_bf16::linear_backward_input(dxs, dys, ws, n, m, k);
    }
    let dws = grad_slice::<f32>(dw)?;
    if !dws.is_empty() {
        matmul_bf16::linear_backward_weight(dws, dys, xs, n, m, k);
    }
    // Σ_rows dy is not a product: fp32, as in the fp32 backward.
    cpu::backward(&mut [], &mut [], grad_slice::<f32>(db)?, dys, xs, ws, dims);
    Ok(())
}

/// Accumulate the three gradients (each skipped when `None`); `w` is what the forward
/// multiplied with.
fn backward(
    dx: &mut Option<Tensor>,
    dw: &mut Option<Tensor>,
    db: &mut Option<Tensor>,
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    dims: LinearDims,
) -> Result<()> {
    if !dy.is_cpu() {
        return cuda::backward(dx.as_ref(), dw.as_ref(), db.as_ref(), dy, x, w);
    }
    with_real!(dy.dtype(), T => {
        let (dys, xs, ws) = (dy.as_slice::<T>()?, x.as_slice::<T>()?, w.as_slice::<T>()?);
        cpu::backward(grad_slice::<T>(dx)?, grad_slice::<T>(dw)?, grad_slice::<T>(db)?, dys, xs, ws, dims);
        Ok(())
    })
}
