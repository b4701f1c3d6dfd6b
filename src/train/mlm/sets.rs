//! The sequences of an MLM run: where they come from ([`MlmData`]), the seeded held-out
//! share of a FASTA file without an evaluation file, and the seeded evaluation sample.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::data::dataset::LabelledSet;
use crate::data::fasta::{read_fasta, FastaLabels};
use crate::data::pfam::read_pfam_split;
use crate::data::rng::Rng;

/// Share of a FASTA file held out for evaluation when no evaluation file is given.
const HOLDOUT_SHARE: f64 = 0.05;
/// Most rows held out that way.
const HOLDOUT_MAX: usize = 5000;
/// Stream tag of the held-out draw and of the evaluation sample.
const HOLDOUT_STREAM: u64 = 0x484F_4C44;

/// Where the sequences come from (labels, if any, are ignored).
#[derive(Clone, Debug, PartialEq)]
pub enum MlmData {
    /// A Pfam random-split directory: trains on `train/`, evaluates on `eval_split`.
    PfamDir { dir: PathBuf, eval_split: String },
    /// FASTA files (`.gz` accepted); without `eval`, a seeded 5 % (at most 5,000
    /// sequences) of `train` is held out.
    Fasta { train: PathBuf, eval: Option<PathBuf> },
}

impl MlmData {
    pub fn describe(&self) -> String {
        match self {
            MlmData::PfamDir { dir, eval_split } => {
                format!("Pfam split {} (sequences of train → {eval_split}; labels ignored)", dir.display())
            }
            MlmData::Fasta { train, eval: Some(e) } => format!("{} → {}", train.display(), e.display()),
            MlmData::Fasta { train, eval: None } => format!("{} (5 % held out)", train.display()),
        }
    }
}

/// Training and evaluation sequences.
pub struct MlmSets {
    pub train: LabelledSet,
    pub train_rows: Vec<usize>,
    /// A separate evaluation set; `None` with `eval_rows` set means rows held out of `train`.
    pub eval: Option<LabelledSet>,
    pub eval_rows: Vec<usize>,
}

impl MlmSets {
    /// The set `eval_rows` index.
    pub fn eval_set(&self) -> &LabelledSet {
        self.eval.as_ref().unwrap_or(&self.train)
    }
}

/// A seeded sample of at most `limit` of `rows` (sorted), or all of them. Evaluation
/// samples are drawn from the mask seed, not the training seed, so that `train
/// --eval-limit N` and `eval --limit N` with the same mask seed score the same proteins in
/// every run.
pub fn sample_rows(rows: Vec<usize>, limit: Option<usize>, seed: u64) -> Vec<usize> {
    match limit.filter(|&l| l < rows.len()) {
        None => rows,
        Some(l) => {
            let mut r = rows;
            Rng::from_words(&[seed, HOLDOUT_STREAM, 1]).shuffle(&mut r);
            r.truncate(l);
            r.sort_unstable();
            r
        }
    }
}

/// Rows of a set of `n` split into (train, held out): a seeded share, at least one row
/// each when `n ≥ 2`.
pub fn holdout_split(n: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let held = ((n as f64 * HOLDOUT_SHARE).round() as usize).clamp(usize::from(n >= 2), HOLDOUT_MAX);
    let mut rows: Vec<usize> = (0..n).collect();
    Rng::from_words(&[seed, HOLDOUT_STREAM]).shuffle(&mut rows);
    let mut eval = rows.split_off(n - held);
    rows.sort_unstable();
    eval.sort_unstable();
    (rows, eval)
}

/// Read the sequences of `data`: a FASTA file without an evaluation file is split by
/// `seed`; the evaluation rows are sampled (`eval_limit`) by `eval_mask_seed`.
pub fn load_sets(data: &MlmData, seed: u64, eval_limit: Option<usize>, eval_mask_seed: u64) -> Result<MlmSets> {
    let (train, train_rows, eval, eval_rows) = match data {
        MlmData::PfamDir { dir, eval_split } => {
            let train = read_pfam_split(dir, "train")?;
            let eval = if dir.join(eval_split).is_dir() { Some(read_pfam_split(dir, eval_split)?) } else { None };
            let rows = (0..train.len()).collect();
            let erows = eval.as_ref().map(|e| (0..e.len()).collect()).unwrap_or_default();
            (train, rows, eval, erows)
        }
        MlmData::Fasta { train, eval: Some(e) } => {
            let t = read_fasta(train, &FastaLabels::None)?;
            let e = read_fasta(e, &FastaLabels::None)?;
            let (rows, erows) = ((0..t.len()).collect(), (0..e.len()).collect());
            (t, rows, Some(e), erows)
        }
        MlmData::Fasta { train, eval: None } => {
            let t = read_fasta(train, &FastaLabels::None)?;
            let (rows, erows) = holdout_split(t.len(), seed);
            (t, rows, None, erows)
        }
    };
    if train_rows.is_empty() {
        bail!("the training set is empty: no sequences to train on");
    }
    let eval_rows = sample_rows(eval_rows, eval_limit, eval_mask_seed);
    Ok(MlmSets { train, train_rows, eval, eval_rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdout_is_a_seeded_partition() {
        let (t, e) = holdout_split(100, 7);
        assert_eq!(e.len(), 5);
        let mut all: Vec<usize> = t.iter().chain(&e).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(holdout_split(100, 7), (t, e));
        assert_ne!(holdout_split(100, 8).1, holdout_split(100, 7).1);
        assert_eq!(holdout_split(3, 1).1.len(), 1);
    }
}
