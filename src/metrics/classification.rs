//! Classification metrics for protein-family prediction, with scikit-learn's definitions.
//!
//! Definitions (scikit-learn `accuracy_score`, `top_k_accuracy_score` and
//! `precision_recall_fscore_support(y_true, y_pred, labels=None)`):
//!
//! * per class `c`, from top-1 predictions: `tp_c`, `support_c = #{y = c}`,
//!   `predicted_c = #{ŷ = c}`; precision `tp_c / predicted_c`, recall `tp_c / support_c`,
//!   F1 `2·tp_c / (support_c + predicted_c)` (= 2PR/(P+R)). A zero denominator gives 0
//!   (scikit-learn's default `zero_division="warn"` also returns 0, with a warning; the
//!   report counts those classes instead);
//! * **macro** averages are unweighted means over the classes present in the labels **or**
//!   the predictions (scikit-learn's `labels=None` uses `unique_labels(y_true, y_pred)`),
//!   so a class that is only ever wrongly predicted lowers macro precision and F1;
//! * **weighted** averages weight each class by its support, so weighted recall equals
//!   accuracy;
//! * top-5 accuracy: the label is among the first five ranked predictions.
//!
//! Beyond scikit-learn, the report breaks accuracy down by tier (e.g. the 1,000 largest
//! families vs the rest, see [`tiers_by_train_count`]) and by training-set family size
//! (bins [`FAMILY_SIZE_BIN_EDGES`]: 0, 1-9, 10-49, 50-199, 200+ training sequences), and
//! lists the 20 families with the lowest recall — the long tail that the QuantaFold paper's
//! weighted cross-entropy targets.

use anyhow::{bail, ensure, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Lower edges of the training-family-size bins: 0, 1-9, 10-49, 50-199, 200+.
pub const FAMILY_SIZE_BIN_EDGES: [usize; 5] = [0, 1, 10, 50, 200];

/// How many ranked predictions count for top-k accuracy.
pub const TOP_K: usize = 5;

/// How many of the lowest-recall families the report lists.
pub const N_WORST: usize = 20;

/// Model outputs for every sample.
#[derive(Clone, Copy, Debug)]
pub enum Predictions<'a> {
    /// Class ids per sample, best first; give at least five where there are five classes
    /// (a shorter list counts only its own entries for top-5 accuracy).
    TopK(&'a [Vec<u32>]),
    /// Row-major scores `[n_samples × n_classes]` (probabilities or logits, higher is
    /// better); ties rank the lower class id first, like `argmax`.
    Scores(&'a [f32]),
}

/// Metrics of one class (over classes seen in labels or predictions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub class: u32,
    pub name: String,
    /// Samples whose label is this class.
    pub support: usize,
    /// Samples whose top-1 prediction is this class.
    pub predicted: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Training sequences of this family, when known.
    pub train_count: Option<usize>,
    pub tier: Option<u32>,
}

/// Accuracy over the samples of one group of classes (a tier or a family-size bin).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupAccuracy {
    /// `tier 0`, `1-9`, ...
    pub group: String,
    /// Classes assigned to the group (whether or not they have samples).
    pub n_classes: usize,
    /// Samples whose label falls in the group.
    pub support: usize,
    /// Top-1 accuracy over those samples; `None` when there are none.
    pub accuracy: Option<f64>,
    pub top5_accuracy: Option<f64>,
}

/// Everything the evaluation reports; serialises to JSON and prints as a table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassificationReport {
    pub n_samples: usize,
    pub n_classes: usize,
    /// Classes present in labels or top-1 predictions: the macro-average denominator.
    pub n_classes_seen: usize,
    pub accuracy: f64,
    pub top5_accuracy: f64,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    pub weighted_precision: f64,
    pub weighted_recall: f64,
    pub weighted_f1: f64,
    /// Seen classes never predicted: precision is ill-defined and counted as 0.
    pub n_precision_ill_defined: usize,
    /// Seen classes without samples (only predicted): recall is ill-defined, counted as 0.
    pub n_recall_ill_defined: usize,
    /// Accuracy per tier of the true class (empty without tiers).
    pub per_tier: Vec<GroupAccuracy>,
    /// Accuracy per training family-size bin of the true class (empty without sizes).
    pub by_family_size: Vec<GroupAccuracy>,
    /// The [`N_WORST`] classes with samples and the lowest recall (ties: larger support
    /// first, then class id).
    pub worst_families: Vec<ClassMetrics>,
    /// Every seen class, by class id.
    pub per_class: Vec<ClassMetrics>,
}

