//! ESM-2 configuration: Hugging Face `config.json` (model_type "esm") and presets by
//! name for random initialisation. Only ESM-2 is accepted: rotary positions, no
//! embedding LayerNorm, exact GELU, the 33-token alphabet.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::data::tokenizer::VOCAB_SIZE;

/// The shape and numerics of an ESM-2 model.
#[derive(Clone, Debug, PartialEq)]
pub struct EsmConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub layer_norm_eps: f64,
    pub token_dropout: bool,
    pub mask_token_id: u32,
    pub pad_token_id: u32,
    pub max_position_embeddings: usize,
    pub hidden_dropout_prob: f64,
    pub initializer_range: f64,
}

/// Presets: name, layers, hidden, heads (FFN = 4·hidden), from the ESM-2 paper's table.
const PRESETS: [(&str, usize, usize, usize); 7] = [
    ("esm2_tiny", 4, 96, 6),
    ("esm2_t6_8M", 6, 320, 20),
    ("esm2_t12_35M", 12, 480, 20),
    ("esm2_t30_150M", 30, 640, 20),
    ("esm2_t33_650M", 33, 1280, 20),
    ("esm2_t36_3B", 36, 2560, 40),
    ("esm2_t48_15B", 48, 5120, 40),
];

impl EsmConfig {
    /// A preset by name (`esm2_t6_8M`, `esm2_t12_35M`, …; the Hugging Face names
    /// `facebook/esm2_t6_8M_UR50D` are accepted too). `esm2_tiny` is a 4-layer, 96-wide
    /// model for the built-in demo and tests.
    pub fn preset(name: &str) -> Result<EsmConfig> {
        let short = name.trim_start_matches("facebook/").trim_end_matches("_UR50D");
        let Some(&(_, layers, hidden, heads)) = PRESETS.iter().find(|p| p.0 == short) else {
            let names: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
            bail!("unknown model preset `{name}`; known: {}", names.join(", "));
        };
        Ok(EsmConfig {
            vocab_size: VOCAB_SIZE,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: 4 * hidden,
            layer_norm_eps: 1e-5,
            token_dropout: true,
            mask_token_id: 32,
            pad_token_id: 1,
            max_position_embeddings: 1026,
            hidden_dropout_prob: 0.0,
            initializer_range: 0.02,
        })
    }

