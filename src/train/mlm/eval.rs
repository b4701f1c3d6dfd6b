//! Evaluation of a masked language model: a held-out split is scored with a fixed mask
//! seed (default 0). Each protein (each window of a long one) is corrupted by a stream
//! keyed by `(mask seed, row, window start)` only, so the same positions are scored in
//! every run, whatever the batch size: masked-token loss, perplexity `exp(loss)` and
//! top-1 accuracy. Also the masked batch's index and target tensors, which training uses
//! too (`mlm/mod.rs` imports this file, never the reverse).

use std::time::Instant;

use anyhow::{bail, Result};
use indicatif::ProgressBar;
use serde::Serialize;

use crate::autograd::Tape;
use crate::data::batching::{eval_plan, pack, BatchConfig};
use crate::data::dataset::LabelledSet;
use crate::data::masking::{mask_batch, Corruption, MaskedBatch, MaskingConfig};
use crate::model::{MaskedLm, ModelInputs};
use crate::tensor::{DType, Device, Tensor};

/// Index and target tensors of a masked batch on `device`.
pub(super) fn target_tensors(m: &MaskedBatch, device: &Device) -> Result<(Tensor, Tensor)> {
    let n = m.n_targets();
    let rows: Vec<i32> = m.target_rows.iter().map(|&r| r as i32).collect();
    let targets: Vec<i32> = m.targets.iter().map(|&t| t as i32).collect();
    Ok((Tensor::from_i32(rows, &[n], device)?, Tensor::from_i32(targets, &[n], device)?))
}

/// Masked-token metrics of an evaluation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MlmEval {
    /// Mean cross-entropy (nats) over the selected positions.
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Top-1 accuracy over the selected positions.
    pub accuracy: f64,
    /// Top-1 accuracy over the positions replaced by `<mask>` alone.
    pub mask_accuracy: f64,
    /// Positions scored.
    pub n_targets: usize,
    /// Sequences (windows of long proteins counted apart).
    pub n_windows: usize,
    pub n_proteins: usize,
    pub mask_seed: u64,
    pub seconds: f64,
}

impl MlmEval {
    pub fn line(&self) -> String {
        format!(
            "masked-token loss {:.4}, perplexity {:.3}, accuracy {:.2}% (<mask> positions {:.2}%) over {} positions of {} proteins (mask seed {})",
            self.loss,
            self.perplexity,
            100.0 * self.accuracy,
            100.0 * self.mask_accuracy,
            self.n_targets,
            self.n_proteins,
            self.mask_seed
        )
    }
}

/// Cross-entropy (nats) of a row of logits at `target`, and whether its argmax is `target`.
fn score_row(logits: &[f32], target: usize) -> (f64, bool) {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + logits.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    // The first maximum wins ties, as torch.argmax does.
    let argmax = logits.iter().enumerate().fold(0, |best, (i, &x)| if x > logits[best] { i } else { best });
    (lse - logits[target] as f64, argmax == target)
}

/// Evaluate `rows` of `set` with masks drawn from `mask_seed` (see the module documentation).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_mlm(
    model: &MaskedLm,
    set: &LabelledSet,
    rows: &[usize],
    bcfg: &BatchConfig,
    masking: &MaskingConfig,
    mask_seed: u64,
    device: &Device,
    bar: &ProgressBar,
) -> Result<MlmEval> {
    let t0 = Instant::now();
    let plan = eval_plan(rows, &set.token_lengths(), bcfg)?;
    bar.set_length(plan.len() as u64);
    let dtype = if model.params.get(model.esm.word_embeddings).dtype() == DType::F64 { DType::F64 } else { DType::F32 };
    let vocab = model.config().vocab_size;
    let (mut loss_sum, mut correct, mut mask_n, mut mask_correct, mut n, mut windows) = (0.0, 0, 0, 0, 0, 0);
    for batch in &plan {
        let packed = pack(&batch.items, set, |_| None)?;
        let m = mask_batch(&packed, &batch.items, masking, mask_seed, 0)?;
        windows += batch.items.len();
        if m.n_targets() == 0 {
            bar.inc(1);
            continue;
        }
        let inp = ModelInputs::new(&m.batch, model.config(), device, dtype)?;
        let (rows_t, _) = target_tensors(&m, device)?;
        let logits = model.logits(&Tape::inference(), &inp, Some(&rows_t))?.to_vec_f32()?;
        for (i, (&t, kind)) in m.targets.iter().zip(&m.kinds).enumerate() {
            let (ce, hit) = score_row(&logits[i * vocab..(i + 1) * vocab], t as usize);
            loss_sum += ce;
            correct += hit as usize;
            if *kind == Corruption::Mask {
                mask_n += 1;
                mask_correct += hit as usize;
            }
        }
        n += m.n_targets();
        bar.inc(1);
    }
    if n == 0 {
        bail!("the evaluation selected no positions (the sequences are empty or all special tokens)");
    }
    let loss = loss_sum / n as f64;
    let distinct: std::collections::BTreeSet<usize> = rows.iter().copied().collect();
    Ok(MlmEval {
        loss,
        perplexity: loss.exp(),
        accuracy: correct as f64 / n as f64,
        mask_accuracy: mask_correct as f64 / mask_n.max(1) as f64,
        n_targets: n,
        n_windows: windows,
        n_proteins: distinct.len(),
        mask_seed,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_scores_match_log_softmax() {
        let logits = [1.0f32, 3.0, -2.0];
        let (ce, hit) = score_row(&logits, 1);
        let lse = (1f64.exp() + 3f64.exp() + (-2f64).exp()).ln();
        assert!((ce - (lse - 3.0)).abs() < 1e-6);
        assert!(hit);
        assert!(!score_row(&logits, 0).1);
    }
}
