//! One LoRA adapter's maths apart from the forward pass (which `model::linear` applies):
//! the hyper-parameters and their checks, PEFT's initialisation of `A` and `B`, and the
//! merged weight `W + (α/r)·B·A`. Imports `model::linear`, never `model::esm2`.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::data::rng::Rng;
use crate::model::linear::{Linear, LoraAdapter};
use crate::model::params::Params;
use crate::tensor::Tensor;

/// LoRA hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Projection names: `query`, `key`, `value`, `attn_out`, `ffn_in`, `ffn_out`.
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    /// ContactProject's choice: query and value, r = 8, α = 8, dropout 0.05.
    fn default() -> Self {
        LoraConfig { rank: 8, alpha: 8.0, dropout: 0.05, targets: vec!["query".into(), "value".into()] }
    }
}

/// Every projection LoRA can target.
pub const LORA_TARGETS: [&str; 6] = ["query", "key", "value", "attn_out", "ffn_in", "ffn_out"];

impl LoraConfig {
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            bail!("LoRA rank must be at least 1");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("LoRA dropout must be in [0, 1), got {}", self.dropout);
        }
        for t in &self.targets {
            if !LORA_TARGETS.contains(&t.as_str()) {
                bail!("unknown LoRA target `{t}`; choose from {}", LORA_TARGETS.join(", "));
            }
        }
        if self.targets.is_empty() {
            bail!("LoRA needs at least one target projection");
        }
        Ok(())
    }
}

impl LoraAdapter {
    /// Register the adapter of the layer whose weight is called `{prefix}.weight`.
    pub fn new(
        params: &mut Params,
        prefix: &str,
        in_f: usize,
        out_f: usize,
        cfg: &LoraConfig,
        rng: &mut Rng,
    ) -> Result<LoraAdapter> {
        let bound = 1.0 / (in_f as f64).sqrt();
        let a: Vec<f32> = (0..cfg.rank * in_f).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect();
        let a = params.add(&format!("{prefix}.lora_A.weight"), Tensor::from_vec(a, &[cfg.rank, in_f])?, false)?;
        let b = params.add(
            &format!("{prefix}.lora_B.weight"),
            Tensor::from_vec(vec![0f32; out_f * cfg.rank], &[out_f, cfg.rank])?,
            false,
        )?;
        Ok(LoraAdapter { a, b, rank: cfg.rank, alpha: cfg.alpha, dropout: cfg.dropout })
    }
}

impl LoraConfig {
    /// Parse `--lora-targets` (`query,value`; `all` for every projection).
    pub fn parse_targets(list: &str) -> Result<Vec<String>> {
        let targets: Vec<String> = if list.trim() == "all" {
            LORA_TARGETS.iter().map(|t| t.to_string()).collect()
        } else {
            list.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect()
        };
        let mut seen = BTreeSet::new();
        for t in &targets {
            if !LORA_TARGETS.contains(&t.as_str()) {
                bail!("unknown LoRA target `{t}`; choose from {} (or `all`)", LORA_TARGETS.join(", "));
            }
            if !seen.insert(t.clone()) {
                bail!("LoRA target `{t}` is listed twice");
            }
        }
        Ok(targets)
    }

    /// The qf-engine record of the adapters, kept in `config.json` of a training
    /// checkpoint whose weights hold unmerged adapters.
    pub fn to_json(&self) -> Value {
        json!({ "r": self.rank, "lora_alpha": self.alpha, "lora_dropout": self.dropout, "targets": self.targets })
    }

    pub fn from_json(v: &Value, source: &str) -> Result<LoraConfig> {
        let num =
            |k: &str| v.get(k).and_then(Value::as_f64).with_context(|| format!("{source}: LoRA `{k}` is missing"));
        let targets = match v.get("targets").and_then(Value::as_array) {
            Some(a) => a.iter().filter_map(Value::as_str).map(String::from).collect(),
            None => bail!("{source}: LoRA `targets` is missing"),
        };
        let cfg =
            LoraConfig { rank: num("r")? as usize, alpha: num("lora_alpha")?, dropout: num("lora_dropout")?, targets };
        cfg.validate().with_context(|| source.to_string())?;
        Ok(cfg)
    }
}

/// Whether a parameter name belongs to a LoRA adapter.
pub fn is_adapter(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}

/// `W + (α/r)·B·A` of a linear layer with an adapter, as f32 host values `[out, in]`.
pub(super) fn merged_weight(params: &Params, lin: &Linear, lora: &LoraAdapter) -> Result<Vec<f32>> {
    let (out_f, in_f, r) = (lin.out_features, lin.in_features, lora.rank);
    let mut w = params.get(lin.weight).to_vec_f32()?;
    let a = params.get(lora.a).to_vec_f32()?;
    let b = params.get(lora.b).to_vec_f32()?;
    let s = lora.scale();
    for o in 0..out_f {
        for i in 0..in_f {
            let delta: f64 = (0..r).map(|k| b[o * r + k] as f64 * a[k * in_f + i] as f64).sum();
            w[o * in_f + i] = (w[o * in_f + i] as f64 + s * delta) as f32;
        }
    }
    Ok(w)
}
