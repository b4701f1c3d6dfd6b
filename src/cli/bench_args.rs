//! `qf-engine bench`: training throughput and memory of a preset on real protein lengths.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use qf_engine::train::bench::{bench_training, BenchConfig};

use super::common::DeviceArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model preset (random weights; speed does not depend on them).
    #[arg(long, default_value = "esm2_t12_35M")]
    pub preset: String,

    /// Classes of the head (QuantaFold's scale: 5000).
    #[arg(long, default_value_t = 5000)]
    pub classes: usize,

    /// Pfam split directory whose training lengths to use (default: the built-in demo set).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,

    /// Token budget per step.
    #[arg(long, default_value_t = 16384)]
    pub max_tokens: usize,

    #[arg(long, default_value_t = 1024)]
    pub max_len: usize,

    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,

    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,

    /// adamw or adamw8bit.
    #[arg(long, default_value = "adamw")]
    pub optimizer: String,

    /// Also append the result as a JSON line to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: BenchArgs) -> Result<()> {
    qf_engine::train::device::set_threads(args.device.threads);
    let cfg = BenchConfig {
        preset: args.preset.clone(),
        n_classes: args.classes,
        max_tokens: args.max_tokens,
        max_len: args.max_len,
        steps: args.steps,
        warmup: args.warmup,
        data: args.data.clone(),
        device: args.device.device.parse()?,
        precision: args.device.precision.parse()?,
        optimizer: args.optimizer.parse()?,
        seed: 7,
    };
    let r = bench_training(&cfg)?;
    println!(
        "{} {} on {} ({}): {:.1} sequences/s, {:.0} tokens/s, {:.0} ms/step, {:.0} tokens/sequence, peak memory {}",
        r.preset,
        format_args!("({:.1} M parameters, {} classes)", r.parameters as f64 / 1e6, r.n_classes),
        r.device,
        r.dtype,
        r.sequences_per_s,
        r.tokens_per_s,
        r.step_ms,
        r.mean_tokens_per_sequence,
        r.peak_memory_bytes
            .map(|b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64))
            .unwrap_or_else(|| "n/a".into())
    );
    let line = serde_json::to_string(&r)?;
    println!("{line}");
    if let Some(p) = &args.json {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p)?;
        writeln!(f, "{line}")?;
    }
    Ok(())
}
