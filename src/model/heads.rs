//! Sequence-level heads over the `<cls>` vector.
//!
//! * `Classification` — Hugging Face `EsmClassificationHead`: `out_proj(tanh(dense(x)))`,
//!   names `classifier.dense.*`, `classifier.out_proj.*`; a checkpoint with it loads in
//!   `transformers.EsmForSequenceClassification` unchanged.
//! * `Linear` — one linear layer `classifier.weight/bias` (what the QuantaFold paper
//!   describes); qf-engine-only checkpoints.
//! Dropout (`p`) applies to the head's inputs as in HF (0 for ESM-2 by default).

use anyhow::{bail, Result};

use super::init::Init;
use super::linear::Linear;
use super::params::Params;
use crate::autograd::Tape;
use crate::ops;
use crate::tensor::Tensor;

/// How the sequence vector the head reads is pooled from the encoder's output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pooling {
    /// The `<cls>` token's vector (Hugging Face `EsmClassificationHead`; the default).
    #[default]
    Cls,
    /// The mean over the residues, `<cls>` and `<eos>` left out (fair-esm's `mean`
    /// representation); a qf-engine checkpoint (see `classifier.rs`).
    Mean,
}

impl std::str::FromStr for Pooling {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cls" => Ok(Pooling::Cls),
            "mean" => Ok(Pooling::Mean),
            _ => bail!("unknown pooling `{s}`: use cls (the <cls> vector, Hugging Face-compatible) or mean"),
        }
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
        })
    }
}

/// Which head to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadKind {
    Classification,
    Linear,
}

impl std::str::FromStr for HeadKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "esm" | "classification" | "hf" => Ok(HeadKind::Classification),
            "linear" => Ok(HeadKind::Linear),
            _ => bail!("unknown head `{s}`: use `esm` (Hugging Face EsmClassificationHead) or `linear`"),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Head {
    Classification { dense: Linear, out_proj: Linear, dropout: f64 },
    Linear { out: Linear, dropout: f64 },
}

impl Head {
    pub fn new(
        kind: HeadKind,
        params: &mut Params,
        hidden: usize,
        n_classes: usize,
        dropout: f64,
        init: &mut Init,
    ) -> Result<Head> {
        Ok(match kind {
            HeadKind::Classification => Head::Classification {
                dense: Linear::new(params, "classifier.dense", hidden, hidden, true, init)?,
                out_proj: Linear::new(params, "classifier.out_proj", hidden, n_classes, true, init)?,
                dropout,
            },
            HeadKind::Linear => {
                Head::Linear { out: Linear::new(params, "classifier", hidden, n_classes, true, init)?, dropout }
            }
        })
    }

    pub fn kind(&self) -> HeadKind {
        match self {
            Head::Classification { .. } => HeadKind::Classification,
            Head::Linear { .. } => HeadKind::Linear,
        }
    }

    /// Logits `[n_seqs, n_classes]` from the `<cls>` vectors `[n_seqs, hidden]`.
    pub fn forward(&self, p: &Params, tape: &Tape, cls: &Tensor) -> Result<Tensor> {
        match self {
            Head::Classification { dense, out_proj, dropout } => {
                let x = ops::dropout(tape, cls, *dropout)?;
                let x = dense.forward(p, tape, &x)?;
                let x = ops::tanh(tape, &x)?;
                let x = ops::dropout(tape, &x, *dropout)?;
                out_proj.forward(p, tape, &x)
            }
            Head::Linear { out, dropout } => {
                let x = ops::dropout(tape, cls, *dropout)?;
                out.forward(p, tape, &x)
            }
        }
    }
}
