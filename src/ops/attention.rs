//! Multi-head attention over packed variable-length sequences (`cu_seqlens`, no
//! padding), optionally returning the attention probabilities and accepting a gradient
//! on them (the contact head reads them). CPU twin `backend/cpu/attention.rs`; on CUDA
//! `kernels/attention.cu` with cuBLAS products (the unfused path; `flash_attention` is the
//! fused one).

use anyhow::{bail, Result};

use super::{grad_slice, with_real};
use crate::autograd::Tape;
use crate::backend::cpu::attention::{self as cpu, AttnDims};
use crate::backend::cpu::attention_bf16 as cpu_bf16;
use crate::backend::cpu::Real;
use crate::backend::cuda::attention as cuda;
use crate::ops::linear::CpuBf16;
use crate::tensor::{ensure_same_shape, DType, Tensor};

pub use crate::backend::SeqLayout;

/// The attention output of each sequence's first token (`<cls>`) only, `[n_seqs, heads·d]`,
/// from its query `q_first: [n_seqs, heads·d]` and every key and value of the packed batch:
/// the last layer of a `<cls>`-pooled classifier needs nothing more. Inference on the CPU
/// only (no gradient); with `--precision bf16` the products round as [`attention`]'s do.
pub fn attention_first_query(
    tape: &Tape,
    q_first: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: &SeqLayout,
    n_heads: usize,
    scale: f64,
) -> Result<Tensor> {
    let (n_seqs, width) = q_first.dims2()?;
    ensure_same_shape(k, v, "attention k/v")?;
    let (n, kw) = k.dims2()?;
    if n != layout.n_tokens() || n_seqs != layout.n_seqs() || kw != width {
        bail!(
            "first-query attention: q {:?} and k {:?} do not fit {} sequences of {} tokens",
            q_first.shape(),
            k.shape(),
            layout.n_seqs(),
            layout.n_tokens()
        );
    }
    if n_heads == 0 || width % n_heads != 0 {
        bail!("attention: width {width} is not a multiple of {n_heads} heads");
    }
    if !q_first.is_cpu() || !k.is_cpu() || !v.is_cpu() || tape.needs_grad(&[q_first, k, v]) {
        bail!("first-query attention is for inference on the CPU");
    }
    let dims = AttnDims { n_heads, head_dim: width / n_heads };
    let bf16 = uses_bf16(q_first.dtype(), dims, CpuBf16::Inference);
    with_real!(q_first.dtype(), T => {
        let mut out = crate::backend::cpu::filled(n_seqs * width, T::zero());
        let (qs, ks, vs) = (q_first.as_slice::<T>()?, k.as_slice::<T>()?, v.as_slice::<T>()?);
        let round = |x: T| if bf16 { T::from_f64(half::bf16::from_f64(x.to_f64()).to_f64()) } else { x };
        cpu::forward_first_query(&mut out, qs, ks, vs, &layout.cu, dims, T::from_f64(scale), round);
        Tensor::from_vec(out, &[n_seqs, width])
    })
}

