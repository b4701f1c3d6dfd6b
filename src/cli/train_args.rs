//! `qf-engine train`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use super::common::{DeviceArgs, LoraArgs, WeightsArgs};

use qf_engine::data::class_weights::ClassWeighting;
use qf_engine::data::demo;
use qf_engine::data::masking::MaskingConfig;
use qf_engine::data::stratify::StratifySpec;
use qf_engine::model::{HeadKind, Pooling};
use qf_engine::optim::{OptimConfig, OptimizerKind};
use qf_engine::train::contact::{train_contacts, ContactData, ContactTrainConfig};
use qf_engine::train::driver::LoopConfig;
use qf_engine::train::mlm::{train_mlm, MlmData, MlmTrainConfig};
use qf_engine::train::{self, DataSource, ModelSource, TrainConfig, Warmup};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Task: `classify` (protein family), `contact` (residue-residue contacts) or `mlm`
    /// (masked-language-model training on unlabelled sequences: --data DIR or
    /// --train-file FASTA; saves a transformers EsmForMaskedLM).
    #[arg(long, default_value = "classify", value_name = "classify|contact|mlm")]
    pub task: String,

    /// MLM task: share of residues selected for the loss (ESM-2: 0.15); of those 80 %
    /// become <mask>, 10 % a random residue, 10 % stay unchanged.
    #[arg(long, default_value_t = 0.15, value_name = "P")]
    pub mask_prob: f64,

    /// MLM task: seed of the evaluation's masks, fixed so that numbers compare across runs.
    #[arg(long, default_value_t = 0)]
    pub eval_mask_seed: u64,

    /// Pfam random-split directory (train/, dev/, test/ CSV shards). Without --data,
    /// --train-file or --contacts, the built-in demo set is used.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,

    /// Split to evaluate on after each epoch: of --data (default `dev`) or of --contacts
    /// (default `valid`).
    #[arg(long, value_name = "SPLIT")]
    pub eval_split: Option<String>,

    /// Contact task: the prepared contact set directory (`train.{fasta,safetensors}`,
    /// `valid.…`), e.g. ../shared/data/contacts. Trains on `train`, evaluates on --eval-split.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["data", "train_file"])]
    pub contacts: Option<PathBuf>,

    /// Contact task: training structures instead of --contacts: PDB/mmCIF files (.gz
    /// accepted), `file.pdb:A` for one chain.
    #[arg(long, value_name = "FILE[:CHAIN]", num_args = 1.., conflicts_with = "contacts")]
    pub structures: Vec<String>,

    /// Contact task: evaluation structures (with --structures).
    #[arg(long, value_name = "FILE[:CHAIN]", num_args = 1..)]
    pub eval_structures: Vec<String>,

    /// Contact task: random crop length in residues, redrawn every epoch (true positions
    /// kept); 0 trains on whole chains (up to --max-len tokens).
    #[arg(long, default_value_t = 200)]
    pub crop: usize,

    /// Contact task: smallest sequence separation |i-j| of the pairs in the loss and metrics.
    #[arg(long, default_value_t = 6)]
    pub min_sep: usize,

    /// Contact task: `trainable` (default; the head starts random unless the checkpoint has one) or `frozen`.
    #[arg(long, default_value = "trainable")]
    pub contact_head: String,

    /// Contact task: training tokens of the run (e.g. 2000000, 2M, 500k); sets the
    /// schedule's length so that runs compare at the same budget. Default: --epochs.
    #[arg(long, value_name = "TOKENS")]
    pub token_budget: Option<String>,

    /// Fine-tune with LoRA adapters (base weights frozen). On by default for --task contact.
    #[arg(long)]
    pub lora: bool,

    /// Train every weight instead of LoRA adapters (--task contact).
    #[arg(long, conflicts_with = "lora")]
    pub no_lora: bool,

    #[command(flatten)]
    pub lora_shape: LoraArgs,

    /// Labelled training sequences: FASTA (`>name family`, .gz accepted) or Stockholm (.sto).
    /// For --task mlm: any FASTA (labels not needed); without --eval-file, a seeded 5 %
    /// (at most 5,000 sequences) is held out for evaluation.
    #[arg(long, value_name = "FILE", conflicts_with = "data")]
    pub train_file: Option<PathBuf>,

    /// Labelled evaluation sequences (same formats as --train-file).
    #[arg(long, value_name = "FILE", requires = "train_file")]
    pub eval_file: Option<PathBuf>,

    /// TSV of `name<TAB>family` labels for FASTA files whose headers carry none.
    #[arg(long, value_name = "TSV")]
    pub labels: Option<PathBuf>,

    /// Model preset for random initialisation: esm2_tiny, esm2_t6_8M, esm2_t12_35M,
    /// esm2_t30_150M, esm2_t33_650M, esm2_t36_3B, esm2_t48_15B.
    #[arg(long, value_name = "NAME", conflicts_with = "checkpoint")]
    pub preset: Option<String>,

    /// Hugging Face checkpoint directory to fine-tune (config.json + model.safetensors of
    /// EsmModel, EsmForMaskedLM or EsmForSequenceClassification), e.g. the `model/` of an
    /// earlier `--task mlm` run.
    #[arg(long, value_name = "DIR")]
    pub checkpoint: Option<PathBuf>,

    /// Built-in demo: train esm2_tiny from random weights instead of fine-tuning the
    /// built-in pretrained encoder (esm2_tiny after 30 minutes of MLM training on the Pfam
    /// training split's sequences, written to OUTPUT/pretrained_encoder/). --preset and
    /// --checkpoint also replace it.
    #[arg(long, conflicts_with_all = ["checkpoint", "data", "train_file"])]
    pub from_scratch: bool,

    /// Classification head: `esm` (HF EsmClassificationHead: dense → tanh → out_proj,
    /// loadable by transformers) or `linear`.
    #[arg(long, default_value = "esm")]
    pub head: String,

    /// Classification: the sequence vector the head reads: `cls` (the <cls> token, as
    /// Hugging Face EsmForSequenceClassification; loadable by transformers) or `mean` (the
    /// mean over residues, <cls>/<eos> left out; a qf-engine checkpoint that transformers'
    /// Auto classes refuse). Default: cls, or the pooling of --checkpoint; mean for the
    /// built-in demo set trained from random weights (--from-scratch or --preset: 64.0 %
    /// against 51.6 % in its 8 epochs).
    #[arg(long, value_name = "cls|mean")]
    pub pool: Option<String>,

    /// Dropout on the head's inputs.
    #[arg(long, default_value_t = 0.0)]
    pub head_dropout: f64,

    /// Output directory: metrics.jsonl, checkpoints/, model/.
    #[arg(long, short, value_name = "DIR")]
    pub output: Option<PathBuf>,

    #[arg(long)]
    pub epochs: Option<u64>,

    /// Stop after this many optimizer steps.
    #[arg(long)]
    pub max_steps: Option<u64>,

    /// Stop after this many optimizer steps with a checkpoint, as if interrupted; `--resume`
    /// continues the same run (the schedule is unchanged).
    #[arg(long)]
    pub stop_after: Option<u64>,

    /// Token budget per micro-batch (sequences are packed, no padding).
    #[arg(long, value_name = "TOKENS")]
    pub max_tokens: Option<usize>,

    /// Window in tokens (incl. <cls>/<eos>); longer proteins are randomly cropped in
    /// training and evaluated in overlapping windows whose logits (contact maps: pair
    /// probabilities) are averaged.
    #[arg(long, default_value_t = 1024)]
    pub max_len: usize,

    /// Micro-batches whose gradients are summed per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,

    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,

    /// Warm-up: a number of steps (`1000`) or a fraction of all steps (`0.06`).
    #[arg(long)]
    pub warmup: Option<String>,

    /// Decoupled weight decay (default 0.01; 0 for --task contact, as ContactProject's Adam).
    #[arg(long)]
    pub weight_decay: Option<f64>,

    /// Clip the global gradient norm (0 disables clipping).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,

    /// `adamw` (fp32 moments) or `adamw8bit` (blockwise 8-bit moments).
    #[arg(long, default_value = "adamw")]
    pub optimizer: String,

    /// Activation recomputation: `none` keeps every activation for the backward pass;
    /// `layer` keeps only each transformer layer's input and recomputes the layer in the
    /// backward pass (about a third more compute, a fraction of the activation memory;
    /// gradients are bit-identical).
    #[arg(long, default_value = "none", value_name = "none|layer")]
    pub recompute: String,

    /// Class weights of the cross-entropy: none, balanced (sklearn), tempered:ALPHA.
    #[arg(long, default_value = "none")]
    pub class_weights: String,

    /// Families to train on: all, top:N, or tiers like 1000x200,4000x50 (QuantaFold).
    #[arg(long, default_value = "all")]
    pub stratify: String,

    /// Evaluate on at most this many rows of the evaluation split (a seeded sample).
    #[arg(long)]
    pub eval_limit: Option<usize>,

    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    #[command(flatten)]
    pub device: DeviceArgs,

    #[command(flatten)]
    pub weights: WeightsArgs,

    /// Save a checkpoint every N optimizer steps (one is always saved per epoch).
    #[arg(long)]
    pub save_every: Option<u64>,

    /// Checkpoints to keep.
    #[arg(long, default_value_t = 2)]
    pub keep_checkpoints: usize,

    /// Continue the run in --output from its latest checkpoint.
    #[arg(long)]
    pub resume: bool,

    /// Log a metrics line every N optimizer steps.
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
}

