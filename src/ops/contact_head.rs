//! The contact head over the attention probabilities of every layer (Rao et al. 2020;
//! CPU maths `backend/cpu/contact_head.rs`, no kernel yet: on CUDA the CPU head runs on
//! host copies): logits of residue pairs, per sequence an
//! `L' × L'` block (`L' = L − 2`, `<cls>` and `<eos>` removed), packed end to end.

use anyhow::{bail, Result};

use super::{out_grad, with_real, SeqLayout};
use crate::autograd::Tape;
use crate::backend::cpu::attention::prob_offsets;
use crate::backend::cpu::contact_head::{self as cpu, SeqSlot};
use crate::backend::cpu::Real;
use crate::backend::cuda::contact_head as cuda;
use crate::tensor::{DType, Tensor};

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
        return on_cuda(tape, probs, layout, n_heads, weight, bias);
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
                    let (dw_local, db_local) = backward_into(&mut dl, g, &layers, &sl, n_heads, &w);
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

/// `dprobs += …` for every layer (an empty slice: no gradient); returns the weight's and
/// the bias's gradient.
fn backward_into<T: Real>(
    dprobs: &mut [&mut [T]],
    g: &[T],
    layers: &[&[T]],
    sl: &[SeqSlot],
    n_heads: usize,
    w: &[T],
) -> (Vec<T>, T) {
    let mut dw = vec![T::zero(); w.len()];
    let mut db = T::zero();
    cpu::backward(dprobs, &mut dw, &mut db, g, layers, sl, n_heads, w);
    (dw, db)
}

/// GPU probabilities: the CPU head on host copies (`backend/cuda/contact_head.rs` moves
/// the data); exact, but it synchronises with the host.
fn on_cuda(
    tape: &Tape,
    probs: &[Tensor],
    layout: &SeqLayout,
    n_heads: usize,
    weight: &Tensor,
    bias: &Tensor,
) -> Result<Tensor> {
    let sl = slots(layout, n_heads)?;
    let (_, total) = contact_offsets(layout);
    let host: Vec<Vec<f32>> = probs.iter().map(|p| cuda::probs_to_host(p, layout, n_heads)).collect::<Result<_>>()?;
    let (w, b) = (weight.to_vec_f32()?, bias.to_vec_f32()?[0]);
    let mut out = vec![0f32; total];
    {
        let layers: Vec<&[f32]> = host.iter().map(Vec::as_slice).collect();
        cpu::forward(&mut out, &layers, &sl, n_heads, &w, b);
    }
    let y = Tensor::from_f32(out, &[total], DType::F32, &weight.device())?;
    let mut inputs: Vec<&Tensor> = probs.iter().collect();
    inputs.push(weight);
    inputs.push(bias);
    let y = y.with_requires_grad(tape.needs_grad(&inputs));
    if y.requires_grad() {
        let (probs, weight, bias, layout) = (probs.to_vec(), weight.clone(), bias.clone(), layout.clone());
        tape.record("contact_head", &[&y], move |outs, grads| {
            let g = out_grad(outs, 0)?.to_vec_f32()?;
            let layers: Vec<&[f32]> = host.iter().map(Vec::as_slice).collect();
            let mut dhost: Vec<Vec<f32>> = probs
                .iter()
                .zip(&host)
                .map(|(p, h)| if p.requires_grad() { vec![0f32; h.len()] } else { Vec::new() })
                .collect();
            let (dw, db) = {
                let mut dl: Vec<&mut [f32]> = dhost.iter_mut().map(Vec::as_mut_slice).collect();
                backward_into(&mut dl, &g, &layers, &sl, n_heads, &w)
            };
            for (p, d) in probs.iter().zip(dhost) {
                if p.requires_grad() {
                    grads.accumulate(p, &cuda::grad_to_device(d, p, &layout, n_heads)?)?;
                }
            }
            let dev = weight.device();
            if weight.requires_grad() {
                grads.accumulate(&weight, &Tensor::from_f32(dw, weight.shape(), DType::F32, &dev)?)?;
            }
            if bias.requires_grad() {
                grads.accumulate(&bias, &Tensor::from_f32(vec![db], bias.shape(), DType::F32, &dev)?)?;
            }
            Ok(())
        });
    }
    Ok(y)
}
