//! What the planner counts: one [`ParamSpec`] per parameter tensor (size, trainable,
//! read by a GEMM), either read from a built model ([`param_specs_of`]) or derived from the
//! model's shape without building it ([`param_specs`]), LoRA adapters included.

use anyhow::{bail, Result};

use crate::model::lora::LoraConfig;
use crate::model::{EsmConfig, HeadKind, Params};

/// One parameter tensor as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ParamSpec {
    pub name: String,
    pub numel: usize,
    pub trainable: bool,
    /// Multiplied in a GEMM (`ops::linear`), so a half-precision run keeps a compute copy.
    pub gemm: bool,
}

impl ParamSpec {
    fn new(name: String, numel: usize, trainable: bool, gemm: bool) -> Self {
        ParamSpec { name, numel, trainable, gemm }
    }
}

/// Whether a parameter of this name and rank is a GEMM weight: every 2-D `.weight` except
/// the embedding table and the contact regression (which are not read by `ops::linear`).
fn is_gemm_weight(name: &str, rank: usize) -> bool {
    rank == 2 && name.ends_with("weight") && !name.contains("word_embeddings") && !name.contains("contact_head")
}

/// The specs of an existing parameter store.
pub fn param_specs_of(params: &Params) -> Vec<ParamSpec> {
    params
        .iter()
        .map(|(name, t)| {
            ParamSpec::new(name.into(), t.numel(), t.requires_grad(), is_gemm_weight(name, t.shape().len()))
        })
        .collect()
}

/// What is trained (for specs without building the model).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelShape {
    pub cfg: EsmConfig,
    /// Sequence-classification head and its number of classes (none for a contact model).
    pub head: Option<(HeadKind, usize)>,
    /// LoRA adapters: the base encoder is frozen, adapters (and the head) train.
    pub lora: Option<LoraConfig>,
}

/// `(in, out)` of a LoRA target projection.
pub(super) fn projection_dims(cfg: &EsmConfig, target: &str) -> Result<(usize, usize)> {
    let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
    Ok(match target {
        "query" | "key" | "value" | "attn_out" => (h, h),
        "ffn_in" => (h, f),
        "ffn_out" => (f, h),
        t => bail!("unknown LoRA target `{t}`"),
    })
}

/// HF name of a LoRA target projection inside layer `i`.
fn projection_name(i: usize, target: &str) -> String {
    let p = match target {
        "query" | "key" | "value" => format!("attention.self.{target}"),
        "attn_out" => "attention.output.dense".into(),
        "ffn_in" => "intermediate.dense".into(),
        _ => "output.dense".into(),
    };
    format!("esm.encoder.layer.{i}.{p}")
}

/// Every parameter of the model `shape` describes, with the same names, sizes and
/// trainable flags as the model built by `SequenceClassifier` (contact head frozen) or,
/// with LoRA, only adapters and head trainable.
pub fn param_specs(shape: &ModelShape) -> Result<Vec<ParamSpec>> {
    let cfg = &shape.cfg;
    let (h, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let base = shape.lora.is_none();
    let mut out = vec![ParamSpec::new("esm.embeddings.word_embeddings.weight".into(), v * h, base, false)];
    let linear = |out: &mut Vec<ParamSpec>, prefix: String, i: usize, o: usize, trainable: bool| {
        out.push(ParamSpec::new(format!("{prefix}.weight"), i * o, trainable, true));
        out.push(ParamSpec::new(format!("{prefix}.bias"), o, trainable, false));
    };
    let ln = |out: &mut Vec<ParamSpec>, prefix: String| {
        out.push(ParamSpec::new(format!("{prefix}.weight"), h, base, false));
        out.push(ParamSpec::new(format!("{prefix}.bias"), h, base, false));
    };
    for i in 0..cfg.num_hidden_layers {
        let p = format!("esm.encoder.layer.{i}");
        ln(&mut out, format!("{p}.attention.LayerNorm"));
        for proj in ["query", "key", "value"] {
            linear(&mut out, format!("{p}.attention.self.{proj}"), h, h, base);
        }
        linear(&mut out, format!("{p}.attention.output.dense"), h, h, base);
        ln(&mut out, format!("{p}.LayerNorm"));
        linear(&mut out, format!("{p}.intermediate.dense"), h, f, base);
        linear(&mut out, format!("{p}.output.dense"), f, h, base);
    }
    ln(&mut out, "esm.encoder.emb_layer_norm_after".into());
    let channels = cfg.num_hidden_layers * cfg.num_attention_heads;
    out.push(ParamSpec::new("esm.contact_head.regression.weight".into(), channels, false, false));
    out.push(ParamSpec::new("esm.contact_head.regression.bias".into(), 1, false, false));
    match shape.head {
        Some((HeadKind::Classification, c)) => {
            linear(&mut out, "classifier.dense".into(), h, h, true);
            linear(&mut out, "classifier.out_proj".into(), h, c, true);
        }
        Some((HeadKind::Linear, c)) => linear(&mut out, "classifier".into(), h, c, true),
        None => {}
    }
    if let Some(l) = &shape.lora {
        l.validate()?;
        for i in 0..cfg.num_hidden_layers {
            for t in &l.targets {
                let (fin, fout) = projection_dims(cfg, t)?;
                let name = projection_name(i, t);
                out.push(ParamSpec::new(format!("{name}.lora_A.weight"), l.rank * fin, true, true));
                out.push(ParamSpec::new(format!("{name}.lora_B.weight"), fout * l.rank, true, true));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_specs_match_a_real_classifier() {
        let shape = ModelShape {
            cfg: EsmConfig::preset("esm2_tiny").unwrap(),
            head: Some((HeadKind::Classification, 7)),
            lora: None,
        };
        let labels = (0..7).map(|i| format!("c{i}")).collect();
        let m =
            crate::model::SequenceClassifier::new_random(&shape.cfg, labels, HeadKind::Classification, 0.0, 1).unwrap();
        let mut want = param_specs_of(&m.params);
        let mut got = param_specs(&shape).unwrap();
        want.sort();
        got.sort();
        assert_eq!(got, want);
    }
}
