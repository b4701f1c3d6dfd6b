//! `qf-engine embed`: ESM-2 representations of a FASTA file, streamed to disk.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use qf_engine::embed::{embed_fasta, resolve_repr_layers, EmbedJob, Format, Include, LengthPolicy};
use qf_engine::model::contact_model::{ContactModel, CONTACT_HEAD_PREFIX};
use qf_engine::model::EsmConfig;
use qf_engine::train::eval::default_inference_tokens;

use super::common::{open_device, DeviceArgs, WeightsArgs};

const EXAMPLES: &str = "\
Examples:
  # mean of the last layer of every protein, safetensors shards + index.tsv in emb/
  qf-engine embed --model runs/pfam/model --input proteins.fasta.gz --output emb

  # fair-esm's `esm-extract ... --repr_layers 0 5 6 --include mean per_tok`
  qf-engine embed --model DIR -i seqs.fa -o emb --repr-layers 0,5,6 --include mean,per-tok

  # fair-esm's truncation (first 1,022 residues) instead of windows; one .npy per protein
  qf-engine embed --model DIR -i seqs.fa -o emb --truncate 1022 --format npy

  # continue an interrupted run (sequences already in emb/index.tsv are skipped)
  qf-engine embed --model DIR -i seqs.fa -o emb --resume

  # throughput check with random weights
  qf-engine embed --preset esm2_t6_8M -i seqs.fa -o emb --device cpu

Output (in --output):
  index.tsv     name, length, embedded (residues embedded), windows, file (shard or .npy stem);
                a row is written only after its file is on disk
  embed.json    the settings (checked by --resume)
  log.jsonl     JSON lines: the settings, then per chunk (`progress`) and per written file
                (`written`) sequences and residues done, residues/s, peak RSS
  shard-NNNNN.safetensors   tensors `{name}/mean/{layer}` [hidden], `{name}/per_tok/{layer}`
                [L, hidden], `{name}/bos/{layer}` [hidden], `{name}/contacts` [L, L], f32
  (--format npy) `{stem}.mean.{layer}.npy`, `{stem}.per_tok.{layer}.npy`, `{stem}.bos.{layer}.npy`,
                `{stem}.contacts.npy`

Long proteins: by default a protein longer than --max-len tokens runs as overlapping windows
(stride half a window); each residue's vector is the mean over the windows covering it, `bos`
the mean of the windows' <cls> vectors, contacts the mean over the windows holding both
residues (pairs no window holds are 0). Nothing is truncated unless --truncate asks for it.

Sequence names must be unique (they name the tensors); a duplicate is an error before any work.
Load a shard in Python: `safetensors.numpy.load_file(\"emb/shard-00000.safetensors\")`.";

#[derive(Args, Debug)]
#[command(after_long_help = EXAMPLES)]
pub struct EmbedArgs {
    /// Model directory: a Hugging Face ESM-2 checkpoint (`EsmModel`, `EsmForMaskedLM`,
    /// `EsmForSequenceClassification`) or one written by `qf-engine train`; only the encoder
    /// (and for contacts the contact head) is used.
    #[arg(long, value_name = "DIR", required_unless_present = "preset", conflicts_with = "preset")]
    pub model: Option<PathBuf>,

    /// Random-initialised preset instead of --model (esm2_tiny, esm2_t6_8M, esm2_t12_35M, …):
    /// for measuring speed; its embeddings mean nothing.
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,

    /// Seed of --preset's random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Sequences: FASTA, plain or gzip.
    #[arg(long, short, value_name = "FASTA")]
    pub input: PathBuf,

    /// Output directory.
    #[arg(long, short, value_name = "DIR")]
    pub output: PathBuf,

    /// Layers, fair-esm numbering: 0 = embeddings, N = the final output of an N-layer
    /// model; negative counts from the end (-1 = the last).
    #[arg(long, value_name = "L,…", value_delimiter = ',', allow_negative_numbers = true, default_value = "-1")]
    pub repr_layers: Vec<i64>,

    /// Outputs, comma-separated: mean (over residues, <cls>/<eos> excluded), per-tok,
    /// bos (the <cls> vector), contacts (the model's contact head; the model must have one).
    #[arg(long, value_name = "LIST", default_value = "mean")]
    pub include: String,

    /// Window in tokens (<cls> and <eos> included); longer proteins run as overlapping
    /// windows averaged per residue [default: 1024].
    #[arg(long, value_name = "TOKENS", conflicts_with = "truncate")]
    pub max_len: Option<usize>,

    /// Keep only the first N residues of every protein (fair-esm's
    /// --truncation_seq_length); the index records how many were embedded.
    #[arg(long, value_name = "N")]
    pub truncate: Option<usize>,

    /// Token budget of a batch (sequences are packed without padding, sorted by length).
    /// Default: the fastest measured for the device, as `predict` (16,384 on the CPU and
    /// on CUDA), raised to one window when a window is longer.
    #[arg(long, value_name = "TOKENS")]
    pub max_tokens: Option<usize>,

