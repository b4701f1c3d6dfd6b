//! Contact head for GPU attention probabilities.
//!
//! This first path copies the probabilities (per layer: packed 1-D blocks from the flash
//! kernel, or padded `[n_seqs, heads, max_len, max_len]` from the unfused attention) to
//! the host, where `ops::contact_head` runs the CPU head (`backend/cpu/contact_head.rs`)
//! and copies the logits back; the backward does the reverse. It is exact but synchronises with
//! the host, so contact training on the GPU is bounded by it until a fused kernel
//! replaces it.

use anyhow::Result;

use crate::backend::cpu::attention::prob_offsets;
use crate::backend::SeqLayout;
use crate::tensor::Tensor;

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

/// One layer's probabilities as the CPU head reads them (packed per-sequence blocks, f32).
pub fn probs_to_host(p: &Tensor, layout: &SeqLayout, heads: usize) -> Result<Vec<f32>> {
    let host = p.to_vec_f32()?;
    Ok(if is_packed(p) { host } else { padded_to_packed(&host, layout, heads) })
}

/// A gradient in the CPU's packed layout as a device tensor shaped and typed like the
/// probabilities `like`.
pub fn grad_to_device(packed: Vec<f32>, like: &Tensor, layout: &SeqLayout, heads: usize) -> Result<Tensor> {
    let g = if is_packed(like) { packed } else { packed_to_padded(&packed, layout, heads) };
    Tensor::from_f32(g, like.shape(), like.dtype(), &like.device())
}
