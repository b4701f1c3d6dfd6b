//! Multi-head attention over packed variable-length sequences (`cu_seqlens`, no
//! padding), optionally returning the attention probabilities and accepting a gradient
//! on them (the contact head reads them). See `backend/cpu/attention.rs` for the maths.

use std::sync::Arc;

use anyhow::{bail, Result};

use super::{grad_slice, with_real};
use crate::autograd::Tape;
use crate::backend::cpu::attention::{self as cpu, AttnDims};
use crate::backend::cpu::Real;
use crate::tensor::{ensure_same_shape, Device, Tensor};

/// Where each packed sequence starts and ends, on the host and on the compute device.
#[derive(Clone, Debug)]
pub struct SeqLayout {
    /// `n_seqs + 1` offsets.
    pub cu: Arc<Vec<usize>>,
    pub max_len: usize,
    /// The same offsets as an i32 tensor on the compute device (read by CUDA kernels).
    pub cu_device: Tensor,
}

impl SeqLayout {
    pub fn new(cu_seqlens: &[u32], device: &Device) -> Result<SeqLayout> {
        if cu_seqlens.len() < 2 || cu_seqlens[0] != 0 || cu_seqlens.windows(2).any(|w| w[1] <= w[0]) {
            bail!("cu_seqlens must start at 0 and increase strictly, got {cu_seqlens:?}");
        }
        let cu: Vec<usize> = cu_seqlens.iter().map(|&c| c as usize).collect();
        let max_len = cu.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        let cu_device = Tensor::from_i32(cu_seqlens.iter().map(|&c| c as i32).collect(), &[cu.len()], device)?;
        Ok(SeqLayout { cu: Arc::new(cu), max_len, cu_device })
    }

    pub fn n_seqs(&self) -> usize {
        self.cu.len() - 1
    }

    pub fn n_tokens(&self) -> usize {
        *self.cu.last().unwrap_or(&0)
    }

    pub fn len_of(&self, s: usize) -> usize {
        self.cu[s + 1] - self.cu[s]
    }
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
        return crate::backend::cuda::attention::attention(tape, q, k, v, layout, n_heads, scale, want_probs);
    }
    let dims = AttnDims { n_heads, head_dim: width / n_heads };
    let (_, total) = cpu::prob_offsets(&layout.cu, n_heads);
    with_real!(q.dtype(), T => {
        let mut out = vec![T::zero(); n * width];
        let mut probs = vec![T::zero(); total];
        let sc = T::from_f64(scale);
        cpu::forward(&mut out, &mut probs, q.as_slice::<T>()?, k.as_slice::<T>()?, v.as_slice::<T>()?, &layout.cu, dims, sc);
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
                let (mut dq, mut dk, mut dv) = (grads.take_acc(&q)?, grads.take_acc(&k)?, grads.take_acc(&v)?);
                cpu::backward(
                    grad_slice::<T>(&mut dq)?,
                    grad_slice::<T>(&mut dk)?,
                    grad_slice::<T>(&mut dv)?,
                    dout,
                    dprobs,
                    saved.as_slice::<T>()?,
                    q.as_slice::<T>()?,
                    k.as_slice::<T>()?,
                    v.as_slice::<T>()?,
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
        Ok((out, want_probs.then_some(probs)))
    })
}