impl TrainArgs {
    /// Override the loop settings the flags give (both tasks; `default_weight_decay` is
    /// the task's own when `--weight-decay` is absent).
    fn apply_loop_flags(&self, l: &mut LoopConfig, default_weight_decay: f64) -> Result<()> {
        if let Some(e) = self.epochs {
            l.epochs = e;
        }
        l.max_steps = self.max_steps;
        l.stop_after = self.stop_after;
        if let Some(t) = self.max_tokens {
            l.max_tokens = t;
        }
        l.grad_accum = self.grad_accum;
        if let Some(lr) = self.lr {
            l.lr = lr;
        }
        if let Some(w) = &self.warmup {
            l.warmup = w.parse::<Warmup>()?;
        }
        l.optim = OptimConfig {
            kind: self.optimizer.parse::<OptimizerKind>()?,
            weight_decay: self.weight_decay.unwrap_or(default_weight_decay),
            max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
            ..OptimConfig::default()
        };
        l.seed = self.seed;
        l.save_every = self.save_every;
        l.keep_checkpoints = self.keep_checkpoints;
        l.log_every = self.log_every;
        l.progress = !self.device.quiet;
        Ok(())
    }

    /// No --data and no --train-file: the built-in demo set.
    fn uses_builtin_data(&self) -> bool {
        self.data.is_none() && self.train_file.is_none()
    }

