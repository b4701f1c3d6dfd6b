//! `qf-engine predict-contacts`: contact probability maps of sequences or structures, as
//! CSV, NumPy `.npy` and a PNG picture (prediction in the upper triangle; the true contacts
//! in the lower one when a structure gives them; residue-numbered axes, a colour bar, and
//! the protein's P@L and MCC in the title when the truth is known), plus the contact
//! metrics when the truth is known.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use qf_engine::data::batching::BatchConfig;
use qf_engine::data::contact_batching::{read_fasta_sequences, read_numbered_structure_items, ContactCorpus};
use qf_engine::data::contact_io::{write_csv, write_npy};
use qf_engine::data::contacts::{contact_labels, ContactItem, CONTACT_CUTOFF};
use qf_engine::metrics::contact::{ContactMetrics, DEFAULT_THRESHOLD};
use qf_engine::plot::contact_map::{ContactPicture, ResidueNumber};
use qf_engine::train::contact::load_contact_model;
use qf_engine::train::contact_eval::predict_maps;
use qf_engine::train::eval::default_inference_tokens;
use qf_engine::train::log::progress_bar;

use super::common::{open_device, DeviceArgs, WeightsArgs};

#[derive(Args, Debug)]
pub struct PredictContactsArgs {
    /// Trained contact model (`<output>/model` of `qf-engine train --task contact`, or any
    /// Hugging Face ESM-2 directory with `esm.contact_head.regression.*`).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,

    /// PEFT adapter directory to apply on top of --model (e.g. `<output>/adapter` with
    /// `--model <output>/base`).
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,

    /// Protein sequence(s) in one-letter code.
    #[arg(long, value_name = "SEQ", num_args = 1..)]
    pub sequence: Vec<String>,

    /// FASTA file of sequences.
    #[arg(long, value_name = "FASTA")]
    pub fasta: Option<PathBuf>,

    /// PDB/mmCIF structure(s), `file.pdb` (every protein chain) or `file.pdb:A`; the true
    /// contacts (C-beta < 8 Å) are drawn and scored.
    #[arg(long, value_name = "FILE[:CHAIN]", num_args = 1..)]
    pub structure: Vec<String>,

    /// Output directory: `<name>.csv`, `<name>.npy`, `<name>.png` per protein, and
    /// `metrics.json` when the truth is known.
    #[arg(long, short, default_value = "contacts", value_name = "DIR")]
    pub output: PathBuf,

    /// Window in tokens; longer proteins are predicted as overlapping windows whose pair
    /// probabilities are averaged (pairs no window covers get 0, and are counted).
    #[arg(long, default_value_t = 1024)]
    pub max_len: usize,

    /// Token budget per batch (default: the fastest measured for the device, 16,384 on the
    /// CPU and on CUDA; see the README's "Inference batch size").
    #[arg(long, value_name = "TOKENS")]
    pub max_tokens: Option<usize>,

    /// Smallest sequence separation |i-j| scored.
    #[arg(long, default_value_t = 6)]
    pub min_sep: usize,

    /// Pixels per residue in the PNG's map (default: a map of about 1000 pixels; at least
    /// 300). The picture adds residue-numbered axes, a colour bar and a title.
    #[arg(long)]
    pub png_scale: Option<u32>,

    #[command(flatten)]
    pub device: DeviceArgs,

    #[command(flatten)]
    pub weights: WeightsArgs,
}

/// A file-name-safe form of a protein name.
fn file_stem(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') { c } else { '_' }).collect();
    if s.is_empty() || s.starts_with('.') {
        format!("protein{s}")
    } else {
        s
    }
}

/// A sequence without coordinates (every pair unknown).
fn sequence_item(name: &str, seq: &str) -> Result<ContactItem> {
    let seq = seq.trim();
    if seq.is_empty() {
        bail!("sequence `{name}` is empty");
    }
    if let Some(c) = seq.chars().find(|c| !c.is_ascii_alphabetic()) {
        bail!("sequence `{name}`: character `{c}` is not a residue letter");
    }
    Ok(ContactItem {
        name: name.to_string(),
        sequence: seq.to_ascii_uppercase(),
        cb: vec![[f32::NAN; 3]; seq.len()],
        ca: Vec::new(),
    })
}

/// What is known of each protein besides its sequence.
struct InputInfo {
    /// The true contacts can be computed (a structure).
    has_truth: bool,
    /// Residue numbers of a structure's chain (author numbering); `None` numbers 1…L.
    residues: Option<Vec<ResidueNumber>>,
}

impl InputInfo {
    fn sequence() -> Self {
        InputInfo { has_truth: false, residues: None }
    }
}