/// Per-sample hit flags and per-class confusion counts.
struct Counts {
    top1_hit: Vec<bool>,
    top5_hit: Vec<bool>,
    tp: Vec<usize>,
    support: Vec<usize>,
    predicted: Vec<usize>,
}

impl ClassificationReport {
    /// Compute the report. `class_names` has one name per class or is empty (names become
    /// `class_<id>`); `class_tier` gives a tier per class, `family_size` a training count
    /// per class. Errors on empty input, out-of-range ids, or mismatched lengths.
    pub fn compute(
        n_classes: usize,
        labels: &[u32],
        predictions: Predictions,
        class_names: &[String],
        class_tier: Option<&[u32]>,
        family_size: Option<&[usize]>,
    ) -> Result<Self> {
        validate_inputs(n_classes, labels, class_names, class_tier, family_size)?;
        let ranked = ranked_predictions(n_classes, labels.len(), predictions)?;
        let counts = count(n_classes, labels, &ranked);
        let name_of = |c: usize| match class_names.get(c) {
            Some(name) => name.clone(),
            None => format!("class_{c}"),
        };
        let per_class: Vec<ClassMetrics> = (0..n_classes)
            .filter(|&c| counts.support[c] > 0 || counts.predicted[c] > 0)
            .map(|c| class_metrics(c, &counts, name_of(c), class_tier, family_size))
            .collect();
        let n = labels.len();
        let mean = |f: fn(&ClassMetrics) -> f64| per_class.iter().map(f).sum::<f64>() / per_class.len() as f64;
        let weighted =
            |f: fn(&ClassMetrics) -> f64| per_class.iter().map(|m| m.support as f64 * f(m)).sum::<f64>() / n as f64;
        let tiers = class_tier.map(tier_groups);
        let size_groups = family_size.map(|s| size_bin_groups(s, &FAMILY_SIZE_BIN_EDGES));
        Ok(Self {
            n_samples: n,
            n_classes,
            n_classes_seen: per_class.len(),
            accuracy: fraction(&counts.top1_hit),
            top5_accuracy: fraction(&counts.top5_hit),
            macro_precision: mean(|m| m.precision),
            macro_recall: mean(|m| m.recall),
            macro_f1: mean(|m| m.f1),
            weighted_precision: weighted(|m| m.precision),
            weighted_recall: weighted(|m| m.recall),
            weighted_f1: weighted(|m| m.f1),
            n_precision_ill_defined: per_class.iter().filter(|m| m.predicted == 0).count(),
            n_recall_ill_defined: per_class.iter().filter(|m| m.support == 0).count(),
            per_tier: tiers.map_or_else(Vec::new, |g| group_accuracy(&g, labels, &counts)),
            by_family_size: size_groups.map_or_else(Vec::new, |g| group_accuracy(&g, labels, &counts)),
            worst_families: worst_by_recall(&per_class, N_WORST),
            per_class,
        })
    }

    /// Pretty-printed JSON.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }
}

fn validate_inputs(
    n_classes: usize,
    labels: &[u32],
    class_names: &[String],
    class_tier: Option<&[u32]>,
    family_size: Option<&[usize]>,
) -> Result<()> {
    ensure!(!labels.is_empty(), "classification report: no samples (the label list is empty)");
    ensure!(n_classes > 0, "classification report: n_classes must be at least 1");
    ensure!(
        class_names.is_empty() || class_names.len() == n_classes,
        "classification report: {} class names for {n_classes} classes",
        class_names.len()
    );
    if let Some(t) = class_tier {
        ensure!(t.len() == n_classes, "classification report: {} tiers for {n_classes} classes", t.len());
    }
    if let Some(s) = family_size {
        ensure!(s.len() == n_classes, "classification report: {} family sizes for {n_classes} classes", s.len());
    }
    if let Some(i) = labels.iter().position(|&y| y as usize >= n_classes) {
        bail!("classification report: label {} of sample {i} is out of range for {n_classes} classes", labels[i]);
    }
    Ok(())
}

/// Up to [`TOP_K`] ranked class ids per sample, from either kind of prediction.
fn ranked_predictions(n_classes: usize, n: usize, predictions: Predictions) -> Result<Vec<Vec<u32>>> {
    match predictions {
        Predictions::TopK(lists) => {
            ensure!(lists.len() == n, "classification report: {} prediction lists for {n} labels", lists.len());
            for (i, list) in lists.iter().enumerate() {
                ensure!(!list.is_empty(), "classification report: sample {i} has an empty prediction list");
                if let Some(&c) = list.iter().find(|&&c| c as usize >= n_classes) {
                    bail!("classification report: predicted class {c} of sample {i} is out of range for {n_classes} classes");
                }
            }
            Ok(lists.iter().map(|l| l.iter().take(TOP_K).copied().collect()).collect())
        }
        Predictions::Scores(scores) => {
            ensure!(
                scores.len() == n * n_classes,
                "classification report: {} scores, expected {n} samples × {n_classes} classes",
                scores.len()
            );
            if let Some(i) = scores.iter().position(|s| s.is_nan()) {
                bail!("classification report: score of sample {} class {} is NaN", i / n_classes, i % n_classes);
            }
            Ok(scores.par_chunks(n_classes).map(top_k_of_row).collect())
        }
    }
}

