//! The optimisation loop shared by every training task (family classification, contact
//! prediction).
//!
//! A task says how many micro-batches an epoch has (its plan is a pure function of the
//! seed and the epoch, so a resumed run replays it), runs the forward and backward of one
//! micro-batch, evaluates at the end of an epoch and writes its model into a checkpoint.
//! The loop does the rest: gradients of `grad_accum` micro-batches are summed, then
//! clipped by global norm and applied by AdamW (fp32 or 8-bit) with linear warm-up and
//! decay; fp16 runs use dynamic loss scaling; a `step` line goes to `metrics.jsonl` every
//! `log_every` steps; checkpoints (model + optimizer state + position in the data) are
//! written atomically every `save_every` steps, at `max_steps`/`stop_after`, and after
//! every epoch; and [`init_optimizer`] restores all of it from a checkpoint, so that an
//! interrupted run continues exactly where it left off.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::device::{DeviceChoice, Precision};
use super::log::{progress_bar, MetricsLog};
use super::state::{latest_checkpoint, load_state, remove_interrupted_writes, save_checkpoint, TrainState};
use crate::autograd::{Grads, Tape};
use crate::backend::cuda::{self, nvtx};
use crate::data::rng::splitmix64;
use crate::model::Params;
use crate::optim::{LinearSchedule, LossScaler, OptimConfig, Optimizer};
use crate::tensor::DType;

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

/// The model to start from.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSource {
    /// Random initialisation of a preset (`esm2_t6_8M`, …).
    Preset(String),
    /// A Hugging Face checkpoint directory.
    Pretrained(PathBuf),
}

impl ModelSource {
    pub fn describe(&self) -> String {
        match self {
            ModelSource::Preset(p) => format!("{p} (random initialisation)"),
            ModelSource::Pretrained(d) => d.display().to_string(),
        }
    }
}

/// Settings of the optimisation loop.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    pub output: PathBuf,
    pub epochs: u64,
    /// Train for this many optimizer steps in all (the schedule's horizon) instead of
    /// `epochs` full epochs.
    pub max_steps: Option<u64>,
    /// Stop after this many optimizer steps, saving a checkpoint, as if the run were
    /// interrupted there (`resume` continues it).
    pub stop_after: Option<u64>,
    pub grad_accum: usize,
    pub lr: f64,
    pub warmup: Warmup,
    pub optim: OptimConfig,
    pub seed: u64,
    /// Save a checkpoint every this many optimizer steps (and at each epoch end).
    pub save_every: Option<u64>,
    pub keep_checkpoints: usize,
    pub log_every: u64,
    pub progress: bool,
    /// Token budget of a micro-batch (named in out-of-memory errors).
    pub max_tokens: usize,
}

/// What one micro-batch did.
#[derive(Clone, Copy, Debug, Default)]
pub struct MicroBatch {
    pub loss: f64,
    pub tokens: u64,
    pub seqs: u64,
}

/// What the loop needs from a task.
pub trait Task {
    fn params(&self) -> &Params;
    fn params_mut(&mut self) -> &mut Params;
    /// Plan epoch `epoch` and return its number of micro-batches.
    fn plan_epoch(&mut self, epoch: u64) -> Result<usize>;
    /// Forward and backward of micro-batch `index` of the planned epoch on `tape`, the
    /// gradient seeded with `loss_scale` and accumulated into `grads`.
    fn micro_batch(&mut self, index: usize, tape: Tape, loss_scale: f32, grads: &mut Grads) -> Result<MicroBatch>;
    /// End-of-epoch evaluation: the fields of the `eval` log event and a console summary.
    fn evaluate(&mut self, epoch: u64, step: u64) -> Result<Option<(Value, String)>>;
    /// Write the model (resumable form) into a checkpoint directory.
    fn write_checkpoint_model(&self, dir: &Path) -> Result<()>;
}

/// What every training task opens first.
pub struct RunStart {
    pub device: crate::tensor::Device,
    pub dtype: DType,
    pub log: MetricsLog,
}

/// Open the device, create `output` and its `metrics.jsonl`, and say the device note; the
/// returned `say` prints a line when `verbose`.
pub fn start_run(
    choice: &DeviceChoice,
    precision: Precision,
    output: &Path,
    verbose: bool,
) -> Result<(RunStart, impl Fn(String) + Copy)> {
    let (device, dtype, device_note) = super::device::open(choice, precision)?;
    std::fs::create_dir_all(output).with_context(|| format!("creating {}", output.display()))?;
    let log = MetricsLog::open(Some(&output.join("metrics.jsonl")))?;
    let say = move |s: String| {
        if verbose {
            println!("{s}");
        }
    };
    if let Some(n) = device_note {
        say(n);
    }
    Ok((RunStart { device, dtype, log }, say))
}

/// The line a LoRA run prints about its adapters; `frozen` says what else is frozen.
pub fn lora_line(l: &crate::model::lora::LoraConfig, frozen: &str) -> String {
    format!(
        "LoRA: rank {}, alpha {}, dropout {} on {} of every layer; {frozen}",
        l.rank,
        l.alpha,
        l.dropout,
        l.targets.join(", ")
    )
}

