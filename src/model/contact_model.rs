//! ESM-2 for residue-residue contact prediction: the encoder, its attention probabilities
//! of every layer and head, and fair-esm's contact head over them (see
//! `backend/cpu/contact_head.rs`): `p_ij = σ(Σ_c w_c·APC(A_c + A_cᵀ)_ij + b)`.
//!
//! Training follows the ContactProject report (`../shared/seeds/002_*.txt`): LoRA adapters
//! on chosen projections (default query + value, r = 8, α = 8, dropout 0.05) with the base
//! weights frozen, and the contact head trainable or frozen.
//!
//! Saved as a Hugging Face directory: `config.json` (`architectures: ["EsmModel"]`) and
//! `model.safetensors` with the encoder under `esm.` and the head as
//! `esm.contact_head.regression.{weight,bias}` — the names of `EsmForMaskedLM`, which
//! `transformers` `EsmModel.from_pretrained` also loads (it strips the `esm.` prefix), and
//! whose `predict_contacts` then computes the same map. With [`SaveMode::Merged`] the
//! adapters are folded into the weights; with [`SaveMode::Unmerged`] (training
//! checkpoints) they are kept as `…lora_A.weight` / `…lora_B.weight` and recorded in
//! `config.json` so that the checkpoint resumes exactly.

use std::path::Path;

use anyhow::{bail, Result};
use serde_json::Value;

use super::checkpoint::write_atomic;
use super::classifier::rotary_buffers;
use super::config::EsmConfig;
use super::contact::ContactHead;
use super::esm2::Esm2;
use super::init::Init;
use super::inputs::ModelInputs;
use super::lora::{self, LoraConfig, SaveMode};
use super::params::Params;
use super::pretrained::{load_params, open_weights, save_tensors, LoadReport, Need, CONFIG_FILE, WEIGHTS_FILE};
use super::tokenizer_files::write_tokenizer_files;
use crate::autograd::Tape;
use crate::ops;
use crate::tensor::Tensor;

/// Prefix of the contact head's parameters.
pub const CONTACT_HEAD_PREFIX: &str = "esm.contact_head.";

/// Share of residue pairs with |i − j| ≥ 6 in contact in the contact set's training split
/// (1.46 %, `../shared/data/contacts/README.md`). A fresh head starts with its bias at the
/// log-odds of this rate (the "prior" initialisation of Lin et al. 2017, focal loss), so
/// that training does not spend its first thousands of steps moving the bias from 0
/// (p = 0.5) to the base rate.
pub const CONTACT_PRIOR: f64 = 0.0146;

pub struct ContactModel {
    pub params: Params,
    pub esm: Esm2,
    pub head: ContactHead,
}

/// Which parameters a contact run trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trainable {
    /// LoRA: only the adapters of the encoder; otherwise every encoder weight.
    pub lora: bool,
    /// The contact head's regression.
    pub head: bool,
}

impl ContactModel {
    /// A randomly initialised model (HF initialisation, seeded).
    pub fn new_random(cfg: &EsmConfig, seed: u64) -> Result<Self> {
        let mut params = Params::new();
        let mut init = Init::new(seed, cfg.initializer_range);
        let esm = Esm2::new(cfg, &mut params, &mut init)?;
        let head = ContactHead::new(cfg, &mut params, &mut init)?;
        let prior = (CONTACT_PRIOR / (1.0 - CONTACT_PRIOR)).ln() as f32;
        params.set(head.bias, Tensor::from_vec(vec![prior], &[1])?)?;
        Ok(ContactModel { params, esm, head })
    }

