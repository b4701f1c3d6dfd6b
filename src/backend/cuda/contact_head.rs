//! Contact head for GPU attention probabilities.
//!
//! This first path copies the probabilities (per layer: packed 1-D blocks from the flash
//! kernel, or padded `[n_seqs, heads, max_len, max_len]` from the unfused attention) to the host, runs the CPU head (`backend/cpu/contact_head.rs`) and copies
//! the logits back; the backward does the reverse. It is exact but synchronises with
//! the host, so contact training on the GPU is bounded by it until a fused kernel
//! replaces it.

use anyhow::Result;

use super::launch::device_of;
use crate::autograd::Tape;
use crate::backend::cpu::attention::prob_offsets;
use crate::ops::{out_grad, SeqLayout};
use crate::tensor::{DType, Device, Tensor};

/// Padded GPU layout → the CPU's packed per-sequence blocks.
fn padded_to_packed(padded: &[f32], layout: &SeqLayout, heads: usize) -> Vec<f32> {
    let l = layout.max_len;
    let (offs, total) = prob_offsets(&layout.cu, heads);
    let mut out = vec![0f32; total];
    for s in 0..layout.n_seqs() {
        let len = layout.len_of(s);
        for h in 0..heads {
            for i in 0..len {
                let src = ((s * heads + h) * l + i) * l;
                let dst = offs[s] + (h * len + i) * len;
                out[dst..dst + len].copy_from_slice(&padded[src..src + len]);
            }
        }
    }
    out
}

/// The CPU's packed blocks → the padded GPU layout (zeros outside each block).
fn packed_to_padded(packed: &[f32], layout: &SeqLayout, heads: usize) -> Vec<f32> {
    let l = layout.max_len;
    let (offs, _) = prob_offsets(&layout.cu, heads);
    let mut out = vec![0f32; layout.n_seqs() * heads * l * l];
    for s in 0..layout.n_seqs() {
        let len = layout.len_of(s);
        for h in 0..heads {
            for i in 0..len {
                let dst = ((s * heads + h) * l + i) * l;
                let src = offs[s] + (h * len + i) * len;
                out[dst..dst + len].copy_from_slice(&packed[src..src + len]);
            }
        }
    }
    out
}

/// Whether a layer's probabilities are the flash kernel's packed blocks (1-D, the CPU
/// layout) rather than the unfused path's padded 4-D tensor.
fn is_packed(p: &Tensor) -> bool {
    p.shape().len() == 1
}

pub fn contact_head(
    tape: &Tape,
    probs: &[Tensor],
    layout: &SeqLayout,
    n_heads: usize,
    weight: &Tensor,
    bias: &Tensor,
) -> Result<Tensor> {
    let dev = device_of(weight)?;
    let gpu = Device::Cuda(dev);
    let host_layout = SeqLayout::new(&layout.cu.iter().map(|&c| c as u32).collect::<Vec<_>>(), &Device::Cpu)?;
    let host_probs: Vec<Tensor> = probs
        .iter()
        .map(|p| {
            let packed =
                if is_packed(p) { p.to_vec_f32()? } else { padded_to_packed(&p.to_vec_f32()?, layout, n_heads) };
            let n = packed.len();
            Ok(Tensor::from_vec(packed, &[n])?.with_requires_grad(p.requires_grad()))
        })
        .collect::<Result<_>>()?;
    let hw = Tensor::from_vec(weight.to_vec_f32()?, weight.shape())?.with_requires_grad(weight.requires_grad());
    let hb = Tensor::from_vec(bias.to_vec_f32()?, bias.shape())?.with_requires_grad(bias.requires_grad());
    let host_tape = Tape::new();
    let logits = crate::ops::contact_head(&host_tape, &host_probs, &host_layout, n_heads, &hw, &hb)?;
    let y = Tensor::from_f32(logits.to_vec_f32()?, logits.shape(), DType::F32, &gpu)?;
    let mut inputs: Vec<&Tensor> = probs.iter().collect();
    inputs.push(weight);
    inputs.push(bias);
    let y = y.with_requires_grad(tape.needs_grad(&inputs));
    if y.requires_grad() {
        let (probs, weight, bias, layout) = (probs.to_vec(), weight.clone(), bias.clone(), layout.clone());
        tape.record("contact_head", &[&y], move |outs, grads| {
            let g = out_grad(outs, 0)?;
            let hg = Tensor::from_vec(g.to_vec_f32()?, g.shape())?;
            let mut hgrads = crate::autograd::Grads::new();
            host_tape.backward_from(&logits, hg, &mut hgrads)?;
            for (p, hp) in probs.iter().zip(&host_probs) {
                if let Some(d) = hgrads.get(hp) {
                    let packed = d.to_vec_f32()?;
                    let g = if is_packed(p) { packed } else { packed_to_padded(&packed, &layout, n_heads) };
                    grads.accumulate(p, &Tensor::from_f32(g, p.shape(), p.dtype(), &gpu)?)?;
                }
            }
            for (t, ht) in [(&weight, &hw), (&bias, &hb)] {
                if let Some(d) = hgrads.get(ht) {
                    grads.accumulate(t, &Tensor::from_f32(d.to_vec_f32()?, t.shape(), DType::F32, &gpu)?)?;
                }
            }
            Ok(())
        });
    }
    Ok(y)
}
