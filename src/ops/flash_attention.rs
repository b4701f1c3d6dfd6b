//! Multi-head attention with ESM-2's rotary embedding inside (see
//! `backend/cpu/flash_attention.rs` for the maths, `kernels/flash_attention.cu` for the
//! fused kernel): `softmax(R(p)q·c_q · (R(p)k)ᵀ)·v` over packed sequences, optionally
//! returning the probabilities and accepting a gradient on them (the contact head).
//!
//! It is the same function as `ops::rotary` on q (scale `c_q`) and on k, then
//! `ops::attention` with scale 1 — the model's unfused path — computed in one kernel on
//! CUDA (the default; `--attention unfused` keeps the two ops), and by the CPU twin on the
//! CPU. Probabilities are packed (1-D, `attention::prob_offsets`) from the CPU and the
//! flash kernels, padded (`[n_seqs, heads, max_len, max_len]`) from the unfused CUDA path.

use anyhow::{bail, Result};

use super::{grad_slice, with_real, SeqLayout};
use crate::autograd::Tape;
use crate::backend::cpu::attention::prob_offsets;
use crate::backend::cpu::flash_attention::{self as cpu, FlashDims};
use crate::backend::cpu::Real;
use crate::backend::cuda::flash_attention as cuda;
use crate::backend::cuda::AttentionKernel;
use crate::tensor::{ensure_same_shape, DType, Device, Tensor};

/// Whether the model computes its attention with this op on `device`: CUDA devices set
/// to the flash kernel (the default). The CPU keeps rotary + attention, the reference.
pub fn is_default_on(device: &Device) -> bool {
    match device {
        Device::Cuda(d) => d.attention_kernel() == AttentionKernel::Flash,
        Device::Cpu => false,
    }
}

