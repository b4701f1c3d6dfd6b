//! Contact-prediction metrics: Matthews correlation coefficient (per protein and pooled) and
//! precision of the top L, L/2, L/5 predictions by sequence-separation range.
//!
//! Definitions (CASP / ESM conventions; where they leave a choice, ours is stated):
//! * Only the upper triangle i < j of the L×L probability map is read, so a symmetric or an
//!   asymmetric map gives the same result. Labels are 0 (no contact), 1 (contact) or any other
//!   value (e.g. [`crate::data::contacts::UNKNOWN`]) for a pair that is not evaluated.
//! * **MCC** over the pairs with j − i ≥ `min_sep` (default 6), predicted positive when
//!   p > `threshold` (default 0.5; strict, as torchmetrics thresholds). When the denominator
//!   (TP+FP)(TP+FN)(TN+FP)(TN+FN) is zero — no true contacts, or an all-negative / all-positive
//!   prediction — MCC is defined as 0, as scikit-learn does, never NaN; such proteins are
//!   counted in [`ContactReport::mcc_degenerate`]. A protein with no evaluated pair at all
//!   (L ≤ `min_sep`) has no MCC and does not enter the mean.
//! * **Per-protein MCC** is the mean over proteins; **pooled MCC** sums the confusion counts
//!   of all pairs of all proteins first (what the seed report's code computed).
//! * **Precision at L/k** (fair-esm `compute_precisions`, from its contact-prediction
//!   example): the evaluated pairs of a range are ranked by probability, the top ⌊L/k⌋ (at
//!   least 1) are taken and the fraction that are contacts is the precision. Ranges as ESM's
//!   `(minsep, maxsep)` with maxsep exclusive: short 6 ≤ |i−j| ≤ 11, medium 12–23, long ≥ 24,
//!   plus all ≥ `min_sep`. L is the sequence length passed in (ESM counts the residues with a
//!   valid target in the first row, the same number when every residue has coordinates, as
//!   in the contact dataset). Where ESM's code is ill-defined we differ: ties are broken by
//!   position (row-major i, j) instead of by an unstable `argsort`; when a range has fewer
//!   evaluated pairs than ⌊L/k⌋ the precision is over the pairs there are (ESM then counts
//!   masked pairs from outside the range, or zero padding, among its top k); ⌊L/5⌋ = 0 takes
//!   one pair (ESM indexes position −1); a range with no evaluated pair gives no precision for
//!   that protein, and the average is over the proteins that have one.

use crate::data::contacts::ContactLabels;
use anyhow::{bail, Result};
use serde::Serialize;
use std::fmt;

/// Default probability threshold for MCC.
pub const DEFAULT_THRESHOLD: f32 = 0.5;
/// Default minimum sequence separation for MCC and the "all" range.
pub const DEFAULT_MIN_SEP: usize = 6;
/// Divisors k of the top-L/k precisions: L, L/2, L/5.
pub const TOP_DIVISORS: [usize; 3] = [1, 2, 5];

/// Sequence-separation ranges of the precision table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SeparationRange {
    /// 6 ≤ |i − j| ≤ 11
    Short,
    /// 12 ≤ |i − j| ≤ 23
    Medium,
    /// |i − j| ≥ 24
    Long,
    /// |i − j| ≥ min_sep
    All,
}

impl SeparationRange {
    pub const ALL: [SeparationRange; 4] = [Self::Short, Self::Medium, Self::Long, Self::All];

    /// Inclusive bounds (min, max) of |i − j|.
    pub fn bounds(self, min_sep: usize) -> (usize, Option<usize>) {
        match self {
            Self::Short => (6, Some(11)),
            Self::Medium => (12, Some(23)),
            Self::Long => (24, None),
            Self::All => (min_sep, None),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Short => "short",
            Self::Medium => "medium",
            Self::Long => "long",
            Self::All => "all",
        }
    }

    fn contains(self, sep: usize, min_sep: usize) -> bool {
        let (lo, hi) = self.bounds(min_sep);
        sep >= lo && hi.is_none_or(|hi| sep <= hi)
    }
}

/// Confusion counts of thresholded predictions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
}

impl Confusion {
    fn add(&mut self, predicted: bool, actual: bool) {
        match (predicted, actual) {
            (true, true) => self.tp += 1,
            (true, false) => self.fp += 1,
            (false, false) => self.tn += 1,
            (false, true) => self.fn_ += 1,
        }
    }

    fn merge(&mut self, other: &Confusion) {
        self.tp += other.tp;
        self.fp += other.fp;
        self.tn += other.tn;
        self.fn_ += other.fn_;
    }

    pub fn pairs(&self) -> u64 {
        self.tp + self.fp + self.tn + self.fn_
    }

