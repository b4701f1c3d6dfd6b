//! `qf-engine train --task mlm` and `eval --task mlm`: masked-language-model training of
//! ESM-2 (continued pre-training on a protein family, or pre-training a small model).
//!
//! Each epoch the sequences are shuffled, bucketed by length and packed into batches of
//! at most `max_tokens` tokens; proteins longer than the window are cropped at a random
//! place (a fresh crop every epoch). Every packed sequence is then corrupted by ESM-2's
//! rule (`data::masking`: 15 % of residues, 80 % `<mask>` / 10 % random residue / 10 %
//! unchanged, never special tokens), with a stream keyed by `(seed, epoch, row, crop)`;
//! the encoder's token-dropout scaling follows from the `<mask>` count of each sequence
//! as in transformers' `EsmEmbeddings`. The loss is the mean cross-entropy at the
//! selected positions. The loop (AdamW or 8-bit, LoRA, recompute, fp16/bf16, resume,
//! checkpoints, `metrics.jsonl`) is the shared one of `driver.rs`.
//!
//! The sequences (`sets.rs`) and the evaluation (`eval.rs`) are in their own files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::device::{DeviceChoice, Precision};
use super::driver::{
    init_optimizer, lora_line, resume_dir, start_run, write_adapter_dirs, write_dir_atomically, LoopConfig, MicroBatch,
    ModelSource, RunStart, Task, Warmup,
};
use super::log::progress_bar;
use super::memory::{param_specs_of, peak_report, plan_run, BatchShape, GpuPlanInputs, MemoryPlan, PlanOptions};
use crate::autograd::{Grads, Tape};
use crate::backend::cuda::{self, nvtx};
use crate::data::batching::{pack, training_plan, BatchConfig, PlannedBatch};
use crate::data::masking::{is_maskable, mask_batch, Corruption, MaskedBatch, MaskingConfig};
use crate::data::rng::Rng;
use crate::data::tokenizer::MASK;
use crate::model::esm2::Recompute;
use crate::model::lora::{LoraConfig, SaveMode};
use crate::model::{EsmConfig, MaskedLm, ModelInputs, Params};
use crate::optim::OptimConfig;
use crate::tensor::{DType, Device};

mod eval;
mod sets;

use eval::target_tensors;

pub use eval::{evaluate_mlm, MlmEval};
pub use sets::{holdout_split, load_sets, sample_rows, MlmData, MlmSets};

/// Everything an MLM run needs.
#[derive(Clone, Debug)]
pub struct MlmTrainConfig {
    pub data: MlmData,
    pub model: ModelSource,
    pub training: LoopConfig,
    /// Window in tokens (`<cls>` + residues + `<eos>`); longer proteins are cropped.
    pub max_len: usize,
    pub recompute: Recompute,
    pub masking: MaskingConfig,
    /// Seed of the evaluation's masks (fixed across runs so that numbers compare).
    pub eval_mask_seed: u64,
    pub device: DeviceChoice,
    pub precision: Precision,
    pub resume: bool,
    pub eval_limit: Option<usize>,
    pub verbose: bool,
    pub lora: Option<LoraConfig>,
}

impl MlmTrainConfig {
    /// Defaults: ESM-2 8M from random weights, 1 epoch, lr 4e-4 (ESM-2's peak) with a 6 %
    /// warm-up, 16,384-token batches, 1,024-token windows.
    pub fn new(data: MlmData, output: PathBuf) -> Self {
        MlmTrainConfig {
            data,
            model: ModelSource::Preset("esm2_t6_8M".into()),
            training: LoopConfig {
                output,
                epochs: 1,
                max_steps: None,
                stop_after: None,
                grad_accum: 1,
                lr: 4e-4,
                warmup: Warmup::Fraction(0.06),
                optim: OptimConfig { weight_decay: 0.01, ..OptimConfig::default() },
                seed: 42,
                save_every: None,
                keep_checkpoints: 2,
                log_every: 10,
                progress: true,
                max_tokens: 16384,
            },
            max_len: 1024,
            recompute: Recompute::None,
            masking: MaskingConfig::default(),
            eval_mask_seed: 0,
            device: DeviceChoice::Auto,
            precision: Precision::Auto,
            resume: false,
            eval_limit: None,
            verbose: true,
            lora: None,
        }
    }
}

