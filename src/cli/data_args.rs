//! `qf-engine data stats`: what a data set holds before training on it.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use qf_engine::data::stats::dataset_stats;
use qf_engine::data::stratify::StratifySpec;

use super::common::read_eval_set;

#[derive(Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Families, sequences, length distribution, Gini coefficient of family sizes, and
    /// what a family selection (tiers) would cover.
    Stats(StatsArgs),
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Pfam random-split directory.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,

    /// Split of --data.
    #[arg(long, default_value = "train")]
    pub split: String,

    /// Labelled FASTA or Stockholm file instead of --data.
    #[arg(long, value_name = "FILE", conflicts_with = "data")]
    pub file: Option<PathBuf>,

    /// TSV of `name<TAB>family` labels for a FASTA file.
    #[arg(long, value_name = "TSV")]
    pub labels: Option<PathBuf>,

    /// Family selection whose coverage to report.
    #[arg(long, default_value = "1000x200,4000x50")]
    pub stratify: String,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: DataArgs) -> Result<()> {
    match args.command {
        DataCommand::Stats(a) => {
            let t0 = std::time::Instant::now();
            let set = read_eval_set(a.data.as_deref(), &a.split, a.file.as_deref(), a.labels.as_deref())?;
            let spec: StratifySpec = a.stratify.parse()?;
            let stats = dataset_stats(&set, &spec)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                println!("{stats}");
                println!("(read in {:.2} s)", t0.elapsed().as_secs_f64());
            }
            Ok(())
        }
    }
}
