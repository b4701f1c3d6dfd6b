//! ESM-2 for masked-language modelling: Hugging Face `EsmForMaskedLM`.
//!
//! ```text
//! h      = encoder(tokens)                                   (esm.*)
//! logits = gelu(h·Wdᵀ + bd) → LayerNorm → ·Eᵀ + b            (lm_head.*)
//! ```
//! `Wd, bd` = `lm_head.dense`, the LayerNorm = `lm_head.layer_norm`, `b` = `lm_head.bias`,
//! and the decoder matrix `E` *is* the word-embedding matrix
//! `esm.embeddings.word_embeddings.weight` (`lm_head.decoder.weight` tied to it, as
//! transformers ties them when `tie_word_embeddings` is true, its default): one parameter,
//! used by the embedding lookup and by the decoder, whose gradients add up. The GELU is
//! the exact (erf) one of transformers' `esm.gelu`.
//!
//! The head runs only on the rows that carry a loss (the selected positions of a
//! masked batch), which gives the same loss and gradients as transformers' logits over
//! every position with `-100` labels elsewhere, at a fraction of the cost;
//! [`MaskedLm::logits`] gives all positions when asked.
//!
//! Saved as a Hugging Face `EsmForMaskedLM` directory; the encoder part loads into the
//! classifier and the contact model (`train --checkpoint`).

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
use super::linear::{LayerNorm, Linear};
use super::lora::{self, LoraConfig, SaveMode};
use super::params::{ParamId, Params};
use super::pretrained::{load_params, open_weights, save_tensors, LoadReport, Need, CONFIG_FILE, WEIGHTS_FILE};
use super::tokenizer_files::write_tokenizer_files;
use crate::autograd::Tape;
use crate::ops;
use crate::tensor::Tensor;

/// Prefix of the language-model head's parameters.
pub const LM_HEAD_PREFIX: &str = "lm_head.";
/// The tied decoder's name in transformers' state dict (not a parameter of its own here).
pub const DECODER_WEIGHT: &str = "lm_head.decoder.weight";
/// Architecture name written to `config.json`.
pub const ARCHITECTURE: &str = "EsmForMaskedLM";

/// `lm_head`: dense → gelu → layer_norm → decoder (tied) + bias.
#[derive(Clone, Debug)]
pub struct LmHead {
    pub dense: Linear,
    pub layer_norm: LayerNorm,
    /// Weight = the word embeddings' id, bias = `lm_head.bias`.
    pub decoder: Linear,
}

impl LmHead {
    /// Register `lm_head.*` (HF initialisation) with the decoder tied to `esm`'s embeddings.
    pub fn new(cfg: &EsmConfig, esm: &Esm2, params: &mut Params, init: &mut Init) -> Result<LmHead> {
        let h = cfg.hidden_size;
        let dense = Linear::new(params, "lm_head.dense", h, h, true, init)?;
        let layer_norm = LayerNorm::new(params, "lm_head.layer_norm", h, cfg.layer_norm_eps)?;
        let bias =
            params.add("lm_head.bias", Tensor::from_vec(vec![0f32; cfg.vocab_size], &[cfg.vocab_size])?, false)?;
        let decoder = Linear {
            weight: esm.word_embeddings,
            bias: Some(bias),
            lora: None,
            in_features: h,
            out_features: cfg.vocab_size,
        };
        Ok(LmHead { dense, layer_norm, decoder })
    }

    /// Vocabulary logits `[rows, vocab]` of hidden states `[rows, hidden]`.
    pub fn forward(&self, p: &Params, tape: &Tape, h: &Tensor) -> Result<Tensor> {
        let x = self.dense.forward_no_bias(p, tape, h)?;
        let x = ops::bias_gelu(tape, &x, self.dense.bias.map(|b| p.get(b)))?;
        let x = self.layer_norm.forward(p, tape, &x)?;
        self.decoder.forward(p, tape, &x)
    }
}

pub struct MaskedLm {
    pub params: Params,
    pub esm: Esm2,
    pub lm_head: LmHead,
    /// Not trained here; kept so that a round trip through a checkpoint preserves it.
    pub contact: ContactHead,
}

impl MaskedLm {
    /// A randomly initialised model (HF initialisation, seeded).
    pub fn new_random(cfg: &EsmConfig, seed: u64) -> Result<Self> {
        let mut params = Params::new();
        let mut init = Init::new(seed, cfg.initializer_range);
        let esm = Esm2::new(cfg, &mut params, &mut init)?;
        let contact = ContactHead::new(cfg, &mut params, &mut init)?;
        params.set_trainable(contact.weight, false);
        params.set_trainable(contact.bias, false);
        let lm_head = LmHead::new(cfg, &esm, &mut params, &mut init)?;
        Ok(MaskedLm { params, esm, lm_head, contact })
    }

