//! How a model with adapters goes into the engine's checkpoints: merged into the base,
//! unmerged with a record in `config.json` (for exact resumption), or the base alone.

use anyhow::Result;
use serde_json::Value;

use super::adapter::{is_adapter, LoraConfig};
use super::attach::{attach, attached_config, merged_tensors};
use crate::model::checkpoint::NamedTensor;
use crate::model::esm2::Esm2;
use crate::model::params::Params;

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
