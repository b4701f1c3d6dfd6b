//! `qf-engine train` for family classification.
//!
//! Each epoch the training rows are shuffled, bucketed by length and packed into batches
//! of at most `max_tokens` tokens (no padding); proteins longer than the window are
//! cropped at a random place. Gradients of `grad_accum` micro-batches are summed, then
//! clipped by global norm and applied by AdamW (fp32 or 8-bit) with linear warm-up and
//! decay. fp16 runs use dynamic loss scaling. After every epoch the evaluation split is
//! scored on full-length proteins; checkpoints (model + optimizer state + position in
//! the data) are written atomically, and `resume` continues a run exactly where its last
//! checkpoint left it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::data::{self, ClassificationData, DataSource};
use super::device::{self, DeviceChoice, Precision};
use super::eval::{evaluate, EvalResult};
use super::log::{progress_bar, MetricsLog};
use super::memory::{fmt_bytes, param_specs_of, peak_rss_bytes, BatchShape, MemoryPlan, PlanOptions};
use super::state::{latest_checkpoint, load_state, save_checkpoint, TrainState};
use crate::autograd::{Grads, Tape};
use crate::backend::cuda::{self, nvtx};
use crate::data::batching::{pack, training_plan, BatchConfig};
use crate::data::class_weights::ClassWeighting;
use crate::data::rng::splitmix64;
use crate::data::stratify::StratifySpec;
use crate::model::esm2::Recompute;
use crate::model::{EsmConfig, HeadKind, ModelInputs, SequenceClassifier};
use crate::optim::{LinearSchedule, LossScaler, OptimConfig, Optimizer};
use crate::tensor::{DType, Device, Tensor};

/// The model to start from.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSource {
    /// Random initialisation of a preset (`esm2_t6_8M`, …).
    Preset(String),
    /// A Hugging Face checkpoint directory.
    Pretrained(PathBuf),
}

/// Warm-up length: a number of steps or a fraction of all steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Warmup {
    Steps(u64),
    Fraction(f64),
}

impl std::str::FromStr for Warmup {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.contains('.') {
            let f: f64 = s.parse().with_context(|| format!("warm-up `{s}` is not a number"))?;
            if !(0.0..1.0).contains(&f) {
                bail!("a warm-up fraction must be in [0, 1), got {f}");
            }
            Ok(Warmup::Fraction(f))
        } else {
            Ok(Warmup::Steps(s.parse().with_context(|| format!("warm-up `{s}` is neither steps nor a fraction"))?))
        }
    }
}

/// Everything a classification run needs.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub data: DataSource,
    pub model: ModelSource,
    pub head: HeadKind,
    pub head_dropout: f64,
    pub output: PathBuf,
    pub epochs: u64,
    /// Train for this many optimizer steps in all (the schedule's horizon) instead of
    /// `epochs` full epochs.
    pub max_steps: Option<u64>,
    /// Stop after this many optimizer steps, saving a checkpoint, as if the run were
    /// interrupted there (`resume` continues it).
    pub stop_after: Option<u64>,
    /// Token budget of one micro-batch.
    pub max_tokens: usize,
    /// Window in tokens (`<cls>` + residues + `<eos>`); longer proteins are cropped.
    pub max_len: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub warmup: Warmup,
    pub optim: OptimConfig,
    /// Activation recomputation per transformer layer (`--recompute none|layer`).
    pub recompute: Recompute,
    pub class_weights: ClassWeighting,
    pub stratify: StratifySpec,
    pub seed: u64,
    pub device: DeviceChoice,
    pub precision: Precision,
    /// Save a checkpoint every this many optimizer steps (and at each epoch end).
    pub save_every: Option<u64>,
    pub keep_checkpoints: usize,
    pub resume: bool,
    pub log_every: u64,
    pub eval_limit: Option<usize>,
    pub progress: bool,
    /// Print per-epoch summaries to stdout.
    pub verbose: bool,
}