    /// The denominator of MCC is zero (no positives predicted or actual, or no negatives).
    pub fn mcc_is_degenerate(&self) -> bool {
        let (tp, fp, tn, fn_) = (self.tp, self.fp, self.tn, self.fn_);
        tp + fp == 0 || tp + fn_ == 0 || tn + fp == 0 || tn + fn_ == 0
    }

    /// MCC = (TP·TN − FP·FN) / √((TP+FP)(TP+FN)(TN+FP)(TN+FN)); 0 when the denominator is 0.
    pub fn mcc(&self) -> f64 {
        if self.mcc_is_degenerate() {
            return 0.0;
        }
        let (tp, fp, tn, fn_) = (self.tp as f64, self.fp as f64, self.tn as f64, self.fn_ as f64);
        let denominator = ((tp + fp) * (tp + fn_) * (tn + fp) * (tn + fn_)).sqrt();
        (tp * tn - fp * fn_) / denominator
    }
}

/// Scores of one protein.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProteinScores {
    pub len: usize,
    pub confusion: Confusion,
    /// `None` when the protein has no evaluated pair.
    pub mcc: Option<f64>,
    /// Precision at L, L/2, L/5 per range (order of [`SeparationRange::ALL`]); `None` where
    /// the range has no evaluated pair.
    pub precision: [[Option<f64>; 3]; 4],
}

/// Accumulates per-protein scores and pooled counts.
#[derive(Debug, Clone)]
pub struct ContactMetrics {
    min_sep: usize,
    threshold: f32,
    proteins: Vec<ProteinScores>,
    pooled: Confusion,
}

impl Default for ContactMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ContactMetrics {
    /// `min_sep` 6, threshold 0.5.
    pub fn new() -> Self {
        Self::with_options(DEFAULT_MIN_SEP, DEFAULT_THRESHOLD)
    }

    pub fn with_options(min_sep: usize, threshold: f32) -> Self {
        ContactMetrics { min_sep, threshold, proteins: Vec::new(), pooled: Confusion::default() }
    }

    /// Score one protein: `probs` and `labels` are row-major L×L. Errors on wrong sizes or a
    /// non-finite probability in the scored upper triangle.
    pub fn add(&mut self, probs: &[f32], labels: &[u8], len: usize) -> Result<ProteinScores> {
        check_sizes(probs, labels, len)?;
        let pairs = upper_pairs(probs, labels, len)?;
        let scores = self.score(&pairs, len);
        self.pooled.merge(&scores.confusion);
        self.proteins.push(scores.clone());
        Ok(scores)
    }

    /// [`Self::add`] with labels from [`ContactLabels`] (its mask folded in).
    pub fn add_labels(&mut self, probs: &[f32], labels: &ContactLabels) -> Result<ProteinScores> {
        self.add(probs, &labels.masked(), labels.len)
    }

    /// Scores of the proteins added so far, in order.
    pub fn proteins(&self) -> &[ProteinScores] {
        &self.proteins
    }

    fn score(&self, pairs: &[Pair], len: usize) -> ProteinScores {
        let mut confusion = Confusion::default();
        for pair in pairs.iter().filter(|p| p.sep >= self.min_sep) {
            confusion.add(pair.prob > self.threshold, pair.contact);
        }
        let mcc = (confusion.pairs() > 0).then(|| confusion.mcc());
        let mut precision = [[None; 3]; 4];
        for (row, range) in precision.iter_mut().zip(SeparationRange::ALL) {
            *row = top_precisions(pairs, range, self.min_sep, len);
        }
        ProteinScores { len, confusion, mcc, precision }
    }

    /// Averages over the proteins added so far.
    pub fn finish(&self) -> ContactReport {
        let mccs: Vec<f64> = self.proteins.iter().filter_map(|p| p.mcc).collect();
        let degenerate = self.proteins.iter().filter(|p| p.mcc.is_some() && p.confusion.mcc_is_degenerate()).count();
        let precision =
            SeparationRange::ALL.iter().enumerate().map(|(r, &range)| self.range_precision(r, range)).collect();
        ContactReport {
            proteins: self.proteins.len(),
            min_sep: self.min_sep,
            threshold: self.threshold,
            mcc_mean: mean(&mccs),
            mcc_proteins: mccs.len(),
            mcc_degenerate: degenerate,
            mcc_pooled: (self.pooled.pairs() > 0).then(|| self.pooled.mcc()),
            pooled: self.pooled,
            precision,
        }
    }

