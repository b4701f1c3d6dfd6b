//! `bench --memory` ([`bench_memory`]) finds the largest token budget that fits a memory
//! limit. Method: full training steps (forward, backward, optimizer; two steps, so the
//! optimizer state exists) on batches of full-length sequences (`max_len` tokens each, the
//! worst case for attention) are measured at two budgets `T1 < T2`, each from a fresh
//! model: on the CPU the growth of the process's peak resident set (free heap returned to
//! the kernel and the peak reset through `/proc/self/clear_refs` before each run), on CUDA
//! the growth of the memory pool's high-water mark. Memory is linear in the budget for
//! sequences of a fixed length, so `peak(T) = fixed + per_token·T` through the two points
//! gives the largest budget (a multiple of `max_len`) under the limit. The planner's
//! answer (`train::memory`) is reported beside it, with measured/planned ratios at both
//! budgets. `--memory-check` then measures the fitted budget itself, refits through the
//! first point and that one (a wider span: the slope from two small budgets is the least
//! certain part), and repeats until the answer is a budget *measured* under the limit.

use anyhow::Result;
use serde::Serialize;

use super::step::{bench_model, describe_lora, device_label, train_step, PhaseMs};
use crate::autograd::Grads;
use crate::data::batch::PackedBatch;
use crate::data::rng::splitmix64;
use crate::model::esm2::Recompute;
use crate::model::lora::LoraConfig;
use crate::model::{EsmConfig, ModelInputs};
use crate::optim::{LossScaler, OptimConfig, Optimizer, OptimizerKind};
use crate::tensor::{DType, Device};
use crate::train::device::{self, DeviceChoice, Precision};
use crate::train::memory::{self, param_specs_of, peak_rss_bytes, BatchShape, LinearFit, MemoryPlan, PlanOptions};

/// `qf-engine bench --memory`: what to measure.
#[derive(Clone, Debug)]
pub struct MemoryBenchConfig {
    pub preset: String,
    pub n_classes: usize,
    /// Tokens per sequence (every sequence of the measured batches has this length).
    pub max_len: usize,
    pub device: DeviceChoice,
    pub precision: Precision,
    pub optimizer: OptimizerKind,
    pub recompute: Recompute,
    /// Train LoRA adapters (and the head) on a frozen encoder instead of every weight.
    pub lora: Option<LoraConfig>,
    /// The memory limit in bytes.
    pub limit: u64,
    /// The two measured budgets in tokens (multiples of `max_len`).
    pub budgets: (usize, usize),
    /// Also measure the fitted budget.
    pub check: bool,
    pub seed: u64,
}

/// One measured budget.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryPoint {
    pub tokens: usize,
    /// Growth of the peak over the run (model, optimizer, two steps).
    pub measured_bytes: u64,
    /// The planner's total for the same run.
    pub planned_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct MemoryBenchResult {
    pub engine: &'static str,
    pub device: String,
    pub dtype: String,
    pub preset: String,
    pub parameters: usize,
    pub trainable_parameters: usize,
    pub lora: Option<String>,
    pub n_classes: usize,
    pub optimizer: String,
    pub recompute: String,
    pub max_len: usize,
    pub limit_bytes: u64,
    pub measured: Vec<MemoryPoint>,
    pub fixed_bytes: f64,
    pub bytes_per_token: f64,
    /// Largest budget under the limit from the fit of the two measurements.
    pub fitted_budget: usize,
    /// The answer: `fitted_budget`, or with `check` the largest budget measured under the
    /// limit.
    pub largest_budget: usize,
    /// Largest budget under the limit from the planner.
    pub planned_largest_budget: usize,
    /// The measurement behind `largest_budget` (with `check`).
    pub checked: Option<MemoryPoint>,
    pub method: &'static str,
}

/// A batch of `tokens / max_len` sequences of `max_len` random residues (incl. `<cls>`,
/// `<eos>`).
fn full_length_batch(tokens: usize, max_len: usize, n_classes: usize, seed: u64) -> PackedBatch {
    let mut b = PackedBatch::new();
    let mut s = seed;
    for r in 0..(tokens / max_len).max(1) {
        let mut toks = vec![0u32];
        toks.extend((0..max_len.saturating_sub(2)).map(|_| 4 + (splitmix64(&mut s) % 20) as u32));
        toks.push(2);
        b.push(&toks, 0, Some((r % n_classes) as u32), r);
    }
    b
}