impl TrainConfig {
    /// The built-in default: a small ESM-2 (`esm2_tiny`) trained from scratch on the
    /// embedded demo set, sized to finish in under 3 minutes on 2 CPU cores.
    pub fn demo(output: PathBuf) -> TrainConfig {
        TrainConfig {
            data: DataSource::Builtin,
            model: ModelSource::Preset("esm2_tiny".into()),
            head: HeadKind::Classification,
            head_dropout: 0.0,
            output,
            epochs: 8,
            max_steps: None,
            stop_after: None,
            // Small batches: from random weights, many updates matter more than large batches.
            max_tokens: 1024,
            max_len: 1024,
            grad_accum: 1,
            lr: 2e-3,
            warmup: Warmup::Fraction(0.06),
            optim: OptimConfig { weight_decay: 0.01, ..OptimConfig::default() },
            recompute: Recompute::None,
            class_weights: ClassWeighting::None,
            stratify: StratifySpec::all(),
            seed: 42,
            device: DeviceChoice::Auto,
            precision: Precision::Auto,
            save_every: None,
            keep_checkpoints: 2,
            resume: false,
            log_every: 10,
            eval_limit: None,
            progress: true,
            verbose: true,
        }
    }
}

/// What a run achieved.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub steps: u64,
    pub epochs_done: u64,
    pub final_train_loss: f64,
    pub eval: Option<EvalSummary>,
    pub seconds: f64,
    pub train_sequences_per_s: f64,
    pub train_tokens_per_s: f64,
    pub model_dir: PathBuf,
    pub n_classes: usize,
}

#[derive(Clone, Debug)]
pub struct EvalSummary {
    pub accuracy: f64,
    pub top5_accuracy: f64,
    pub macro_f1: f64,
    pub loss: f64,
    pub n: usize,
}

impl From<&EvalResult> for EvalSummary {
    fn from(e: &EvalResult) -> Self {
        EvalSummary {
            accuracy: e.report.accuracy,
            top5_accuracy: e.report.top5_accuracy,
            macro_f1: e.report.macro_f1,
            loss: e.loss,
            n: e.report.n_samples,
        }
    }
}

/// Build or load the model with the training data's classes.
fn build_model(cfg: &TrainConfig, labels: Vec<String>) -> Result<(SequenceClassifier, Option<String>)> {
    match &cfg.model {
        ModelSource::Preset(name) => {
            let ecfg = EsmConfig::preset(name)?;
            Ok((SequenceClassifier::new_random(&ecfg, labels, cfg.head, cfg.head_dropout, cfg.seed)?, None))
        }
        ModelSource::Pretrained(dir) => {
            let (m, report) =
                SequenceClassifier::from_pretrained(dir, Some(labels), cfg.head, cfg.head_dropout, cfg.seed)?;
            let note = format!(
                "loaded {} tensors from {}; initialised fresh: {}; unused in the file: {}",
                report.loaded,
                dir.display(),
                if report.fresh.is_empty() { "none".into() } else { report.fresh.join(", ") },
                if report.unused.is_empty() { "none".into() } else { report.unused.len().to_string() }
            );
            Ok((m, Some(note)))
        }
    }
}

/// Seed of the dropout masks of one micro-batch.
fn micro_seed(seed: u64, micro_step: u64) -> u64 {
    let mut s = seed ^ micro_step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    splitmix64(&mut s)
}