/// Attention output (`[tokens, heads·d]`) and, when asked, the probabilities.
/// `q_scale` multiplies q before its rotation (ESM-2: `head_dim^-½`); positions are i32
/// `[tokens]`, crop offsets included.
#[allow(clippy::too_many_arguments)]
pub fn flash_attention(
    tape: &Tape,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    positions: &Tensor,
    layout: &SeqLayout,
    n_heads: usize,
    q_scale: f64,
    want_probs: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (n, width) = q.dims2()?;
    ensure_same_shape(q, k, "flash_attention q/k")?;
    ensure_same_shape(q, v, "flash_attention q/v")?;
    if n != layout.n_tokens() {
        bail!("flash_attention: {n} tokens but cu_seqlens covers {}", layout.n_tokens());
    }
    if n_heads == 0 || width % n_heads != 0 || (width / n_heads) % 2 != 0 {
        bail!("flash_attention: width {width} is not {n_heads} heads of an even dimension");
    }
    if positions.dtype() != DType::I32 || positions.numel() != n {
        bail!("flash_attention: need {n} i32 positions, got {} {}", positions.numel(), positions.dtype());
    }
    super::ensure_same_device("flash_attention", &[q, k, v, positions])?;
    if !q.is_cpu() {
        if !cuda::supports(q.dtype(), width / n_heads) {
            // f32 and head dims without a kernel: the two ops the fused kernel replaces.
            let q = super::rotary(tape, q, positions, n_heads, q_scale)?;
            let k = super::rotary(tape, k, positions, n_heads, 1.0)?;
            return super::attention(tape, &q, &k, v, layout, n_heads, 1.0, want_probs);
        }
        return on_cuda(tape, q, k, v, positions, layout, n_heads, q_scale, want_probs);
    }
    let pos = positions.as_slice::<i32>()?;
    if pos.iter().any(|&p| p < 0) {
        bail!("flash_attention: negative position");
    }
    let dims = FlashDims { n_heads, head_dim: width / n_heads };
    let n_probs = if want_probs { prob_offsets(&layout.cu, n_heads).1 } else { 0 };
    with_real!(q.dtype(), T => {
        let mut out = crate::backend::cpu::filled(n * width, T::zero());
        let mut lse = crate::backend::cpu::filled(n_heads * n, T::zero());
        let mut probs = crate::backend::cpu::filled(n_probs, T::zero());
        let sc = T::from_f64(q_scale);
        let (qs, ks, vs) = (q.as_slice::<T>()?, k.as_slice::<T>()?, v.as_slice::<T>()?);
        cpu::forward(&mut out, &mut lse, &mut probs, qs, ks, vs, pos, &layout.cu, dims, sc);
        let needs = tape.needs_grad(&[q, k, v]);
        let out = Tensor::from_vec(out, &[n, width])?.with_requires_grad(needs);
        let probs = want_probs.then(|| Tensor::from_vec(probs, &[n_probs])).transpose()?.map(|p| p.with_requires_grad(needs));
        if needs {
            let (q, k, v, positions, cu) = (q.clone(), k.clone(), v.clone(), positions.clone(), layout.cu.clone());
            let saved_out = out.clone().with_requires_grad(false);
            let saved_probs = probs.as_ref().map(|p| p.clone().with_requires_grad(false));
            let mut outputs = vec![&out];
            outputs.extend(probs.as_ref());
            tape.record("flash_attention", &outputs, move |outs, grads| {
                let dout = match outs.first().and_then(Option::as_ref) {
                    Some(t) => Some(t.as_slice::<T>()?),
                    None => None,
                };
                let dprobs = match outs.get(1).and_then(Option::as_ref) {
                    Some(t) => Some(t.as_slice::<T>()?),
                    None => None,
                };
                let probs = match &saved_probs {
                    Some(p) => p.as_slice::<T>()?,
                    None => &[],
                };
                let (mut dq, mut dk, mut dv) = (grads.take_acc(&q)?, grads.take_acc(&k)?, grads.take_acc(&v)?);
                cpu::backward(
                    grad_slice::<T>(&mut dq)?,
                    grad_slice::<T>(&mut dk)?,
                    grad_slice::<T>(&mut dv)?,
                    dout,
                    dprobs,
                    probs,
                    saved_out.as_slice::<T>()?,
                    &lse,
                    q.as_slice::<T>()?,
                    k.as_slice::<T>()?,
                    v.as_slice::<T>()?,
                    positions.as_slice::<i32>()?,
                    &cu,
                    dims,
                    sc,
                );
                grads.put(&q, dq);
                grads.put(&k, dk);
                grads.put(&v, dv);
                Ok(())
            });
        }
        Ok((out, probs))
    })
}

#[allow(clippy::too_many_arguments)]
fn on_cuda(
    tape: &Tape,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    positions: &Tensor,
    layout: &SeqLayout,
    n_heads: usize,
    q_scale: f64,
    want_probs: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (out, probs, saved) = cuda::forward(q, k, v, positions, layout, n_heads, q_scale, want_probs)?;
    let needs = tape.needs_grad(&[q, k, v]);
    let out = out.with_requires_grad(needs);
    let probs = probs.map(|t| t.with_requires_grad(needs));
    if needs {
        let (q, k, v) = (q.clone(), k.clone(), v.clone());
        let mut outputs = vec![&out];
        outputs.extend(probs.as_ref());
        tape.record("flash_attention", &outputs, move |outs, grads| {
            let dout = outs.first().and_then(Option::as_ref);
            let dprobs = outs.get(1).and_then(Option::as_ref);
            if dout.is_none() && dprobs.is_none() {
                return Ok(());
            }
            let (dq, dk, dv) = (grads.take_acc(&q)?, grads.take_acc(&k)?, grads.take_acc(&v)?);
            let result = cuda::backward(dq.as_ref(), dk.as_ref(), dv.as_ref(), dout, dprobs, &saved);
            grads.put(&q, dq);
            grads.put(&k, dk);
            grads.put(&v, dv);
            result
        });
    }
    Ok((out, probs))
}
