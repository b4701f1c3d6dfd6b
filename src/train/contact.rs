//! `qf-engine train --task contact`: residue-residue contact prediction as in the
//! ContactProject report (`../shared/seeds/002_*.txt`), done properly.
//!
//! * **Model**: ESM-2 (a preset from random initialisation, or a Hugging Face checkpoint)
//!   with fair-esm's contact head over the attention maps of every layer and head
//!   (`model::contact_model`). By default LoRA adapters (query + value, r = 8, α = 8,
//!   dropout 0.05) are trained with every encoder weight frozen, plus the contact head
//!   (`head_trainable`; the report froze its pretrained head, but here the head usually
//!   starts random). Without LoRA every weight trains.
//! * **Data**: chains of the prepared contact set (`train` → `valid`) or of PDB/mmCIF files.
//!   Each epoch every chain longer than the crop is cut to a random window of `crop`
//!   residues (every start possible, drawn anew each epoch) that keeps its true rotary
//!   positions (`data::contact_batching`); `crop = 0` trains on whole chains (chains longer
//!   than `max_len` tokens are cropped to that window). Items are packed into batches of at
//!   most `max_tokens` tokens, without padding.
//! * **Loss**: binary cross-entropy of the contact logits against C-beta contacts (< 8 Å),
//!   averaged over the pairs of the batch with |i − j| ≥ `min_sep` and known coordinates,
//!   each unordered pair once.
//! * **Budget**: `token_budget` sets the run's length in training tokens (`<cls>`/`<eos>`
//!   included): the schedule's horizon is the number of optimizer steps that the first
//!   epoch's plan needs for that many tokens, so runs with different crops can be compared
//!   at the same budget (the tokens actually seen are logged).
//! * **Evaluation** after every epoch (and at the end of the run) on whole proteins
//!   (`train::contact_eval`: windows merged beyond `max_len`), logged to `metrics.jsonl`
//!   and written to `eval.json`; the optimisation loop, checkpoints and resumption are the
//!   shared ones of `train::driver`.
//! * **Output**: `model/` (Hugging Face, adapters merged: `EsmModel` with its contact head),
//!   with LoRA also `adapter/` (PEFT adapter + head) and, for a random-initialised preset,
//!   `base/` (the frozen base the adapter applies to).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::contact_eval::{evaluate_contacts, ContactEval};
use super::device::{DeviceChoice, Precision};
use super::driver::{
    init_optimizer, resume_dir, run, start_run, write_adapter_dirs, write_dir_atomically, LoopConfig, MicroBatch,
    ModelSource, RunStart, Task, Warmup,
};
use super::log::progress_bar;
use crate::autograd::{Grads, Tape};
use crate::data::batching::{training_plan, BatchConfig, PlannedBatch};
use crate::data::contact_batching::{pack_crops, pair_targets, ContactCorpus};
use crate::data::contacts::CONTACT_CUTOFF;
use crate::data::rng::Rng;
use crate::model::contact_model::Trainable;
use crate::model::lora::{LoraConfig, SaveMode};
use crate::model::{ContactModel, EsmConfig, ModelInputs, Params};
use crate::optim::OptimConfig;
use crate::tensor::{DType, Device, Tensor};

/// Where contact training data comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum ContactData {
    /// The prepared contact set: `<dir>/<split>.{fasta,safetensors}`.
    Prepared { dir: PathBuf, train_split: String, eval_split: Option<String> },
    /// Structure files (`file.pdb`, `file.cif:A`, …).
    Structures { train: Vec<String>, eval: Vec<String> },
}

impl ContactData {
    pub fn describe(&self) -> String {
        match self {
            ContactData::Prepared { dir, train_split, eval_split } => match eval_split {
                Some(e) => format!("contact set {} ({train_split} → {e})", dir.display()),
                None => format!("contact set {} ({train_split})", dir.display()),
            },
            ContactData::Structures { train, eval } => {
                format!("{} training structure(s), {} evaluation structure(s)", train.len(), eval.len())
            }
        }
    }

