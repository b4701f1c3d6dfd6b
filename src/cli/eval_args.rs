//! `qf-engine eval`: accuracy, top-5, macro/weighted F1, per-tier and per-family-size
//! accuracy of a trained classifier on a labelled split, as a table and JSON.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use qf_engine::data::batching::BatchConfig;
use qf_engine::data::contact_batching::ContactCorpus;
use qf_engine::data::masking::MaskingConfig;
use qf_engine::data::stratify::map_split;
use qf_engine::train::contact::load_contact_model;
use qf_engine::train::contact_eval::evaluate_contacts;
use qf_engine::train::eval::{default_inference_tokens, evaluate};
use qf_engine::train::log::progress_bar;
use qf_engine::train::mlm::{evaluate_mlm, load_mlm_model, sample_rows};
use qf_engine::train::trained::load_trained;

use super::common::{open_device, read_eval_set, read_sequences, DeviceArgs, WeightsArgs};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Task: `classify` (family accuracy), `contact` (contact MCC and precision@L) or `mlm`
    /// (masked-token loss, perplexity and accuracy of an EsmForMaskedLM on --data's
    /// --split or on the sequences of --file).
    #[arg(long, default_value = "classify", value_name = "classify|contact|mlm")]
    pub task: String,

    /// MLM task: seed of the masks (and of the --limit sample); the same seed scores the same
    /// positions in every run, whatever --max-tokens (`train --task mlm` evaluates with
    /// --eval-mask-seed, default 0, so `eval --limit N` matches its `--eval-limit N`).
    #[arg(long, default_value_t = 0)]
    pub mask_seed: u64,

    /// MLM task: share of residues selected (ESM-2: 0.15; 80 % <mask>, 10 % random, 10 % kept).
    #[arg(long, default_value_t = 0.15, value_name = "P")]
    pub mask_prob: f64,

    /// Contact task: the prepared contact set directory (evaluates --split, default `valid`).
    #[arg(long, value_name = "DIR")]
    pub contacts: Option<PathBuf>,

    /// Contact task: structures to evaluate instead (`file.pdb`, `file.cif:A`).
    #[arg(long, value_name = "FILE[:CHAIN]", num_args = 1..)]
    pub structures: Vec<String>,

    /// Contact task: PEFT adapter directory to apply on top of --model.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,

    /// Contact task: smallest sequence separation |i-j| evaluated.
    #[arg(long, default_value_t = 6)]
    pub min_sep: usize,

    /// Trained model directory (`<output>/model` of `qf-engine train`, or any HF
    /// EsmForSequenceClassification directory).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,

    /// Pfam random-split directory to evaluate on.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,

    /// Split of --data (default `dev`) or of --contacts (default `valid`).
    #[arg(long)]
    pub split: Option<String>,

    /// Labelled FASTA (`>name family`) or Stockholm file instead of --data.
    #[arg(long, value_name = "FILE", conflicts_with = "data")]
    pub file: Option<PathBuf>,

    /// TSV of `name<TAB>family` labels for a FASTA without labels in its headers.
    #[arg(long, value_name = "TSV")]
    pub labels: Option<PathBuf>,

    /// Write the full report (per class too) as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Token budget per batch (default: the fastest measured for the device, 16,384 on the
    /// CPU and on CUDA; see the README's "Inference batch size").
    #[arg(long, value_name = "TOKENS")]
    pub max_tokens: Option<usize>,

    /// Window in tokens; longer proteins are scored as overlapping windows whose logits
    /// are averaged (no truncation).
    #[arg(long, default_value_t = 1024)]
    pub max_len: usize,

    /// Evaluate a seeded sample of at most this many rows.
    #[arg(long)]
    pub limit: Option<usize>,

    #[command(flatten)]
    pub device: DeviceArgs,

    #[command(flatten)]
    pub weights: WeightsArgs,
}

pub fn run(args: EvalArgs) -> Result<()> {
    args.weights.apply();
    match args.task.as_str() {
        "classify" | "classification" => run_classify(args),
        "contact" | "contacts" => run_contacts(args),
        "mlm" => run_mlm(args),
        other => bail!("unknown task `{other}`: use classify, contact or mlm"),
    }
}

fn run_mlm(args: EvalArgs) -> Result<()> {
    let device = open_device(&args.device)?;
    let model = load_mlm_model(&args.model, &device)?;
    let split = args.split.clone().unwrap_or_else(|| "dev".into());
    let set = match (args.data.as_deref(), args.file.as_deref()) {
        (Some(d), _) => qf_engine::data::pfam::read_pfam_split(d, &split)?,
        (None, Some(f)) => read_sequences(f, None, false)?,
        (None, None) => bail!("--task mlm needs --data DIR (a Pfam split directory) or --file FASTA"),
    };
    // The sample `train --task mlm --eval-limit` draws with the same mask seed.
    let rows = sample_rows((0..set.len()).collect(), args.limit, args.mask_seed);
    if rows.is_empty() {
        bail!("no sequences to evaluate");
    }
    let masking = MaskingConfig::with_select(args.mask_prob)?;
    let budget = args.max_tokens.unwrap_or_else(|| default_inference_tokens(&device).max(args.max_len));
    let bcfg = BatchConfig::new(budget.max(args.max_len), args.max_len, 0)?;
    let bar = progress_bar(0, "eval", !args.device.quiet);
    let e = evaluate_mlm(&model, &set, &rows, &bcfg, &masking, args.mask_seed, &device, &bar)?;
    bar.finish_and_clear();
    println!("{}", e.line());
    println!("{} windows of ≤ {} tokens; {:.1} s", e.n_windows, args.max_len, e.seconds);
    if let Some(path) = &args.json {
        let mut v = serde_json::to_value(&e)?;
        v["model"] = args.model.display().to_string().into();
        qf_engine::model::checkpoint::write_atomic(path, serde_json::to_string_pretty(&v)?.as_bytes())?;
        println!("report written to {}", path.display());
    }
    Ok(())
}