/// A training batch in which the draw selected nothing (a few short proteins can miss
/// the 15 %): one maskable token, chosen by the batch's own stream, becomes `<mask>`, so
/// that every micro-batch has a loss. Happens with probability 0.85^(residues).
fn ensure_a_target(m: &mut MaskedBatch, seed: u64, epoch: u64, index: usize) {
    if m.n_targets() > 0 {
        return;
    }
    let candidates: Vec<usize> = (0..m.batch.tokens.len()).filter(|&i| is_maskable(m.batch.tokens[i])).collect();
    if candidates.is_empty() {
        return;
    }
    let pick = candidates[Rng::from_words(&[seed, epoch, index as u64, 0x004F_4E45]).below_usize(candidates.len())];
    m.target_rows.push(pick as u32);
    m.targets.push(m.batch.tokens[pick]);
    m.kinds.push(Corruption::Mask);
    m.batch.tokens[pick] = MASK;
}

/// The MLM task of the shared training loop.
struct MlmTask {
    model: MaskedLm,
    sets: MlmSets,
    bcfg: BatchConfig,
    lens: Vec<u32>,
    masking: MaskingConfig,
    eval_mask_seed: u64,
    device: Device,
    plan: Vec<PlannedBatch>,
    epoch: u64,
    progress: bool,
    last_eval: Option<MlmEval>,
    /// Optimizer step of `last_eval`.
    last_eval_step: Option<u64>,
}

impl Task for MlmTask {
    fn params(&self) -> &Params {
        &self.model.params
    }

    fn params_mut(&mut self) -> &mut Params {
        &mut self.model.params
    }

    fn plan_epoch(&mut self, epoch: u64) -> Result<usize> {
        self.plan = training_plan(&self.sets.train_rows, &self.lens, &self.bcfg, epoch)?;
        self.epoch = epoch;
        Ok(self.plan.len())
    }