/// The latest checkpoint of `output` when resuming (an error when there is none).
pub fn resume_dir(output: &Path, resume: bool) -> Result<Option<PathBuf>> {
    remove_interrupted_writes(output)?;
    if !resume {
        return Ok(None);
    }
    match latest_checkpoint(output)? {
        Some(dir) => Ok(Some(dir)),
        None => bail!("--resume: {} has no checkpoint to resume from", output.display()),
    }
}

/// Seed of the dropout masks of one micro-batch.
pub fn micro_seed(seed: u64, micro_step: u64) -> u64 {
    let mut s = seed ^ micro_step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    splitmix64(&mut s)
}

/// The optimizer state of a run: the optimizer, the loss scaler, the schedule and where
/// the run stands (restored from `resume_from` when given).
pub struct OptimState {
    pub optimizer: Optimizer,
    pub scaler: LossScaler,
    pub schedule: LinearSchedule,
    pub state: TrainState,
    pub batches_per_epoch: u64,
}

/// Build the schedule for `batches_per_epoch` micro-batches per epoch and the optimizer,
/// restoring both (and the position in the data) from a checkpoint directory.
pub fn init_optimizer(
    cfg: &LoopConfig,
    params: &Params,
    batches_per_epoch: u64,
    dtype: DType,
    resume_from: Option<&Path>,
) -> Result<OptimState> {
    if cfg.grad_accum == 0 || cfg.epochs == 0 {
        bail!("--epochs and --grad-accum must be at least 1");
    }
    let steps_per_epoch = batches_per_epoch.div_ceil(cfg.grad_accum as u64);
    let total_steps = cfg.max_steps.unwrap_or(steps_per_epoch * cfg.epochs).max(1);
    let warmup = match cfg.warmup {
        Warmup::Steps(s) => s,
        Warmup::Fraction(f) => (f * total_steps as f64).round() as u64,
    };
    let schedule = LinearSchedule { peak_lr: cfg.lr, warmup, total: total_steps };
    let mut optimizer = Optimizer::new(cfg.optim.clone());
    let mut scaler = if dtype == DType::F16 { LossScaler::new() } else { LossScaler::disabled() };
    let mut state = TrainState {
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
    if let Some(dir) = resume_from {
        let (saved, file) = load_state(dir)?;
        optimizer.load_state(&file, params, saved.step)?;
        scaler = saved.loss_scaler.clone();
        state = saved;
    }
    Ok(OptimState { optimizer, scaler, schedule, state, batches_per_epoch })
}

/// What the loop did.
#[derive(Clone, Debug)]
pub struct LoopSummary {
    pub steps: u64,
    pub epochs_done: u64,
    /// Mean loss of the last epoch (of its micro-batches run, when the run stopped inside it).
    pub final_train_loss: f64,
    /// Tokens and sequences of this invocation (a resumed run counts from its restart).
    pub run_tokens: u64,
    pub run_seqs: u64,
    /// Tokens over the whole run, resumptions included.
    pub tokens_seen: u64,
    pub train_seconds: f64,
}

/// Statistics between two `step` log lines.
struct Window {
    since: Instant,
    seqs: u64,
    tokens: u64,
    loss_sum: f64,
    micro_batches: u64,
}

impl Window {
    fn new() -> Self {
        Window { since: Instant::now(), seqs: 0, tokens: 0, loss_sum: 0.0, micro_batches: 0 }
    }
}

/// Run the epochs (see the module documentation). `say` prints a console line.
pub fn run<T: Task>(
    task: &mut T,
    cfg: &LoopConfig,
    os: &mut OptimState,
    log: &mut MetricsLog,
    say: &dyn Fn(String),
) -> Result<LoopSummary> {
    let OptimState { optimizer, scaler, schedule, state: st, .. } = os;
    let mut grads = Grads::new();
    let mut last_loss = f64::NAN;
    let elapsed_before = st.elapsed_s;
    let t_train = Instant::now();
    let (mut run_tokens, mut run_seqs) = (0u64, 0u64);
    let mut window = Window::new();
    let mut stop = false;
    let mut micro_in_step = 0usize;

    while st.epoch < cfg.epochs && !stop {
        let n_batches = task.plan_epoch(st.epoch)?;
        let bar = progress_bar(n_batches as u64, &format!("epoch {}/{}", st.epoch + 1, cfg.epochs), cfg.progress);
        bar.set_position(st.batch_in_epoch as u64);
        let epoch_t0 = Instant::now();
        let (mut ep_loss, mut ep_batches) = (0.0f64, 0u64);
        while st.batch_in_epoch < n_batches {
            let tape = Tape::with_seed(micro_seed(cfg.seed, st.micro_step));
            let mb = task.micro_batch(st.batch_in_epoch, tape, scaler.scale as f32, &mut grads)?;
            st.micro_step += 1;
            st.batch_in_epoch += 1;
            micro_in_step += 1;
            st.tokens_seen += mb.tokens;
            st.seqs_seen += mb.seqs;
            run_tokens += mb.tokens;
            run_seqs += mb.seqs;
            window.seqs += mb.seqs;
            window.tokens += mb.tokens;
            window.loss_sum += mb.loss;
            window.micro_batches += 1;
            ep_loss += mb.loss;
            ep_batches += 1;
            bar.inc(1);

            let end_of_epoch = st.batch_in_epoch == n_batches;
            if micro_in_step == cfg.grad_accum || end_of_epoch {
                let lr = schedule.lr(st.step);
                let inv = 1.0 / (scaler.scale * micro_in_step as f64);
                let stats = {
                    let _r = nvtx::optimizer("optimizer");
                    optimizer
                        .step(task.params_mut(), &grads, lr, inv)
                        .map_err(|e| cuda::device::with_budget_hint(e, cfg.max_tokens))?
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
                    let dt = window.since.elapsed().as_secs_f64().max(1e-9);
                    let mean_loss = window.loss_sum / window.micro_batches.max(1) as f64;
                    bar.set_message(format!("loss {mean_loss:.4} {:.1} seq/s", window.seqs as f64 / dt));
                    log.event(
                        "step",
                        json!({
                            "step": st.step, "epoch": st.epoch, "loss": mean_loss, "lr": lr, "grad_norm": stats.grad_norm,
                            "skipped": stats.skipped, "loss_scale": scaler.scale, "overflow_steps": scaler.skipped,
                            "scale_growths": scaler.grown,
                            "sequences_per_s": window.seqs as f64 / dt, "tokens_per_s": window.tokens as f64 / dt,
                            "tokens_seen": st.tokens_seen,
                        }),
                    )?;
                    window = Window::new();
                }
                let at_max =
                    cfg.max_steps.is_some_and(|m| st.step >= m) || cfg.stop_after.is_some_and(|m| st.step >= m);
                let periodic = cfg.save_every.is_some_and(|e| e > 0 && st.step % e == 0);
                if at_max || periodic {
                    st.elapsed_s = elapsed_before + t_train.elapsed().as_secs_f64();
                    let dir = save_checkpoint(&cfg.output, st, optimizer, cfg.keep_checkpoints, |d| {
                        task.write_checkpoint_model(d)
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
        if stop && st.batch_in_epoch < n_batches {
            if ep_batches > 0 {
                last_loss = ep_loss / ep_batches as f64;
            }
            break;
        }
        last_loss = ep_loss / ep_batches.max(1) as f64;
        let ep_secs = epoch_t0.elapsed().as_secs_f64();
        let head = format!("epoch {}/{}: train loss {last_loss:.4} ({ep_secs:.1} s)", st.epoch + 1, cfg.epochs);
        match task.evaluate(st.epoch, st.step)? {
            Some((fields, line)) => {
                log.event("eval", fields)?;
                say(format!("{head} — {line}"));
            }
            None => say(head),
        }
        st.epoch += 1;
        st.batch_in_epoch = 0;
        st.elapsed_s = elapsed_before + t_train.elapsed().as_secs_f64();
        let dir =
            save_checkpoint(&cfg.output, st, optimizer, cfg.keep_checkpoints, |d| task.write_checkpoint_model(d))?;
        log.event("checkpoint", json!({ "step": st.step, "epoch": st.epoch, "path": dir }))?;
    }
    Ok(LoopSummary {
        steps: st.step,
        epochs_done: st.epoch,
        final_train_loss: last_loss,
        run_tokens,
        run_seqs,
        tokens_seen: st.tokens_seen,
        train_seconds: t_train.elapsed().as_secs_f64().max(1e-9),
    })
}

/// Replace `dir` by what `write` puts into a fresh directory beside it (atomic for readers
/// of `dir`: it is either the old or the new model, never half of one).
pub fn write_dir_atomically(dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("model");
    let parent = dir.parent().unwrap_or(Path::new("."));
    let tmp = parent.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    write(&tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("moving {} into place", dir.display()))?;
    Ok(())
}

/// The LoRA outputs of a run: `output/adapter` (PEFT layout) and, when the base was a
/// random-initialised preset that exists nowhere else, `output/base` (the frozen base the
/// adapter applies to). `write_adapter` receives the base's name or path.
pub fn write_adapter_dirs(
    output: &Path,
    source: &ModelSource,
    write_base: impl FnOnce(&Path) -> Result<()>,
    write_adapter: impl FnOnce(&Path, &str) -> Result<()>,
) -> Result<()> {
    let base = match source {
        ModelSource::Preset(_) => {
            let dir = output.join("base");
            write_dir_atomically(&dir, write_base)?;
            dir.display().to_string()
        }
        ModelSource::Pretrained(d) => d.display().to_string(),
    };
    write_dir_atomically(&output.join("adapter"), |d| write_adapter(d, &base))
}