    fn open(&self) -> Result<(ContactCorpus, Option<ContactCorpus>)> {
        match self {
            ContactData::Prepared { dir, train_split, eval_split } => {
                let train = ContactCorpus::open_split(dir, train_split)?;
                let eval = eval_split.as_ref().map(|s| ContactCorpus::open_split(dir, s)).transpose()?;
                Ok((train, eval))
            }
            ContactData::Structures { train, eval } => {
                let t = ContactCorpus::from_structures(train)?;
                let e = if eval.is_empty() { None } else { Some(ContactCorpus::from_structures(eval)?) };
                Ok((t, e))
            }
        }
    }
}

/// Everything a contact run needs.
#[derive(Clone, Debug)]
pub struct ContactTrainConfig {
    pub data: ContactData,
    pub model: ModelSource,
    /// The optimisation loop (output directory, epochs or steps, token budget of a
    /// micro-batch, learning rate, optimizer, seed, checkpoints, logging); with a
    /// `token_budget` the run's epochs and horizon come from the budget instead.
    pub training: LoopConfig,
    /// LoRA adapters (base frozen); `None` trains every weight.
    pub lora: Option<LoraConfig>,
    pub head_trainable: bool,
    /// Random crop in residues; 0 = whole chains (up to `max_len` tokens).
    pub crop: usize,
    /// Window in tokens for whole-chain training and for evaluation.
    pub max_len: usize,
    pub min_sep: usize,
    /// Training tokens of the run (sets the horizon); `None`: `epochs` full epochs.
    pub token_budget: Option<u64>,
    pub device: DeviceChoice,
    pub precision: Precision,
    pub resume: bool,
    /// Proteins of the evaluation split scored after each epoch (a seeded sample).
    pub eval_limit: Option<usize>,
    pub verbose: bool,
}

impl ContactTrainConfig {
    /// Defaults: ESM-2 8M from random initialisation, LoRA as ContactProject (query + value,
    /// r = 8, α = 8, dropout 0.05) with a trainable head, 200-residue crops, |i − j| ≥ 6.
    pub fn new(data: ContactData, output: PathBuf) -> Self {
        ContactTrainConfig {
            data,
            model: ModelSource::Preset("esm2_t6_8M".into()),
            training: LoopConfig {
                output,
                epochs: 1,
                max_steps: None,
                stop_after: None,
                grad_accum: 1,
                lr: 1e-3,
                warmup: Warmup::Fraction(0.05),
                optim: OptimConfig { weight_decay: 0.0, ..OptimConfig::default() },
                seed: 42,
                save_every: None,
                keep_checkpoints: 2,
                log_every: 10,
                progress: true,
                max_tokens: 4096,
            },
            lora: Some(LoraConfig::default()),
            head_trainable: true,
            crop: 200,
            max_len: 1024,
            min_sep: 6,
            token_budget: None,
            device: DeviceChoice::Auto,
            precision: Precision::Auto,
            resume: false,
            eval_limit: None,
            verbose: true,
        }
    }

    /// The window of a training item in tokens.
    fn train_window(&self) -> usize {
        if self.crop == 0 {
            self.max_len
        } else {
            self.crop + 2
        }
    }
}

/// What a contact run achieved.
#[derive(Clone, Debug)]
pub struct ContactTrainSummary {
    pub steps: u64,
    pub epochs_done: u64,
    pub final_train_loss: f64,
    pub tokens_seen: u64,
    pub eval: Option<ContactEval>,
    pub seconds: f64,
    pub train_tokens_per_s: f64,
    pub model_dir: PathBuf,
    pub trainable: usize,
}

/// The contact task of the shared training loop.
struct ContactTask {
    model: ContactModel,
    train: ContactCorpus,
    eval: Option<ContactCorpus>,
    train_rows: Vec<usize>,
    eval_rows: Vec<usize>,
    lens: Vec<u32>,
    train_bcfg: BatchConfig,
    eval_bcfg: BatchConfig,
    min_sep: usize,
    device: Device,
    plan: Vec<PlannedBatch>,
    progress: bool,
    last_eval: Option<(u64, ContactEval)>,
    trainable: Trainable,
}

