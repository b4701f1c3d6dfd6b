//! Filling a parameter store from a Hugging Face checkpoint, and writing one back.

use std::path::Path;

use anyhow::{bail, Result};

use super::checkpoint::{hf_name_candidates, write_safetensors, MappedSafetensors, NamedTensor};
use super::params::Params;
use crate::tensor::Tensor;

/// What a load found.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Parameters read from the file.
    pub loaded: usize,
    /// Parameters the file did not have (left at their initial values).
    pub fresh: Vec<String>,
    /// Tensors of the file no parameter took (e.g. an MLM head), buffers excluded.
    pub unused: Vec<String>,
}

/// Tensors that checkpoints carry but that are not parameters.
fn is_buffer(name: &str) -> bool {
    name.ends_with("rotary_embeddings.inv_freq") || name.ends_with("position_ids")
}

/// How a parameter is treated by [`load_params`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Must be in the file.
    Required,
    /// Loaded when the file has it.
    Optional,
    /// Not read even if present (e.g. a head for other classes).
    Skip,
}

/// Load the parameters the file has, as `need` says for each name. Shapes must match
/// exactly.
pub fn load_params(params: &mut Params, file: &MappedSafetensors, need: impl Fn(&str) -> Need) -> Result<LoadReport> {
    let mut report = LoadReport::default();
    let mut used = std::collections::HashSet::new();
    let ids: Vec<_> = params.ids().collect();
    for id in ids {
        let name = params.name(id).to_string();
        if need(&name) == Need::Skip {
            report.fresh.push(name);
            continue;
        }
        match file.find(&hf_name_candidates(&name))? {
            Some(found) => {
                let shape = params.get(id).shape().to_vec();
                let values = file.read_f32(&found, &shape)?;
                params.set(id, Tensor::from_vec(values, &shape)?)?;
                used.insert(found);
                report.loaded += 1;
            }
            None if need(&name) == Need::Required => {
                bail!(
                    "{}: tensor `{name}` is missing (looked for {})",
                    file.path().display(),
                    hf_name_candidates(&name).join(", ")
                );
            }
            None => report.fresh.push(name),
        }
    }
    file.check_finite(used.iter().map(String::as_str), "the model's weights")?;
    report.unused = file.names()?.into_iter().filter(|n| !used.contains(n) && !is_buffer(n)).collect();
    report.unused.sort();
    Ok(report)
}

/// Write all parameters (plus `extra` tensors such as rotary buffers) to `path`.
pub fn save_params(params: &Params, path: &Path, extra: Vec<NamedTensor>) -> Result<()> {
    let mut tensors = Vec::with_capacity(params.len() + extra.len());
    for (name, t) in params.iter() {
        tensors.push(NamedTensor::f32(name, t.shape(), &t.to_vec_f32()?));
    }
    tensors.extend(extra);
    save_tensors(path, &tensors)
}

/// Write named tensors as a PyTorch-flavoured safetensors file (`format: pt` metadata).
pub fn save_tensors(path: &Path, tensors: &[NamedTensor]) -> Result<()> {
    write_safetensors(path, tensors, Some([("format".to_string(), "pt".to_string())].into()))
}

/// Directory names of a checkpoint.
pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Open `dir/model.safetensors` with a clear error when it is not there.
pub fn open_weights(dir: &Path) -> Result<MappedSafetensors> {
    let path = dir.join(WEIGHTS_FILE);
    if !path.is_file() {
        bail!("{}: model.safetensors is missing (only safetensors checkpoints are read; convert pytorch_model.bin with transformers' save_pretrained(safe_serialization=True))", dir.display());
    }
    MappedSafetensors::open(&path)
}