/// Every protein asked for, and what is known of it.
fn gather_inputs(args: &PredictContactsArgs) -> Result<(Vec<ContactItem>, Vec<InputInfo>)> {
    let mut items = Vec::new();
    let mut info = Vec::new();
    for (k, s) in args.sequence.iter().enumerate() {
        items.push(sequence_item(&format!("sequence{}", k + 1), s)?);
        info.push(InputInfo::sequence());
    }
    if let Some(f) = &args.fasta {
        for (name, seq) in read_fasta_sequences(f)? {
            items.push(sequence_item(&name, &seq)?);
            info.push(InputInfo::sequence());
        }
    }
    if !args.structure.is_empty() {
        for (item, numbers) in read_numbered_structure_items(&args.structure)? {
            let residues = numbers.into_iter().map(|(number, ins_code)| ResidueNumber { number, ins_code }).collect();
            info.push(InputInfo { has_truth: true, residues: Some(residues) });
            items.push(item);
        }
    }
    if items.is_empty() {
        bail!("nothing to predict: give --sequence SEQ, --fasta FILE or --structure FILE[:CHAIN]");
    }
    Ok((items, info))
}

pub fn run(args: PredictContactsArgs) -> Result<()> {
    args.weights.apply();
    let device = open_device(&args.device)?;
    let model = load_contact_model(&args.model, args.adapter.as_deref(), &device)?;
    let (items, info) = gather_inputs(&args)?;
    std::fs::create_dir_all(&args.output).with_context(|| format!("creating {}", args.output.display()))?;
    let corpus = ContactCorpus::Items(items);
    let rows: Vec<usize> = (0..corpus.len()).collect();
    let budget = args.max_tokens.unwrap_or_else(|| default_inference_tokens(&device).max(args.max_len));
    let bcfg = BatchConfig::new(budget.max(args.max_len), args.max_len, 0)?;
    let bar = progress_bar(0, "predict", !args.device.quiet);
    let mut metrics = ContactMetrics::with_options(args.min_sep, DEFAULT_THRESHOLD);
    let mut per_protein = Vec::new();
    let mut used_stems = std::collections::HashSet::new();
    predict_maps(&model, &corpus, &rows, &bcfg, &device, &bar, |map| {
        let name = corpus.name(map.row);
        let mut stem = file_stem(name);
        while !used_stems.insert(stem.clone()) {
            stem.push('_');
        }
        let out = |ext: &str| args.output.join(format!("{stem}.{ext}"));
        write_csv(out("csv"), &map.probs, map.len)?;
        write_npy(out("npy"), &map.probs, map.len)?;
        let labels = info[map.row].has_truth.then(|| contact_labels(&corpus.cb(map.row), CONTACT_CUTOFF, args.min_sep));
        let masked = labels.as_ref().map(|l| l.masked());
        let scores = labels.as_ref().map(|l| metrics.add_labels(&map.probs, l)).transpose()?;
        let picture = ContactPicture {
            name,
            probs: &map.probs,
            truth: masked.as_deref(),
            len: map.len,
            residues: info[map.row].residues.as_deref(),
            scores: scores.as_ref(),
            min_sep: args.min_sep,
        };
        picture.write(&out("png"), args.png_scale)?;
        let mut entry = json!({
            "name": name, "length": map.len, "windows": map.windows, "uncovered_pairs": map.uncovered_pairs,
            "csv": out("csv"), "npy": out("npy"), "png": out("png"),
        });
        if let Some(s) = &scores {
            entry["mcc"] = json!(s.mcc);
            entry["precision"] = json!(s.precision);
            entry["confusion"] = json!(s.confusion);
        }
        if map.windows > 1 {
            eprintln!(
                "{name}: {} residues, longer than the {}-token window: {} windows, pair probabilities averaged; \
                 {} pairs no window covered are 0",
                map.len, args.max_len, map.windows, map.uncovered_pairs
            );
        }
        per_protein.push(entry);
        Ok(())
    })?;
    bar.finish_and_clear();
    let mut summary = json!({ "model": args.model, "proteins": per_protein, "max_len": args.max_len });
    if info.iter().any(|i| i.has_truth) {
        let report = metrics.finish();
        println!("{report}");
        summary["metrics"] = serde_json::to_value(&report)?;
    }
    let path = args.output.join("metrics.json");
    write_summary(&path, &summary)?;
    eprintln!(
        "{} contact maps written to {} (CSV, NPY, PNG; summary in {})",
        rows.len(),
        args.output.display(),
        path.display()
    );
    Ok(())
}

fn write_summary(path: &Path, v: &serde_json::Value) -> Result<()> {
    qf_engine::model::checkpoint::write_atomic(path, serde_json::to_string_pretty(v)?.as_bytes())
}