    /// The built-in demo fine-tunes the built-in pretrained encoder unless the run names
    /// its own data, model or `--from-scratch`.
    fn uses_builtin_encoder(&self) -> bool {
        self.uses_builtin_data() && self.preset.is_none() && self.checkpoint.is_none() && !self.from_scratch
    }

    /// The run configuration: the built-in demo's settings, overridden by the flags given.
    pub fn to_config(&self) -> Result<TrainConfig> {
        let builtin = self.uses_builtin_data();
        let default_out = if builtin { "runs/demo" } else { "runs/train" };
        let mut cfg = TrainConfig::demo(self.output.clone().unwrap_or_else(|| PathBuf::from(default_out)));
        if !builtin {
            // Defaults for real data: a real ESM-2 size and fine-tuning learning rate.
            cfg.model = ModelSource::Preset("esm2_t6_8M".into());
            cfg.training.epochs = 3;
            cfg.training.lr = 1e-4;
            cfg.training.max_tokens = 16384;
        }
        cfg.data = match (&self.data, &self.train_file) {
            (Some(d), _) => DataSource::PfamDir {
                dir: d.clone(),
                eval_split: self.eval_split.clone().unwrap_or_else(|| "dev".into()),
            },
            (None, Some(t)) => {
                DataSource::Files { train: t.clone(), eval: self.eval_file.clone(), labels_tsv: self.labels.clone() }
            }
            (None, None) => DataSource::Builtin,
        };
        if let Some(p) = &self.preset {
            cfg.model = ModelSource::Preset(p.clone());
        }
        if let Some(c) = &self.checkpoint {
            cfg.model = ModelSource::Pretrained(c.clone());
        }
        if self.uses_builtin_encoder() {
            cfg.model = ModelSource::Pretrained(cfg.training.output.join(demo::ENCODER_DIR));
        }
        cfg.head = self.head.parse::<HeadKind>()?;
        cfg.pool = self.pool.as_deref().map(str::parse::<Pooling>).transpose()?;
        // The built-in demo from random weights classifies from the mean over residues: in
        // its 8 epochs it reaches 64.0 % on the held-out domains against 51.6 % from <cls>
        // (README, Quick start). From the pretrained encoder <cls> is the default, as
        // everywhere else (README: the 60-minute pretraining experiment).
        if cfg.pool.is_none() && matches!(cfg.data, DataSource::Builtin) && matches!(cfg.model, ModelSource::Preset(_))
        {
            cfg.pool = Some(Pooling::Mean);
        }
        cfg.head_dropout = self.head_dropout;
        cfg.max_len = self.max_len;
        self.apply_loop_flags(&mut cfg.training, 0.01)?;
        (cfg.eval_limit, cfg.resume) = (self.eval_limit, self.resume);
        (cfg.device, cfg.precision) = (self.device.device.parse()?, self.device.precision.parse()?);
        cfg.recompute = self.recompute.parse()?;
        cfg.class_weights = self.class_weights.parse::<ClassWeighting>()?;
        cfg.stratify = self.stratify.parse::<StratifySpec>()?;
        cfg.lora = if self.lora { Some(self.lora_shape.config()?) } else { None };
        Ok(cfg)
    }