/// The [`TOP_K`] highest-scoring class ids of one row, best first (ties: lower id first).
fn top_k_of_row(row: &[f32]) -> Vec<u32> {
    let mut best: Vec<u32> = Vec::with_capacity(TOP_K + 1);
    for (c, &s) in row.iter().enumerate() {
        let pos = best.partition_point(|&b| row[b as usize] >= s);
        if pos < TOP_K {
            best.insert(pos, c as u32);
            best.truncate(TOP_K);
        }
    }
    best
}

fn count(n_classes: usize, labels: &[u32], ranked: &[Vec<u32>]) -> Counts {
    let mut c = Counts {
        top1_hit: Vec::with_capacity(labels.len()),
        top5_hit: Vec::with_capacity(labels.len()),
        tp: vec![0; n_classes],
        support: vec![0; n_classes],
        predicted: vec![0; n_classes],
    };
    for (&y, preds) in labels.iter().zip(ranked) {
        let top1 = preds[0];
        let hit = top1 == y;
        c.top1_hit.push(hit);
        c.top5_hit.push(preds.contains(&y));
        c.support[y as usize] += 1;
        c.predicted[top1 as usize] += 1;
        c.tp[y as usize] += usize::from(hit);
    }
    c
}

/// `num / den`, or 0 for an empty denominator (scikit-learn's zero_division default).
fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

fn fraction(hits: &[bool]) -> f64 {
    ratio(hits.iter().filter(|&&h| h).count(), hits.len())
}

fn class_metrics(
    c: usize,
    counts: &Counts,
    name: String,
    class_tier: Option<&[u32]>,
    family_size: Option<&[usize]>,
) -> ClassMetrics {
    let (tp, support, predicted) = (counts.tp[c], counts.support[c], counts.predicted[c]);
    ClassMetrics {
        class: c as u32,
        name,
        support,
        predicted,
        precision: ratio(tp, predicted),
        recall: ratio(tp, support),
        f1: ratio(2 * tp, support + predicted),
        train_count: family_size.map(|s| s[c]),
        tier: class_tier.map(|t| t[c]),
    }
}

/// One group per distinct tier id, ascending: (`tier <id>`, membership per class).
fn tier_groups(class_tier: &[u32]) -> Vec<(String, Vec<bool>)> {
    let mut tiers: Vec<u32> = class_tier.to_vec();
    tiers.sort_unstable();
    tiers.dedup();
    tiers.into_iter().map(|t| (format!("tier {t}"), class_tier.iter().map(|&x| x == t).collect())).collect()
}

/// Label of the bin `[edges[i], edges[i+1])`: `0`, `1-9`, ..., `200+`.
fn bin_label(edges: &[usize], i: usize) -> String {
    match edges.get(i + 1) {
        Some(&hi) if hi == edges[i] + 1 => format!("{}", edges[i]),
        Some(&hi) => format!("{}-{}", edges[i], hi - 1),
        None => format!("{}+", edges[i]),
    }
}

/// One group per family-size bin (`edges` are ascending lower edges).
fn size_bin_groups(family_size: &[usize], edges: &[usize]) -> Vec<(String, Vec<bool>)> {
    (0..edges.len())
        .map(|i| {
            let hi = edges.get(i + 1).copied().unwrap_or(usize::MAX);
            let members = family_size.iter().map(|&s| s >= edges[i] && s < hi).collect();
            (bin_label(edges, i), members)
        })
        .collect()
}

/// Accuracy over the samples whose true class belongs to each group.
fn group_accuracy(groups: &[(String, Vec<bool>)], labels: &[u32], counts: &Counts) -> Vec<GroupAccuracy> {
    groups
        .iter()
        .map(|(name, member)| {
            let (mut support, mut top1, mut top5) = (0usize, 0usize, 0usize);
            for (i, &y) in labels.iter().enumerate() {
                if member[y as usize] {
                    support += 1;
                    top1 += usize::from(counts.top1_hit[i]);
                    top5 += usize::from(counts.top5_hit[i]);
                }
            }
            GroupAccuracy {
                group: name.clone(),
                n_classes: member.iter().filter(|&&m| m).count(),
                support,
                accuracy: (support > 0).then(|| ratio(top1, support)),
                top5_accuracy: (support > 0).then(|| ratio(top5, support)),
            }
        })
        .collect()
}