/// Write the final model (HF layout + label map) into `output/model`, atomically.
fn save_final(model: &SequenceClassifier, data: &ClassificationData, output: &Path) -> Result<PathBuf> {
    let dir = output.join("model");
    let tmp = output.join(".model.tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    write_model_dir(model, data, &tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&tmp, &dir)?;
    Ok(dir)
}

fn write_model_dir(model: &SequenceClassifier, data: &ClassificationData, dir: &Path) -> Result<()> {
    model.save(dir)?;
    let label_map = serde_json::to_string_pretty(&data.selection.label_map)?;
    crate::model::checkpoint::write_atomic(&dir.join("label_map.json"), label_map.as_bytes())
}

/// Run a classification training job.
pub fn train(cfg: &TrainConfig) -> Result<TrainSummary> {
    let t_start = Instant::now();
    if cfg.grad_accum == 0 || cfg.epochs == 0 {
        bail!("--epochs and --grad-accum must be at least 1");
    }
    let (device, dtype, device_note) = device::open(&cfg.device, cfg.precision)?;
    std::fs::create_dir_all(&cfg.output).with_context(|| format!("creating {}", cfg.output.display()))?;
    let mut log = MetricsLog::open(Some(&cfg.output.join("metrics.jsonl")))?;
    let say = |s: String| {
        if cfg.verbose {
            println!("{s}");
        }
    };
    if let Some(n) = &device_note {
        say(n.clone());
    }

    // Data.
    let data = data::load(&cfg.data, &cfg.stratify, cfg.class_weights, cfg.seed, cfg.eval_limit)?;
    let classes = data.selection.label_map.classes.clone();
    say(format!(
        "data: {} — {} classes, {} training rows{}",
        cfg.data.describe(),
        classes.len(),
        data.selection.rows.len(),
        match &data.eval_map {
            Some(m) if m.rows.len() < data.eval_rows_before_limit => format!(
                ", evaluating a seeded sample of {} of the {} evaluation rows whose family is a class",
                m.rows.len(),
                data.eval_rows_before_limit
            ),
            Some(m) => format!(", {} evaluation rows ({m})", m.rows.len()),
            None => String::new(),
        }
    ));

    // Model, possibly resumed.
    let resume_from = if cfg.resume {
        match latest_checkpoint(&cfg.output)? {
            Some(dir) => Some(dir),
            None => bail!("--resume: {} has no checkpoint to resume from", cfg.output.display()),
        }
    } else {
        None
    };
    let (mut model, load_note) = match &resume_from {
        Some(dir) => {
            let (m, _) =
                SequenceClassifier::from_pretrained(dir, Some(classes.clone()), cfg.head, cfg.head_dropout, cfg.seed)?;
            (m, Some(format!("resuming from {}", dir.display())))
        }
        None => build_model(cfg, classes.clone())?,
    };
    if let Some(n) = &load_note {
        say(n.clone());
    }
    model.params.to_device(&device)?;
    model.esm.recompute = cfg.recompute;
    let (total_params, trainable) = model.params.counts();

    // Batching and schedule.
    let bcfg = BatchConfig::new(cfg.max_tokens, cfg.max_len, cfg.seed)?;
    let lens = data.train.token_lengths();
    let batches_per_epoch = training_plan(&data.selection.rows, &lens, &bcfg, 0)?.len() as u64;
    let steps_per_epoch = batches_per_epoch.div_ceil(cfg.grad_accum as u64);
    let total_steps = cfg.max_steps.unwrap_or(steps_per_epoch * cfg.epochs).max(1);
    let warmup = match cfg.warmup {
        Warmup::Steps(s) => s,
        Warmup::Fraction(f) => (f * total_steps as f64).round() as u64,
    };
    let schedule = LinearSchedule { peak_lr: cfg.lr, warmup, total: total_steps };
    let mut optimizer = Optimizer::new(cfg.optim.clone());
    let mut scaler = if dtype == DType::F16 { LossScaler::new() } else { LossScaler::disabled() };
    let mut st = TrainState {
        step: 0,
        micro_step: 0,
        epoch: 0,
        batch_in_epoch: 0,
        seed: cfg.seed,
        loss_scaler: scaler.clone(),
        tokens_seen: 0,
        seqs_seen: 0,
        elapsed_s: 0.0,
    };
    if let Some(dir) = &resume_from {
        let (saved, file) = load_state(dir)?;
        optimizer.load_state(&file, &model.params, saved.step)?;
        scaler = saved.loss_scaler.clone();
        st = saved;
    }
    let weights = match cfg.class_weights {
        ClassWeighting::None => None,
        _ => Some(Tensor::from_f32(data.weights.weights.clone(), &[classes.len()], DType::F32, &device)?),
    };
    let class_tier = data.selection.label_map.tier_of_class.clone();
    let family_size = data.selection.class_counts();

    let plan = memory_plan(cfg, cfg.recompute, &model, &device, dtype, classes.len())?;
    let other = match cfg.recompute {
        Recompute::None => Recompute::Layer,
        Recompute::Layer => Recompute::None,
    };
    let other_plan = memory_plan(cfg, other, &model, &device, dtype, classes.len())?;
    say(format!(
        "model: {} layers, hidden {}, {} heads — {:.2} M parameters ({:.2} M trainable), {} classes; device {} ({}), \
         recompute {}",
        model.config().num_hidden_layers,
        model.config().hidden_size,
        model.config().num_attention_heads,
        total_params as f64 / 1e6,
        trainable as f64 / 1e6,
        classes.len(),
        device.name(),
        dtype,
        cfg.recompute,
    ));
    say(format!(
        "{} (worst case: sequences of {} tokens); activations with --recompute {other}: {}",
        plan.summary(),
        cfg.max_len.min(cfg.max_tokens),
        fmt_bytes(other_plan.activations)
    ));
    if let Device::Cuda(d) = &device {
        let attn_len = cuda::memory::token_weighted_length(lens.iter().map(|&l| l as usize), cfg.max_len);
        let bytes = optimizer.bytes_for(trainable);
        let plan =
            cuda::memory::GpuMemoryPlan::new(d, model.config(), &model.params, dtype, bytes, cfg.max_tokens, attn_len);
        say(plan.to_string());
    }
    say(format!(
        "schedule: {} epochs × {} batches of ≤ {} tokens (accumulate {}) = {} optimizer steps, peak lr {:e}, warm-up {} steps",
        cfg.epochs, batches_per_epoch, cfg.max_tokens, cfg.grad_accum, total_steps, cfg.lr, warmup
    ));
    log.event(
        "start",
        json!({
            "data": cfg.data.describe(), "classes": classes.len(), "train_rows": data.selection.rows.len(),
            "eval_rows": data.eval_map.as_ref().map(|m| m.rows.len()),
            "missing_eval_families": data.eval_map.as_ref().map(|m| m.missing_families.len()),
            "class_weights": format!("{:?}", cfg.class_weights),
            "weights_min": data.weights.weights.iter().cloned().fold(f32::INFINITY, f32::min),
            "weights_max": data.weights.weights.iter().cloned().fold(0.0f32, f32::max),
            "parameters": total_params, "trainable": trainable, "device": device.name(), "dtype": dtype.name(),
            "epochs": cfg.epochs, "total_steps": total_steps, "warmup": warmup, "lr": cfg.lr,
            "max_tokens": cfg.max_tokens, "grad_accum": cfg.grad_accum, "seed": cfg.seed,
            "resumed_step": st.step, "recompute": cfg.recompute.to_string(),
            "memory_plan": {
                "weights": plan.weights, "master": plan.master, "gradients": plan.gradients,
                "optimizer": plan.optimizer, "activations": plan.activations, "runtime": plan.runtime,
                "total": plan.total(),
            },
        }),
    )?;

    // A CUDA out-of-memory error inside a step names the token budget and a smaller one.
    let oom = |e: anyhow::Error| cuda::device::with_budget_hint(e, cfg.max_tokens);
    let mut grads = Grads::new();
    let mut last_eval: Option<EvalSummary> = None;
    let mut last_loss = f64::NAN;
    let elapsed_before = st.elapsed_s;
    let t_train = Instant::now();
    let (mut run_tokens, mut run_seqs) = (0u64, 0u64);
    let mut window = (Instant::now(), 0u64, 0u64, 0.0f64, 0u64); // time, seqs, tokens, loss sum, micro-batches
    let mut stop = false;
    let mut micro_in_step = 0usize;

    while st.epoch < cfg.epochs && !stop {
        let plan = training_plan(&data.selection.rows, &lens, &bcfg, st.epoch)?;
        let bar = progress_bar(plan.len() as u64, &format!("epoch {}/{}", st.epoch + 1, cfg.epochs), cfg.progress);
        bar.set_position(st.batch_in_epoch as u64);
        let label_of = data.selection.labels_by_row(data.train.len());
        let epoch_t0 = Instant::now();
        let (mut ep_loss, mut ep_batches) = (0.0f64, 0u64);
        while st.batch_in_epoch < plan.len() {
            let batch = &plan[st.batch_in_epoch];
            let packed = pack(&batch.items, &data.train, |r| label_of[r])?;
            let inp = ModelInputs::new(&packed, model.config(), &device, DType::F32).map_err(&oom)?;
            let tape = Tape::with_seed(micro_seed(cfg.seed, st.micro_step));
            let (_, loss) = {
                let _r = nvtx::range("forward");
                model.forward_loss(&tape, &inp, weights.as_ref()).map_err(&oom)?
            };
            {
                let _r = nvtx::range("backward");
                tape.backward_scaled(&loss, scaler.scale as f32, &mut grads).map_err(&oom)?;
            }
            let loss_v = loss.scalar_f32().map_err(&oom)? as f64;
            st.micro_step += 1;
            st.batch_in_epoch += 1;
            micro_in_step += 1;
            let (n_tok, n_seq) = (packed.n_tokens() as u64, packed.n_seqs() as u64);
            st.tokens_seen += n_tok;
            st.seqs_seen += n_seq;
            run_tokens += n_tok;
            run_seqs += n_seq;
            window.1 += n_seq;
            window.2 += n_tok;
            window.3 += loss_v;
            window.4 += 1;
            ep_loss += loss_v;
            ep_batches += 1;
            bar.inc(1);

            let end_of_epoch = st.batch_in_epoch == plan.len();
            if micro_in_step == cfg.grad_accum || end_of_epoch {
                let lr = schedule.lr(st.step);
                let inv = 1.0 / (scaler.scale * micro_in_step as f64);
                let stats = {
                    let _r = nvtx::optimizer("optimizer");
                    optimizer.step(&mut model.params, &grads, lr, inv).map_err(&oom)?
                };
                grads.clear();
                micro_in_step = 0;
                scaler.update(stats.skipped);
                st.step = optimizer.step;
                st.loss_scaler = scaler.clone();
                if !stats.skipped && !stats.grad_norm.is_finite() {
                    bail!("training diverged: the gradient norm is not finite at step {}", st.step);
                }
                if st.step % cfg.log_every.max(1) == 0 || end_of_epoch {
                    let dt = window.0.elapsed().as_secs_f64().max(1e-9);
                    let mean_loss = window.3 / window.4.max(1) as f64;
                    bar.set_message(format!("loss {mean_loss:.4} {:.1} seq/s", window.1 as f64 / dt));
                    log.event(
                        "step",
                        json!({
                            "step": st.step, "epoch": st.epoch, "loss": mean_loss, "lr": lr, "grad_norm": stats.grad_norm,
                            "skipped": stats.skipped, "loss_scale": scaler.scale, "overflow_steps": scaler.skipped,
                            "scale_growths": scaler.grown,
                            "sequences_per_s": window.1 as f64 / dt, "tokens_per_s": window.2 as f64 / dt,
                            "tokens_seen": st.tokens_seen,
                        }),
                    )?;
                    window = (Instant::now(), 0, 0, 0.0, 0);
                }
                let at_max =
                    cfg.max_steps.is_some_and(|m| st.step >= m) || cfg.stop_after.is_some_and(|m| st.step >= m);
                let periodic = cfg.save_every.is_some_and(|e| e > 0 && st.step % e == 0);
                if at_max || periodic {
                    st.elapsed_s = elapsed_before + t_train.elapsed().as_secs_f64();
                    let dir = save_checkpoint(&cfg.output, &st, &optimizer, cfg.keep_checkpoints, |d| {
                        write_model_dir(&model, &data, d)
                    })?;
                    log.event("checkpoint", json!({ "step": st.step, "path": dir }))?;
                }
                if at_max {
                    stop = true;
                    break;
                }
            }
        }
        bar.finish_and_clear();
        if stop && st.batch_in_epoch < plan.len() {
            break;
        }
        last_loss = ep_loss / ep_batches.max(1) as f64;
        let ep_secs = epoch_t0.elapsed().as_secs_f64();
        // Evaluate on full-length proteins.
        if let (Some(eval), Some(map)) = (&data.eval, &data.eval_map) {
            if !map.rows.is_empty() {
                let ebar = progress_bar(0, "  eval", cfg.progress);
                let r = evaluate(
                    &model,
                    eval,
                    &map.rows,
                    &map.labels,
                    &bcfg,
                    &device,
                    Some(&class_tier),
                    Some(&family_size),
                    &ebar,
                )?;
                ebar.finish_and_clear();
                log.event(
                    "eval",
                    json!({
                        "epoch": st.epoch, "step": st.step, "accuracy": r.report.accuracy, "top5_accuracy": r.report.top5_accuracy,
                        "macro_f1": r.report.macro_f1, "weighted_f1": r.report.weighted_f1, "loss": r.loss, "n": r.report.n_samples,
                        "per_tier": r.report.per_tier, "windowed_rows": r.long_rows,
                    }),
                )?;
                say(format!(
                    "epoch {}/{}: train loss {last_loss:.4} ({ep_secs:.1} s) — eval accuracy {:.2}% (top-5 {:.2}%, macro-F1 {:.3}) loss {:.4}",
                    st.epoch + 1,
                    cfg.epochs,
                    100.0 * r.report.accuracy,
                    100.0 * r.report.top5_accuracy,
                    r.report.macro_f1,
                    r.loss
                ));
                last_eval = Some((&r).into());
            }
        } else {
            say(format!("epoch {}/{}: train loss {last_loss:.4} ({ep_secs:.1} s)", st.epoch + 1, cfg.epochs));
        }
        st.epoch += 1;
        st.batch_in_epoch = 0;
        st.elapsed_s = elapsed_before + t_train.elapsed().as_secs_f64();
        let dir =
            save_checkpoint(&cfg.output, &st, &optimizer, cfg.keep_checkpoints, |d| write_model_dir(&model, &data, d))?;
        log.event("checkpoint", json!({ "step": st.step, "epoch": st.epoch, "path": dir }))?;
    }

    let peak = measured_peak(&device);
    if let Some((bytes, what)) = &peak {
        say(format!("peak memory measured: {} ({what}); planned {}", fmt_bytes(*bytes), fmt_bytes(plan.total())));
    }
    let model_dir = save_final(&model, &data, &cfg.output)?;
    let train_secs = t_train.elapsed().as_secs_f64().max(1e-9);
    let summary = TrainSummary {
        steps: st.step,
        epochs_done: st.epoch,
        final_train_loss: last_loss,
        eval: last_eval.clone(),
        seconds: t_start.elapsed().as_secs_f64(),
        train_sequences_per_s: run_seqs as f64 / train_secs,
        train_tokens_per_s: run_tokens as f64 / train_secs,
        model_dir: model_dir.clone(),
        n_classes: classes.len(),
    };
    log.event(
        "end",
        json!({
            "steps": summary.steps, "epochs": summary.epochs_done, "train_loss": summary.final_train_loss,
            "eval_accuracy": last_eval.as_ref().map(|e| e.accuracy), "eval_macro_f1": last_eval.as_ref().map(|e| e.macro_f1),
            "seconds": summary.seconds, "train_sequences_per_s": summary.train_sequences_per_s,
            "train_tokens_per_s": summary.train_tokens_per_s, "model_dir": model_dir,
            "chance_accuracy": 1.0 / classes.len() as f64,
            "peak_memory_bytes": peak.as_ref().map(|p| p.0), "planned_memory_bytes": plan.total(),
        }),
    )?;
    say(format!(
        "done in {:.1} s: {} steps, {:.1} sequences/s ({:.0} tokens/s); model saved to {}",
        summary.seconds,
        summary.steps,
        summary.train_sequences_per_s,
        summary.train_tokens_per_s,
        model_dir.display()
    ));
    Ok(summary)
}

/// The memory plan of this run's worst-case micro-batch (sequences of `max_len` tokens
/// filling `max_tokens`).
fn memory_plan(
    cfg: &TrainConfig,
    recompute: Recompute,
    model: &SequenceClassifier,
    device: &Device,
    dtype: DType,
    n_classes: usize,
) -> Result<MemoryPlan> {
    let opts =
        PlanOptions { cuda: !device.is_cpu(), compute: dtype, optimizer: cfg.optim.kind, recompute, contacts: false };
    let batch = BatchShape::full(cfg.max_tokens, cfg.max_len.min(cfg.max_tokens));
    MemoryPlan::new(model.config(), &param_specs_of(&model.params), None, n_classes, &opts, &batch)
}

/// Peak memory of the run so far and what was measured: the CUDA pool's high-water mark,
/// or the process's peak resident set on the CPU.
fn measured_peak(device: &Device) -> Option<(u64, &'static str)> {
    match device {
        Device::Cpu => peak_rss_bytes().map(|b| (b, "process peak resident set")),
        Device::Cuda(d) => crate::backend::cuda::device::pool_peak_bytes(d)
            .ok()
            .map(|b| (b, "CUDA memory pool high-water mark; the context and cuBLAS workspace are outside it")),
    }
}

/// Read the device a trained model should run on for evaluation/prediction.
pub fn open_device(choice: &DeviceChoice, precision: Precision) -> Result<Device> {
    Ok(device::open(choice, precision)?.0)
}