fn run_contacts(args: EvalArgs) -> Result<()> {
    let device = open_device(&args.device)?;
    let model = load_contact_model(&args.model, args.adapter.as_deref(), &device)?;
    let corpus = match (&args.contacts, args.structures.is_empty()) {
        (Some(dir), _) => ContactCorpus::open_split(dir, args.split.as_deref().unwrap_or("valid"))?,
        (None, false) => ContactCorpus::from_structures(&args.structures)?,
        (None, true) => bail!("--task contact needs --contacts DIR or --structures FILE…"),
    };
    let mut rows: Vec<usize> = (0..corpus.len()).collect();
    if let Some(limit) = args.limit.filter(|&l| l < rows.len()) {
        qf_engine::data::rng::Rng::new(0xE7A1).shuffle(&mut rows);
        rows.truncate(limit);
        rows.sort_unstable();
    }
    let budget = args.max_tokens.unwrap_or_else(|| default_inference_tokens(&device).max(args.max_len));
    let bcfg = BatchConfig::new(budget.max(args.max_len), args.max_len, 0)?;
    let bar = progress_bar(0, "eval", !args.device.quiet);
    let e = evaluate_contacts(&model, &corpus, &rows, &bcfg, args.min_sep, &device, &bar)?;
    bar.finish_and_clear();
    println!("{}", e.report);
    println!("{}; loss {:.4}; {:.1} s", e.window_note(), e.loss, e.seconds);
    if let Some(path) = &args.json {
        let mut v = serde_json::to_value(&e)?;
        v["model"] = args.model.display().to_string().into();
        qf_engine::model::checkpoint::write_atomic(path, serde_json::to_string_pretty(&v)?.as_bytes())?;
        println!("report written to {}", path.display());
    }
    Ok(())
}

fn run_classify(args: EvalArgs) -> Result<()> {
    let device = open_device(&args.device)?;
    let tm = load_trained(&args.model, &device)?;
    let split = args.split.clone().unwrap_or_else(|| "dev".into());
    let set = read_eval_set(args.data.as_deref(), &split, args.file.as_deref(), args.labels.as_deref())?;
    let label_map = match &tm.label_map {
        Some(lm) => lm.clone(),
        None => qf_engine::data::stratify::LabelMap {
            classes: tm.model.labels.clone(),
            accessions: vec![None; tm.model.labels.len()],
            tier_of_class: vec![0; tm.model.labels.len()],
            spec: "checkpoint labels".into(),
            train_counts: Vec::new(),
        },
    };
    let mut mapped = map_split(&set, &label_map)?;
    println!("{mapped}");
    if let Some(limit) = args.limit.filter(|&l| l < mapped.rows.len()) {
        let mut idx: Vec<usize> = (0..mapped.rows.len()).collect();
        qf_engine::data::rng::Rng::new(0xE7A1).shuffle(&mut idx);
        idx.truncate(limit);
        idx.sort_unstable();
        mapped.rows = idx.iter().map(|&i| mapped.rows[i]).collect();
        mapped.labels = idx.iter().map(|&i| mapped.labels[i]).collect();
    }
    if mapped.rows.is_empty() {
        bail!("no evaluation row belongs to a family the model knows");
    }
    let budget = args.max_tokens.unwrap_or_else(|| default_inference_tokens(&device).max(args.max_len));
    let bcfg = BatchConfig::new(budget, args.max_len, 0)?;
    let bar = progress_bar(0, "eval", !args.device.quiet);
    let sizes = (!label_map.train_counts.is_empty()).then_some(&label_map.train_counts[..]);
    let r = evaluate(
        &tm.model,
        &set,
        &mapped.rows,
        &mapped.labels,
        &bcfg,
        &device,
        Some(&label_map.tier_of_class),
        sizes,
        &bar,
    )?;
    bar.finish_and_clear();
    println!("{}", r.report);
    println!(
        "loss {:.4}; {:.1} sequences/s; {} proteins longer than the {}-token window were scored as averaged windows",
        r.loss, r.sequences_per_s, r.long_rows, args.max_len
    );
    if let Some(path) = &args.json {
        let mut v = serde_json::to_value(&r.report)?;
        v["loss"] = r.loss.into();
        v["sequences_per_s"] = r.sequences_per_s.into();
        v["model"] = args.model.display().to_string().into();
        qf_engine::model::checkpoint::write_atomic(path, serde_json::to_string_pretty(&v)?.as_bytes())?;
        println!("report written to {}", path.display());
    }
    Ok(())
}
