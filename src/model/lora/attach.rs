//! Adapters on an encoder: attach them to chosen projections, freeze the rest, read back
//! the configuration attached, and fold them into the base weights. Sits above
//! `model::esm2` (whose layers it walks) and `model::linear`.

use anyhow::{bail, Result};

use super::adapter::{is_adapter, merged_weight, LoraConfig, LORA_TARGETS};
use crate::data::rng::Rng;
use crate::model::checkpoint::NamedTensor;
use crate::model::esm2::{Esm2, EsmLayer};
use crate::model::linear::{Linear, LoraAdapter};
use crate::model::params::{ParamId, Params};
use crate::tensor::Tensor;

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
pub(super) fn all_linears(esm: &Esm2) -> impl Iterator<Item = &Linear> {
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