/// Start a measurement: returns the bytes in use now (after releasing what can be).
fn begin_measure(device: &Device) -> Result<u64> {
    match device {
        Device::Cpu => memory::reset_peak_rss(),
        Device::Cuda(d) => {
            d.clear_compute_copies();
            memory::reset_pool_peak(d)?;
            memory::pool_used_bytes(d)
        }
    }
}

/// Peak bytes since [`begin_measure`].
fn end_measure(device: &Device) -> Result<u64> {
    match device {
        Device::Cpu => peak_rss_bytes().ok_or_else(|| anyhow::anyhow!("cannot read the peak RSS (/proc/self/status)")),
        Device::Cuda(d) => crate::backend::cuda::device::pool_peak_bytes(d),
    }
}

/// The plan of a run of `tokens` full-length sequences.
fn plan_for(
    cfg: &MemoryBenchConfig,
    ecfg: &EsmConfig,
    specs: &[memory::ParamSpec],
    opts: &PlanOptions,
    tokens: usize,
) -> Result<MemoryPlan> {
    MemoryPlan::new(ecfg, specs, cfg.lora.as_ref(), cfg.n_classes, opts, &BatchShape::full(tokens, cfg.max_len))
}

/// Measure a fresh model's two training steps at `tokens` tokens.
fn measure(cfg: &MemoryBenchConfig, ecfg: &EsmConfig, device: &Device, tokens: usize) -> Result<u64> {
    let base = begin_measure(device)?;
    {
        let mut model = bench_model(ecfg, cfg.n_classes, cfg.lora.as_ref(), cfg.recompute, device, cfg.seed)?;
        let mut opt = Optimizer::new(OptimConfig { kind: cfg.optimizer, ..OptimConfig::default() });
        let batch = full_length_batch(tokens, cfg.max_len, cfg.n_classes, cfg.seed);
        let mut grads = Grads::new();
        let mut scaler = LossScaler::disabled();
        for step in 0..2 {
            let inp = ModelInputs::new(&batch, model.config(), device, DType::F32)?;
            train_step(&mut model, &mut opt, &mut grads, &inp, step, &mut scaler, tokens, &mut PhaseMs::default())?;
        }
    }
    Ok(end_measure(device)?.saturating_sub(base))
}

/// Refine a fitted budget by measuring it (`--memory-check`): measure the candidate, refit
/// through the first point and the new one (a wider span, so a better slope), and repeat
/// (at most 4 runs) until the candidate was measured under `usable` and the refit asks for
/// no more. Returns the largest budget measured under the limit, or `None` when none was.
fn check_budget(
    cfg: &MemoryBenchConfig,
    usable: u64,
    first: (usize, u64),
    second: (usize, u64),
    candidate: usize,
    mut measure: impl FnMut(usize) -> Result<u64>,
) -> Result<Option<(usize, u64)>> {
    let mut best = [first, second].into_iter().filter(|p| p.1 <= usable).max_by_key(|p| p.0);
    let mut t = candidate;
    for _ in 0..4 {
        if t == 0 || best.is_some_and(|b| t <= b.0) {
            break;
        }
        let bytes = measure(t)?;
        let fit = LinearFit::through(first.0, first.1, t, bytes)?;
        let next = fit.largest_budget(usable, cfg.max_len).unwrap_or(0);
        if bytes <= usable {
            best = Some((t, bytes));
            if next <= t {
                break;
            }
            t = next;
        } else {
            t = next.min(t - cfg.max_len);
        }
    }
    Ok(best)
}

