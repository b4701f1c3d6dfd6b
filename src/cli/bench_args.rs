//! `qf-engine bench`: training or inference throughput of a preset on real protein
//! lengths (with phases and model FLOP utilisation); `--memory`: the largest token budget
//! that fits a memory limit.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use qf_engine::model::lora::LoraConfig;
use qf_engine::train::bench::{bench_memory, bench_throughput, BenchConfig, BenchResult, MemoryBenchConfig};
use qf_engine::train::memory::{fmt_bytes, parse_bytes};

use super::common::{DeviceArgs, LoraArgs};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to time: `train` (forward, backward, optimizer) or `infer` (the predict path:
    /// no tape, length-sorted packing, windows for long proteins).
    #[arg(long, default_value = "train", value_name = "train|infer")]
    pub mode: String,

    /// Model preset (random weights; speed does not depend on them).
    #[arg(long, default_value = "esm2_t12_35M")]
    pub preset: String,

    /// Classes of the head (QuantaFold's scale: 5000).
    #[arg(long, default_value_t = 5000)]
    pub classes: usize,

    /// Pfam split directory whose training lengths to use (default: the built-in demo set).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,

    /// Token budget per batch (default: 16,384 for train; for infer the predict default
    /// of the device, 16,384 on the CPU and on CUDA).
    #[arg(long, value_name = "TOKENS")]
    pub max_tokens: Option<usize>,

    #[arg(long, default_value_t = 1024)]
    pub max_len: usize,

    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,

    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,

    /// Timed runs of --steps each, all over the same batches (those after the warm-up); the figure reported is their median.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,

    /// adamw or adamw8bit.
    #[arg(long, default_value = "adamw")]
    pub optimizer: String,

    /// Activation recomputation: none or layer.
    #[arg(long, default_value = "none", value_name = "none|layer")]
    pub recompute: String,

    /// Pooling of the classifier: cls (the `<cls>` vector; CPU inference then computes the
    /// last layer for the `<cls>` rows only) or mean (every token's final state, the whole
    /// encoder's work, as an embedding run or an MLM forward needs).
    #[arg(long, default_value = "cls", value_name = "cls|mean")]
    pub pool: String,

    /// Report the largest token budget whose training step fits --memory-limit, instead
    /// of throughput: peaks measured at two budgets of full-length (--max-len) sequences
    /// and fitted linearly, beside the memory planner's answer.
    #[arg(long)]
    pub memory: bool,

    /// Memory limit for --memory (12GB = 12 GiB; MB, GiB, ... accepted).
    #[arg(long, default_value = "12GB", value_name = "SIZE")]
    pub memory_limit: String,

    /// The two budgets (tokens, multiples of --max-len) that --memory measures
    /// (default: 1× and 2× --max-len).
    #[arg(long, value_name = "T1,T2")]
    pub budgets: Option<String>,

    /// With --memory: also run the fitted budget, refit and repeat until the answer is a
    /// budget measured under the limit (up to 8 more runs).
    #[arg(long)]
    pub memory_check: bool,

    /// Train LoRA adapters (shape from the --lora-* flags) and the head on a frozen
    /// encoder, instead of every weight.
    #[arg(long)]
    pub lora: bool,

    #[command(flatten)]
    pub lora_shape: LoraArgs,

    /// Also append the result as a JSON line to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    #[command(flatten)]
    pub device: DeviceArgs,
}

impl BenchArgs {
    fn lora_config(&self) -> Result<Option<LoraConfig>> {
        self.lora.then(|| self.lora_shape.config()).transpose()
    }
}

