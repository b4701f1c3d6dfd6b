//! Command-line interface: argument definitions (clap) and dispatch to the library.

mod bench_args;
mod common;
mod data_args;
mod embed_args;
mod eval_args;
mod plot_args;
mod predict_args;
mod predict_contacts_args;
mod train_args;
mod upgrade_vocab_args;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Fine-tune ESM-2 protein language models — exact ESM-2, a CPU reference backend and
/// hand-written CUDA kernels, no deep-learning framework.
#[derive(Parser, Debug)]
#[command(name = "qf-engine", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Fine-tune (or train from scratch) ESM-2 for protein-family classification, or with
    /// `--task contact` for residue-residue contact prediction (LoRA + contact head, random crops).
    ///
    /// With no arguments: fine-tunes the built-in pretrained ESM-2 (esm2_tiny after 30
    /// minutes of MLM on Pfam; --from-scratch for random weights) on the built-in demo set
    /// (20 real Pfam families, 2,000 train / 500 held-out domains) and writes metrics.jsonl,
    /// curves.png (loss and eval metrics against step, redrawn at every evaluation),
    /// checkpoints and the final model under runs/demo.
    Train(Box<train_args::TrainArgs>),
    /// Evaluate a trained model: a classifier on a labelled split (accuracy, top-5,
    /// macro/weighted F1, per-tier and per-family-size accuracy, the worst families), or with
    /// `--task contact` a contact model (per-protein and pooled MCC, precision at L, L/2, L/5).
    Eval(Box<eval_args::EvalArgs>),
    /// Predict the families of the sequences of a FASTA file (TSV of the top-k with probabilities).
    Predict(Box<predict_args::PredictArgs>),
    /// Predict residue-residue contact maps of sequences or structures: CSV, NPY and a PNG
    /// picture per protein (true contacts drawn and scored when a structure gives them).
    PredictContacts(Box<predict_contacts_args::PredictContactsArgs>),
    /// ESM-2 representations of a FASTA file (fair-esm's `extract`): per-protein means,
    /// per-residue vectors, <cls> vectors, contacts, of chosen layers, streamed to
    /// safetensors shards or .npy files with an index; long proteins as averaged windows.
    Embed(Box<embed_args::EmbedArgs>),
    /// Inspect data sets.
    Data(data_args::DataArgs),
    /// Measure training throughput (sequences/s, tokens/s) and peak memory of a model preset.
    Bench(Box<bench_args::BenchArgs>),
    /// Draw the training curves of one or several runs (loss and eval metrics against step)
    /// from their metrics.jsonl, overlaid with a legend.
    Plot(plot_args::PlotArgs),
    /// Upgrade a model saved before the vocabulary fix of 2026-12-06 (its N, K and Q ids were
    /// permuted): writes a copy that gives the same predictions with ESM-2's real token ids.
    UpgradeVocab(upgrade_vocab_args::UpgradeVocabArgs),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => train_args::run(*args),
        Command::Eval(args) => eval_args::run(*args),
        Command::Predict(args) => predict_args::run(*args),
        Command::PredictContacts(args) => predict_contacts_args::run(*args),
        Command::Embed(args) => embed_args::run(*args),
        Command::Data(args) => data_args::run(args),
        Command::Bench(args) => bench_args::run(*args),
        Command::Plot(args) => plot_args::run(args),
        Command::UpgradeVocab(args) => upgrade_vocab_args::run(args),
    }
}
