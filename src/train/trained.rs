//! A trained classifier directory as `qf-engine train` writes it (`model/` or a
//! checkpoint): the Hugging Face checkpoint plus `label_map.json` (family tiers and
//! training counts, when present).

use std::path::Path;

use anyhow::{Context, Result};

use crate::data::stratify::LabelMap;
use crate::model::{HeadKind, SequenceClassifier};
use crate::tensor::Device;

pub struct TrainedModel {
    pub model: SequenceClassifier,
    pub label_map: Option<LabelMap>,
}

/// Load a classifier directory onto `device`. The head kind is read from `config.json`.
pub fn load_trained(dir: &Path, device: &Device) -> Result<TrainedModel> {
    let cfg_text = std::fs::read_to_string(dir.join("config.json")).unwrap_or_default();
    let head =
        if cfg_text.contains("\"qf_engine_head\": \"linear\"") { HeadKind::Linear } else { HeadKind::Classification };
    let (mut model, _) = SequenceClassifier::from_pretrained(dir, None, head, 0.0, 0)?;
    model.params.to_device(device)?;
    let lm_path = dir.join("label_map.json");
    let label_map = if lm_path.is_file() {
        let text = std::fs::read_to_string(&lm_path)?;
        let lm: LabelMap =
            serde_json::from_str(&text).with_context(|| format!("{}: unreadable label map", lm_path.display()))?;
        Some(lm)
    } else {
        None
    };
    Ok(TrainedModel { model, label_map })
}