    fn range_precision(&self, r: usize, range: SeparationRange) -> RangePrecision {
        let column = |k: usize| -> Vec<f64> { self.proteins.iter().filter_map(|p| p.precision[r][k]).collect() };
        let (min_sep, max_sep) = range.bounds(self.min_sep);
        RangePrecision {
            range: range.name(),
            min_sep,
            max_sep,
            p_at_l: mean(&column(0)),
            p_at_l2: mean(&column(1)),
            p_at_l5: mean(&column(2)),
            proteins: column(0).len(),
        }
    }
}

/// One scored pair i < j.
#[derive(Debug, Clone, Copy)]
struct Pair {
    prob: f32,
    contact: bool,
    sep: usize,
}

fn check_sizes(probs: &[f32], labels: &[u8], len: usize) -> Result<()> {
    let expected = len * len;
    if probs.len() != expected {
        bail!("contact probabilities have {} values, expected L×L = {expected}", probs.len());
    }
    if labels.len() != expected {
        bail!("contact labels have {} values, expected L×L = {expected}", labels.len());
    }
    Ok(())
}

/// Evaluated pairs of the upper triangle in row-major order (the tie-break order).
fn upper_pairs(probs: &[f32], labels: &[u8], len: usize) -> Result<Vec<Pair>> {
    let mut pairs = Vec::new();
    for i in 0..len {
        for j in i + 1..len {
            let label = labels[i * len + j];
            if label > 1 {
                continue; // not evaluated
            }
            let prob = probs[i * len + j];
            if !prob.is_finite() {
                bail!("contact probability at ({i}, {j}) is {prob}");
            }
            pairs.push(Pair { prob, contact: label == 1, sep: j - i });
        }
    }
    Ok(pairs)
}

/// Precision of the top ⌊L/k⌋ (≥ 1) pairs of `range`, for k = 1, 2, 5.
fn top_precisions(pairs: &[Pair], range: SeparationRange, min_sep: usize, len: usize) -> [Option<f64>; 3] {
    let mut ranked: Vec<&Pair> = pairs.iter().filter(|p| range.contains(p.sep, min_sep)).collect();
    if ranked.is_empty() {
        return [None; 3];
    }
    // stable sort: equal probabilities keep row-major order
    ranked.sort_by(|a, b| b.prob.total_cmp(&a.prob));
    TOP_DIVISORS.map(|k| {
        let take = (len / k).max(1).min(ranked.len());
        let hits = ranked[..take].iter().filter(|p| p.contact).count();
        Some(hits as f64 / take as f64)
    })
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Precision averages of one range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RangePrecision {
    pub range: &'static str,
    pub min_sep: usize,
    /// Inclusive upper bound of |i − j| (`None`: unbounded).
    pub max_sep: Option<usize>,
    pub p_at_l: Option<f64>,
    pub p_at_l2: Option<f64>,
    pub p_at_l5: Option<f64>,
    /// Proteins with at least one evaluated pair in the range.
    pub proteins: usize,
}

/// Summary over all proteins (`None` where no protein contributed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContactReport {
    pub proteins: usize,
    pub min_sep: usize,
    pub threshold: f32,
    /// Mean of the per-protein MCCs.
    pub mcc_mean: Option<f64>,
    /// Proteins in that mean (those with at least one evaluated pair).
    pub mcc_proteins: usize,
    /// Of those, proteins whose MCC denominator was zero (MCC counted as 0).
    pub mcc_degenerate: usize,
    /// MCC of all pairs of all proteins together.
    pub mcc_pooled: Option<f64>,
    pub pooled: Confusion,
    /// One row per range: short, medium, long, all.
    pub precision: Vec<RangePrecision>,
}

fn show(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.4}"))
}

impl fmt::Display for ContactReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "contact metrics: {} proteins, pairs with |i-j| >= {}, threshold {}",
            self.proteins, self.min_sep, self.threshold
        )?;
        writeln!(
            f,
            "MCC per-protein mean {} ({} proteins, {} with MCC undefined -> 0), pooled {}",
            show(self.mcc_mean),
            self.mcc_proteins,
            self.mcc_degenerate,
            show(self.mcc_pooled)
        )?;
        writeln!(f, "{:<14} {:>7} {:>7} {:>7} {:>9}", "range", "P@L", "P@L/2", "P@L/5", "proteins")?;
        for row in &self.precision {
            let span = match row.max_sep {
                Some(hi) => format!("{}-{}", row.min_sep, hi),
                None => format!(">={}", row.min_sep),
            };
            writeln!(
                f,
                "{:<14} {:>7} {:>7} {:>7} {:>9}",
                format!("{} {}", row.range, span),
                show(row.p_at_l),
                show(row.p_at_l2),
                show(row.p_at_l5),
                row.proteins
            )?;
        }
        Ok(())
    }
}