impl ContactTask {
    fn run_eval(&mut self, step: u64) -> Result<Option<&ContactEval>> {
        let Some(corpus) = &self.eval else { return Ok(None) };
        if self.eval_rows.is_empty() {
            return Ok(None);
        }
        let bar = progress_bar(0, "  eval", self.progress);
        let r =
            evaluate_contacts(&self.model, corpus, &self.eval_rows, &self.eval_bcfg, self.min_sep, &self.device, &bar)?;
        bar.finish_and_clear();
        self.last_eval = Some((step, r));
        Ok(self.last_eval.as_ref().map(|(_, e)| e))
    }
}

/// One-line summary of an evaluation.
pub fn eval_line(e: &ContactEval) -> String {
    let show = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.3}"));
    format!(
        "eval MCC {} per protein ({} proteins), pooled {}; long-range P@L {} P@L/5 {}; loss {:.4}",
        show(e.report.mcc_mean),
        e.report.mcc_proteins,
        show(e.report.mcc_pooled),
        show(e.long_p_at_l()),
        show(e.report.precision.iter().find(|r| r.range == "long").and_then(|r| r.p_at_l5)),
        e.loss
    )
}

fn eval_fields(e: &ContactEval, epoch: u64, step: u64) -> Value {
    json!({
        "epoch": epoch, "step": step, "mcc": e.report.mcc_mean, "mcc_pooled": e.report.mcc_pooled,
        "long_p_at_l": e.long_p_at_l(), "loss": e.loss, "proteins": e.report.proteins,
        "mcc_degenerate": e.report.mcc_degenerate, "precision": e.report.precision,
        "windowed_proteins": e.windowed_proteins, "uncovered_pairs": e.uncovered_pairs, "seconds": e.seconds,
    })
}

impl Task for ContactTask {
    fn params(&self) -> &Params {
        &self.model.params
    }

    fn params_mut(&mut self) -> &mut Params {
        &mut self.model.params
    }

    fn plan_epoch(&mut self, epoch: u64) -> Result<usize> {
        self.plan = training_plan(&self.train_rows, &self.lens, &self.train_bcfg, epoch)?;
        Ok(self.plan.len())
    }

    fn micro_batch(&mut self, index: usize, tape: Tape, loss_scale: f32, grads: &mut Grads) -> Result<MicroBatch> {
        let items = &self.plan[index].items;
        let packed = pack_crops(items, &self.train)?;
        let inp = ModelInputs::new(&packed, self.model.config(), &self.device, DType::F32)?;
        let t = pair_targets(items, &self.train, CONTACT_CUTOFF, self.min_sep)?;
        let n = t.targets.len();
        let targets = Tensor::from_f32(t.targets, &[n], DType::F32, &self.device)?;
        let mask = Tensor::from_f32(t.mask, &[n], DType::F32, &self.device)?;
        let (_, loss) = self.model.forward_loss(&tape, &inp, &targets, &mask)?;
        tape.backward_scaled(&loss, loss_scale, grads)?;
        Ok(MicroBatch {
            loss: loss.scalar_f32()? as f64,
            tokens: packed.n_tokens() as u64,
            seqs: packed.n_seqs() as u64,
        })
    }

    fn evaluate(&mut self, epoch: u64, step: u64) -> Result<Option<(Value, String)>> {
        Ok(self.run_eval(step)?.map(|e| (eval_fields(e, epoch, step), eval_line(e))))
    }

    fn write_checkpoint_model(&self, dir: &Path) -> Result<()> {
        self.model.save(dir, SaveMode::Unmerged)
    }
}

