//! Training data for family classification: the built-in demo set, a Pfam random-split
//! directory, labelled FASTA or Stockholm files; family selection (stratification),
//! the evaluation split mapped onto the same classes, and class weights.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::data::class_weights::{class_weights, ClassWeighting, ClassWeights};
use crate::data::dataset::LabelledSet;
use crate::data::fasta::{read_fasta, FastaLabels};
use crate::data::pfam::read_pfam_split;
use crate::data::rng::Rng;
use crate::data::stockholm::read_stockholm;
use crate::data::stratify::{map_split, stratify, MappedSplit, Stratified, StratifySpec};

/// Where training data comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSource {
    /// The 20-family demo set embedded in the binary.
    Builtin,
    /// A Pfam random-split directory (`train/`, `dev/`, `test/` shards).
    PfamDir { dir: PathBuf, eval_split: String },
    /// Labelled sequence files: FASTA (`>name label`, or a TSV of labels) or Stockholm
    /// (by extension `.sto`/`.stk`/`.sth`, families from `#=GF ID`).
    Files { train: PathBuf, eval: Option<PathBuf>, labels_tsv: Option<PathBuf> },
}

impl DataSource {
    pub fn describe(&self) -> String {
        match self {
            DataSource::Builtin => "built-in demo set (20 Pfam families, 2,000 train / 500 held-out domains)".into(),
            DataSource::PfamDir { dir, eval_split } => format!("Pfam split {} (train → {eval_split})", dir.display()),
            DataSource::Files { train, eval, .. } => match eval {
                Some(e) => format!("{} → {}", train.display(), e.display()),
                None => train.display().to_string(),
            },
        }
    }
}

/// Train and evaluation rows with their classes.
pub struct ClassificationData {
    pub train: LabelledSet,
    pub eval: Option<LabelledSet>,
    pub selection: Stratified,
    pub eval_map: Option<MappedSplit>,
    /// Evaluation rows before `eval_limit` sampled them.
    pub eval_rows_before_limit: usize,
    pub weights: ClassWeights,
}

fn read_labelled(path: &std::path::Path, labels_tsv: &Option<PathBuf>) -> Result<LabelledSet> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let ext = if ext == "gz" {
        path.file_stem().and_then(|s| std::path::Path::new(s).extension()).and_then(|e| e.to_str()).unwrap_or("")
    } else {
        ext
    };
    if matches!(ext, "sto" | "stk" | "sth") {
        return read_stockholm(path);
    }
    let labels = match labels_tsv {
        Some(t) => FastaLabels::Tsv(t.clone()),
        None => FastaLabels::Header,
    };
    read_fasta(path, &labels)
}

/// Read the sets, select families, map the evaluation split, weight the classes.
/// `eval_limit` caps the evaluation rows (a seeded sample) for quicker epochs.
pub fn load(
    source: &DataSource,
    spec: &StratifySpec,
    weighting: ClassWeighting,
    seed: u64,
    eval_limit: Option<usize>,
) -> Result<ClassificationData> {
    let (train, eval) = match source {
        DataSource::Builtin => {
            let (t, e) = crate::data::demo::demo_sets()?;
            (t, Some(e))
        }
        DataSource::PfamDir { dir, eval_split } => {
            let train = read_pfam_split(dir, "train")?;
            let eval = if dir.join(eval_split).is_dir() { Some(read_pfam_split(dir, eval_split)?) } else { None };
            (train, eval)
        }
        DataSource::Files { train, eval, labels_tsv } => {
            let t = read_labelled(train, labels_tsv)?;
            let e = eval.as_ref().map(|e| read_labelled(e, labels_tsv)).transpose()?;
            (t, e)
        }
    };
    if train.is_empty() {
        bail!("the training set is empty: no sequences to train on");
    }
    if !train.is_labelled() {
        bail!("the training set has no family labels (FASTA needs `>name label` headers or --labels)");
    }
    let selection = stratify(&train, spec, seed)?;
    if selection.rows.is_empty() {
        bail!("family selection `{}` kept no training rows", selection.label_map.spec);
    }
    let mut eval_rows_before_limit = 0;
    let eval_map = match &eval {
        Some(e) => {
            let mut m = map_split(e, &selection.label_map)?;
            eval_rows_before_limit = m.rows.len();
            if let Some(limit) = eval_limit.filter(|&l| l < m.rows.len()) {
                let mut idx: Vec<usize> = (0..m.rows.len()).collect();
                Rng::from_words(&[seed, 0xE7A1]).shuffle(&mut idx);
                idx.truncate(limit);
                idx.sort_unstable();
                m.rows = idx.iter().map(|&i| m.rows[i]).collect();
                m.labels = idx.iter().map(|&i| m.labels[i]).collect();
            }
            Some(m)
        }
        None => None,
    };
    let weights = class_weights(&selection.class_counts(), weighting);
    Ok(ClassificationData { train, eval, selection, eval_map, eval_rows_before_limit, weights })
}
