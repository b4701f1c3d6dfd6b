//! ESM-2 for sequence classification (Pfam family prediction): the encoder, the pooled
//! sequence vector (`<cls>`, or the mean over residues), a head, and the label map. Saved
//! as a Hugging Face `EsmForSequenceClassification` directory (`config.json` with
//! `id2label`, `model.safetensors`) that `transformers` loads unchanged.
//!
//! A mean-pooled model ([`Pooling::Mean`]) cannot be an `EsmForSequenceClassification`:
//! that class always reads the `<cls>` vector, so loading the weights into it would give
//! wrong predictions without an error. Its `config.json` therefore records the pooling
//! (`qf_engine_pool: "mean"`) and names a model type transformers does not know
//! ([`MEAN_POOL_MODEL_TYPE`]), so that `AutoConfig`, every `AutoModel…` class and
//! `pipeline()` refuse the directory; the weights keep the Hugging Face names, and the
//! README shows the three lines that compute the same logits from an `EsmModel` and the
//! head in transformers.

use std::path::Path;

use anyhow::{bail, Result};

use super::checkpoint::{write_atomic, NamedTensor};
use super::config::EsmConfig;
use super::contact::ContactHead;
use super::esm2::Esm2;
use super::heads::{Head, HeadKind, Pooling};
use super::init::Init;
use super::inputs::ModelInputs;
use super::lora::{self, LoraConfig, SaveMode};
use super::params::Params;
use super::pretrained::{load_params, open_weights, save_tensors, LoadReport, Need, CONFIG_FILE, WEIGHTS_FILE};
use super::tokenizer_files::write_tokenizer_files;
use crate::autograd::Tape;
use crate::backend::cpu::rotary::inv_freq;
use crate::ops;
use crate::tensor::Tensor;

pub struct SequenceClassifier {
    pub params: Params,
    pub esm: Esm2,
    pub head: Head,
    /// Frozen here; kept so that a round trip through a checkpoint preserves it.
    pub contact: ContactHead,
    pub labels: Vec<String>,
    /// How the head's input is pooled (`<cls>` unless set otherwise).
    pub pool: Pooling,
}

/// `config.json` key recording the pooling of a mean-pooled classifier.
pub const POOL_KEY: &str = "qf_engine_pool";
/// `model_type` of a mean-pooled classifier: unknown to transformers, so its `Auto…`
/// classes refuse the directory instead of reading the `<cls>` vector.
pub const MEAN_POOL_MODEL_TYPE: &str = "qf_engine_esm_mean_pool";
/// `architectures` entry of a mean-pooled classifier.
pub const MEAN_POOL_ARCHITECTURE: &str = "QfEngineEsmMeanPoolForSequenceClassification";

/// The pooling a `config.json` records (`<cls>` when it records none).
pub fn pooling_from_json(json: &serde_json::Value, source: &str) -> Result<Pooling> {
    match json.get(POOL_KEY).and_then(serde_json::Value::as_str) {
        None => Ok(Pooling::Cls),
        Some(p) => p.parse().map_err(|e| anyhow::anyhow!("{source}: {e}")),
    }
}

impl SequenceClassifier {
    /// A randomly initialised model (HF initialisation, seeded).
    pub fn new_random(
        cfg: &EsmConfig,
        labels: Vec<String>,
        head: HeadKind,
        head_dropout: f64,
        seed: u64,
    ) -> Result<Self> {
        if labels.is_empty() {
            bail!("a classifier needs at least one class label");
        }
        let mut params = Params::new();
        let mut init = Init::new(seed, cfg.initializer_range);
        let esm = Esm2::new(cfg, &mut params, &mut init)?;
        let contact = ContactHead::new(cfg, &mut params, &mut init)?;
        params.set_trainable(contact.weight, false);
        params.set_trainable(contact.bias, false);
        let head = Head::new(head, &mut params, cfg.hidden_size, labels.len(), head_dropout, &mut init)?;
        Ok(SequenceClassifier { params, esm, head, contact, labels, pool: Pooling::Cls })
    }

    /// Load a Hugging Face checkpoint directory (`EsmModel`, `EsmForMaskedLM` or
    /// `EsmForSequenceClassification`). The encoder must be complete. The head is loaded
    /// when the file has one of the requested kind with the same labels (`labels =
    /// None` takes the checkpoint's own); otherwise a fresh head is initialised and
    /// listed in the report.
    pub fn from_pretrained(
        dir: &Path,
        labels: Option<Vec<String>>,
        head: HeadKind,
        head_dropout: f64,
        seed: u64,
    ) -> Result<(Self, LoadReport)> {
        let (cfg, json) = EsmConfig::from_dir(dir)?;
        let file_labels = EsmConfig::labels_from_json(&json);
        let labels = match (labels, &file_labels) {
            (Some(l), _) => l,
            (None, Some(l)) => l.clone(),
            (None, None) => bail!(
                "{}: config.json has no id2label; give the class labels (training data) to build a head",
                dir.display()
            ),
        };
        let mut model = SequenceClassifier::new_random(&cfg, labels, head, head_dropout, seed)?;
        model.pool = pooling_from_json(&json, &dir.display().to_string())?;
        // A training checkpoint saved with unmerged adapters records them in config.json.
        lora::attach_from_config(&json, &mut model.esm, &mut model.params, &dir.display().to_string())?;
        let file = open_weights(dir)?;
        // A head trained for other classes is not loaded; the new one starts fresh.
        let head_matches = file_labels.as_deref() == Some(&model.labels[..]);
        let report = load_params(&mut model.params, &file, |name| {
            if name.starts_with("classifier") {
                if head_matches {
                    Need::Optional
                } else {
                    Need::Skip
                }
            } else if name.starts_with("esm.contact_head") {
                Need::Optional
            } else {
                Need::Required
            }
        })?;
        Ok((model, report))
    }

