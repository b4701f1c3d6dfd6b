//! The throughput benchmark (`qf-engine bench`): timed training steps or inference as
//! `predict` runs it, with the median run's phases, model FLOP utilisation against the
//! GEMM rate measured in the same run, and peak memory.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::step::{bench_model, describe_lora, device_label, ms_since, sync, train_step, PhaseMs};
use crate::autograd::{Grads, Tape};
use crate::backend::cuda;
use crate::data::batch::PackedBatch;
use crate::data::batching::{eval_plan_by_length, pack, training_plan, BatchConfig};
use crate::data::dataset::LabelledSet;
use crate::data::pfam::read_pfam_split;
use crate::model::esm2::Recompute;
use crate::model::lora::LoraConfig;
use crate::model::{EsmConfig, ModelInputs, Pooling, SequenceClassifier};
use crate::optim::{LossScaler, OptimConfig, Optimizer, OptimizerKind};
use crate::tensor::{DType, Device, Tensor};
use crate::train::device::{self, DeviceChoice, Precision};
use crate::train::eval::default_inference_tokens;
use crate::train::memory::peak_rss_bytes;

/// What `bench` times: training steps, or inference as `predict` runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchMode {
    /// Forward, backward and optimizer step on training batches.
    Train,
    /// The predict path: no tape, length-sorted packing, windows for long proteins.
    Infer,
}

impl std::str::FromStr for BenchMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(BenchMode::Train),
            "infer" | "inference" => Ok(BenchMode::Infer),
            other => anyhow::bail!("unknown bench mode `{other}`: use train or infer"),
        }
    }
}

/// Training batch budget of `bench` when none is given (as `train`'s default).
pub const TRAIN_TOKENS: usize = 16384;

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub mode: BenchMode,
    pub preset: String,
    pub n_classes: usize,
    /// Token budget per batch; `None`: 16,384 for training, the device's inference
    /// default (`eval::default_inference_tokens`) for inference.
    pub max_tokens: Option<usize>,
    pub max_len: usize,
    /// Timed steps (batches) per run.
    pub steps: usize,
    pub warmup: usize,
    /// Timed runs; the reported figure is their median.
    pub repeats: usize,
    /// Pfam split directory for real lengths; the demo set when absent.
    pub data: Option<PathBuf>,
    pub device: DeviceChoice,
    pub precision: Precision,
    pub optimizer: OptimizerKind,
    pub recompute: Recompute,
    /// The classifier's pooling.
    pub pool: Pooling,
    /// Train LoRA adapters (and the head) on a frozen encoder instead of every weight.
    pub lora: Option<LoraConfig>,
    pub seed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub engine: &'static str,
    pub mode: BenchMode,
    pub device: String,
    pub dtype: String,
    pub preset: String,
    pub parameters: usize,
    pub trainable_parameters: usize,
    /// `r=8 alpha=8 dropout=0.05 on query,value` when LoRA adapters are trained.
    pub lora: Option<String>,
    /// The classifier's pooling (`cls` or `mean`).
    pub pool: String,
    pub n_classes: usize,
    pub max_tokens: usize,
    pub steps: usize,
    pub repeats: usize,
    /// Median over the runs.
    pub sequences_per_s: f64,
    pub tokens_per_s: f64,
    /// Sequences/s of every run.
    pub runs_sequences_per_s: Vec<f64>,
    pub step_ms: f64,
    pub phases_ms: PhaseMs,
    pub mean_tokens_per_sequence: f64,
    /// Matmul FLOPs of the model per second at the median run: 2·N per token forward (N
    /// = weights of the encoder's linear layers), 2·N more for activation gradients and
    /// 2·N_trainable for weight gradients in training, the head per sequence, and
    /// attention's 4·L²·hidden per layer and sequence forward (×3 in training).
    pub model_flops_per_s: f64,
    /// The device's dense GEMM rate measured in the same run (see `gemm_peak`).
    pub gemm_peak_flops_per_s: f64,
    pub gemm_peak_shape: String,
    /// model_flops_per_s / gemm_peak_flops_per_s.
    pub mfu: f64,
    /// Peak device memory (CUDA memory pool) or peak resident memory of the process (CPU).
    pub peak_memory_bytes: Option<u64>,
    pub optimizer_state_bytes: usize,
    /// Steps skipped by fp16 loss scaling (gradient overflow), warm-up included.
    pub skipped_steps: u64,
}

fn sequences(cfg: &BenchConfig) -> Result<LabelledSet> {
    match &cfg.data {
        Some(d) => read_pfam_split(d, "train"),
        None => Ok(crate::data::demo::demo_sets()?.0),
    }
}

/// What one timed run did.
#[derive(Default)]
struct RunTotals {
    seqs: u64,
    toks: u64,
    /// Attention FLOPs of the forward pass (Σ over sequences of 4·L²·hidden·layers).
    attention_forward_flops: f64,
    seconds: f64,
    phases: PhaseMs,
}

