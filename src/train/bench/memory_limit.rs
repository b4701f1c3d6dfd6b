//! `bench --memory` ([`bench_memory`]) finds the largest token budget that fits a memory
//! limit. Method: full training steps (forward, backward, optimizer; two steps, so the
//! optimizer state exists) on batches of full-length sequences (`max_len` tokens each, the
//! worst case for attention) are measured at two budgets `T1 < T2`, each from a fresh
//! model: on the CPU the growth of the process's peak resident set (free heap returned to
//! the kernel and the peak reset through `/proc/self/clear_refs` before each run) or of
//! the counted live heap, whichever is larger (see [`end_measure`]), on CUDA
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

/// Where a measurement started: the bytes in use then.
#[derive(Clone, Copy)]
enum Mark {
    /// Resident set and live heap bytes (the heap is 0 without the counting allocator).
    Cpu {
        rss: u64,
        heap: u64,
    },
    Cuda {
        pool: u64,
    },
}

/// Start a measurement (after releasing what can be released).
fn begin_measure(device: &Device) -> Result<Mark> {
    match device {
        Device::Cpu => {
            let rss = memory::reset_peak_rss()?;
            memory::reset_heap_peak();
            Ok(Mark::Cpu { rss, heap: memory::heap_live_bytes() as u64 })
        }
        Device::Cuda(d) => {
            d.clear_compute_copies();
            memory::reset_pool_peak(d)?;
            Ok(Mark::Cuda { pool: memory::pool_used_bytes(d)? })
        }
    }
}

