//! Contact maps of whole proteins and their evaluation.
//!
//! Every protein is scored at full length: no residue is dropped. A protein that fits the
//! window (`max_len` tokens, `<cls>` and `<eos>` included) is run whole; a longer one is run
//! as overlapping windows of `W = max_len − 2` residues with stride `W/2`, the last aligned
//! to the chain's end (`data::batching::eval_windows`), each window at its true positions.
//! The probability of a pair is the **mean over the windows that contain both residues**;
//! pairs that no window contains together (|i − j| beyond what the windows span) get
//! probability 0, and their number is reported (`uncovered_pairs`) so that no such
//! prediction passes silently.
//!
//! Metrics (`metrics::contact`): per-protein MCC at 0.5 averaged over proteins, pooled MCC,
//! and precision at L, L/2, L/5 for short (6–11), medium (12–23) and long (≥ 24) range
//! pairs; the loss is the mean binary cross-entropy of the evaluated pairs (each unordered
//! pair once) of the merged probabilities.

use std::time::Instant;

use anyhow::Result;
use indicatif::ProgressBar;
use serde::Serialize;

use crate::autograd::Tape;
use crate::data::batching::{eval_plan, BatchConfig, PlanItem};
use crate::data::contact_batching::{pack_crops, ContactCorpus};
use crate::data::contacts::{contact_labels, CONTACT_CUTOFF};
use crate::metrics::contact::{ContactMetrics, ContactReport, DEFAULT_THRESHOLD};
use crate::model::{ContactModel, ModelInputs};
use crate::tensor::{DType, Device};

/// The merged L×L probability map of one protein.
pub struct ProteinMap {
    pub row: usize,
    pub len: usize,
    /// Row-major L×L, symmetric, the model's value on the diagonal too (as transformers gives).
    pub probs: Vec<f32>,
    /// Windows the protein was run as (1 at full length).
    pub windows: usize,
    /// Pairs i < j that no window contained together (probability 0).
    pub uncovered_pairs: usize,
}

/// Sums and counts of one protein's windows (also used by `embed` for its contacts).
pub struct Accumulator {
    row: usize,
    len: usize,
    sum: Vec<f32>,
    count: Vec<u16>,
    windows: usize,
}

impl Accumulator {
    pub fn new(row: usize, len: usize) -> Self {
        Accumulator { row, len, sum: vec![0.0; len * len], count: vec![0; len * len], windows: 0 }
    }

    /// Add the `l × l` probabilities of the window starting at residue `start`.
    pub fn add(&mut self, start: usize, l: usize, probs: &[f32]) {
        for i in 0..l {
            for j in 0..l {
                let at = (start + i) * self.len + start + j;
                self.sum[at] += probs[i * l + j];
                self.count[at] += 1;
            }
        }
        self.windows += 1;
    }