impl RunTotals {
    fn add_batch(&mut self, packed: &PackedBatch, ecfg: &EsmConfig) {
        self.seqs += packed.n_seqs() as u64;
        self.toks += packed.n_tokens() as u64;
        let per_l2 = 4.0 * ecfg.hidden_size as f64 * ecfg.num_hidden_layers as f64;
        self.attention_forward_flops +=
            packed.cu_seqlens.windows(2).map(|w| per_l2 * ((w[1] - w[0]) as f64).powi(2)).sum::<f64>();
    }
}

/// Weights of the encoder's linear layers (all, and the trainable ones) and of the head:
/// the N of the matmul FLOP count.
fn matmul_weights(model: &SequenceClassifier) -> (f64, f64, f64) {
    let (mut enc, mut enc_trainable, mut head) = (0.0, 0.0, 0.0);
    for (name, t) in model.params.iter() {
        if t.shape().len() != 2 || name.contains("word_embeddings") || name.contains("contact_head") {
            continue;
        }
        let n = t.numel() as f64;
        if name.starts_with("classifier") {
            head += n;
        } else {
            enc += n;
            if t.requires_grad() {
                enc_trainable += n;
            }
        }
    }
    (enc, enc_trainable, head)
}

/// Matmul FLOPs of a run (see [`BenchResult::model_flops_per_s`]).
fn model_flops(mode: BenchMode, model: &SequenceClassifier, run: &RunTotals) -> f64 {
    let (enc, enc_trainable, head) = matmul_weights(model);
    let (toks, seqs) = (run.toks as f64, run.seqs as f64);
    match mode {
        BenchMode::Infer => 2.0 * enc * toks + 2.0 * head * seqs + run.attention_forward_flops,
        BenchMode::Train => {
            (4.0 * enc + 2.0 * enc_trainable) * toks + 6.0 * head * seqs + 3.0 * run.attention_forward_flops
        }
    }
}