    pub fn preset_names() -> Vec<&'static str> {
        PRESETS.iter().map(|p| p.0).collect()
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Parse a Hugging Face `config.json`.
    pub fn from_json(v: &Value, source: &str) -> Result<EsmConfig> {
        let get_usize = |k: &str| -> Result<usize> {
            v.get(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .with_context(|| format!("{source}: `{k}` is missing or not a non-negative integer"))
        };
        let get_f64 = |k: &str, default: f64| -> Result<f64> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x.as_f64().with_context(|| format!("{source}: `{k}` is not a number")),
            }
        };
        let get_str = |k: &str| v.get(k).and_then(Value::as_str);
        if let Some(t) = get_str("model_type") {
            // The second is a mean-pooled classifier of this engine (see `classifier.rs`).
            if t != "esm" && t != super::classifier::MEAN_POOL_MODEL_TYPE {
                bail!("{source}: model_type is `{t}`, but qf-engine runs ESM-2 (`esm`) models only");
            }
        }
        // transformers reads a missing `position_embedding_type` as "absolute" (learned
        // position embeddings, ESM-1b), so a config without it is not ESM-2 either.
        match get_str("position_embedding_type") {
            Some("rotary") => {}
            Some(t) => bail!(
                "{source}: position_embedding_type `{t}` is not ESM-2's `rotary` (ESM-1b checkpoints are not supported)"
            ),
            None => bail!(
                "{source}: position_embedding_type is missing, which transformers reads as `absolute` (ESM-1b); \
                 an ESM-2 config says \"position_embedding_type\": \"rotary\""
            ),
        }
        if v.get("emb_layer_norm_before").and_then(Value::as_bool) == Some(true) {
            bail!("{source}: emb_layer_norm_before = true is ESM-1b, not ESM-2");
        }
        if v.get("is_folding_model").and_then(Value::as_bool) == Some(true) {
            bail!("{source}: ESMFold models are not supported");
        }
        if let Some(act) = get_str("hidden_act") {
            if act != "gelu" {
                bail!("{source}: hidden_act `{act}` is not the exact GELU of ESM-2");
            }
        }
        if get_f64("rope_theta", 10000.0)? != 10000.0 {
            bail!("{source}: rope_theta must be 10000 for ESM-2");
        }
        let cfg = EsmConfig {
            vocab_size: get_usize("vocab_size")?,
            hidden_size: get_usize("hidden_size")?,
            num_hidden_layers: get_usize("num_hidden_layers")?,
            num_attention_heads: get_usize("num_attention_heads")?,
            intermediate_size: get_usize("intermediate_size")?,
            layer_norm_eps: get_f64("layer_norm_eps", 1e-12)?,
            token_dropout: v.get("token_dropout").and_then(Value::as_bool).unwrap_or(false),
            mask_token_id: v.get("mask_token_id").and_then(Value::as_u64).unwrap_or(32) as u32,
            pad_token_id: v.get("pad_token_id").and_then(Value::as_u64).unwrap_or(1) as u32,
            max_position_embeddings: get_usize("max_position_embeddings").unwrap_or(1026),
            hidden_dropout_prob: get_f64("hidden_dropout_prob", 0.1)?,
            initializer_range: get_f64("initializer_range", 0.02)?,
        };
        cfg.validate(source)?;
        Ok(cfg)
    }

    /// Read `config.json` from a checkpoint directory.
    /// Every model directory is read through here, so this is also where its tokenizer
    /// (`vocab.txt`, when present) is checked to be ESM-2's.
    pub fn from_dir(dir: &Path) -> Result<(EsmConfig, Value)> {
        super::tokenizer_files::check_vocab_file(dir)?;
        let path = dir.join("config.json");
        if !path.is_file() {
            bail!("{}: config.json is missing (a Hugging Face checkpoint directory has config.json and model.safetensors)", dir.display());
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
        Ok((EsmConfig::from_json(&v, &path.display().to_string())?, v))
    }

    fn validate(&self, source: &str) -> Result<()> {
        if self.vocab_size != VOCAB_SIZE {
            bail!("{source}: vocab_size {} is not the 33-token ESM-2 alphabet", self.vocab_size);
        }
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            bail!("{source}: hidden_size {} is not divisible by {} heads", self.hidden_size, self.num_attention_heads);
        }
        if self.head_dim() % 2 != 0 {
            bail!("{source}: head dimension {} must be even for rotary embeddings", self.head_dim());
        }
        Ok(())
    }

    /// The `config.json` of an `EsmForSequenceClassification` with these labels, in the
    /// form `transformers` writes.
    pub fn to_hf_json(&self, labels: &[String], architecture: &str) -> Value {
        let id2label: BTreeMap<String, &String> = labels.iter().enumerate().map(|(i, l)| (i.to_string(), l)).collect();
        let label2id: BTreeMap<&String, usize> = labels.iter().enumerate().map(|(i, l)| (l, i)).collect();
        json!({
            "architectures": [architecture],
            "model_type": "esm",
            "attention_probs_dropout_prob": 0.0,
            "classifier_dropout": null,
            "emb_layer_norm_before": false,
            "hidden_act": "gelu",
            "hidden_dropout_prob": self.hidden_dropout_prob,
            "hidden_size": self.hidden_size,
            "id2label": id2label,
            "label2id": label2id,
            "initializer_range": self.initializer_range,
            "intermediate_size": self.intermediate_size,
            "is_folding_model": false,
            "layer_norm_eps": self.layer_norm_eps,
            "mask_token_id": self.mask_token_id,
            "max_position_embeddings": self.max_position_embeddings,
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "pad_token_id": self.pad_token_id,
            "position_embedding_type": "rotary",
            "problem_type": "single_label_classification",
            "token_dropout": self.token_dropout,
            "torch_dtype": "float32",
            "vocab_size": self.vocab_size,
        })
    }

    /// Labels from `id2label` (ordered by id), if the config has them.
    pub fn labels_from_json(v: &Value) -> Option<Vec<String>> {
        let map = v.get("id2label")?.as_object()?;
        let mut pairs: Vec<(usize, String)> =
            map.iter().filter_map(|(k, l)| Some((k.parse().ok()?, l.as_str()?.to_string()))).collect();
        pairs.sort();
        if pairs.iter().enumerate().any(|(i, (k, _))| *k != i) {
            return None;
        }
        Some(pairs.into_iter().map(|(_, l)| l).collect())
    }
}