/// Attention output (`[tokens, heads·d]`) and, when asked, the probabilities.
///
/// Layout of the probabilities: on the CPU, sequence `s` and head `h` occupy the
/// `L_s × L_s` block at `Σ_{s'<s} heads·L_{s'}² + h·L_s²` of a flat tensor; on CUDA they
/// are padded, `[n_seqs, heads, max_len, max_len]`.
pub fn attention(
    tape: &Tape,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: &SeqLayout,
    n_heads: usize,
    scale: f64,
    want_probs: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (n, width) = q.dims2()?;
    ensure_same_shape(q, k, "attention q/k")?;
    ensure_same_shape(q, v, "attention q/v")?;
    if n != layout.n_tokens() {
        bail!("attention: {n} tokens but cu_seqlens covers {}", layout.n_tokens());
    }
    if n_heads == 0 || width % n_heads != 0 {
        bail!("attention: width {width} is not a multiple of {n_heads} heads");
    }
    super::ensure_same_device("attention", &[q, k, v])?;
    if !q.is_cpu() {
        return on_cuda(tape, q, k, v, layout, n_heads, scale, want_probs);
    }
    let dims = AttnDims { n_heads, head_dim: width / n_heads };
    if !want_probs && !tape.needs_grad(&[q, k, v]) {
        // Inference: nothing reads the probabilities, so none are kept.
        if uses_bf16(q.dtype(), dims, CpuBf16::Inference) {
            // `--precision bf16`: both products in bf16, as the linear layers.
            let (qs, ks, vs) = (q.as_slice::<f32>()?, k.as_slice::<f32>()?, v.as_slice::<f32>()?);
            let out = cpu_bf16::forward_inference_new(qs, ks, vs, &layout.cu, dims, scale as f32);
            return Tensor::from_vec(out, &[n, width]).map(|o| (o, None));
        }
        return with_real!(q.dtype(), T => {
            let mut out = crate::backend::cpu::filled(n * width, T::zero());
            let (qs, ks, vs) = (q.as_slice::<T>()?, k.as_slice::<T>()?, v.as_slice::<T>()?);
            cpu::forward_inference(&mut out, qs, ks, vs, &layout.cu, dims, T::from_f64(scale));
            Ok((Tensor::from_vec(out, &[n, width])?, None))
        });
    }
    let (_, total) = cpu::prob_offsets(&layout.cu, n_heads);
    // `train --precision bf16`: the four products (two forward, four backward) in bf16.
    let bf16 = uses_bf16(q.dtype(), dims, CpuBf16::Training);
    with_real!(q.dtype(), T => {
        let sc = T::from_f64(scale);
        let (qs, ks, vs) = (q.as_slice::<T>()?, k.as_slice::<T>()?, v.as_slice::<T>()?);
        let (out, probs): (Vec<T>, Vec<T>) = if bf16 {
            let (out, probs) = cpu_bf16::forward_training_new(f32s(qs), f32s(ks), f32s(vs), &layout.cu, dims, scale as f32);
            (reals(out), reals(probs))
        } else {
            let mut out = crate::backend::cpu::filled(n * width, T::zero());
            let mut probs = crate::backend::cpu::filled(total, T::zero());
            cpu::forward(&mut out, &mut probs, qs, ks, vs, &layout.cu, dims, sc);
            (out, probs)
        };
        let needs = tape.needs_grad(&[q, k, v]);
        let out = Tensor::from_vec(out, &[n, width])?.with_requires_grad(needs);
        let probs = Tensor::from_vec(probs, &[total])?.with_requires_grad(needs);
        if needs {
            let (q, k, v, cu) = (q.clone(), k.clone(), v.clone(), layout.cu.clone());
            let saved = probs.clone().with_requires_grad(false);
            let outputs: Vec<&Tensor> = if want_probs { vec![&out, &probs] } else { vec![&out] };
            tape.record("attention", &outputs, move |outs, grads| {
                let dout = match outs.first().and_then(Option::as_ref) {
                    Some(t) => Some(t.as_slice::<T>()?),
                    None => None,
                };
                let dprobs = match outs.get(1).and_then(Option::as_ref) {
                    Some(t) => Some(t.as_slice::<T>()?),
                    None => None,
                };
                let (p, qs, ks, vs) = (saved.as_slice::<T>()?, q.as_slice::<T>()?, k.as_slice::<T>()?, v.as_slice::<T>()?);
                let bf16_inputs = || cpu_bf16::BackwardInputs {
                    dout: dout.map(f32s),
                    dprobs: dprobs.map(f32s),
                    probs: f32s(p),
                    q: f32s(qs),
                    k: f32s(ks),
                    v: f32s(vs),
                    cu: &cu,
                    dims,
                    scale: scale as f32,
                };
                let distinct = q.id() != k.id() && q.id() != v.id() && k.id() != v.id();
                if bf16 && distinct && dout.is_some() && [&q, &k, &v].iter().all(|t| !grads.has(t)) {
                    // The first contributions are written into fresh buffers, not added to zeros.
                    let want = [&q, &k, &v].map(|t| t.requires_grad());
                    let new = cpu_bf16::backward_training_new(want, bf16_inputs());
                    for ((t, g), w) in [&q, &k, &v].into_iter().zip(new).zip(want) {
                        if w {
                            grads.put(t, Some(Tensor::from_vec(g, t.shape())?));
                        }
                    }
                    return Ok(());
                }
                let (mut dq, mut dk, mut dv) = (grads.take_acc(&q)?, grads.take_acc(&k)?, grads.take_acc(&v)?);
                let (gq, gk, gv) = (grad_slice::<T>(&mut dq)?, grad_slice::<T>(&mut dk)?, grad_slice::<T>(&mut dv)?);
                if bf16 {
                    cpu_bf16::backward_training(f32s_mut(gq), f32s_mut(gk), f32s_mut(gv), bf16_inputs());
                } else {
                    cpu::backward(gq, gk, gv, dout, dprobs, p, qs, ks, vs, &cu, dims, sc);
                }
                grads.put(&q, dq);
                grads.put(&k, dk);
                grads.put(&v, dv);
                Ok(())
            });
        }
        Ok((out, want_probs.then_some(probs)))
    })
}