    /// Load a Hugging Face checkpoint directory (`EsmModel`, `EsmForMaskedLM`,
    /// `EsmForSequenceClassification`, or one saved here). The encoder must be complete; the
    /// contact head is loaded when present (else it starts fresh, as in [`Self::new_random`],
    /// and is listed in the report); adapters recorded in `config.json` are attached and loaded.
    pub fn from_pretrained(dir: &Path, seed: u64) -> Result<(Self, LoadReport)> {
        let (cfg, json) = EsmConfig::from_dir(dir)?;
        let mut model = ContactModel::new_random(&cfg, seed)?;
        lora::attach_from_config(&json, &mut model.esm, &mut model.params, &dir.display().to_string())?;
        let file = open_weights(dir)?;
        let report = load_params(&mut model.params, &file, |name| {
            if name.starts_with(CONTACT_HEAD_PREFIX) {
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

    /// The LoRA configuration of the attached adapters, if any.
    pub fn lora(&self) -> Option<LoraConfig> {
        lora::attached_config(&self.esm)
    }

    /// Attach LoRA adapters (unless the model already has them, e.g. when resumed).
    pub fn enable_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<()> {
        if self.lora().is_none() {
            lora::attach(&mut self.esm, &mut self.params, cfg, seed)?;
        }
        Ok(())
    }

    /// Freeze or unfreeze parameters as `t` says; returns the trainable element count.
    pub fn set_trainable(&mut self, t: Trainable) -> Result<usize> {
        if t.lora && self.lora().is_none() {
            bail!("LoRA training was asked for but the model has no adapters attached");
        }
        let keep = |name: &str| {
            if name.starts_with(CONTACT_HEAD_PREFIX) {
                t.head
            } else {
                !t.lora
            }
        };
        let n = lora::freeze_except(&mut self.params, keep);
        if n == 0 {
            bail!("nothing to train: the encoder and the contact head are both frozen");
        }
        Ok(n)
    }

    /// Contact logits of every sequence of the batch: per sequence an `L' × L'` block
    /// (`L' = L − 2`: `<cls>` and `<eos>` removed), packed end to end.
    pub fn forward(&self, tape: &Tape, inp: &ModelInputs) -> Result<Tensor> {
        let enc = self.esm.forward(&self.params, tape, inp, true)?;
        self.head.forward(&self.params, tape, &enc.attention_probs, &inp.layout)
    }

    /// Logits and the masked binary cross-entropy against `targets` (0/1) over the pairs
    /// where `mask` is 1 (all three in the logits' packed layout).
    pub fn forward_loss(
        &self,
        tape: &Tape,
        inp: &ModelInputs,
        targets: &Tensor,
        mask: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let logits = self.forward(tape, inp)?;
        let loss = ops::bce_with_logits(tape, &logits, targets, mask)?;
        Ok((logits, loss))
    }

    /// Save as a Hugging Face directory (see the module documentation).
    pub fn save(&self, dir: &Path, mode: SaveMode) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut cfg_json = self.config().to_hf_json(&[], "EsmModel");
        if let Some(o) = cfg_json.as_object_mut() {
            for k in ["id2label", "label2id", "problem_type", "classifier_dropout"] {
                o.remove(k);
            }
            o.insert("qf_engine_task".into(), Value::String("contact".into()));
        }
        lora::annotate_config(&mut cfg_json, &self.esm, mode);
        write_atomic(&dir.join(CONFIG_FILE), serde_json::to_string_pretty(&cfg_json)?.as_bytes())?;
        write_tokenizer_files(dir)?;
        let mut tensors = lora::tensors_for_save(&self.esm, &self.params, mode)?;
        tensors.extend(rotary_buffers(self.config()));
        save_tensors(&dir.join(WEIGHTS_FILE), &tensors)
    }

    /// Save the adapters alone (and the contact head when it was trained) as a PEFT
    /// adapter directory for `EsmModel`, the class the base is saved as; `base` names the
    /// base model.
    pub fn save_adapters(&self, dir: &Path, with_head: bool, base: &str) -> Result<()> {
        let extra = if with_head { vec![self.head.weight, self.head.bias] } else { vec![] };
        lora::save_adapters(dir, &self.esm, &self.params, &extra, base, lora::PeftBaseClass::EsmModel)
    }
}
