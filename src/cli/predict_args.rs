//! `qf-engine predict`: family predictions for a FASTA file, as TSV.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use qf_engine::data::batching::BatchConfig;
use qf_engine::data::tokenizer::residue_id;
use qf_engine::train::eval::{default_inference_tokens, score_rows, softmax};
use qf_engine::train::log::progress_bar;
use qf_engine::train::trained::load_trained;

use super::common::{open_device, read_sequences, DeviceArgs, WeightsArgs};

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Trained model directory (the label map is read from it).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,

    /// Sequences to classify: FASTA (labels in headers are ignored), .gz accepted.
    #[arg(long, short, value_name = "FASTA")]
    pub input: PathBuf,

    /// Output TSV (`name`, then `family_k`/`prob_k` for k = 1..top-k); stdout if absent.
    #[arg(long, short, value_name = "TSV")]
    pub output: Option<PathBuf>,

    /// Families to report per sequence.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,

    /// Token budget per batch (default: the fastest measured for the device, 16,384 on the
    /// CPU and on CUDA; see the README's "Inference batch size").
    #[arg(long, value_name = "TOKENS")]
    pub max_tokens: Option<usize>,

    /// Window in tokens; longer proteins are scored as averaged overlapping windows.
    #[arg(long, default_value_t = 1024)]
    pub max_len: usize,

    #[command(flatten)]
    pub device: DeviceArgs,

    #[command(flatten)]
    pub weights: WeightsArgs,
}

pub fn run(args: PredictArgs) -> Result<()> {
    args.weights.apply();
    let device = open_device(&args.device)?;
    let tm = load_trained(&args.model, &device)?;
    let set = read_sequences(&args.input, None, false)?;
    if set.is_empty() {
        anyhow::bail!("{}: no sequences to classify", args.input.display());
    }
    let unknown: usize =
        (0..set.len()).map(|i| set.sequence_bytes(i).iter().filter(|&&c| residue_id(c).is_none()).count()).sum();
    if unknown > 0 {
        eprintln!("note: {unknown} residues are not in the ESM-2 alphabet and were read as <unk>, as ESM does");
    }
    let rows: Vec<usize> = (0..set.len()).collect();
    let budget = args.max_tokens.unwrap_or_else(|| default_inference_tokens(&device).max(args.max_len));
    let bcfg = BatchConfig::new(budget, args.max_len, 0)?;
    let bar = progress_bar(0, "predict", !args.device.quiet);
    let scores = score_rows(&tm.model, &set, &rows, &bcfg, &device, &bar)?;
    bar.finish_and_clear();
    let k = args.top_k.clamp(1, tm.model.n_classes());
    let mut out: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let header: Vec<String> = (1..=k).flat_map(|i| [format!("family_{i}"), format!("prob_{i}")]).collect();
    writeln!(out, "name\t{}", header.join("\t"))?;
    for (i, &row) in scores.rows.iter().enumerate() {
        let p = softmax(&scores.logits[i * scores.n_classes..(i + 1) * scores.n_classes]);
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
        let cols: Vec<String> = order[..k].iter().map(|&c| format!("{}\t{:.4}", tm.model.labels[c], p[c])).collect();
        writeln!(out, "{}\t{}", set.name(row), cols.join("\t"))?;
    }
    out.flush()?;
    eprintln!(
        "{} sequences in {:.2} s ({:.1} sequences/s){}",
        set.len(),
        scores.seconds,
        set.len() as f64 / scores.seconds.max(1e-9),
        args.output.as_ref().map(|p| format!("; predictions written to {}", p.display())).unwrap_or_default()
    );
    Ok(())
}