    /// The contact run configuration: defaults of [`ContactTrainConfig::new`], overridden
    /// by the flags given.
    pub fn to_contact_config(&self) -> Result<ContactTrainConfig> {
        if self.data.is_some() || self.train_file.is_some() {
            bail!("--task contact reads --contacts DIR or --structures FILE…, not --data/--train-file");
        }
        let data = match (&self.contacts, self.structures.is_empty()) {
            (Some(dir), _) => ContactData::Prepared {
                dir: dir.clone(),
                train_split: "train".into(),
                eval_split: Some(self.eval_split.clone().unwrap_or_else(|| "valid".into())),
            },
            (None, false) => {
                ContactData::Structures { train: self.structures.clone(), eval: self.eval_structures.clone() }
            }
            (None, true) => {
                bail!("--task contact needs --contacts DIR (e.g. ../shared/data/contacts) or --structures FILE…")
            }
        };
        let mut cfg =
            ContactTrainConfig::new(data, self.output.clone().unwrap_or_else(|| PathBuf::from("runs/contact")));
        if let Some(p) = &self.preset {
            cfg.model = ModelSource::Preset(p.clone());
        }
        if let Some(c) = &self.checkpoint {
            cfg.model = ModelSource::Pretrained(c.clone());
        }
        cfg.lora = if self.no_lora { None } else { Some(self.lora_shape.config()?) };
        cfg.head_trainable = match self.contact_head.as_str() {
            "trainable" => true,
            "frozen" => false,
            other => bail!("--contact-head `{other}`: use trainable or frozen"),
        };
        cfg.crop = self.crop;
        cfg.max_len = self.max_len;
        cfg.min_sep = self.min_sep;
        cfg.token_budget = self.token_budget.as_deref().map(parse_count).transpose()?;
        self.apply_loop_flags(&mut cfg.training, 0.0)?;
        (cfg.eval_limit, cfg.resume) = (self.eval_limit, self.resume);
        (cfg.device, cfg.precision) = (self.device.device.parse()?, self.device.precision.parse()?);
        Ok(cfg)
    }
}