/// Build, load or resume the model, with adapters attached and parameters frozen as asked.
fn build_model(cfg: &ContactTrainConfig, resume_from: Option<&Path>) -> Result<(ContactModel, String)> {
    let (mut model, note) = match (resume_from, &cfg.model) {
        (Some(dir), _) => {
            (ContactModel::from_pretrained(dir, cfg.training.seed)?.0, format!("resuming from {}", dir.display()))
        }
        (None, ModelSource::Preset(name)) => (
            ContactModel::new_random(&EsmConfig::preset(name)?, cfg.training.seed)?,
            format!("{name}, random initialisation"),
        ),
        (None, ModelSource::Pretrained(dir)) => {
            let (m, report) = ContactModel::from_pretrained(dir, cfg.training.seed)?;
            let fresh = if report.fresh.is_empty() { "none".into() } else { report.fresh.join(", ") };
            (m, format!("loaded {} tensors from {}; initialised fresh: {fresh}", report.loaded, dir.display()))
        }
    };
    if let Some(l) = &cfg.lora {
        model.enable_lora(l, cfg.training.seed)?;
    }
    model.set_trainable(Trainable { lora: cfg.lora.is_some(), head: cfg.head_trainable })?;
    Ok((model, note))
}

/// A seeded sample of `limit` rows of `0..n` (all rows without a limit), in row order.
fn sample_rows(n: usize, limit: Option<usize>, seed: u64) -> Vec<usize> {
    let mut rows: Vec<usize> = (0..n).collect();
    if let Some(limit) = limit.filter(|&l| l < n) {
        Rng::from_words(&[seed, 0xE7A1]).shuffle(&mut rows);
        rows.truncate(limit);
        rows.sort_unstable();
    }
    rows
}

/// Optimizer steps (and epochs) that spend `budget` training tokens with `plan0`'s
/// tokens per micro-batch.
fn steps_for_budget(budget: u64, plan0: &[PlannedBatch], grad_accum: usize) -> (u64, u64) {
    let epoch_tokens: u64 = plan0.iter().map(|b| b.n_tokens() as u64).sum::<u64>().max(1);
    let per_batch = epoch_tokens as f64 / plan0.len().max(1) as f64;
    let micro = (budget as f64 / per_batch).ceil() as u64;
    let steps = micro.div_ceil(grad_accum as u64).max(1);
    let epochs = budget.div_ceil(epoch_tokens) + 1;
    (steps, epochs)
}