    /// Load a Hugging Face checkpoint directory: `EsmForMaskedLM` (head loaded), or
    /// `EsmModel` / `EsmForSequenceClassification` / a contact model (the encoder; the
    /// head starts fresh and is listed in the report). A `lm_head.decoder.weight` in the
    /// file is the tied copy of the embeddings and is not read; a config that unties it
    /// (`tie_word_embeddings: false`) is refused.
    pub fn from_pretrained(dir: &Path, seed: u64) -> Result<(Self, LoadReport)> {
        let (cfg, json) = EsmConfig::from_dir(dir)?;
        if json.get("tie_word_embeddings").and_then(Value::as_bool) == Some(false) {
            bail!(
                "{}: config.json unties the decoder from the word embeddings (tie_word_embeddings = false); \
                 qf-engine's EsmForMaskedLM ties them, as ESM-2 does",
                dir.display()
            );
        }
        let mut model = MaskedLm::new_random(&cfg, seed)?;
        lora::attach_from_config(&json, &mut model.esm, &mut model.params, &dir.display().to_string())?;
        let file = open_weights(dir)?;
        let mut report = load_params(&mut model.params, &file, |name| {
            if name.starts_with(LM_HEAD_PREFIX) || name.starts_with("esm.contact_head") {
                Need::Optional
            } else {
                Need::Required
            }
        })?;
        report.unused.retain(|n| n != DECODER_WEIGHT);
        Ok((model, report))
    }

    pub fn config(&self) -> &EsmConfig {
        &self.esm.cfg
    }

    /// Vocabulary logits `[rows, vocab]` at token rows `rows` (i32) of the batch, or at
    /// every token when `rows` is `None`.
    pub fn logits(&self, tape: &Tape, inp: &ModelInputs, rows: Option<&Tensor>) -> Result<Tensor> {
        let enc = self.esm.forward(&self.params, tape, inp, false)?;
        let h = match rows {
            Some(r) => ops::gather_rows(tape, &enc.hidden, r)?,
            None => enc.hidden,
        };
        self.lm_head.forward(&self.params, tape, &h)
    }

    /// Logits at `rows` and the mean cross-entropy against `targets` (i32, one per row),
    /// transformers' `EsmForMaskedLM` loss with `-100` everywhere else.
    pub fn forward_loss(
        &self,
        tape: &Tape,
        inp: &ModelInputs,
        rows: &Tensor,
        targets: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        if rows.numel() == 0 {
            bail!("this batch has no selected positions to compute a masked-token loss at");
        }
        let logits = self.logits(tape, inp, Some(rows))?;
        let loss = ops::cross_entropy(tape, &logits, targets, None)?;
        Ok((logits, loss))
    }

    /// The LoRA configuration of the attached adapters, if any.
    pub fn lora(&self) -> Option<LoraConfig> {
        lora::attached_config(&self.esm)
    }

    /// Train with LoRA: attach adapters and freeze every encoder weight (the tied
    /// embeddings, hence the decoder, included); the head's dense, LayerNorm and bias stay
    /// trainable. Returns the trainable element count.
    pub fn enable_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<usize> {
        if self.lora().is_none() {
            lora::attach(&mut self.esm, &mut self.params, cfg, seed)?;
        }
        Ok(lora::freeze_except(&mut self.params, |name| name.starts_with(LM_HEAD_PREFIX)))
    }

    /// The head's own parameters (what a PEFT adapter directory saves beside the adapters).
    fn head_params(&self) -> Vec<ParamId> {
        self.params.ids().filter(|&id| self.params.name(id).starts_with(LM_HEAD_PREFIX)).collect()
    }

    /// Save the adapters alone, with the head, as a PEFT adapter directory for
    /// `EsmForMaskedLM`; `base` names the base model. PEFT saves the head as the whole
    /// `lm_head` module (`modules_to_save: ["lm_head"]`: `lm_head.bias` is a bare parameter
    /// of it), so the frozen tied decoder is written too, as `lm_head.decoder.weight`.
    pub fn save_adapters(&self, dir: &Path, base: &str) -> Result<()> {
        let mut extra: Vec<(String, ParamId)> =
            self.head_params().into_iter().map(|id| (self.params.name(id).to_string(), id)).collect();
        extra.push((DECODER_WEIGHT.to_string(), self.esm.word_embeddings));
        lora::save_adapters_named(dir, &self.esm, &self.params, &extra, base, lora::PeftBaseClass::EsmForMaskedLM)
    }

    /// Save as a Hugging Face `EsmForMaskedLM` directory. The tied decoder is not written
    /// (transformers' `save_pretrained` leaves tied weights out too).
    pub fn save(&self, dir: &Path, mode: SaveMode) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut cfg_json = self.config().to_hf_json(&[], ARCHITECTURE);
        if let Some(o) = cfg_json.as_object_mut() {
            for k in ["id2label", "label2id", "problem_type", "classifier_dropout"] {
                o.remove(k);
            }
            o.insert("tie_word_embeddings".into(), Value::Bool(true));
            o.insert("qf_engine_task".into(), Value::String("mlm".into()));
        }
        lora::annotate_config(&mut cfg_json, &self.esm, mode);
        write_atomic(&dir.join(CONFIG_FILE), serde_json::to_string_pretty(&cfg_json)?.as_bytes())?;
        write_tokenizer_files(dir)?;
        let mut tensors = lora::tensors_for_save(&self.esm, &self.params, mode)?;
        tensors.extend(rotary_buffers(self.config()));
        save_tensors(&dir.join(WEIGHTS_FILE), &tensors)
    }
}
