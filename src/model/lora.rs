//! LoRA adapters (Hu et al. 2021): a frozen linear layer `y = x·Wᵀ + b` gains a trainable
//! low-rank update `y += (α/r)·dropout(x)·Aᵀ·Bᵀ`, with `A: [r, in]` initialised like PEFT
//! (Kaiming-uniform, bound `1/√in`) and `B: [out, r]` zero, so a fresh adapter leaves the
//! model's outputs unchanged. Names follow PEFT: `<layer>.lora_A.weight`, `<layer>.lora_B.weight`.
//!
//! * [`attach`] puts an adapter on the chosen projections of every encoder layer;
//!   [`freeze_except`] then freezes every base weight (`requires_grad = false`: no gradient
//!   buffer, and the optimizer keeps no state for it).
//! * [`merge_into_base`] folds the adapters into the base weights, `W ← W + (α/r)·B·A`, for
//!   inference; [`merged_tensors`] gives the same merged weights without touching the model
//!   (what a saved Hugging Face directory holds).
//! * [`save_adapters`] writes the adapters alone as PEFT does (`save_pretrained` of a
//!   `PeftModel`) for the class the base is saved as ([`PeftBaseClass`]):
//!   `adapter_model.safetensors` with keys `base_model.model.<module path>.lora_A.weight` /
//!   `.lora_B.weight` (plus any trainable head as `base_model.model.<module path>.weight`,
//!   PEFT's `modules_to_save`), `adapter_config.json` with only keys PEFT knows (`peft_type`
//!   LORA, `r`, `lora_alpha`, `lora_dropout`, `target_modules` in Hugging Face module names),
//!   the engine's record in `qf_engine_adapter.json`, and ESM-2's tokenizer files.
//!   [`load_adapters`] reads such a directory back onto a model, with or without the
//!   `esm.` level in the keys.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::checkpoint::{write_atomic, write_safetensors, MappedSafetensors, NamedTensor};
use super::esm2::{Esm2, EsmLayer};
use super::linear::Linear;
use super::params::{ParamId, Params};
use super::tokenizer_files::write_tokenizer_files;
use crate::autograd::Tape;
use crate::data::rng::Rng;
use crate::ops;
use crate::tensor::Tensor;

/// File names of a saved adapter (as PEFT names them).
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Prefix PEFT puts before every module name of the wrapped model.
pub const PEFT_PREFIX: &str = "base_model.model.";

#[derive(Clone, Debug)]
pub struct LoraAdapter {
    pub a: ParamId,
    pub b: ParamId,
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
}

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

    /// `α / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// `y + (α/r)·dropout(x)·Aᵀ·Bᵀ`.
    pub fn add_update(&self, p: &Params, tape: &Tape, x: &Tensor, y: Tensor) -> Result<Tensor> {
        let xd = ops::dropout(tape, x, self.dropout)?;
        let u = ops::linear(tape, &xd, p.get(self.a), None)?;
        let u = ops::linear(tape, &u, p.get(self.b), None)?;
        let u = ops::scale(tape, &u, self.scale())?;
        ops::add(tape, &y, &u)
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

/// The projection of a layer that `target` names.
pub fn target_linear<'a>(layer: &'a mut EsmLayer, target: &str) -> Result<&'a mut Linear> {
    Ok(match target {
        "query" => &mut layer.query,
        "key" => &mut layer.key,
        "value" => &mut layer.value,
        "attn_out" => &mut layer.attn_out,
        "ffn_in" => &mut layer.ffn_in,
        "ffn_out" => &mut layer.ffn_out,
        _ => bail!("unknown LoRA target `{target}`; choose from {}", LORA_TARGETS.join(", ")),
    })
}

/// Every projection of the encoder, by layer, in [`LORA_TARGETS`] order.
fn all_linears(esm: &Esm2) -> impl Iterator<Item = &Linear> {
    esm.layers.iter().flat_map(|l| [&l.query, &l.key, &l.value, &l.attn_out, &l.ffn_in, &l.ffn_out])
}

/// Attach a fresh adapter (A random, B zero) to the `cfg.targets` projections of every
/// layer. The adapters' initial values come from `seed`.
pub fn attach(esm: &mut Esm2, params: &mut Params, cfg: &LoraConfig, seed: u64) -> Result<()> {
    cfg.validate()?;
    let mut rng = Rng::from_words(&[seed, 0x4C6F_5241]);
    for layer in &mut esm.layers {
        for target in &cfg.targets {
            let lin = target_linear(layer, target)?;
            if lin.lora.is_some() {
                bail!("LoRA is already attached to {}", params.name(lin.weight));
            }
            let prefix = params.name(lin.weight).trim_end_matches(".weight").to_string();
            lin.lora = Some(LoraAdapter::new(params, &prefix, lin.in_features, lin.out_features, cfg, &mut rng)?);
        }
    }
    Ok(())
}

/// Whether a parameter name belongs to a LoRA adapter.
pub fn is_adapter(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}

/// Freeze every parameter except the adapters and those `keep` names (e.g. a head).
/// Returns the number of trainable elements.
pub fn freeze_except(params: &mut Params, keep: impl Fn(&str) -> bool) -> usize {
    let ids: Vec<ParamId> = params.ids().collect();
    for id in ids {
        let name = params.name(id).to_string();
        params.set_trainable(id, is_adapter(&name) || keep(&name));
    }
    params.counts().1
}