/// Run a contact training job.
pub fn train_contacts(cfg: &ContactTrainConfig) -> Result<ContactTrainSummary> {
    let t_start = Instant::now();
    if cfg.crop == 1 {
        bail!("--crop must be 0 (whole chains) or at least 2 residues");
    }
    let (RunStart { device, dtype, mut log }, say) =
        start_run(&cfg.device, cfg.precision, &cfg.training.output, cfg.verbose)?;

    let (train, eval) = cfg.data.open()?;
    if train.is_empty() {
        bail!("the training set is empty: no chains to train on");
    }
    let eval_rows = eval.as_ref().map(|e| sample_rows(e.len(), cfg.eval_limit, cfg.training.seed)).unwrap_or_default();
    say(format!(
        "data: {} — {} training chains ({} residues){}",
        cfg.data.describe(),
        train.len(),
        train.residues(),
        eval.as_ref().map(|e| format!(", {} of {} evaluation chains", eval_rows.len(), e.len())).unwrap_or_default()
    ));

    let resume_from = resume_dir(&cfg.training.output, cfg.resume)?;
    let (mut model, note) = build_model(cfg, resume_from.as_deref())?;
    say(format!("model: {note}"));
    model.params.to_device(&device)?;
    let (total_params, trainable) = model.params.counts();
    let lora_line = match model.lora() {
        Some(l) => format!(
            "LoRA rank {}, alpha {}, dropout {} on {} of every layer, encoder frozen",
            l.rank,
            l.alpha,
            l.dropout,
            l.targets.join(", ")
        ),
        None => "every encoder weight trains".to_string(),
    };
    say(format!(
        "parameters: {total_params} in all, {trainable} trainable ({lora_line}; contact head {})",
        if cfg.head_trainable { "trainable" } else { "frozen" }
    ));

    let train_rows: Vec<usize> = (0..train.len()).collect();
    let lens = train.token_lengths();
    let train_bcfg = BatchConfig::new(cfg.training.max_tokens, cfg.train_window(), cfg.training.seed)?;
    let eval_bcfg = BatchConfig::new(cfg.training.max_tokens.max(cfg.max_len), cfg.max_len, cfg.training.seed)?;
    let plan0 = training_plan(&train_rows, &lens, &train_bcfg, 0)?;
    let (max_steps, epochs) = match cfg.token_budget {
        Some(b) => {
            let (s, e) = steps_for_budget(b, &plan0, cfg.training.grad_accum);
            (Some(cfg.training.max_steps.map_or(s, |m| m.min(s))), e)
        }
        None => (cfg.training.max_steps, cfg.training.epochs),
    };
    let lcfg = LoopConfig { epochs, max_steps, ..cfg.training.clone() };
    let mut os = init_optimizer(&lcfg, &model.params, plan0.len() as u64, dtype, resume_from.as_deref())?;
    let epoch_tokens: usize = plan0.iter().map(PlannedBatch::n_tokens).sum();
    say(format!(
        "training: {} per item, {} batches of ≤ {} tokens per epoch ({} tokens){}; {} optimizer steps, peak lr {:e}, \
         warm-up {} steps; device {} ({dtype})",
        if cfg.crop == 0 {
            format!("whole chains (cropped at random beyond {} tokens)", cfg.max_len)
        } else {
            format!("random {}-residue crops at their true positions", cfg.crop)
        },
        plan0.len(),
        cfg.training.max_tokens,
        epoch_tokens,
        cfg.token_budget.map(|b| format!(", budget {b} tokens")).unwrap_or_default(),
        os.schedule.total,
        cfg.training.lr,
        os.schedule.warmup,
        device.name()
    ));
    log.event(
        "start",
        json!({
            "task": "contact", "data": cfg.data.describe(), "train_chains": train.len(), "eval_chains": eval_rows.len(),
            "model": cfg.model.describe(), "parameters": total_params, "trainable": trainable,
            "lora": model.lora().map(|l| l.to_json()), "head_trainable": cfg.head_trainable,
            "crop": cfg.crop, "max_len": cfg.max_len, "min_sep": cfg.min_sep, "max_tokens": cfg.training.max_tokens,
            "token_budget": cfg.token_budget, "epoch_tokens": epoch_tokens, "total_steps": os.schedule.total,
            "warmup": os.schedule.warmup, "lr": cfg.training.lr, "grad_accum": cfg.training.grad_accum, "seed": cfg.training.seed,
            "device": device.name(), "dtype": crate::train::device::compute_label(&device, dtype), "resumed_step": os.state.step,
        }),
    )?;

    let mut task = ContactTask {
        model,
        train,
        eval,
        train_rows,
        eval_rows,
        lens,
        train_bcfg,
        eval_bcfg,
        min_sep: cfg.min_sep,
        device,
        plan: plan0,
        progress: cfg.training.progress,
        last_eval: None,
        trainable: Trainable { lora: cfg.lora.is_some(), head: cfg.head_trainable },
    };
    let ls = run(&mut task, &lcfg, &mut os, &mut log, &say)?;

    // A run that stopped inside an epoch (token budget, max_steps) is evaluated at its end.
    if task.last_eval.as_ref().is_none_or(|(s, _)| *s != ls.steps) {
        if let Some(e) = task.run_eval(ls.steps)? {
            log.event("eval", eval_fields(e, ls.epochs_done, ls.steps))?;
            say(format!("after {} steps — {}", ls.steps, eval_line(e)));
        }
    }
    let eval = task.last_eval.as_ref().map(|(_, e)| e.clone());
    if let Some(e) = &eval {
        say(format!("{}\n{}", e.report, e.window_note()));
        std::fs::write(cfg.training.output.join("eval.json"), serde_json::to_string_pretty(e)?)?;
    }
    let model_dir = save_final(&task.model, cfg, task.trainable)?;
    let summary = ContactTrainSummary {
        steps: ls.steps,
        epochs_done: ls.epochs_done,
        final_train_loss: ls.final_train_loss,
        tokens_seen: ls.tokens_seen,
        eval: eval.clone(),
        seconds: t_start.elapsed().as_secs_f64(),
        train_tokens_per_s: ls.run_tokens as f64 / ls.train_seconds,
        model_dir: model_dir.clone(),
        trainable,
    };
    log.event(
        "end",
        json!({
            "steps": summary.steps, "epochs": summary.epochs_done, "train_loss": summary.final_train_loss,
            "tokens_seen": summary.tokens_seen, "seconds": summary.seconds,
            "train_tokens_per_s": summary.train_tokens_per_s, "model_dir": model_dir,
            "mcc": eval.as_ref().and_then(|e| e.report.mcc_mean), "mcc_pooled": eval.as_ref().and_then(|e| e.report.mcc_pooled),
            "long_p_at_l": eval.as_ref().and_then(ContactEval::long_p_at_l),
        }),
    )?;
    say(format!(
        "done in {:.1} s: {} steps, {} training tokens ({:.0} tokens/s); model saved to {}",
        summary.seconds,
        summary.steps,
        summary.tokens_seen,
        summary.train_tokens_per_s,
        model_dir.display()
    ));
    Ok(summary)
}

