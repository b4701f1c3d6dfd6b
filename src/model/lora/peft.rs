//! PEFT input/output: an adapter directory as Hugging Face PEFT writes and reads it
//! (`adapter_config.json`, `adapter_model.safetensors` and their key names, the engine's
//! `qf_engine_adapter.json`, tokenizer files). Sits above `model::esm2`.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::adapter::{is_adapter, LoraConfig, LORA_TARGETS};
use super::attach::{all_linears, attach, attached_config};
use crate::model::checkpoint::{write_atomic, write_safetensors, MappedSafetensors, NamedTensor};
use crate::model::esm2::Esm2;
use crate::model::params::{ParamId, Params};
use crate::model::tokenizer_files::{check_vocab_file, write_tokenizer_files};
use crate::tensor::Tensor;

/// File names of a saved adapter (as PEFT names them).
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Prefix PEFT puts before every module name of the wrapped model.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// Hugging Face module name (under `encoder.layer.N.`) of a LoRA target.
pub fn hf_module(target: &str) -> Result<&'static str> {
    Ok(match target {
        "query" => "attention.self.query",
        "key" => "attention.self.key",
        "value" => "attention.self.value",
        "attn_out" => "attention.output.dense",
        "ffn_in" => "intermediate.dense",
        "ffn_out" => "output.dense",
        _ => bail!("unknown LoRA target `{target}`; choose from {}", LORA_TARGETS.join(", ")),
    })
}

/// PEFT `target_modules` for a set of targets: suffixes of the module names (PEFT matches
/// a list entry when a module's name ends with `.<entry>`), or, when the suffixes cannot
/// pick exactly these modules (`ffn_out` without `attn_out`: `output.dense` also ends
/// `attention.output.dense`), a regular expression that PEFT matches against the full name.
pub fn peft_target_modules(targets: &[String]) -> Result<Value> {
    let has = |t: &str| targets.iter().any(|x| x == t);
    if has("ffn_out") && !has("attn_out") {
        let alts: Vec<String> =
            targets.iter().map(|t| hf_module(t).map(|m| m.replace('.', "\\."))).collect::<Result<_>>()?;
        return Ok(Value::String(format!(".*encoder\\.layer\\.\\d+\\.({})", alts.join("|"))));
    }
    let mut names = Vec::new();
    for t in targets {
        let m = match t.as_str() {
            "query" | "key" | "value" => t.as_str(),
            "attn_out" if has("ffn_out") => "output.dense",
            "ffn_out" => continue, // covered by `output.dense` above
            other => hf_module(other)?,
        };
        names.push(Value::String(m.to_string()));
    }
    Ok(Value::Array(names))
}

/// The Hugging Face class an adapter directory is written for. PEFT names every tensor
/// by its module path in that class: `EsmModel` has no `esm.` level (`encoder.layer.0…`,
/// `contact_head.regression`), while `EsmForSequenceClassification` keeps it
/// (`esm.encoder.layer.0…`) beside its `classifier`, and so does `EsmForMaskedLM` beside
/// its `lm_head`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeftBaseClass {
    EsmModel,
    EsmForSequenceClassification,
    EsmForMaskedLM,
}

impl PeftBaseClass {
    /// The PEFT key of the engine's parameter `name` (whose encoder names start `esm.`).
    pub fn key(self, name: &str) -> String {
        let path = match self {
            PeftBaseClass::EsmModel => name.strip_prefix("esm.").unwrap_or(name),
            PeftBaseClass::EsmForSequenceClassification | PeftBaseClass::EsmForMaskedLM => name,
        };
        format!("{PEFT_PREFIX}{path}")
    }