    /// safetensors (shards) or npy (one file per protein and output).
    #[arg(long, default_value = "safetensors")]
    pub format: String,

    /// Shard size in MB: a shard is written once its buffered tensors (data, names,
    /// bookkeeping) reach this size, the most memory the buffer takes.
    #[arg(long, default_value_t = 64)]
    pub shard_mb: usize,

    /// Continue a run in --output: sequences already in its index.tsv are skipped.
    #[arg(long)]
    pub resume: bool,

    #[command(flatten)]
    pub device: DeviceArgs,

    #[command(flatten)]
    pub weights: WeightsArgs,
}

/// Window tokens when neither --max-len nor --truncate is given.
const DEFAULT_MAX_LEN: usize = 1024;

fn length_policy(args: &EmbedArgs) -> Result<LengthPolicy> {
    match (args.max_len, args.truncate) {
        (_, Some(0)) => bail!("--truncate 0 would embed no residue; give N ≥ 1"),
        (_, Some(n)) => Ok(LengthPolicy::Truncate { residues: n }),
        (Some(m), None) if m < 3 => {
            bail!("--max-len {m} is too small: a window needs <cls>, one residue and <eos> (3 tokens)")
        }
        (m, None) => Ok(LengthPolicy::Windows { max_len: m.unwrap_or(DEFAULT_MAX_LEN) }),
    }
}

fn format(args: &EmbedArgs) -> Result<Format> {
    match args.format.as_str() {
        "safetensors" => {
            if args.shard_mb == 0 {
                bail!("--shard-mb must be at least 1");
            }
            Ok(Format::Safetensors { shard_bytes: args.shard_mb << 20 })
        }
        "npy" => Ok(Format::Npy),
        f => bail!("--format {f}: use safetensors or npy"),
    }
}

/// The model and how to name it in `embed.json`.
fn load_model(args: &EmbedArgs, include: &Include) -> Result<(ContactModel, String)> {
    if let Some(name) = &args.preset {
        eprintln!("note: --preset {name}: random weights (seed {}); the embeddings mean nothing", args.seed);
        let model = ContactModel::new_random(&EsmConfig::preset(name)?, args.seed)?;
        return Ok((model, format!("preset {name}, seed {}", args.seed)));
    }
    let dir = args.model.as_ref().expect("clap requires --model or --preset");
    let (model, report) = ContactModel::from_pretrained(dir, 0)?;
    let head_missing = report.fresh.iter().any(|n| n.starts_with(CONTACT_HEAD_PREFIX));
    if include.contacts && head_missing {
        bail!(
            "--include contacts: {} has no contact head (esm.contact_head.regression.weight/bias), so it cannot \
             give contacts; ESM-2 checkpoints from transformers and `qf-engine train --task contact` models have \
             one, classifiers saved by `qf-engine train` do not",
            dir.display()
        );
    }
    Ok((model, std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone()).display().to_string()))
}

pub fn run(args: EmbedArgs) -> Result<()> {
    args.weights.apply();
    let include = Include::parse(&args.include)?;
    let length = length_policy(&args)?;
    let format = format(&args)?;
    if let Some(budget) = args.max_tokens.filter(|&b| length.max_item_tokens() > b) {
        bail!(
            "--max-tokens {} is smaller than one item ({} tokens with --{}): raise --max-tokens",
            budget,
            length.max_item_tokens(),
            if args.truncate.is_some() { "truncate" } else { "max-len" }
        );
    }
    if !args.input.is_file() {
        bail!("{}: no such file", args.input.display());
    }
    let (mut model, source) = load_model(&args, &include)?;
    let layers = resolve_repr_layers(&args.repr_layers, model.config().num_hidden_layers)?;
    let device = open_device(&args.device)?;
    model.params.to_device(&device)?;
    let max_tokens = args.max_tokens.unwrap_or_else(|| default_inference_tokens(&device).max(length.max_item_tokens()));
    let job = EmbedJob {
        input: args.input.clone(),
        output: args.output.clone(),
        model_source: source,
        layers,
        include,
        length,
        max_tokens,
        format,
        resume: args.resume,
        show_progress: !args.device.quiet,
    };
    let s = embed_fasta(&model, &job, &device)?;
    let skipped = if s.skipped_already_done > 0 {
        format!(" ({} already in the index, skipped)", s.skipped_already_done)
    } else {
        String::new()
    };
    eprintln!(
        "{} sequences embedded{skipped}, {} residues in {:.1} s ({:.0} residues/s); {} run as windows, {} truncated; \
         index in {}",
        s.embedded,
        s.residues,
        s.seconds,
        s.residues_per_s,
        s.windowed,
        s.truncated,
        args.output.join("index.tsv").display()
    );
    Ok(())
}