/// `qf-engine bench --memory` (see the module docs for the method).
pub fn bench_memory(cfg: &MemoryBenchConfig) -> Result<MemoryBenchResult> {
    let (t1, t2) = cfg.budgets;
    if cfg.max_len < 3 || t1 < cfg.max_len || t2 <= t1 || t1 % cfg.max_len != 0 || t2 % cfg.max_len != 0 {
        anyhow::bail!(
            "--budgets {t1},{t2}: need two increasing multiples of --max-len {} (at least one sequence each)",
            cfg.max_len
        );
    }
    let (device, dtype, _) = device::open(&cfg.device, cfg.precision)?;
    let ecfg = EsmConfig::preset(&cfg.preset)?;
    let specs =
        param_specs_of(&bench_model(&ecfg, cfg.n_classes, cfg.lora.as_ref(), cfg.recompute, &Device::Cpu, 0)?.params);
    let parameters = specs.iter().map(|s| s.numel).sum();
    let trainable_parameters = specs.iter().filter(|s| s.trainable).map(|s| s.numel).sum();
    let opts = PlanOptions {
        cuda: !device.is_cpu(),
        compute: dtype,
        optimizer: cfg.optimizer,
        recompute: cfg.recompute,
        contacts: false,
    };
    // Pool-external CUDA memory is not measured; leave it out of the limit for the fit.
    let runtime = if device.is_cpu() { 0 } else { memory::CUDA_RUNTIME_BYTES };
    measure(cfg, &ecfg, &device, t1)?; // warm-up: thread pools, library buffers, kernel modules
    let mut measured = Vec::new();
    for t in [t1, t2] {
        let bytes = measure(cfg, &ecfg, &device, t)?;
        measured.push(MemoryPoint {
            tokens: t,
            measured_bytes: bytes,
            planned_bytes: plan_for(cfg, &ecfg, &specs, &opts, t)?.total() - runtime,
        });
    }
    let fit = LinearFit::through(t1, measured[0].measured_bytes, t2, measured[1].measured_bytes)?;
    let usable = cfg.limit.saturating_sub(runtime);
    let fitted_budget = fit.largest_budget(usable, cfg.max_len).ok_or_else(|| {
        anyhow::anyhow!(
            "measured peaks do not grow with the budget ({} bytes at {t1} tokens, {} at {t2}); use larger --budgets",
            measured[0].measured_bytes,
            measured[1].measured_bytes
        )
    })?;
    let planned_largest_budget = memory::largest_budget(cfg.limit, cfg.max_len, 1 << 30, |t| {
        Ok(plan_for(cfg, &ecfg, &specs, &opts, t)?.total())
    })?;
    let (largest_budget, checked) = if cfg.check {
        let first = (t1, measured[0].measured_bytes);
        let last = (t2, measured[1].measured_bytes);
        let plan = |t: usize| -> Result<u64> { Ok(plan_for(cfg, &ecfg, &specs, &opts, t)?.total() - runtime) };
        match check_budget(cfg, usable, first, last, fitted_budget, |t| measure(cfg, &ecfg, &device, t))? {
            Some((t, bytes)) => (t, Some(MemoryPoint { tokens: t, measured_bytes: bytes, planned_bytes: plan(t)? })),
            None => (0, None),
        }
    } else {
        (fitted_budget, None)
    };
    Ok(MemoryBenchResult {
        engine: "qf-engine",
        device: device_label(&device),
        dtype: dtype.name().into(),
        preset: cfg.preset.clone(),
        parameters,
        trainable_parameters,
        lora: cfg.lora.as_ref().map(describe_lora),
        n_classes: cfg.n_classes,
        optimizer: format!("{:?}", cfg.optimizer),
        recompute: cfg.recompute.to_string(),
        max_len: cfg.max_len,
        limit_bytes: cfg.limit,
        measured,
        fixed_bytes: fit.fixed,
        bytes_per_token: fit.per_token,
        fitted_budget,
        largest_budget,
        planned_largest_budget,
        checked,
        method: if device.is_cpu() {
            "peak RSS growth over fresh runs (clear_refs reset) at two budgets of full-length sequences, linear fit"
        } else {
            "CUDA pool high-water growth over fresh runs at two budgets of full-length sequences, linear fit; \
             the limit is reduced by the estimated context + cuBLAS workspace outside the pool"
        },
    })
}