    pub fn config(&self) -> &EsmConfig {
        &self.esm.cfg
    }

    pub fn n_classes(&self) -> usize {
        self.labels.len()
    }

    /// Logits `[n_seqs, n_classes]`. Inference of a `<cls>`-pooled model on the CPU computes
    /// the last layer for the `<cls>` rows only ([`Esm2::forward_cls`]).
    pub fn forward(&self, tape: &Tape, inp: &ModelInputs) -> Result<Tensor> {
        let pooled = if self.pool == Pooling::Cls && !tape.is_recording() && inp.ids.is_cpu() {
            self.esm.forward_cls(&self.params, tape, inp)?
        } else {
            let enc = self.esm.forward(&self.params, tape, inp, false)?;
            self.pooled(tape, inp, &enc.hidden)?
        };
        self.head.forward(&self.params, tape, &pooled)
    }

    /// The sequence vectors `[n_seqs, hidden]` the head reads.
    pub fn pooled(&self, tape: &Tape, inp: &ModelInputs, hidden: &Tensor) -> Result<Tensor> {
        match self.pool {
            Pooling::Cls => ops::gather_rows(tape, hidden, &inp.cls_rows),
            Pooling::Mean => ops::mean_pool(tape, hidden, &inp.layout),
        }
    }

    /// Logits and the (weighted) cross-entropy against the batch's labels.
    pub fn forward_loss(
        &self,
        tape: &Tape,
        inp: &ModelInputs,
        class_weights: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let Some(labels) = &inp.labels else {
            bail!("this batch has no labels to compute a loss against");
        };
        let logits = self.forward(tape, inp)?;
        let loss = ops::cross_entropy(tape, &logits, labels, class_weights)?;
        Ok((logits, loss))
    }

    /// The LoRA configuration of the attached adapters, if any.
    pub fn lora(&self) -> Option<LoraConfig> {
        lora::attached_config(&self.esm)
    }

    /// Fine-tune with LoRA: attach adapters to the encoder and freeze every encoder weight
    /// (and the contact head); the classification head stays trainable. Returns the number
    /// of trainable parameters. A model already carrying adapters (resumed) keeps them.
    pub fn enable_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<usize> {
        if lora::attached_config(&self.esm).is_none() {
            lora::attach(&mut self.esm, &mut self.params, cfg, seed)?;
        }
        Ok(lora::freeze_except(&mut self.params, |name| name.starts_with("classifier")))
    }

    /// Save the adapters alone, with the classification head, as a PEFT adapter directory
    /// for `EsmForSequenceClassification`; `base` names the base model. A mean-pooled
    /// classifier is refused: PEFT would apply its adapters to a class that pools `<cls>`,
    /// and the head would read the wrong vector without a word.
    pub fn save_adapters(&self, dir: &Path, base: &str) -> Result<()> {
        if self.pool == Pooling::Mean {
            bail!(
                "{}: a mean-pooled classifier has no transformers class for PEFT to apply adapters to \
                 (EsmForSequenceClassification pools <cls>); save the merged model instead",
                dir.display()
            );
        }
        let head: Vec<_> = self.params.ids().filter(|&id| self.params.name(id).starts_with("classifier")).collect();
        lora::save_adapters(
            dir,
            &self.esm,
            &self.params,
            &head,
            base,
            lora::PeftBaseClass::EsmForSequenceClassification,
        )
    }

    /// Save as a Hugging Face `EsmForSequenceClassification` directory (or a qf-engine
    /// linear-head checkpoint) with the label map in `config.json`. LoRA adapters are
    /// folded into the weights (`SaveMode::Merged`) or kept apart for resumption.
    pub fn save(&self, dir: &Path, mode: SaveMode) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let arch = match self.head.kind() {
            HeadKind::Classification => "EsmForSequenceClassification",
            HeadKind::Linear => "QfEngineEsmLinearClassifier",
        };
        let arch = if self.pool == Pooling::Mean { MEAN_POOL_ARCHITECTURE } else { arch };
        let mut cfg_json = self.config().to_hf_json(&self.labels, arch);
        if self.head.kind() == HeadKind::Linear {
            cfg_json["qf_engine_head"] = "linear".into();
        }
        if self.pool == Pooling::Mean {
            cfg_json["model_type"] = MEAN_POOL_MODEL_TYPE.into();
            cfg_json[POOL_KEY] = "mean".into();
        }
        lora::annotate_config(&mut cfg_json, &self.esm, mode);
        write_atomic(&dir.join(CONFIG_FILE), serde_json::to_string_pretty(&cfg_json)?.as_bytes())?;
        write_tokenizer_files(dir)?;
        let mut tensors = lora::tensors_for_save(&self.esm, &self.params, mode)?;
        tensors.extend(rotary_buffers(self.config()));
        save_tensors(&dir.join(WEIGHTS_FILE), &tensors)
    }
}

/// The per-layer `inv_freq` buffers hub checkpoints carry (transformers recomputes them,
/// but writing them keeps `from_pretrained` free of missing-key warnings).
pub fn rotary_buffers(cfg: &EsmConfig) -> Vec<NamedTensor> {
    let f = inv_freq(cfg.head_dim());
    (0..cfg.num_hidden_layers)
        .map(|i| {
            NamedTensor::f32(format!("esm.encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq"), &[f.len()], &f)
        })
        .collect()
}
