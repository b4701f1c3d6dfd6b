//! `qf-engine upgrade-vocab`: make a model saved before the vocabulary fix predict with the
//! correct ESM-2 token ids.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use qf_engine::model::pre_fix_vocab::upgrade_pre_fix_model;

#[derive(Args, Debug)]
pub struct UpgradeVocabArgs {
    /// Model directory saved by qf-engine before 2026-12-06 (it has no vocab.txt): a run's
    /// model/ or base/.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,

    /// Where to write the upgraded copy (the old directory is left unchanged).
    #[arg(long, short, value_name = "DIR")]
    pub output: PathBuf,
}

pub fn run(args: UpgradeVocabArgs) -> Result<()> {
    let moved = upgrade_pre_fix_model(&args.model, &args.output)?;
    println!(
        "{}: N, K and Q rows of {moved} token-indexed tensor(s) moved to ESM-2's ids (K=15, Q=16, N=17), \
         tokenizer files added; it now predicts with correct token ids exactly as the old model did with the old ones",
        args.output.display()
    );
    Ok(())
}