/// `output/model` (merged), and with LoRA `output/adapter` (+ `output/base` for a random
/// preset), each written atomically.
fn save_final(model: &ContactModel, cfg: &ContactTrainConfig, trainable: Trainable) -> Result<PathBuf> {
    let dir = cfg.training.output.join("model");
    write_dir_atomically(&dir, |d| model.save(d, SaveMode::Merged))?;
    if model.lora().is_some() {
        write_adapter_dirs(
            &cfg.training.output,
            &cfg.model,
            |d| model.save(d, SaveMode::BaseOnly),
            |d, base| model.save_adapters(d, trainable.head, base),
        )?;
    }
    Ok(dir)
}

/// Load a trained contact model (`<output>/model`, or any Hugging Face ESM-2 directory
/// with `esm.contact_head.regression.*`), optionally with a PEFT adapter directory on top,
/// adapters merged for inference, onto `device`.
pub fn load_contact_model(dir: &Path, adapter: Option<&Path>, device: &Device) -> Result<ContactModel> {
    let (mut model, report) = ContactModel::from_pretrained(dir, 0)?;
    if let Some(a) = adapter {
        if model.lora().is_some() {
            bail!(
                "{}: the model already carries adapters; give a model without them to apply {}",
                dir.display(),
                a.display()
            );
        }
        crate::model::lora::load_adapters(a, &mut model.esm, &mut model.params)?;
    }
    let head_missing = report.fresh.iter().any(|n| n.starts_with(crate::model::contact_model::CONTACT_HEAD_PREFIX));
    if head_missing && adapter.is_none() {
        bail!(
            "{}: the checkpoint has no contact head (esm.contact_head.regression.*); train one with \
             `qf-engine train --task contact`",
            dir.display()
        );
    }
    crate::model::lora::merge_into_base(&mut model.esm, &mut model.params)?;
    model.params.to_device(device)?;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::batching::PlanItem;

    fn batch(tokens: &[usize]) -> PlannedBatch {
        PlannedBatch {
            items: tokens.iter().map(|&t| PlanItem { row: 0, residue_start: 0, residue_len: t - 2 }).collect(),
        }
    }

    #[test]
    fn a_token_budget_becomes_steps_at_the_first_epochs_tokens_per_batch() {
        // 4 batches of 100 tokens per epoch: 1,000 tokens take 10 micro-batches.
        let plan: Vec<PlannedBatch> = (0..4).map(|_| batch(&[50, 50])).collect();
        assert_eq!(steps_for_budget(1000, &plan, 1), (10, 4));
        assert_eq!(steps_for_budget(1000, &plan, 4), (3, 4));
        assert_eq!(steps_for_budget(1, &plan, 1), (1, 2));
    }

    #[test]
    fn eval_samples_are_seeded_sorted_subsets() {
        let a = sample_rows(100, Some(10), 7);
        assert_eq!(a, sample_rows(100, Some(10), 7));
        assert_eq!(a.len(), 10);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(sample_rows(5, Some(10), 7), vec![0, 1, 2, 3, 4]);
        assert_eq!(sample_rows(5, None, 7).len(), 5);
    }
}