    /// PEFT's name of the module that holds parameter `name` (for `modules_to_save`).
    fn module(self, name: &str) -> String {
        // EsmForMaskedLM's `lm_head.bias` is a bare parameter of `lm_head`, so PEFT can only
        // save the head as the whole `lm_head` module (its tied decoder included).
        if self == PeftBaseClass::EsmForMaskedLM && name.starts_with("lm_head.") {
            return "lm_head".into();
        }
        let key = self.key(name);
        let path = key.strip_prefix(PEFT_PREFIX).unwrap_or(&key);
        path.rsplit_once('.').map_or(path, |(module, _)| module).to_string()
    }
}

/// The engine's own record of an adapter directory, kept out of `adapter_config.json` (PEFT
/// warns about keys it does not know): the LoRA targets in `--lora-targets` names.
pub const ENGINE_ADAPTER_FILE: &str = "qf_engine_adapter.json";

/// Write the adapters of `esm` (and the `extra` parameters, e.g. a trained head) as a PEFT
/// adapter directory for `class`, with ESM-2's tokenizer files beside them. `base` names
/// the base model in the config.
pub fn save_adapters(
    dir: &Path,
    esm: &Esm2,
    params: &Params,
    extra: &[ParamId],
    base: &str,
    class: PeftBaseClass,
) -> Result<()> {
    let named: Vec<(String, ParamId)> = extra.iter().map(|&id| (params.name(id).to_string(), id)).collect();
    save_adapters_named(dir, esm, params, &named, base, class)
}