/// Growth of the peak since `mark`. On the CPU: the larger of the peak resident set's
/// growth and, where the binary counts its heap (`CountingAllocator`, installed by the
/// CLI), the live heap's high-water growth. The resident set alone can miss a peak: the
/// kernel's RSS counters are synchronised lazily per thread, and a peak reached and freed
/// inside a worker thread's malloc arena was seen to leave no trace in `VmHWM` (CI measured
/// 17.3 MB at 512 tokens after 17.7 MB at 256). The counted heap misses nothing allocated
/// through Rust, and the resident set still adds fragmentation and pages outside the heap.
fn end_measure(device: &Device, mark: Mark) -> Result<u64> {
    match (device, mark) {
        (Device::Cpu, Mark::Cpu { rss, heap }) => {
            let peak_rss =
                peak_rss_bytes().ok_or_else(|| anyhow::anyhow!("cannot read the peak RSS (/proc/self/status)"))?;
            let heap_growth = (memory::heap_peak_bytes() as u64).saturating_sub(heap);
            Ok(peak_rss.saturating_sub(rss).max(heap_growth))
        }
        (Device::Cuda(d), Mark::Cuda { pool }) => {
            Ok(crate::backend::cuda::device::pool_peak_bytes(d)?.saturating_sub(pool))
        }
        _ => anyhow::bail!("a measurement must end on the device it began on"),
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
    let mark = begin_measure(device)?;
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
    end_measure(device, mark)
}

/// Refine a fitted budget by measuring it (`--memory-check`).
///
/// A bracketed search: `fits` is the largest budget measured under `usable`, `over` the
/// smallest measured above it. Each round refits a line through the first point and the
/// latest measurement (a wider span, so a better slope), asks it for the largest budget
/// under `usable`, clamps that strictly inside the bracket and measures it. It stops when
/// the bracket is one sequence wide, the refit asks for nothing new, or after
/// `MAX_CHECKS` runs. The clamp matters when the first fit was optimistic: the refits then
/// approach the limit from above, and without it noisy peaks could keep every candidate
/// over the limit. Returns the largest budget measured under `usable`, or `None`.
fn check_budget(
    step: usize,
    usable: u64,
    first: (usize, u64),
    second: (usize, u64),
    candidate: usize,
    mut measure: impl FnMut(usize) -> Result<u64>,
) -> Result<Option<(usize, u64)>> {
    const MAX_CHECKS: usize = 8;
    let mut fits = [first, second].into_iter().filter(|p| p.1 <= usable).max_by_key(|p| p.0);
    let mut over: Option<usize> = [first, second].into_iter().filter(|p| p.1 > usable).map(|p| p.0).min();
    let mut t = candidate;
    for _ in 0..MAX_CHECKS {
        let low = fits.map_or(0, |f| f.0);
        if let Some(hi) = over {
            t = t.min(hi.saturating_sub(step));
        }
        if t == 0 || t <= low {
            break;
        }
        let bytes = measure(t)?;
        if bytes <= usable {
            fits = Some((t, bytes));
        } else {
            over = Some(over.map_or(t, |o| o.min(t)));
        }
        let refit = LinearFit::through(first.0, first.1, t, bytes)?;
        let next = refit.largest_budget(usable, step).unwrap_or(0);
        // Bisect when the refit points outside the bracket (a flat or noisy slope).
        let (lo, hi) = (fits.map_or(0, |f| f.0), over.unwrap_or(usize::MAX));
        t = if next > lo && next < hi {
            next
        } else if hi != usize::MAX && hi - lo > step {
            lo + ((hi - lo) / 2 / step).max(1) * step
        } else {
            break;
        };
    }
    Ok(fits)
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
        match check_budget(cfg.max_len, usable, first, last, fitted_budget, |t| measure(cfg, &ecfg, &device, t))? {
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
            "peak growth over fresh runs at two budgets of full-length sequences, linear fit; the growth is the larger \
             of the peak RSS (clear_refs reset) and the counted live heap's high-water mark"
        } else {
            "CUDA pool high-water growth over fresh runs at two budgets of full-length sequences, linear fit; \
             the limit is reduced by the estimated context + cuBLAS workspace outside the pool"
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = 64 << 20;
    const STEP: usize = 128;

    /// A peak that grows 13,860 bytes per token over 8 MB, with ±3 % deterministic jitter,
    /// rounded up to 2 MiB pages (transparent huge pages make RSS this coarse).
    fn noisy_peak(t: usize) -> u64 {
        let jitter = ((t as u64).wrapping_mul(2_654_435_761) % 2001) as f64 / 1000.0 - 1.0;
        let bytes = ((8e6 + 13_860.0 * t as f64) * (1.0 + 0.03 * jitter)) as u64;
        bytes.div_ceil(2 << 20) * (2 << 20)
    }

    fn true_largest() -> usize {
        (1..1000).map(|k| k * STEP).take_while(|&t| noisy_peak(t) <= LIMIT).last().unwrap()
    }

    fn search(candidate: usize) -> (Option<(usize, u64)>, usize) {
        let mut runs = 0;
        let (a, b) = ((256, 8_970_240), (512, 11_952_128)); // CI's noisy first points
        let r = check_budget(STEP, LIMIT, a, b, candidate, |t| {
            runs += 1;
            Ok(noisy_peak(t))
        })
        .unwrap();
        (r, runs)
    }

    #[test]
    fn an_optimistic_first_fit_is_walked_down_to_a_budget_that_fits() {
        // The first fit (11,648 bytes/token) asked for 5,120 tokens, which measured over.
        let (best, runs) = search(5120);
        let (t, bytes) = best.unwrap();
        assert!(bytes <= LIMIT && noisy_peak(t) == bytes);
        assert!(t + 4 * STEP >= true_largest(), "found {t}, the largest that fits is {}", true_largest());
        assert!(runs <= 8);
    }

    #[test]
    fn a_pessimistic_first_fit_is_walked_up() {
        let (best, _) = search(1024);
        let (t, bytes) = best.unwrap();
        assert!(bytes <= LIMIT);
        assert!(t + 4 * STEP >= true_largest(), "found {t}, the largest that fits is {}", true_largest());
    }

    #[test]
    fn nothing_is_measured_when_the_candidate_is_below_what_already_fits() {
        let (best, runs) = search(384);
        assert_eq!((best.unwrap().0, runs), (512, 0));
    }
}