    pub fn finish(self) -> ProteinMap {
        let l = self.len;
        let mut probs = vec![0f32; l * l];
        let mut uncovered = 0;
        for i in 0..l {
            for j in 0..l {
                let at = i * l + j;
                if self.count[at] == 0 {
                    uncovered += usize::from(i < j);
                } else {
                    probs[at] = self.sum[at] / self.count[at] as f32;
                }
            }
        }
        ProteinMap { row: self.row, len: l, probs, windows: self.windows, uncovered_pairs: uncovered }
    }
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Probability maps of `rows` of `corpus`, handed to `on_protein` one protein at a time
/// in row order (windows merged, see the module doc).
pub fn predict_maps(
    model: &ContactModel,
    corpus: &ContactCorpus,
    rows: &[usize],
    bcfg: &BatchConfig,
    device: &Device,
    bar: &ProgressBar,
    mut on_protein: impl FnMut(ProteinMap) -> Result<()>,
) -> Result<()> {
    let plan = eval_plan(rows, &corpus.token_lengths(), bcfg)?;
    bar.set_length(plan.len() as u64);
    let mut current: Option<Accumulator> = None;
    for batch in &plan {
        let packed = pack_crops(&batch.items, corpus)?;
        let inp = ModelInputs::new(&packed, model.config(), device, DType::F32)?;
        let logits = model.forward(&Tape::inference(), &inp)?.to_vec_f32()?;
        let mut offset = 0;
        for item in &batch.items {
            let PlanItem { row, residue_start, residue_len } = *item;
            let probs: Vec<f32> =
                logits[offset..offset + residue_len * residue_len].iter().map(|&x| sigmoid(x)).collect();
            offset += residue_len * residue_len;
            if current.as_ref().is_some_and(|a| a.row != row) {
                on_protein(current.take().expect("checked").finish())?;
            }
            current.get_or_insert_with(|| Accumulator::new(row, corpus.length(row))).add(
                residue_start,
                residue_len,
                &probs,
            );
        }
        bar.inc(1);
    }
    if let Some(acc) = current {
        on_protein(acc.finish())?;
    }
    Ok(())
}

/// The evaluation of a contact model on a set of proteins.
#[derive(Clone, Debug, Serialize)]
pub struct ContactEval {
    pub report: ContactReport,
    /// Mean BCE of the evaluated pairs of the merged probabilities.
    pub loss: f64,
    /// Proteins longer than the window, scored as merged windows.
    pub windowed_proteins: usize,
    /// Pairs that no window covered (scored with probability 0), over all proteins.
    pub uncovered_pairs: usize,
    /// Window in tokens.
    pub max_len: usize,
    pub seconds: f64,
}

/// Evaluate `rows` of `corpus`: pairs with |i − j| ≥ `min_sep`, contacts under 8 Å.
pub fn evaluate_contacts(
    model: &ContactModel,
    corpus: &ContactCorpus,
    rows: &[usize],
    bcfg: &BatchConfig,
    min_sep: usize,
    device: &Device,
    bar: &ProgressBar,
) -> Result<ContactEval> {
    let t0 = Instant::now();
    let mut metrics = ContactMetrics::with_options(min_sep, DEFAULT_THRESHOLD);
    let (mut loss_sum, mut loss_n) = (0f64, 0u64);
    let (mut windowed, mut uncovered) = (0, 0);
    predict_maps(model, corpus, rows, bcfg, device, bar, |map| {
        let labels = contact_labels(&corpus.cb(map.row), CONTACT_CUTOFF, min_sep);
        for i in 0..map.len {
            for j in i + 1..map.len {
                if labels.is_evaluated(i, j) {
                    let p = (map.probs[i * map.len + j] as f64).clamp(1e-7, 1.0 - 1e-7);
                    loss_sum -= if labels.is_contact(i, j) { p.ln() } else { (1.0 - p).ln() };
                    loss_n += 1;
                }
            }
        }
        windowed += usize::from(map.windows > 1);
        uncovered += map.uncovered_pairs;
        metrics.add_labels(&map.probs, &labels)?;
        Ok(())
    })?;
    Ok(ContactEval {
        report: metrics.finish(),
        loss: loss_sum / loss_n.max(1) as f64,
        windowed_proteins: windowed,
        uncovered_pairs: uncovered,
        max_len: bcfg.max_len,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

impl ContactEval {
    /// Long-range (|i − j| ≥ 24) precision at L.
    pub fn long_p_at_l(&self) -> Option<f64> {
        self.report.precision.iter().find(|r| r.range == "long").and_then(|r| r.p_at_l)
    }

    /// A line on how long proteins were handled.
    pub fn window_note(&self) -> String {
        if self.windowed_proteins == 0 {
            format!("every protein scored at full length (window {} tokens)", self.max_len)
        } else {
            format!(
                "{} proteins longer than the {}-token window scored as overlapping windows with pair \
                 probabilities averaged; {} pairs no window covered were given probability 0",
                self.windowed_proteins, self.max_len, self.uncovered_pairs
            )
        }
    }
}