/// The device's dense GEMM rate in the compute dtype, measured now: square products of
/// 1,024 on the CPU (f32, all threads) and 4,096 on a GPU (cuBLAS, fp32 accumulation), 64
/// on the CPU emulation of CUDA. Best of several timed repetitions after one warm-up.
pub fn gemm_peak(device: &Device, dtype: DType) -> Result<(f64, String)> {
    let n = match device {
        Device::Cpu => 1024,
        Device::Cuda(d) if d.name().contains("emulation") => 64,
        Device::Cuda(_) => 4096,
    };
    let dtype = if matches!(device, Device::Cpu) { DType::F32 } else { dtype };
    let label = if matches!(device, Device::Cpu) && crate::ops::linear::cpu_bf16() != crate::ops::linear::CpuBf16::Off {
        "bf16"
    } else {
        dtype.name()
    };
    let values: Vec<f32> = (0..n * n).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect();
    let a = Tensor::from_f32(values.clone(), &[n, n], dtype, device)?;
    let b = Tensor::from_f32(values, &[n, n], dtype, device)?;
    let tape = Tape::inference();
    let once = || -> Result<f64> {
        let t = Instant::now();
        let c = crate::ops::linear(&tape, &a, &b, None)?;
        sync(device)?;
        drop(c);
        Ok(t.elapsed().as_secs_f64())
    };
    once()?;
    let mut best = f64::INFINITY;
    let started = Instant::now();
    for _ in 0..20 {
        best = best.min(once()?);
        if started.elapsed().as_secs_f64() > 0.5 {
            break;
        }
    }
    Ok((2.0 * (n * n * n) as f64 / best.max(1e-12), format!("{label} {n}x{n}x{n}")))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

/// The inference plan runs from the shortest sequences to the longest; a benchmark that
/// timed its first batches would see only the shortest proteins. Shuffling the batches
/// (each still of similar lengths) makes any run of them a sample of every length.
fn batches_in_random_order<T>(mut plan: Vec<T>, seed: u64) -> Vec<T> {
    crate::data::rng::Rng::new(seed).shuffle(&mut plan);
    plan
}

/// `qf-engine bench`: `repeats` timed runs of `steps` batches (after `warmup` untimed
/// ones) in the chosen mode; the median run is reported with its phases and MFU.
pub fn bench_throughput(cfg: &BenchConfig) -> Result<BenchResult> {
    let (device, dtype, _) = match cfg.mode {
        BenchMode::Train => device::open(&cfg.device, cfg.precision)?,
        BenchMode::Infer => device::open_for_inference(&cfg.device, cfg.precision)?,
    };
    let set = sequences(cfg)?;
    let ecfg = EsmConfig::preset(&cfg.preset)?;
    let mut model = bench_model(&ecfg, cfg.n_classes, cfg.lora.as_ref(), cfg.recompute, &device, cfg.seed)?;
    model.pool = cfg.pool;
    let (params, trainable) = model.params.counts();
    let rows: Vec<usize> = (0..set.len()).collect();
    let max_tokens = cfg.max_tokens.unwrap_or_else(|| match cfg.mode {
        BenchMode::Train => TRAIN_TOKENS,
        BenchMode::Infer => default_inference_tokens(&device).max(cfg.max_len),
    });
    let bcfg = BatchConfig::new(max_tokens, cfg.max_len, cfg.seed)?;
    let plan = match cfg.mode {
        BenchMode::Train => training_plan(&rows, &set.token_lengths(), &bcfg, 0)?,
        BenchMode::Infer => batches_in_random_order(eval_plan_by_length(&rows, &set.token_lengths(), &bcfg)?, cfg.seed),
    };
    if plan.is_empty() {
        anyhow::bail!("no batches to time: the benchmark data has no sequences");
    }
    let mut opt = Optimizer::new(OptimConfig { kind: cfg.optimizer, ..OptimConfig::default() });
    let n_classes = cfg.n_classes as u32;
    let mut grads = Grads::new();
    // fp16 trains with dynamic loss scaling, as `train` does.
    let mut scaler = if dtype == DType::F16 { LossScaler::new() } else { LossScaler::disabled() };
    let mut step = 0usize;
    // Batch `i` of the plan (cycling); `step` counts the optimizer steps taken.
    let mut one_batch = |i: usize, totals: &mut RunTotals| -> Result<()> {
        let batch = &plan[i % plan.len()];
        step += 1;
        let t = Instant::now();
        let labels = |r: usize| (cfg.mode == BenchMode::Train).then_some(r as u32 % n_classes);
        let packed = pack(&batch.items, &set, labels)?;
        let oom = |e: anyhow::Error| cuda::device::with_budget_hint(e, max_tokens);
        let inp = ModelInputs::new(&packed, model.config(), &device, DType::F32).map_err(oom)?;
        sync(&device)?;
        totals.phases.data += ms_since(t);
        match cfg.mode {
            BenchMode::Train => train_step(
                &mut model,
                &mut opt,
                &mut grads,
                &inp,
                step as u64,
                &mut scaler,
                max_tokens,
                &mut totals.phases,
            )?,
            BenchMode::Infer => {
                let t = Instant::now();
                let logits = model.forward(&Tape::inference(), &inp).map_err(oom)?;
                logits.to_vec_f32().map_err(oom)?; // what predict reads back; waits for the GPU
                totals.phases.forward += ms_since(t);
            }
        }
        totals.add_batch(&packed, &ecfg);
        Ok(())
    };
    let mut warm = RunTotals::default();
    for i in 0..cfg.warmup {
        one_batch(i, &mut warm)?;
    }
    // Every run times the same batches (those after the warm-up), so the runs differ only
    // in the machine's noise and their median is the figure (different batches would mix
    // in the spread of protein lengths).
    let mut runs = Vec::with_capacity(cfg.repeats.max(1));
    for _ in 0..cfg.repeats.max(1) {
        let mut totals = RunTotals::default();
        let t0 = Instant::now();
        for i in 0..cfg.steps.max(1) {
            one_batch(cfg.warmup + i, &mut totals)?;
        }
        totals.seconds = t0.elapsed().as_secs_f64().max(1e-9);
        runs.push(totals);
    }
    let rates: Vec<f64> = runs.iter().map(|r| r.seqs as f64 / r.seconds).collect();
    let mid = median(&rates);
    let run = runs
        .iter()
        .min_by(|a, b| (a.seqs as f64 / a.seconds - mid).abs().total_cmp(&(b.seqs as f64 / b.seconds - mid).abs()))
        .expect("one run");
    let steps = cfg.steps.max(1) as f64;
    let flops = model_flops(cfg.mode, &model, run) / run.seconds;
    let (peak_flops, peak_shape) = gemm_peak(&device, dtype)?;
    let peak = match &device {
        Device::Cpu => peak_rss_bytes(),
        Device::Cuda(d) => crate::backend::cuda::device::pool_peak_bytes(d).ok(),
    };
    let p = run.phases;
    Ok(BenchResult {
        engine: "qf-engine",
        mode: cfg.mode,
        device: device_label(&device),
        dtype: crate::train::device::compute_label(&device, dtype),
        preset: cfg.preset.clone(),
        parameters: params,
        trainable_parameters: trainable,
        lora: cfg.lora.as_ref().map(describe_lora),
        pool: cfg.pool.to_string(),
        n_classes: cfg.n_classes,
        max_tokens,
        steps: cfg.steps.max(1),
        repeats: runs.len(),
        sequences_per_s: run.seqs as f64 / run.seconds,
        tokens_per_s: run.toks as f64 / run.seconds,
        runs_sequences_per_s: rates,
        step_ms: 1000.0 * run.seconds / steps,
        phases_ms: PhaseMs {
            data: p.data / steps,
            forward: p.forward / steps,
            backward: p.backward / steps,
            optimizer: p.optimizer / steps,
        },
        mean_tokens_per_sequence: run.toks as f64 / run.seqs.max(1) as f64,
        model_flops_per_s: flops,
        gemm_peak_flops_per_s: peak_flops,
        gemm_peak_shape: peak_shape,
        mfu: flops / peak_flops.max(1e-9),
        peak_memory_bytes: peak,
        optimizer_state_bytes: opt.state_bytes(),
        skipped_steps: scaler.skipped,
    })
}