    fn micro_batch(&mut self, index: usize, tape: Tape, loss_scale: f32, grads: &mut Grads) -> Result<MicroBatch> {
        let items = &self.plan[index].items;
        let packed = pack(items, &self.sets.train, |_| None)?;
        let mut m = mask_batch(&packed, items, &self.masking, self.bcfg.seed, self.epoch)?;
        ensure_a_target(&mut m, self.bcfg.seed, self.epoch, index);
        let oom = |e: anyhow::Error| cuda::device::with_budget_hint(e, self.bcfg.max_tokens);
        let inp = ModelInputs::new(&m.batch, self.model.config(), &self.device, DType::F32).map_err(oom)?;
        let (rows, targets) = target_tensors(&m, &self.device).map_err(oom)?;
        let (_, loss) = {
            let _r = nvtx::range("forward");
            self.model.forward_loss(&tape, &inp, &rows, &targets).map_err(oom)?
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
        let eval = self.sets.eval_set();
        if self.sets.eval_rows.is_empty() {
            return Ok(None);
        }
        let ebar = progress_bar(0, "  eval", self.progress);
        let bcfg = BatchConfig::new(self.bcfg.max_tokens, self.bcfg.max_len, 0)?;
        let r = evaluate_mlm(
            &self.model,
            eval,
            &self.sets.eval_rows,
            &bcfg,
            &self.masking,
            self.eval_mask_seed,
            &self.device,
            &ebar,
        )?;
        ebar.finish_and_clear();
        let mut fields = serde_json::to_value(&r)?;
        fields["epoch"] = epoch.into();
        fields["step"] = step.into();
        let line = format!("eval {}", r.line());
        self.last_eval = Some(r);
        self.last_eval_step = Some(step);
        Ok(Some((fields, line)))
    }

    fn write_checkpoint_model(&self, dir: &Path) -> Result<()> {
        self.model.save(dir, SaveMode::Unmerged)
    }
}

/// What an MLM run achieved.
#[derive(Clone, Debug)]
pub struct MlmTrainSummary {
    pub steps: u64,
    pub final_train_loss: f64,
    pub eval: Option<MlmEval>,
    pub seconds: f64,
    pub train_tokens_per_s: f64,
    pub model_dir: PathBuf,
}

/// Build or load the model.
fn build_model(cfg: &MlmTrainConfig) -> Result<(MaskedLm, Option<String>)> {
    match &cfg.model {
        ModelSource::Preset(name) => Ok((MaskedLm::new_random(&EsmConfig::preset(name)?, cfg.training.seed)?, None)),
        ModelSource::Pretrained(dir) => {
            let (m, report) = MaskedLm::from_pretrained(dir, cfg.training.seed)?;
            let note = format!(
                "loaded {} tensors from {}; initialised fresh: {}; unused in the file: {}",
                report.loaded,
                dir.display(),
                if report.fresh.is_empty() { "none".into() } else { report.fresh.join(", ") },
                if report.unused.is_empty() { "none".into() } else { report.unused.join(", ") }
            );
            Ok((m, Some(note)))
        }
    }
}

/// Run an MLM training job.
pub fn train_mlm(cfg: &MlmTrainConfig) -> Result<MlmTrainSummary> {
    let t_start = Instant::now();
    cfg.masking.validate()?;
    let (RunStart { device, dtype, mut log }, say) =
        start_run(&cfg.device, cfg.precision, &cfg.training.output, cfg.verbose)?;
    let sets = load_sets(&cfg.data, cfg.training.seed, cfg.eval_limit, cfg.eval_mask_seed)?;
    say(format!(
        "data: {} — {} training sequences, {} evaluation sequences",
        cfg.data.describe(),
        sets.train_rows.len(),
        sets.eval_rows.len()
    ));

    let resume_from = resume_dir(&cfg.training.output, cfg.resume)?;
    let (mut model, note) = match &resume_from {
        Some(dir) => {
            (MaskedLm::from_pretrained(dir, cfg.training.seed)?.0, Some(format!("resuming from {}", dir.display())))
        }
        None => build_model(cfg)?,
    };
    if let Some(n) = note {
        say(n);
    }
    if let Some(l) = &cfg.lora {
        model.enable_lora(l, cfg.training.seed)?;
        say(lora_line(l, "encoder and tied embeddings frozen, lm_head trained"));
    }
    model.params.to_device(&device)?;
    model.esm.recompute = cfg.recompute;
    let (total_params, trainable) = model.params.counts();

    let bcfg = BatchConfig::new(cfg.training.max_tokens, cfg.max_len, cfg.training.seed)?;
    let lens = sets.train.token_lengths();
    let batches_per_epoch = training_plan(&sets.train_rows, &lens, &bcfg, 0)?.len() as u64;
    let mut os = init_optimizer(&cfg.training, &model.params, batches_per_epoch, dtype, resume_from.as_deref())?;
    say(format!(
        "model: {} layers, hidden {}, {} heads — {:.2} M parameters ({:.2} M trainable); device {} ({}), recompute {}",
        model.config().num_hidden_layers,
        model.config().hidden_size,
        model.config().num_attention_heads,
        total_params as f64 / 1e6,
        trainable as f64 / 1e6,
        device.name(),
        dtype,
        cfg.recompute
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
    let worst_case = format!(
        "worst case: sequences of {} tokens, {} masked rows",
        cfg.max_len.min(cfg.training.max_tokens),
        masked_rows_bound(cfg.training.max_tokens, cfg.masking.select)
    );
    let memory = plan_run(cfg.recompute, |r| memory_plan(cfg, r, &model, &device, dtype), &worst_case, &device, gpu)?;
    memory.lines.iter().for_each(|l| say(l.clone()));
    let plan = memory.plan;
    say(format!(
        "masking: {:.0} % of residues, {:.0} % <mask> / {:.0} % random residue / {:.0} % unchanged; \
         evaluation mask seed {}",
        100.0 * cfg.masking.select,
        100.0 * cfg.masking.mask,
        100.0 * cfg.masking.random,
        100.0 * (1.0 - cfg.masking.mask - cfg.masking.random),
        cfg.eval_mask_seed
    ));
    say(format!(
        "schedule: {} epochs × {} batches of ≤ {} tokens (accumulate {}) = {} optimizer steps, peak lr {:e}, warm-up {} steps",
        cfg.training.epochs,
        batches_per_epoch,
        cfg.training.max_tokens,
        cfg.training.grad_accum,
        os.schedule.total,
        cfg.training.lr,
        os.schedule.warmup
    ));
    log.event(
        "start",
        json!({
            "task": "mlm", "data": cfg.data.describe(), "train_rows": sets.train_rows.len(),
            "eval_rows": sets.eval_rows.len(), "parameters": total_params, "trainable": trainable,
            "device": device.name(), "dtype": crate::train::device::compute_label(&device, dtype), "lora": cfg.lora.as_ref().map(LoraConfig::to_json),
            "epochs": cfg.training.epochs, "total_steps": os.schedule.total, "warmup": os.schedule.warmup,
            "lr": cfg.training.lr, "max_tokens": cfg.training.max_tokens, "max_len": cfg.max_len,
            "grad_accum": cfg.training.grad_accum, "seed": cfg.training.seed, "resumed_step": os.state.step,
            "memory_plan": plan.to_json(),
            "recompute": cfg.recompute.to_string(),
            "masking": { "select": cfg.masking.select, "mask": cfg.masking.mask, "random": cfg.masking.random },
            "eval_mask_seed": cfg.eval_mask_seed,
        }),
    )?;

    let mut task = MlmTask {
        model,
        sets,
        bcfg,
        lens,
        masking: cfg.masking,
        eval_mask_seed: cfg.eval_mask_seed,
        device,
        plan: Vec::new(),
        epoch: 0,
        progress: cfg.training.progress,
        last_eval: None,
        last_eval_step: None,
    };
    let ls = super::driver::run(&mut task, &cfg.training, &mut os, &mut log, &say)?;
    // A run that reached --max-steps inside an epoch is evaluated where it ended (the loop
    // evaluates at epoch ends only); an interrupted one (--stop-after) is not.
    let interrupted = cfg.training.stop_after.is_some_and(|m| ls.steps >= m);
    let reached_max = cfg.training.max_steps.is_some_and(|m| ls.steps >= m);
    if reached_max && !interrupted && task.last_eval_step != Some(ls.steps) {
        if let Some((fields, line)) = task.evaluate(ls.epochs_done, ls.steps)? {
            log.event("eval", fields)?;
            say(format!("step {}: {line}", ls.steps));
        }
    }
    let model_dir = cfg.training.output.join("model");
    write_dir_atomically(&model_dir, |d| task.model.save(d, SaveMode::Merged))?;
    if task.model.lora().is_some() {
        write_adapter_dirs(
            &cfg.training.output,
            &cfg.model,
            |d| task.model.save(d, SaveMode::BaseOnly),
            |d, base| task.model.save_adapters(d, base),
        )?;
    }
    let summary = MlmTrainSummary {
        steps: ls.steps,
        final_train_loss: ls.final_train_loss,
        eval: task.last_eval.clone(),
        seconds: t_start.elapsed().as_secs_f64(),
        train_tokens_per_s: ls.run_tokens as f64 / ls.train_seconds,
        model_dir: model_dir.clone(),
    };
    let (peak, peak_line) = peak_report(&task.device, &plan);
    peak_line.into_iter().for_each(&say);
    log.event(
        "end",
        json!({
            "steps": summary.steps, "train_loss": summary.final_train_loss,
            "eval": summary.eval, "seconds": summary.seconds,
            "train_tokens_per_s": summary.train_tokens_per_s, "model_dir": model_dir,
            "peak_memory_bytes": peak, "planned_memory_bytes": plan.total(),
        }),
    )?;
    say(format!(
        "done in {:.1} s: {} steps, {:.0} tokens/s; model saved to {}",
        summary.seconds,
        summary.steps,
        summary.train_tokens_per_s,
        model_dir.display()
    ));
    Ok(summary)
}

/// Masked rows a batch of `tokens` tokens can hold: each token is selected with
/// probability `select` (a Bernoulli draw), so the count is binomial; the plan takes its
/// mean plus five standard deviations (exceeded about once in 3.5 million batches).
fn masked_rows_bound(tokens: usize, select: f64) -> usize {
    let (n, p) = (tokens as f64, select.clamp(0.0, 1.0));
    ((n * p + 5.0 * (n * p * (1.0 - p)).sqrt()).ceil() as usize).min(tokens)
}

/// The memory plan of this run's worst-case micro-batch (sequences of `max_len` tokens
/// filling `max_tokens`); the head reads the masked rows and predicts the vocabulary.
fn memory_plan(
    cfg: &MlmTrainConfig,
    recompute: Recompute,
    model: &MaskedLm,
    device: &Device,
    dtype: DType,
) -> Result<MemoryPlan> {
    let opts = PlanOptions {
        cuda: !device.is_cpu(),
        compute: dtype,
        optimizer: cfg.training.optim.kind,
        recompute,
        contacts: false,
    };
    let batch = BatchShape::full(cfg.training.max_tokens, cfg.max_len.min(cfg.training.max_tokens))
        .with_head_rows(masked_rows_bound(cfg.training.max_tokens, cfg.masking.select));
    let vocab = model.config().vocab_size;
    MemoryPlan::new(model.config(), &param_specs_of(&model.params), cfg.lora.as_ref(), vocab, &opts, &batch)
}

/// Load an MLM model directory for evaluation (its head must be in the file).
pub fn load_mlm_model(dir: &Path, device: &Device) -> Result<MaskedLm> {
    let (mut model, report) = MaskedLm::from_pretrained(dir, 0)?;
    if report.fresh.iter().any(|n| n.starts_with(crate::model::mlm::LM_HEAD_PREFIX)) {
        bail!(
            "{}: the checkpoint has no masked-language-model head (lm_head.*); evaluate an EsmForMaskedLM directory, \
             e.g. the `model/` of `qf-engine train --task mlm`",
            dir.display()
        );
    }
    model.params.to_device(device)?;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::masked_rows_bound;

    #[test]
    fn masked_rows_bound_is_the_binomial_mean_plus_five_deviations() {
        // 1,024 tokens at 15 %: mean 153.6, sd √(1024·0.15·0.85) = 11.43 → 210.7.
        assert_eq!(masked_rows_bound(1024, 0.15), 211);
        assert_eq!(masked_rows_bound(10, 1.0), 10);
        assert_eq!(masked_rows_bound(0, 0.15), 0);
    }
}