impl TrainArgs {
    /// The MLM run configuration: defaults of [`MlmTrainConfig::new`], overridden by the
    /// flags given.
    pub fn to_mlm_config(&self) -> Result<MlmTrainConfig> {
        if self.contacts.is_some() || !self.structures.is_empty() {
            bail!("--task mlm reads sequences from --data DIR (Pfam split) or --train-file FASTA, not contact sets");
        }
        if self.pool.is_some() {
            bail!("--pool applies to --task classify (the MLM head predicts every masked residue)");
        }
        let data = match (&self.data, &self.train_file) {
            (Some(d), _) => {
                MlmData::PfamDir { dir: d.clone(), eval_split: self.eval_split.clone().unwrap_or_else(|| "dev".into()) }
            }
            (None, Some(t)) => MlmData::Fasta { train: t.clone(), eval: self.eval_file.clone() },
            (None, None) => bail!("--task mlm needs --data DIR (a Pfam split) or --train-file FASTA"),
        };
        let mut cfg = MlmTrainConfig::new(data, self.output.clone().unwrap_or_else(|| PathBuf::from("runs/mlm")));
        if let Some(p) = &self.preset {
            cfg.model = ModelSource::Preset(p.clone());
        }
        if let Some(c) = &self.checkpoint {
            cfg.model = ModelSource::Pretrained(c.clone());
        }
        cfg.max_len = self.max_len;
        cfg.masking = MaskingConfig::with_select(self.mask_prob)?;
        cfg.eval_mask_seed = self.eval_mask_seed;
        self.apply_loop_flags(&mut cfg.training, 0.01)?;
        (cfg.eval_limit, cfg.resume) = (self.eval_limit, self.resume);
        (cfg.device, cfg.precision) = (self.device.device.parse()?, self.device.precision.parse()?);
        cfg.recompute = self.recompute.parse()?;
        cfg.lora = if self.lora { Some(self.lora_shape.config()?) } else { None };
        Ok(cfg)
    }
}

/// A count with an optional `k`/`M`/`G` suffix (`2M` = 2,000,000).
fn parse_count(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1e3),
        Some('m' | 'M') => (&t[..t.len() - 1], 1e6),
        Some('g' | 'G') => (&t[..t.len() - 1], 1e9),
        _ => (t, 1.0),
    };
    let v: f64 = num.parse().map_err(|_| anyhow::anyhow!("`{s}` is not a count (e.g. 2000000, 2M, 500k)"))?;
    if v.is_nan() || v <= 0.0 {
        bail!("`{s}` must be positive");
    }
    Ok((v * mult).round() as u64)
}

pub fn run(args: TrainArgs) -> Result<()> {
    args.weights.apply();
    super::common::apply_device_settings(&args.device)?;
    match args.task.as_str() {
        "classify" | "classification" => {
            let cfg = args.to_config()?;
            if let (true, ModelSource::Pretrained(dir)) = (args.uses_builtin_encoder(), &cfg.model) {
                demo::write_encoder(dir)?;
            }
            let summary = train::train(&cfg)?;
            if let Some(e) = &summary.eval {
                println!(
                    "final evaluation: accuracy {:.2}% (chance {:.2}%), top-5 {:.2}%, macro-F1 {:.3} on {} sequences",
                    100.0 * e.accuracy,
                    100.0 / summary.n_classes as f64,
                    100.0 * e.top5_accuracy,
                    e.macro_f1,
                    e.n
                );
            }
            Ok(())
        }
        "contact" | "contacts" => {
            let cfg = args.to_contact_config()?;
            let s = train_contacts(&cfg)?;
            if let Some(e) = &s.eval {
                println!("final evaluation: {}", qf_engine::train::contact::eval_line(e));
            }
            Ok(())
        }
        "mlm" => {
            let cfg = args.to_mlm_config()?;
            let s = train_mlm(&cfg)?;
            if let Some(e) = &s.eval {
                println!("final evaluation: {}", e.line());
            }
            Ok(())
        }
        other => bail!("unknown task `{other}`: use classify, contact or mlm"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_count;

    #[test]
    fn counts_take_k_m_g_suffixes_and_refuse_nonsense() {
        assert_eq!(parse_count("2000000").unwrap(), 2_000_000);
        assert_eq!(parse_count("2M").unwrap(), 2_000_000);
        assert_eq!(parse_count("1.5m").unwrap(), 1_500_000);
        assert_eq!(parse_count("500k").unwrap(), 500_000);
        for bad in ["", "M", "-3M", "0", "two", "nan"] {
            assert!(parse_count(bad).is_err(), "`{bad}` accepted");
        }
    }
}