#[allow(clippy::too_many_arguments)]
fn on_cuda(
    tape: &Tape,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: &SeqLayout,
    n_heads: usize,
    scale: f64,
    want_probs: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (out, probs, saved) = cuda::forward(q, k, v, layout, n_heads, scale)?;
    let needs = tape.needs_grad(&[q, k, v]);
    let out = out.with_requires_grad(needs);
    let probs = probs.with_requires_grad(needs);
    if needs {
        let (q, k, v, layout) = (q.clone(), k.clone(), v.clone(), layout.clone());
        let outputs: Vec<&Tensor> = if want_probs { vec![&out, &probs] } else { vec![&out] };
        tape.record("attention", &outputs, move |outs, grads| {
            let dout = outs.first().and_then(Option::as_ref);
            let dprobs = outs.get(1).and_then(Option::as_ref);
            let (dq, dk, dv) = (grads.take_acc(&q)?, grads.take_acc(&k)?, grads.take_acc(&v)?);
            cuda::backward(dq.as_ref(), dk.as_ref(), dv.as_ref(), dout, dprobs, &saved, &layout, scale)?;
            grads.put(&q, dq);
            grads.put(&k, dk);
            grads.put(&v, dv);
            Ok(())
        });
    }
    Ok((out, want_probs.then_some(probs)))
}

/// `x` as f32, for the bf16 kernels inside code generic over the float type. Panics unless
/// `T` is f32 (the callers check the dtype first).
fn f32s<T: Real>(x: &[T]) -> &[f32] {
    assert_eq!(std::any::TypeId::of::<T>(), std::any::TypeId::of::<f32>(), "bf16 attention takes f32");
    // Safety: T is f32 (checked above).
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const f32, x.len()) }
}

/// A `Vec<f32>` as the `Vec<T>` it is (`T` is f32 where the bf16 kernels run).
fn reals<T: 'static>(v: Vec<f32>) -> Vec<T> {
    let any: Box<dyn std::any::Any> = Box::new(v);
    *any.downcast::<Vec<T>>().expect("bf16 attention takes f32")
}

/// [`f32s`] for a mutable slice.
fn f32s_mut<T: Real>(x: &mut [T]) -> &mut [f32] {
    assert_eq!(std::any::TypeId::of::<T>(), std::any::TypeId::of::<f32>(), "bf16 attention takes f32");
    // Safety: T is f32 (checked above).
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut f32, x.len()) }
}

/// Whether CPU attention multiplies in bf16 (`--precision bf16`): f32 operands, the bf16
/// kernels available and an even head width (bf16 pairs never straddle two heads), and
/// the mode asked for set; `Inference` (no gradient) runs in bf16 in either bf16 mode,
/// a recorded `Training` forward only in training mode (an inference run's recording
/// tape stays exact fp32, as the linear layers do).
fn uses_bf16(dtype: DType, dims: AttnDims, needed: CpuBf16) -> bool {
    let mode = crate::ops::linear::cpu_bf16();
    let on = match needed {
        CpuBf16::Training => mode == CpuBf16::Training,
        _ => mode != CpuBf16::Off,
    };
    on && dtype == DType::F32 && dims.head_dim % 2 == 0 && cpu_bf16::supported()
}