/// Classes with samples, lowest recall first (ties: larger support, then lower id).
fn worst_by_recall(per_class: &[ClassMetrics], k: usize) -> Vec<ClassMetrics> {
    let mut with_samples: Vec<&ClassMetrics> = per_class.iter().filter(|m| m.support > 0).collect();
    with_samples
        .sort_by(|a, b| a.recall.total_cmp(&b.recall).then(b.support.cmp(&a.support)).then(a.class.cmp(&b.class)));
    with_samples.into_iter().take(k).cloned().collect()
}

/// Tier per class from training counts: classes ranked by count (descending, ties by
/// id); ranks below `boundaries[0]` get tier 0, then tier 1 up to `boundaries[1]`, and so
/// on. `tiers_by_train_count(sizes, &[1000])` marks the 1,000 largest families as tier 0
/// and the rest as tier 1.
pub fn tiers_by_train_count(family_size: &[usize], boundaries: &[usize]) -> Vec<u32> {
    let mut order: Vec<usize> = (0..family_size.len()).collect();
    order.sort_by(|&a, &b| family_size[b].cmp(&family_size[a]).then(a.cmp(&b)));
    let mut tiers = vec![0u32; family_size.len()];
    for (rank, &c) in order.iter().enumerate() {
        tiers[c] = boundaries.iter().filter(|&&b| rank >= b).count() as u32;
    }
    tiers
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"))
}

fn fmt_groups(f: &mut fmt::Formatter<'_>, title: &str, head: &str, groups: &[GroupAccuracy]) -> fmt::Result {
    writeln!(f, "\n{title}")?;
    writeln!(f, "  {head:<12} {:>8} {:>8} {:>8} {:>8}", "classes", "samples", "top-1", "top-5")?;
    for g in groups {
        writeln!(
            f,
            "  {:<12} {:>8} {:>8} {:>8} {:>8}",
            g.group,
            g.n_classes,
            g.support,
            fmt_opt(g.accuracy),
            fmt_opt(g.top5_accuracy)
        )?;
    }
    Ok(())
}

/// At most `width` characters of `name`.
fn clip(name: &str, width: usize) -> String {
    name.chars().take(width).collect()
}

impl fmt::Display for ClassificationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Classification report: {} samples, {} of {} classes seen (labels or predictions)",
            self.n_samples, self.n_classes_seen, self.n_classes
        )?;
        let rows = [
            ("accuracy", self.accuracy),
            ("top-5 accuracy", self.top5_accuracy),
            ("macro precision", self.macro_precision),
            ("macro recall", self.macro_recall),
            ("macro F1", self.macro_f1),
            ("weighted precision", self.weighted_precision),
            ("weighted recall", self.weighted_recall),
            ("weighted F1", self.weighted_f1),
        ];
        for (name, value) in rows {
            writeln!(f, "  {name:<20} {value:.4}")?;
        }
        if self.n_precision_ill_defined + self.n_recall_ill_defined > 0 {
            writeln!(
                f,
                "  (never-predicted classes: {} with precision counted as 0; predicted-only \
                 classes: {} with recall counted as 0; as scikit-learn does)",
                self.n_precision_ill_defined, self.n_recall_ill_defined
            )?;
        }
        if !self.per_tier.is_empty() {
            fmt_groups(f, "Accuracy per tier of the true class", "tier", &self.per_tier)?;
        }
        if !self.by_family_size.is_empty() {
            fmt_groups(f, "Accuracy by training family size", "train count", &self.by_family_size)?;
        }
        writeln!(f, "\nWorst {} families by recall", self.worst_families.len())?;
        writeln!(
            f,
            "  {:>7} {:<24} {:>8} {:>9} {:>7} {:>9} {:>7} {:>7}",
            "class", "name", "support", "predicted", "recall", "precision", "F1", "train"
        )?;
        for m in &self.worst_families {
            let train = m.train_count.map_or_else(|| "-".to_string(), |t| t.to_string());
            writeln!(
                f,
                "  {:>7} {:<24} {:>8} {:>9} {:>7.4} {:>9.4} {:>7.4} {:>7}",
                m.class,
                clip(&m.name, 24),
                m.support,
                m.predicted,
                m.recall,
                m.precision,
                m.f1,
                train
            )?;
        }
        Ok(())
    }
}