/// `W + (α/r)·B·A` of a linear layer with an adapter, as f32 host values `[out, in]`.
fn merged_weight(params: &Params, lin: &Linear, lora: &LoraAdapter) -> Result<Vec<f32>> {
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

/// Fold every adapter into its base weight (`W ← W + (α/r)·B·A`) and detach it, so that
/// inference runs the plain model. The adapter tensors stay in the store (their `B` is set
/// to zero so they could never be applied twice) and are left out of saved models.
pub fn merge_into_base(esm: &mut Esm2, params: &mut Params) -> Result<usize> {
    let mut merged = 0;
    for layer in &mut esm.layers {
        for target in LORA_TARGETS {
            let lin = target_linear(layer, target)?;
            let Some(lora) = lin.lora.take() else { continue };
            let w = merged_weight(params, lin, &lora)?;
            let device = params.get(lin.weight).device();
            let shape = params.get(lin.weight).shape().to_vec();
            params.set(lin.weight, Tensor::from_vec(w, &shape)?.to_device(&device)?)?;
            let zero_b = params.get(lora.b).zeros_like()?;
            params.set(lora.b, zero_b)?;
            merged += 1;
        }
    }
    Ok(merged)
}

/// Every parameter except the adapters, with the adapters folded into the weights they
/// adapt: the tensors of a Hugging Face checkpoint of the merged model. The model is not
/// changed.
pub fn merged_tensors(esm: &Esm2, params: &Params) -> Result<Vec<NamedTensor>> {
    let mut replaced = std::collections::HashMap::new();
    for lin in all_linears(esm) {
        if let Some(lora) = &lin.lora {
            replaced.insert(lin.weight, merged_weight(params, lin, lora)?);
        }
    }
    let mut out = Vec::with_capacity(params.len());
    for id in params.ids() {
        let (name, t) = (params.name(id), params.get(id));
        if is_adapter(name) {
            continue;
        }
        let values = match replaced.remove(&id) {
            Some(v) => v,
            None => t.to_vec_f32()?,
        };
        out.push(NamedTensor::f32(name, t.shape(), &values));
    }
    Ok(out)
}

/// The LoRA configuration of the adapters attached to `esm` (`None` without adapters).
pub fn attached_config(esm: &Esm2) -> Option<LoraConfig> {
    let layer = esm.layers.first()?;
    let named = [
        ("query", &layer.query),
        ("key", &layer.key),
        ("value", &layer.value),
        ("attn_out", &layer.attn_out),
        ("ffn_in", &layer.ffn_in),
        ("ffn_out", &layer.ffn_out),
    ];
    let mut targets = Vec::new();
    let mut first: Option<&LoraAdapter> = None;
    for (t, lin) in named {
        if let Some(l) = &lin.lora {
            targets.push(t.to_string());
            first.get_or_insert(l);
        }
    }
    let l = first?;
    Some(LoraConfig { rank: l.rank, alpha: l.alpha, dropout: l.dropout, targets })
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
    super::tokenizer_files::check_vocab_file(dir)?;
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

/// How a model with adapters is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveMode {
    /// Adapters folded into the base weights and left out: a plain Hugging Face checkpoint.
    Merged,
    /// Base weights and adapters as they are (training checkpoints, for exact resumption);
    /// `config.json` records the adapters under [`CONFIG_KEY`].
    Unmerged,
    /// The base alone: every parameter except the adapters, unmerged (what an adapter
    /// directory applies to).
    BaseOnly,
}

/// Key of the adapter record in a qf-engine `config.json`.
pub const CONFIG_KEY: &str = "qf_engine_lora";

/// The tensors to save for `mode` (see [`SaveMode`]).
pub fn tensors_for_save(esm: &Esm2, params: &Params, mode: SaveMode) -> Result<Vec<NamedTensor>> {
    match mode {
        SaveMode::Merged => merged_tensors(esm, params),
        SaveMode::Unmerged => {
            params.iter().map(|(name, t)| Ok(NamedTensor::f32(name, t.shape(), &t.to_vec_f32()?))).collect()
        }
        SaveMode::BaseOnly => params
            .iter()
            .filter(|(name, _)| !is_adapter(name))
            .map(|(name, t)| Ok(NamedTensor::f32(name, t.shape(), &t.to_vec_f32()?)))
            .collect(),
    }
}

/// Record the attached adapters in a `config.json` value when they are saved unmerged.
pub fn annotate_config(cfg_json: &mut Value, esm: &Esm2, mode: SaveMode) {
    if let (SaveMode::Unmerged, Some(cfg)) = (mode, attached_config(esm)) {
        cfg_json[CONFIG_KEY] = cfg.to_json();
    }
}

/// Attach the adapters a `config.json` records (a checkpoint saved unmerged), so that
/// loading its weights fills them. Returns their configuration, if any.
pub fn attach_from_config(
    json: &Value,
    esm: &mut Esm2,
    params: &mut Params,
    source: &str,
) -> Result<Option<LoraConfig>> {
    match json.get(CONFIG_KEY) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let cfg = LoraConfig::from_json(v, source)?;
            attach(esm, params, &cfg, 0)?;
            Ok(Some(cfg))
        }
    }
}
