//! Scoring and evaluation of a sequence classifier. Proteins longer than the model's
//! window are not truncated: they are split into overlapping windows (stride half a
//! window, see `data::batching::eval_windows`) and the class logits of the windows are
//! averaged.

use std::time::Instant;

use anyhow::Result;
use indicatif::ProgressBar;

use crate::autograd::Tape;
use crate::data::batching::{average_by_row, eval_plan_by_length, pack, BatchConfig};
use crate::data::dataset::LabelledSet;
use crate::metrics::classification::{ClassificationReport, Predictions};
use crate::model::{ModelInputs, SequenceClassifier};
use crate::tensor::{DType, Device};

/// The batch token budget of inference (`predict`, `eval`, `predict-contacts`, `embed`,
/// `bench --mode infer`) when the user gives none, per kind of device. CPU: of 2,048, 4,096,
/// 8,192 and 16,384 tokens, 16,384 was fastest on this project's 2-core AMD EPYC machine
/// (README, "Inference batch size": the same CPU time, better use of both cores); CUDA: the
/// training default, until a GPU measurement says otherwise.
pub fn default_inference_tokens(device: &Device) -> usize {
    if device.is_cpu() {
        CPU_INFERENCE_TOKENS
    } else {
        CUDA_INFERENCE_TOKENS
    }
}

/// Fastest measured budget of `predict` on the CPU (see `default_inference_tokens`).
pub const CPU_INFERENCE_TOKENS: usize = 16384;
/// Budget on CUDA (see `default_inference_tokens`).
pub const CUDA_INFERENCE_TOKENS: usize = 16384;

/// Averaged logits of every scored row.
pub struct RowScores {
    pub rows: Vec<usize>,
    /// Row-major `[rows × n_classes]`.
    pub logits: Vec<f32>,
    /// Windows per row (1 unless the protein is longer than the window).
    pub windows: Vec<usize>,
    pub n_classes: usize,
    pub seconds: f64,
}

/// Logits of `rows` of `set`, windows averaged.
pub fn score_rows(
    model: &SequenceClassifier,
    set: &LabelledSet,
    rows: &[usize],
    bcfg: &BatchConfig,
    device: &Device,
    bar: &ProgressBar,
) -> Result<RowScores> {
    let t0 = Instant::now();
    let lens = set.token_lengths();
    let plan = eval_plan_by_length(rows, &lens, bcfg)?;
    let c = model.n_classes();
    let (mut item_rows, mut values) = (Vec::new(), Vec::new());
    bar.set_length(plan.len() as u64);
    let param_dtype = model.params.get(model.esm.word_embeddings).dtype();
    let dtype = if param_dtype == DType::F64 { DType::F64 } else { DType::F32 };
    for batch in &plan {
        let packed = pack(&batch.items, set, |_| None)?;
        let inp = ModelInputs::new(&packed, model.config(), device, dtype)?;
        let logits = model.forward(&Tape::inference(), &inp)?;
        values.extend(logits.to_vec_f32()?);
        item_rows.extend(batch.items.iter().map(|it| it.row));
        bar.inc(1);
    }
    let avg = average_by_row(&item_rows, &values, c)?;
    // Back in the order of `rows` (the plan ran them by length).
    let slot: std::collections::HashMap<usize, usize> = avg.rows.iter().enumerate().map(|(i, &r)| (r, i)).collect();
    let mut seen = std::collections::HashSet::new();
    let order: Vec<usize> = rows.iter().filter(|r| seen.insert(**r)).map(|r| slot[r]).collect();
    Ok(RowScores {
        rows: order.iter().map(|&i| avg.rows[i]).collect(),
        logits: order.iter().flat_map(|&i| avg.values[i * c..(i + 1) * c].iter().copied()).collect(),
        windows: order.iter().map(|&i| avg.windows[i]).collect(),
        n_classes: c,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Evaluation of a labelled split.
pub struct EvalResult {
    pub report: ClassificationReport,
    /// Mean cross-entropy of the averaged logits.
    pub loss: f64,
    pub sequences_per_s: f64,
    pub long_rows: usize,
}

/// Evaluate `rows` (with class `labels`) of `set`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &SequenceClassifier,
    set: &LabelledSet,
    rows: &[usize],
    labels: &[u32],
    bcfg: &BatchConfig,
    device: &Device,
    class_tier: Option<&[u32]>,
    family_size: Option<&[usize]>,
    bar: &ProgressBar,
) -> Result<EvalResult> {
    let scores = score_rows(model, set, rows, bcfg, device, bar)?;
    // Scores come in the order of `rows`; realign the labels all the same.
    let label_of: std::collections::HashMap<usize, u32> = rows.iter().copied().zip(labels.iter().copied()).collect();
    let y: Vec<u32> = scores.rows.iter().map(|r| label_of[r]).collect();
    let c = scores.n_classes;
    let loss = scores.logits.chunks(c).zip(&y).map(|(l, &t)| cross_entropy_row(l, t as usize)).sum::<f64>()
        / y.len().max(1) as f64;
    let report = ClassificationReport::compute(
        c,
        &y,
        Predictions::Scores(&scores.logits),
        &model.labels,
        class_tier,
        family_size,
    )?;
    Ok(EvalResult {
        report,
        loss,
        sequences_per_s: y.len() as f64 / scores.seconds.max(1e-9),
        long_rows: scores.windows.iter().filter(|&&w| w > 1).count(),
    })
}

/// `logsumexp(l) − l[t]` in f64.
fn cross_entropy_row(l: &[f32], t: usize) -> f64 {
    let m = l.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let lse = m + l.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
    lse - l[t] as f64
}

/// Softmax of one row of logits.
pub fn softmax(l: &[f32]) -> Vec<f32> {
    let m = l.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let e: Vec<f32> = l.iter().map(|&x| (x - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}
