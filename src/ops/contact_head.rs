//! The contact head over the attention probabilities of every layer (see
//! `backend/cpu/contact_head.rs`): logits of residue pairs, per sequence an
//! `L' × L'` block (`L' = L − 2`, `<cls>` and `<eos>` removed), packed end to end.

use anyhow::{bail, Result};

use super::{out_grad, with_real, SeqLayout};
use crate::autograd::Tape;
use crate::backend::cpu::attention::prob_offsets;
use crate::backend::cpu::contact_head::{self as cpu, SeqSlot};
use crate::backend::cpu::Real;
use crate::tensor::Tensor;

/// Where each sequence's logits start, and their total count.
pub fn contact_offsets(layout: &SeqLayout) -> (Vec<usize>, usize) {
    let mut offs = Vec::with_capacity(layout.n_seqs());
    let mut total = 0;
    for s in 0..layout.n_seqs() {
        offs.push(total);
        let lp = layout.len_of(s).saturating_sub(2);
        total += lp * lp;
    }
    (offs, total)
}

fn slots(layout: &SeqLayout, n_heads: usize) -> Result<Vec<SeqSlot>> {
    let (prob_offs, _) = prob_offsets(&layout.cu, n_heads);
    let (out_offs, _) = contact_offsets(layout);
    (0..layout.n_seqs())
        .map(|s| {
            let len = layout.len_of(s);
            if len < 3 {
                bail!("contact head: sequence {s} has {len} tokens; it needs <cls>, at least one residue and <eos>");
            }
            Ok(SeqSlot { len, prob_offset: prob_offs[s], out_offset: out_offs[s] })
        })
        .collect()
}

/// Contact logits from the attention probabilities of every layer; `weight: [1, layers·heads]`,
/// `bias: [1]` (`esm.contact_head.regression`).
pub fn contact_head(
    tape: &Tape,
    probs: &[Tensor],
    layout: &SeqLayout,
    n_heads: usize,
    weight: &Tensor,
    bias: &Tensor,
) -> Result<Tensor> {
    let n_ch = probs.len() * n_heads;
    if weight.shape() != [1, n_ch] || bias.shape() != [1] {
        bail!(
            "contact head: regression weight {:?} / bias {:?} do not match {n_ch} channels",
            weight.shape(),
            bias.shape()
        );
    }
    let mut all: Vec<&Tensor> = probs.iter().collect();
    all.push(weight);
    all.push(bias);
    super::ensure_same_device("contact_head", &all)?;
    if !weight.is_cpu() {
        return crate::backend::cuda::contact_head::contact_head(tape, probs, layout, n_heads, weight, bias);
    }
    let sl = slots(layout, n_heads)?;
    let (_, total) = contact_offsets(layout);
    with_real!(weight.dtype(), T => {
        let layers: Vec<&[T]> = probs.iter().map(|p| p.as_slice::<T>()).collect::<Result<_>>()?;
        let mut out = vec![T::zero(); total];
        let (w, b) = (weight.as_slice::<T>()?.to_vec(), bias.as_slice::<T>()?[0]);
        cpu::forward(&mut out, &layers, &sl, n_heads, &w, b);
        let y = Tensor::from_vec(out, &[total])?.with_requires_grad(tape.needs_grad(&all));
        if y.requires_grad() {
            let (probs, weight, bias) = (probs.to_vec(), weight.clone(), bias.clone());
            tape.record("contact_head", &[&y], move |outs, grads| {
                let g = out_grad(outs, 0)?.as_slice::<T>()?;
                let layers: Vec<&[T]> = probs.iter().map(|p| p.as_slice::<T>()).collect::<Result<_>>()?;
                let mut dprobs: Vec<Option<Tensor>> = probs.iter().map(|p| grads.take_acc(p)).collect::<Result<_>>()?;
                let mut dw = grads.take_acc(&weight)?;
                let mut db = grads.take_acc(&bias)?;
                {
                    let mut dl: Vec<&mut [T]> = dprobs.iter_mut().map(super::grad_slice::<T>).collect::<Result<_>>()?;
                    let mut dw_local = vec![T::zero(); n_ch];
                    let mut db_local = T::zero();
                    cpu::backward(&mut dl, &mut dw_local, &mut db_local, g, &layers, &sl, n_heads, &w);
                    if let Some(t) = dw.as_mut() {
                        for (d, s) in t.as_mut_slice::<T>()?.iter_mut().zip(dw_local) {
                            *d += s;
                        }
                    }
                    if let Some(t) = db.as_mut() {
                        t.as_mut_slice::<T>()?[0] += db_local;
                    }
                }
                for (p, d) in probs.iter().zip(dprobs) {
                    grads.put(p, d);
                }
                grads.put(&weight, dw);
                grads.put(&bias, db);
                Ok(())
            });
        }
        Ok(y)
    })
}