/// ` with LoRA (…)` when adapters are trained.
fn lora_note(lora: &Option<String>, trainable: usize) -> String {
    match lora {
        Some(l) => format!(", LoRA {l} ({:.2} M trainable)", trainable as f64 / 1e6),
        None => String::new(),
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    super::common::apply_device_settings(&args.device)?;
    if args.memory {
        return run_memory(&args);
    }
    let cfg = BenchConfig {
        mode: args.mode.parse()?,
        preset: args.preset.clone(),
        n_classes: args.classes,
        max_tokens: args.max_tokens,
        max_len: args.max_len,
        steps: args.steps,
        warmup: args.warmup,
        repeats: args.repeats,
        data: args.data.clone(),
        device: args.device.device.parse()?,
        precision: args.device.precision.parse()?,
        optimizer: args.optimizer.parse()?,
        recompute: args.recompute.parse()?,
        pool: args.pool.parse()?,
        lora: args.lora_config()?,
        seed: 7,
    };
    let r = bench_throughput(&cfg)?;
    print_table(&r);
    emit_json(&serde_json::to_string(&r)?, args.json.as_ref())
}

/// The human-readable report of a throughput run.
fn print_table(r: &BenchResult) {
    let mode = match r.mode {
        qf_engine::train::bench::BenchMode::Train => "training",
        qf_engine::train::bench::BenchMode::Infer => "inference",
    };
    println!(
        "{} {} on {} ({}), {mode}: {:.1} sequences/s, {:.0} tokens/s, {:.0} ms/step, {:.0} tokens/sequence, peak memory {}",
        r.preset,
        format_args!(
            "({:.1} M parameters, {} classes, {} pooling{})",
            r.parameters as f64 / 1e6,
            r.n_classes,
            r.pool,
            lora_note(&r.lora, r.trainable_parameters)
        ),
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
    let runs: Vec<String> = r.runs_sequences_per_s.iter().map(|x| format!("{x:.1}")).collect();
    println!(
        "  {:<26} {} (median of {} runs of {} steps, warm-up excluded)",
        "runs, sequences/s",
        runs.join(", "),
        r.repeats,
        r.steps
    );
    let p = &r.phases_ms;
    println!(
        "  {:<26} data {:.1} ms, forward {:.1} ms, backward {:.1} ms, optimizer {:.1} ms",
        "per step", p.data, p.forward, p.backward, p.optimizer
    );
    println!(
        "  {:<26} {:.1} GFLOP/s = {:.1}% of the GEMM rate measured now ({:.1} GFLOP/s, {})",
        "model FLOPs (MFU)",
        r.model_flops_per_s / 1e9,
        100.0 * r.mfu,
        r.gemm_peak_flops_per_s / 1e9,
        r.gemm_peak_shape
    );
}

/// Print a JSON line and append it to `--json` when given.
fn emit_json(line: &str, file: Option<&PathBuf>) -> Result<()> {
    println!("{line}");
    if let Some(p) = file {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p)?;
        writeln!(f, "{line}")?;
    }
    Ok(())
}

/// Parse `T1,T2`.
fn parse_budgets(s: &str) -> Result<(usize, usize)> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    match parts[..] {
        [a, b] => Ok((a.parse()?, b.parse()?)),
        _ => anyhow::bail!("--budgets takes two token counts, e.g. 1024,2048; got `{s}`"),
    }
}

fn run_memory(args: &BenchArgs) -> Result<()> {
    let budgets = match &args.budgets {
        Some(b) => parse_budgets(b)?,
        None => (args.max_len, 2 * args.max_len),
    };
    let cfg = MemoryBenchConfig {
        preset: args.preset.clone(),
        n_classes: args.classes,
        max_len: args.max_len,
        device: args.device.device.parse()?,
        precision: args.device.precision.parse()?,
        optimizer: args.optimizer.parse()?,
        recompute: args.recompute.parse()?,
        lora: args.lora_config()?,
        limit: parse_bytes(&args.memory_limit)?,
        budgets,
        check: args.memory_check,
        seed: 7,
    };
    let r = bench_memory(&cfg)?;
    println!(
        "{} ({:.1} M parameters, {} classes{}) on {} ({}), {}, recompute {}, sequences of {} tokens:",
        r.preset,
        r.parameters as f64 / 1e6,
        r.n_classes,
        lora_note(&r.lora, r.trainable_parameters),
        r.device,
        r.dtype,
        r.optimizer,
        r.recompute,
        r.max_len
    );
    for p in &r.measured {
        println!(
            "  {:>7} tokens: measured peak {} (planned {}, measured/planned {:.2})",
            p.tokens,
            fmt_bytes(p.measured_bytes),
            fmt_bytes(p.planned_bytes),
            p.measured_bytes as f64 / p.planned_bytes.max(1) as f64
        );
    }
    println!(
        "  fit: {} + {} per 1k tokens -> {} tokens fit {}; planner: {} tokens",
        fmt_bytes(r.fixed_bytes.max(0.0) as u64),
        fmt_bytes((r.bytes_per_token * 1000.0).max(0.0) as u64),
        r.fitted_budget,
        fmt_bytes(r.limit_bytes),
        r.planned_largest_budget
    );
    if let Some(c) = &r.checked {
        println!(
            "  checked: {} tokens measured at {} (planned {})",
            c.tokens,
            fmt_bytes(c.measured_bytes),
            fmt_bytes(c.planned_bytes)
        );
    }
    println!(
        "largest token budget under {}: {} tokens ({} sequences of {}){}",
        fmt_bytes(r.limit_bytes),
        r.largest_budget,
        r.largest_budget / r.max_len,
        r.max_len,
        if r.checked.is_some() { ", measured" } else { ", from the fit (--memory-check measures it)" }
    );
    emit_json(&serde_json::to_string(&r)?, args.json.as_ref())
}
