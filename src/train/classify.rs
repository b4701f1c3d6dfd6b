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

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::data::{self, ClassificationData, DataSource};
use super::device::{self, DeviceChoice, Precision};
use super::driver::{
    init_optimizer, lora_line, resume_dir, start_run, write_adapter_dirs, write_dir_atomically, LoopConfig, MicroBatch,
    RunStart, Task,
};
pub use super::driver::{ModelSource, Warmup};
use super::eval::{evaluate, EvalResult};
use super::log::progress_bar;
use super::memory::{param_specs_of, peak_report, plan_run, BatchShape, GpuPlanInputs, MemoryPlan, PlanOptions};
use crate::autograd::{Grads, Tape};
use crate::backend::cuda::{self, nvtx};
use crate::data::batching::{pack, training_plan, BatchConfig, PlannedBatch};
use crate::data::class_weights::ClassWeighting;
use crate::data::stratify::StratifySpec;
use crate::model::esm2::Recompute;
use crate::model::lora::{LoraConfig, SaveMode};
use crate::model::{EsmConfig, HeadKind, ModelInputs, Params, Pooling, SequenceClassifier};
use crate::optim::OptimConfig;
use crate::tensor::{DType, Device, Tensor};

/// Everything a classification run needs.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub data: DataSource,
    pub model: ModelSource,
    pub head: HeadKind,
    pub head_dropout: f64,
    /// Pooling of the head's input (`--pool`); `None` keeps a loaded checkpoint's own
    /// (`<cls>` for a preset or a Hugging Face checkpoint).
    pub pool: Option<Pooling>,
    /// The optimisation loop: output directory, epochs or steps, token budget of a
    /// micro-batch, accumulation, learning rate and warm-up, optimizer, seed,
    /// checkpointing, logging.
    pub training: LoopConfig,
    /// Window in tokens (`<cls>` + residues + `<eos>`); longer proteins are cropped.
    pub max_len: usize,
    /// Activation recomputation per transformer layer (`--recompute none|layer`).
    pub recompute: Recompute,
    pub class_weights: ClassWeighting,
    pub stratify: StratifySpec,
    pub device: DeviceChoice,
    pub precision: Precision,
    pub resume: bool,
    pub eval_limit: Option<usize>,
    /// Print per-epoch summaries to stdout.
    pub verbose: bool,
    /// Fine-tune with LoRA adapters (base weights frozen) instead of all weights.
    pub lora: Option<LoraConfig>,
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
            pool: None,
            training: LoopConfig {
                output,
                epochs: 8,
                max_steps: None,
                stop_after: None,
                grad_accum: 1,
                lr: 2e-3,
                warmup: Warmup::Fraction(0.06),
                optim: OptimConfig { weight_decay: 0.01, ..OptimConfig::default() },
                seed: 42,
                save_every: None,
                keep_checkpoints: 2,
                log_every: 10,
                progress: true,
                // Small batches: from random weights, many updates matter more than large batches.
                max_tokens: 1024,
            },
            max_len: 1024,
            recompute: Recompute::None,
            class_weights: ClassWeighting::None,
            stratify: StratifySpec::all(),
            device: DeviceChoice::Auto,
            precision: Precision::Auto,
            resume: false,
            eval_limit: None,
            verbose: true,
            lora: None,
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
            Ok((SequenceClassifier::new_random(&ecfg, labels, cfg.head, cfg.head_dropout, cfg.training.seed)?, None))
        }
        ModelSource::Pretrained(dir) => {
            let (m, report) =
                SequenceClassifier::from_pretrained(dir, Some(labels), cfg.head, cfg.head_dropout, cfg.training.seed)?;
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

/// Write the final model (HF layout, adapters merged, + label map) into `output/model`,
/// atomically; with LoRA, the adapters alone (PEFT layout, with the head) into
/// `output/adapter`, and the base they apply to into `output/base` when it was random.
/// A mean-pooled classifier gets no `adapter/` (no transformers class pools the mean; see
/// [`SequenceClassifier::save_adapters`]): its merged `model/` is the result.
fn save_final(model: &SequenceClassifier, data: &ClassificationData, cfg: &TrainConfig) -> Result<PathBuf> {
    let dir = cfg.training.output.join("model");
    write_dir_atomically(&dir, |d| write_model_dir(model, data, d, SaveMode::Merged))?;
    if model.lora().is_some() && model.pool == Pooling::Mean {
        if cfg.verbose {
            println!(
                "LoRA with --pool mean: no adapter/ written (PEFT's EsmForSequenceClassification pools <cls>); \
                 {} holds the merged model",
                dir.display()
            );
        }
    } else if model.lora().is_some() {
        write_adapter_dirs(
            &cfg.training.output,
            &cfg.model,
            |d| write_model_dir(model, data, d, SaveMode::BaseOnly),
            |d, base| model.save_adapters(d, base),
        )?;
    }
    Ok(dir)
}

fn write_model_dir(model: &SequenceClassifier, data: &ClassificationData, dir: &Path, mode: SaveMode) -> Result<()> {
    model.save(dir, mode)?;
    let label_map = serde_json::to_string_pretty(&data.selection.label_map)?;
    crate::model::checkpoint::write_atomic(&dir.join("label_map.json"), label_map.as_bytes())
}

/// The classification task of the shared training loop.
struct ClassifyTask {
    model: SequenceClassifier,
    data: ClassificationData,
    bcfg: BatchConfig,
    lens: Vec<u32>,
    label_of: Vec<Option<u32>>,
    weights: Option<Tensor>,
    class_tier: Vec<u32>,
    family_size: Vec<usize>,
    device: Device,
    plan: Vec<PlannedBatch>,
    progress: bool,
    last_eval: Option<EvalSummary>,
}

impl Task for ClassifyTask {
    fn params(&self) -> &Params {
        &self.model.params
    }

    fn params_mut(&mut self) -> &mut Params {
        &mut self.model.params
    }

    fn plan_epoch(&mut self, epoch: u64) -> Result<usize> {
        self.plan = training_plan(&self.data.selection.rows, &self.lens, &self.bcfg, epoch)?;
        Ok(self.plan.len())
    }

    fn micro_batch(&mut self, index: usize, tape: Tape, loss_scale: f32, grads: &mut Grads) -> Result<MicroBatch> {
        let batch = &self.plan[index];
        let packed = pack(&batch.items, &self.data.train, |r| self.label_of[r])?;
        // A CUDA out-of-memory error inside a step names the token budget and a smaller one.
        let oom = |e: anyhow::Error| cuda::device::with_budget_hint(e, self.bcfg.max_tokens);
        let inp = ModelInputs::new(&packed, self.model.config(), &self.device, DType::F32).map_err(oom)?;
        let (_, loss) = {
            let _r = nvtx::range("forward");
            self.model.forward_loss(&tape, &inp, self.weights.as_ref()).map_err(oom)?
        };
        {
            let _r = nvtx::range("backward");
            tape.backward_scaled(&loss, loss_scale, grads).map_err(oom)?;
        }
        Ok(MicroBatch {
            loss: loss.scalar_f32().map_err(oom)? as f64,
            tokens: packed.n_tokens() as u64,
            seqs: packed.n_seqs() as u64,
        })
    }

    fn evaluate(&mut self, epoch: u64, step: u64) -> Result<Option<(Value, String)>> {
        let (Some(eval), Some(map)) = (&self.data.eval, &self.data.eval_map) else { return Ok(None) };
        if map.rows.is_empty() {
            return Ok(None);
        }
        let ebar = progress_bar(0, "  eval", self.progress);
        let r = evaluate(
            &self.model,
            eval,
            &map.rows,
            &map.labels,
            &self.bcfg,
            &self.device,
            Some(&self.class_tier),
            Some(&self.family_size),
            &ebar,
        )?;
        ebar.finish_and_clear();
        let fields = json!({
            "epoch": epoch, "step": step, "accuracy": r.report.accuracy, "top5_accuracy": r.report.top5_accuracy,
            "macro_f1": r.report.macro_f1, "weighted_f1": r.report.weighted_f1, "loss": r.loss, "n": r.report.n_samples,
            "per_tier": r.report.per_tier, "windowed_rows": r.long_rows,
        });
        let line = format!(
            "eval accuracy {:.2}% (top-5 {:.2}%, macro-F1 {:.3}) loss {:.4}",
            100.0 * r.report.accuracy,
            100.0 * r.report.top5_accuracy,
            r.report.macro_f1,
            r.loss
        );
        self.last_eval = Some((&r).into());
        Ok(Some((fields, line)))
    }

    fn write_checkpoint_model(&self, dir: &Path) -> Result<()> {
        write_model_dir(&self.model, &self.data, dir, SaveMode::Unmerged)
    }
}

/// Run a classification training job.
pub fn train(cfg: &TrainConfig) -> Result<TrainSummary> {
    let t_start = Instant::now();
    if cfg.training.grad_accum == 0 || cfg.training.epochs == 0 {
        bail!("--epochs and --grad-accum must be at least 1");
    }
    let (RunStart { device, dtype, mut log }, say) =
        start_run(&cfg.device, cfg.precision, &cfg.training.output, cfg.verbose)?;

    // Data.
    let data = data::load(&cfg.data, &cfg.stratify, cfg.class_weights, cfg.training.seed, cfg.eval_limit)?;
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

    // The class weights of the loss, with their classes, for the record.
    if cfg.class_weights != ClassWeighting::None {
        let by_class: serde_json::Map<String, Value> =
            classes.iter().zip(&data.weights.weights).map(|(c, &w)| (c.clone(), json!(w))).collect();
        let record = json!({
            "scheme": format!("{:?}", cfg.class_weights),
            "mean_over_training_samples": data.weights.mean_over_samples(&data.selection.class_counts()),
            "zero_count_classes": data.weights.zero_count_classes,
            "weights": by_class,
        });
        crate::model::checkpoint::write_atomic(
            &cfg.training.output.join("class_weights.json"),
            serde_json::to_string_pretty(&record)?.as_bytes(),
        )?;
        say(format!(
            "class weights ({:?}) written to {}",
            cfg.class_weights,
            cfg.training.output.join("class_weights.json").display()
        ));
    }

    // Model, possibly resumed.
    let resume_from = resume_dir(&cfg.training.output, cfg.resume)?;
    let (mut model, load_note) = match &resume_from {
        Some(dir) => {
            let (m, _) = SequenceClassifier::from_pretrained(
                dir,
                Some(classes.clone()),
                cfg.head,
                cfg.head_dropout,
                cfg.training.seed,
            )?;
            (m, Some(format!("resuming from {}", dir.display())))
        }
        None => build_model(cfg, classes.clone())?,
    };
    if let Some(n) = &load_note {
        say(n.clone());
    }
    if let Some(p) = cfg.pool {
        model.pool = p;
    }
    if model.pool == Pooling::Mean {
        say("pooling: mean over residues (a qf-engine checkpoint; transformers' Auto classes refuse it, see the README)".into());
    }
    if let Some(l) = &cfg.lora {
        model.enable_lora(l, cfg.training.seed)?;
        say(lora_line(l, "encoder weights frozen"));
    }
    model.params.to_device(&device)?;
    model.esm.recompute = cfg.recompute;
    let (total_params, trainable) = model.params.counts();

    // Batching, schedule, optimizer (restored when resuming).
    let bcfg = BatchConfig::new(cfg.training.max_tokens, cfg.max_len, cfg.training.seed)?;
    let lens = data.train.token_lengths();
    let batches_per_epoch = training_plan(&data.selection.rows, &lens, &bcfg, 0)?.len() as u64;
    let mut os = init_optimizer(&cfg.training, &model.params, batches_per_epoch, dtype, resume_from.as_deref())?;
    let weights = match cfg.class_weights {
        ClassWeighting::None => None,
        _ => Some(Tensor::from_f32(data.weights.weights.clone(), &[classes.len()], DType::F32, &device)?),
    };

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
    let gpu = GpuPlanInputs {
        config: model.config(),
        params: &model.params,
        dtype,
        optimizer_bytes: os.optimizer.bytes_for(trainable),
        max_tokens: cfg.training.max_tokens,
        lens: &lens,
        max_len: cfg.max_len,
    };
    let worst_case = format!("worst case: sequences of {} tokens", cfg.max_len.min(cfg.training.max_tokens));
    let memory = plan_run(
        cfg.recompute,
        |r| memory_plan(cfg, r, &model, &device, dtype, classes.len()),
        &worst_case,
        &device,
        gpu,
    )?;
    memory.lines.iter().for_each(|l| say(l.clone()));
    let plan = memory.plan;
    say(format!(
        "schedule: {} epochs × {} batches of ≤ {} tokens (accumulate {}) = {} optimizer steps, peak lr {:e}, warm-up {} steps",
        cfg.training.epochs, batches_per_epoch, cfg.training.max_tokens, cfg.training.grad_accum, os.schedule.total, cfg.training.lr, os.schedule.warmup
    ));
    log.event(
        "start",
        json!({
            "task": "classify",
            "data": cfg.data.describe(), "classes": classes.len(), "train_rows": data.selection.rows.len(),
            "eval_rows": data.eval_map.as_ref().map(|m| m.rows.len()),
            "missing_eval_families": data.eval_map.as_ref().map(|m| m.missing_families.len()),
            "class_weights": format!("{:?}", cfg.class_weights),
            "weights_min": data.weights.weights.iter().cloned().fold(f32::INFINITY, f32::min),
            "weights_max": data.weights.weights.iter().cloned().fold(0.0f32, f32::max),
            "parameters": total_params, "trainable": trainable, "device": device.name(), "dtype": crate::train::device::compute_label(&device, dtype),
            "lora": cfg.lora.as_ref().map(LoraConfig::to_json),
            "epochs": cfg.training.epochs, "total_steps": os.schedule.total, "warmup": os.schedule.warmup, "lr": cfg.training.lr,
            "max_tokens": cfg.training.max_tokens, "grad_accum": cfg.training.grad_accum, "seed": cfg.training.seed,
            "resumed_step": os.state.step, "recompute": cfg.recompute.to_string(), "pool": model.pool.to_string(),
            "memory_plan": plan.to_json(),
        }),
    )?;

    let label_of = data.selection.labels_by_row(data.train.len());
    let mut task = ClassifyTask {
        class_tier: data.selection.label_map.tier_of_class.clone(),
        family_size: data.selection.class_counts(),
        model,
        data,
        bcfg,
        lens,
        label_of,
        weights,
        device,
        plan: Vec::new(),
        progress: cfg.training.progress,
        last_eval: None,
    };
    let ls = super::driver::run(&mut task, &cfg.training, &mut os, &mut log, &say)?;

    let (peak, peak_line) = peak_report(&task.device, &plan);
    peak_line.into_iter().for_each(&say);
    let model_dir = save_final(&task.model, &task.data, cfg)?;
    let last_eval = task.last_eval.clone();
    let summary = TrainSummary {
        steps: ls.steps,
        epochs_done: ls.epochs_done,
        final_train_loss: ls.final_train_loss,
        eval: last_eval.clone(),
        seconds: t_start.elapsed().as_secs_f64(),
        train_sequences_per_s: ls.run_seqs as f64 / ls.train_seconds,
        train_tokens_per_s: ls.run_tokens as f64 / ls.train_seconds,
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
            "peak_memory_bytes": peak, "planned_memory_bytes": plan.total(),
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
    let opts = PlanOptions {
        cuda: !device.is_cpu(),
        compute: dtype,
        optimizer: cfg.training.optim.kind,
        recompute,
        contacts: false,
    };
    let batch = BatchShape::full(cfg.training.max_tokens, cfg.max_len.min(cfg.training.max_tokens));
    MemoryPlan::new(model.config(), &param_specs_of(&model.params), cfg.lora.as_ref(), n_classes, &opts, &batch)
}

/// Read the device a trained model should run on for evaluation/prediction.
pub fn open_device(choice: &DeviceChoice, precision: Precision) -> Result<Device> {
    Ok(device::open(choice, precision)?.0)
}