/// [`save_adapters`] with each extra parameter saved under the engine-style name given
/// beside it (e.g. the tied `lm_head.decoder.weight`, which is the embedding parameter).
pub fn save_adapters_named(
    dir: &Path,
    esm: &Esm2,
    params: &Params,
    extra: &[(String, ParamId)],
    base: &str,
    class: PeftBaseClass,
) -> Result<()> {
    let Some(cfg) = attached_config(esm) else {
        bail!("the model has no LoRA adapters to save");
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let adapters = all_linears(esm).filter_map(|lin| lin.lora.as_ref()).flat_map(|l| [l.a, l.b]);
    let mut tensors = Vec::new();
    let named = adapters.map(|id| (params.name(id).to_string(), id)).chain(extra.iter().cloned());
    for (name, id) in named {
        let t = params.get(id);
        tensors.push(NamedTensor::f32(class.key(&name), t.shape(), &t.to_vec_f32()?));
    }
    let modules_to_save: BTreeSet<String> = extra.iter().map(|(name, _)| class.module(name)).collect();
    write_safetensors(
        &dir.join(ADAPTER_WEIGHTS_FILE),
        &tensors,
        Some([("format".to_string(), "pt".to_string())].into()),
    )?;
    let config = json!({
        "peft_type": "LORA",
        "task_type": null,
        "base_model_name_or_path": base,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": peft_target_modules(&cfg.targets)?,
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "inference_mode": true,
        "layers_to_transform": null,
        "modules_to_save": if modules_to_save.is_empty() { Value::Null } else { json!(modules_to_save) },
    });
    write_atomic(&dir.join(ADAPTER_CONFIG_FILE), serde_json::to_string_pretty(&config)?.as_bytes())?;
    let engine = json!({ "lora_targets": cfg.targets });
    write_atomic(&dir.join(ENGINE_ADAPTER_FILE), serde_json::to_string_pretty(&engine)?.as_bytes())?;
    write_tokenizer_files(dir)
}

/// Which target a PEFT key (`…encoder.layer.N.<module>.lora_A.weight`) adapts, and its layer.
fn parse_adapter_key(key: &str) -> Option<(usize, &'static str)> {
    let stem = key.strip_suffix(".lora_A.weight")?;
    let rest = &stem[stem.find("encoder.layer.")? + "encoder.layer.".len()..];
    let (layer, module) = rest.split_once('.')?;
    let target = LORA_TARGETS.into_iter().find(|t| hf_module(t).ok() == Some(module))?;
    Some((layer.parse().ok()?, target))
}

/// Read a PEFT adapter directory onto `esm`: attach adapters with the saved rank, α,
/// dropout and targets (found from the tensor names), load their values, and load any
/// saved extra parameter (`modules_to_save`) the store has. Returns the configuration.
pub fn load_adapters(dir: &Path, esm: &mut Esm2, params: &mut Params) -> Result<LoraConfig> {
    check_vocab_file(dir)?;
    let cfg_path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).with_context(|| {
        format!(
            "{}: cannot read (an adapter directory has {ADAPTER_CONFIG_FILE} and {ADAPTER_WEIGHTS_FILE})",
            cfg_path.display()
        )
    })?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", cfg_path.display()))?;
    let source = cfg_path.display().to_string();
    if let Some(t) = v.get("peft_type").and_then(Value::as_str) {
        if t != "LORA" {
            bail!("{source}: peft_type is `{t}`; only LORA adapters are supported");
        }
    }
    let file = MappedSafetensors::open(&dir.join(ADAPTER_WEIGHTS_FILE))?;
    let names = file.names()?;
    file.check_finite(names.iter().map(String::as_str), "the adapter")?;
    let mut per_layer: Vec<BTreeSet<&'static str>> = vec![BTreeSet::new(); esm.layers.len()];
    for n in &names {
        if let Some((layer, target)) = parse_adapter_key(n) {
            if layer >= esm.layers.len() {
                bail!(
                    "{}: adapter `{n}` is for layer {layer}, but the model has {} layers",
                    file.path().display(),
                    esm.layers.len()
                );
            }
            per_layer[layer].insert(target);
        }
    }
    let targets = per_layer[0].clone();
    if targets.is_empty() {
        bail!("{}: no `…lora_A.weight` tensors of encoder layers", file.path().display());
    }
    if per_layer.iter().any(|s| *s != targets) {
        bail!("{}: adapters must cover the same projections in every layer", file.path().display());
    }
    let num = |k: &str| v.get(k).and_then(Value::as_f64).with_context(|| format!("{source}: `{k}` is missing"));
    let cfg = LoraConfig {
        rank: num("r")? as usize,
        alpha: num("lora_alpha")?,
        dropout: v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
        targets: LORA_TARGETS.iter().filter(|t| targets.contains(*t)).map(|t| t.to_string()).collect(),
    };
    check_engine_record(dir, &cfg.targets)?;
    attach(esm, params, &cfg, 0)?;
    let ids: Vec<ParamId> = params.ids().collect();
    for id in ids {
        let name = params.name(id).to_string();
        let candidates = [format!("{PEFT_PREFIX}{name}"), format!("{PEFT_PREFIX}{}", name.trim_start_matches("esm."))];
        let found = candidates.iter().find(|c| names.contains(c));
        match found {
            Some(key) => {
                let shape = params.get(id).shape().to_vec();
                let device = params.get(id).device();
                let values = file.read_f32(key, &shape)?;
                params.set(id, Tensor::from_vec(values, &shape)?.to_device(&device)?)?;
            }
            None if is_adapter(&name) => {
                bail!("{}: adapter tensor `{}` is missing", file.path().display(), candidates[0])
            }
            None => {}
        }
    }
    Ok(cfg)
}

/// When the directory has the engine's own record ([`ENGINE_ADAPTER_FILE`]), its targets
/// must be the ones the tensors cover (a mismatch means files from two runs were mixed).
fn check_engine_record(dir: &Path, found: &[String]) -> Result<()> {
    let path = dir.join(ENGINE_ADAPTER_FILE);
    if !path.is_file() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    let recorded: BTreeSet<&str> =
        v.get("lora_targets").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let found_set: BTreeSet<&str> = found.iter().map(String::as_str).collect();
    if recorded != found_set {
        bail!(
            "{}: records LoRA targets {:?} but {ADAPTER_WEIGHTS_FILE} holds adapters for {:?}",
            path.display(),
            recorded,
            found_set
        );
    }
    Ok(())
}
