//! `qf-engine embed`: ESM-2 representations of the sequences of a FASTA file, streamed
//! to disk with memory bounded whatever the number of sequences (fair-esm's `extract`,
//! with its conventions: `repr_layers` numbering, `mean` over residues without `<cls>`
//! and `<eos>`, `bos`, `per_tok`, `contacts`).
//!
//! The run: a first pass validates the FASTA and counts what is to do (`input`); the file
//! is then read again in chunks of about 100 batches' worth of tokens, each chunk planned
//! into length-sorted token-budget batches (`compute`), and every protein goes to a sink
//! (`output`) as soon as its last window has run. Memory: the model, one batch's
//! activations, one chunk of sequences, and one shard's buffer (`--shard-mb`).

pub mod compute;
pub mod input;
pub mod options;
pub mod output;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;
use serde_json::json;

use crate::model::ContactModel;
use crate::tensor::Device;
use crate::train::log::{progress_bar, MetricsLog};
use crate::train::memory::peak_rss_bytes;
use compute::{embed_chunk, ChunkSettings};
use input::{scan_fasta, ChunkReader};
pub use options::{resolve_repr_layers, Format, Include, LengthPolicy};
use output::{prepare_output, Flushed, NpySink, ShardSink, Sink, LOG_FILE};

/// Batches' worth of tokens read, sorted by length and planned at once.
const BATCHES_PER_CHUNK: usize = 100;

/// One embedding run.
#[derive(Clone, Debug)]
pub struct EmbedJob {
    pub input: PathBuf,
    pub output: PathBuf,
    /// What the model is (recorded in `embed.json`; `--resume` checks it).
    pub model_source: String,
    /// Resolved layer numbers (see [`resolve_repr_layers`]).
    pub layers: Vec<usize>,
    pub include: Include,
    pub length: LengthPolicy,
    pub max_tokens: usize,
    pub format: Format,
    pub resume: bool,
    pub show_progress: bool,
}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EmbedSummary {
    pub sequences_in_file: usize,
    pub skipped_already_done: usize,
    pub embedded: usize,
    pub residues: u64,
    /// Proteins longer than the window (run as several windows) and those cut by `--truncate`.
    pub windowed: usize,
    pub truncated: usize,
    pub seconds: f64,
    pub residues_per_s: f64,
    pub peak_rss_bytes: Option<u64>,
}

impl EmbedJob {
    /// The settings a resumed run must share (`embed.json`).
    fn settings(&self, model: &ContactModel) -> serde_json::Value {
        let cfg = model.config();
        json!({
            "model": self.model_source,
            "num_layers": cfg.num_hidden_layers,
            "hidden_size": cfg.hidden_size,
            "repr_layers": self.layers,
            "include": self.include,
            "length": self.length,
            "format": self.format,
        })
    }
}

fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(d) => format!("cuda ({})", d.compute_dtype()),
    }
}

fn mb(bytes: Option<u64>) -> Option<f64> {
    bytes.map(|b| b as f64 / (1 << 20) as f64)
}

/// Run `job` with `model` on `device`.
pub fn embed_fasta(model: &ContactModel, job: &EmbedJob, device: &Device) -> Result<EmbedSummary> {
    let t0 = Instant::now();
    let existing = prepare_output(&job.output, &job.settings(model), job.resume)?;
    let done = existing.done.clone();
    let length = job.length;
    let scan = scan_fasta(&job.input, &done, |l| length.embedded_len(l))?;
    let mut log = MetricsLog::open(Some(&job.output.join(LOG_FILE)))?;
    log.event(
        "embed_start",
        json!({
            "input": job.input, "settings": job.settings(model), "max_tokens": job.max_tokens,
            "sequences": scan.sequences, "already_done": scan.already_done, "to_do": scan.to_do,
            "residues_to_do": scan.residues_to_do, "longest": scan.longest, "device": device_name(device),
        }),
    )?;
    let mut summary = EmbedSummary {
        sequences_in_file: scan.sequences,
        skipped_already_done: scan.already_done,
        ..Default::default()
    };
    let mut sink: Box<dyn Sink> = match job.format {
        Format::Safetensors { shard_bytes } => {
            Box::new(ShardSink::new(&job.output, &job.layers, shard_bytes, existing))
        }
        Format::Npy => Box::new(NpySink::new(&job.output, &job.layers, existing)),
    };
    let bar = progress_bar(scan.residues_to_do, "embed (residues)", job.show_progress);
    let settings = ChunkSettings { layers: &job.layers, include: job.include, length, max_tokens: job.max_tokens };
    let chunk_tokens = job.max_tokens.saturating_mul(BATCHES_PER_CHUNK);
    // Progress: one `progress` event per chunk, one `written` event per file.
    let mut chunks = ChunkReader::open(&job.input, &done, |l| length.embedded_len(l), chunk_tokens)?;
    let on_flush = |f: Option<Flushed>, s: &EmbedSummary, log: &mut MetricsLog| -> Result<()> {
        let Some(f) = f else { return Ok(()) };
        let secs = t0.elapsed().as_secs_f64();
        log.event(
            "written",
            json!({
                "file": f.file, "sequences": f.sequences, "bytes": f.bytes,
                "done_sequences": s.embedded, "done_residues": s.residues,
                "residues_per_s": s.residues as f64 / secs.max(1e-9), "peak_rss_mb": mb(peak_rss_bytes()),
            }),
        )
    };
    while let Some(chunk) = chunks.next_chunk()? {
        embed_chunk(model, &chunk, &settings, device, |p| {
            summary.embedded += 1;
            summary.residues += p.embedded as u64;
            summary.windowed += usize::from(p.windows > 1);
            summary.truncated += usize::from(p.embedded < p.length);
            bar.inc(p.embedded as u64);
            bar.set_message(format!("{}/{} sequences", summary.embedded, scan.to_do));
            let flushed = sink.add(p)?;
            on_flush(flushed, &summary, &mut log)
        })?;
        let secs = t0.elapsed().as_secs_f64();
        log.event(
            "progress",
            json!({
                "done_sequences": summary.embedded, "done_residues": summary.residues,
                "residues_per_s": summary.residues as f64 / secs.max(1e-9), "peak_rss_mb": mb(peak_rss_bytes()),
            }),
        )?;
    }
    let flushed = sink.flush()?;
    on_flush(flushed, &summary, &mut log)?;
    bar.finish_and_clear();
    summary.seconds = t0.elapsed().as_secs_f64();
    summary.residues_per_s = summary.residues as f64 / summary.seconds.max(1e-9);
    summary.peak_rss_bytes = peak_rss_bytes();
    log.event("embed_done", serde_json::to_value(&summary)?)?;
    Ok(summary)
}
