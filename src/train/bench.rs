//! Training throughput benchmark (`qf-engine bench`): full training steps (forward,
//! backward, optimizer) of an ESM-2 preset with a many-class head on real protein
//! lengths (a Pfam split, or the built-in demo set), after warm-up steps; reports
//! sequences/s, tokens/s and peak memory.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::device::{self, DeviceChoice, Precision};
use crate::autograd::{Grads, Tape};
use crate::backend::cuda::{self, nvtx};
use crate::data::batching::{pack, training_plan, BatchConfig};
use crate::data::dataset::LabelledSet;
use crate::data::pfam::read_pfam_split;
use crate::model::{EsmConfig, HeadKind, ModelInputs, SequenceClassifier};
use crate::optim::{LossScaler, OptimConfig, Optimizer, OptimizerKind};
use crate::tensor::{DType, Device};

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub preset: String,
    pub n_classes: usize,
    pub max_tokens: usize,
    pub max_len: usize,
    pub steps: usize,
    pub warmup: usize,
    /// Pfam split directory for real lengths; the demo set when absent.
    pub data: Option<PathBuf>,
    pub device: DeviceChoice,
    pub precision: Precision,
    pub optimizer: OptimizerKind,
    pub seed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub engine: &'static str,
    pub device: String,
    pub dtype: String,
    pub preset: String,
    pub parameters: usize,
    pub n_classes: usize,
    pub max_tokens: usize,
    pub steps: usize,
    pub sequences_per_s: f64,
    pub tokens_per_s: f64,
    pub step_ms: f64,
    pub mean_tokens_per_sequence: f64,
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

/// Peak resident set size of this process (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn bench_training(cfg: &BenchConfig) -> Result<BenchResult> {
    let (device, dtype, _) = device::open(&cfg.device, cfg.precision)?;
    let set = sequences(cfg)?;
    let ecfg = EsmConfig::preset(&cfg.preset)?;
    let labels: Vec<String> = (0..cfg.n_classes).map(|i| format!("family_{i}")).collect();
    let mut model = SequenceClassifier::new_random(&ecfg, labels, HeadKind::Classification, 0.0, cfg.seed)?;
    model.params.to_device(&device)?;
    let (params, _) = model.params.counts();
    let rows: Vec<usize> = (0..set.len()).collect();
    let bcfg = BatchConfig::new(cfg.max_tokens, cfg.max_len, cfg.seed)?;
    let plan = training_plan(&rows, &set.token_lengths(), &bcfg, 0)?;
    let mut opt = Optimizer::new(OptimConfig { kind: cfg.optimizer, ..OptimConfig::default() });
    let n_classes = cfg.n_classes as u32;
    let mut grads = Grads::new();
    // fp16 trains with dynamic loss scaling, as `train` does.
    let mut scaler = if dtype == DType::F16 { LossScaler::new() } else { LossScaler::disabled() };
    let (mut seqs, mut toks) = (0u64, 0u64);
    let mut t0 = Instant::now();
    for step in 0..cfg.warmup + cfg.steps {
        if step == cfg.warmup {
            t0 = Instant::now();
            seqs = 0;
            toks = 0;
        }
        let batch = &plan[step % plan.len()];
        let packed = pack(&batch.items, &set, |r| Some(r as u32 % n_classes))?;
        let _step = nvtx::range_with(|| format!("step {step}"));
        let oom = |e: anyhow::Error| cuda::device::with_budget_hint(e, cfg.max_tokens);
        let inp = ModelInputs::new(&packed, model.config(), &device, DType::F32).map_err(oom)?;
        let tape = Tape::with_seed(step as u64);
        let (_, loss) = {
            let _r = nvtx::range("forward");
            model.forward_loss(&tape, &inp, None).map_err(oom)?
        };
        {
            let _r = nvtx::range("backward");
            tape.backward_scaled(&loss, scaler.scale as f32, &mut grads).map_err(oom)?;
        }
        {
            let _r = nvtx::optimizer("optimizer");
            let stats = opt.step(&mut model.params, &grads, 1e-5, 1.0 / scaler.scale).map_err(oom)?;
            scaler.update(stats.skipped);
        }
        grads.clear();
        loss.scalar_f32().map_err(oom)?; // waits for the GPU
        seqs += packed.n_seqs() as u64;
        toks += packed.n_tokens() as u64;
    }
    let secs = t0.elapsed().as_secs_f64().max(1e-9);
    let peak = match &device {
        Device::Cpu => peak_rss_bytes(),
        Device::Cuda(d) => crate::backend::cuda::device::pool_peak_bytes(d).ok(),
    };
    Ok(BenchResult {
        engine: "qf-engine",
        device: match &device {
            Device::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
            Device::Cuda(d) => d.name().to_string(),
        },
        dtype: dtype.name().into(),
        preset: cfg.preset.clone(),
        parameters: params,
        n_classes: cfg.n_classes,
        max_tokens: cfg.max_tokens,
        steps: cfg.steps,
        sequences_per_s: seqs as f64 / secs,
        tokens_per_s: toks as f64 / secs,
        step_ms: 1000.0 * secs / cfg.steps.max(1) as f64,
        mean_tokens_per_sequence: toks as f64 / seqs.max(1) as f64,
        peak_memory_bytes: peak,
        optimizer_state_bytes: opt.state_bytes(),
        skipped_steps: scaler.skipped,
    })
}
