//! What `embed` is asked to compute: the representation layers (fair-esm's numbering),
//! the outputs (`mean`, `per-tok`, `bos`, `contacts`), how long proteins are handled,
//! and the output format.

use anyhow::{bail, Result};
use serde::Serialize;

/// Resolve fair-esm `--repr_layers` indices against a model of `num_layers` blocks:
/// `0` is the embedding output, `num_layers` the final (LayerNorm'ed) output, negative
/// indices count from the end (`-1` = `num_layers`). Duplicates are dropped, the order
/// asked is kept.
pub fn resolve_repr_layers(asked: &[i64], num_layers: usize) -> Result<Vec<usize>> {
    if asked.is_empty() {
        bail!("--repr-layers is empty: give at least one layer (e.g. -1 for the last)");
    }
    let n = num_layers as i64;
    let mut out = Vec::with_capacity(asked.len());
    for &a in asked {
        let layer = if a < 0 { n + 1 + a } else { a };
        if !(0..=n).contains(&layer) {
            bail!(
                "--repr-layers {a}: out of range: the model has {num_layers} layers, so a layer is 0..={num_layers} \
                 (0 = the embeddings, {num_layers} = the final output) or -{}..=-1 counted from the end",
                n + 1
            );
        }
        if !out.contains(&(layer as usize)) {
            out.push(layer as usize);
        }
    }
    Ok(out)
}

/// The outputs asked for with `--include`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Include {
    /// Mean over residues (without `<cls>`/`<eos>`), per layer.
    pub mean: bool,
    /// One vector per residue, per layer.
    pub per_tok: bool,
    /// The `<cls>` (beginning-of-sequence) vector, per layer.
    pub bos: bool,
    /// The contact head's probability map (`L × L`).
    pub contacts: bool,
}

impl Include {
    /// Parse `mean,per-tok,bos,contacts` (any non-empty subset; `per_tok` also accepted).
    pub fn parse(text: &str) -> Result<Include> {
        let mut inc = Include::default();
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "mean" => inc.mean = true,
                "per-tok" | "per_tok" => inc.per_tok = true,
                "bos" => inc.bos = true,
                "contacts" => inc.contacts = true,
                _ => bail!("--include: unknown output `{word}`; choose from mean, per-tok, bos, contacts"),
            }
        }
        if inc == Include::default() {
            bail!("--include is empty: choose from mean, per-tok, bos, contacts");
        }
        Ok(inc)
    }

    /// Whether any per-layer representation is asked for.
    pub fn any_layer_output(&self) -> bool {
        self.mean || self.per_tok || self.bos
    }
}

/// How proteins longer than the model's window are handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LengthPolicy {
    /// Overlapping windows of `max_len` tokens (`<cls>` and `<eos>` included), stride
    /// half a window; per-residue representations (and contact pairs) averaged over the
    /// windows that cover them. No residue is dropped.
    Windows { max_len: usize },
    /// fair-esm's `--truncation_seq_length`: keep the first `residues` residues.
    Truncate { residues: usize },
}

impl LengthPolicy {
    /// Tokens in the longest item a batch holds.
    pub fn max_item_tokens(&self) -> usize {
        match *self {
            LengthPolicy::Windows { max_len } => max_len,
            LengthPolicy::Truncate { residues } => residues + 2,
        }
    }

    /// Residues of a protein of `length` residues that are embedded.
    pub fn embedded_len(&self, length: usize) -> usize {
        match *self {
            LengthPolicy::Windows { .. } => length,
            LengthPolicy::Truncate { residues } => length.min(residues),
        }
    }
}

/// Output files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Format {
    /// `shard-NNNNN.safetensors` files, each written once its buffered tensors (data,
    /// names and bookkeeping) reach `shard_bytes`; a single protein larger than that gets
    /// a shard of its own.
    Safetensors { shard_bytes: usize },
    /// One `.npy` file per protein and output.
    Npy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_resolve_like_fair_esm() {
        assert_eq!(resolve_repr_layers(&[-1], 6).unwrap(), vec![6]);
        assert_eq!(resolve_repr_layers(&[0, -7, 3, 3, -2], 6).unwrap(), vec![0, 3, 5]);
        let e = resolve_repr_layers(&[7], 6).unwrap_err().to_string();
        assert!(e.contains("--repr-layers 7: out of range: the model has 6 layers"), "{e}");
        assert!(resolve_repr_layers(&[-8], 6).is_err());
    }

    #[test]
    fn include_parses_every_output() {
        let all = Include::parse("mean,per-tok,bos,contacts").unwrap();
        assert!(all.mean && all.per_tok && all.bos && all.contacts);
        assert_eq!(Include::parse("per_tok").unwrap(), Include { per_tok: true, ..Default::default() });
        assert!(Include::parse("mean,logits").unwrap_err().to_string().contains("unknown output `logits`"));
        assert!(Include::parse(",").is_err());
    }

    #[test]
    fn truncation_keeps_the_first_residues() {
        let t = LengthPolicy::Truncate { residues: 10 };
        assert_eq!((t.embedded_len(25), t.embedded_len(4), t.max_item_tokens()), (10, 4, 12));
        let w = LengthPolicy::Windows { max_len: 1024 };
        assert_eq!((w.embedded_len(5000), w.max_item_tokens()), (5000, 1024));
    }
}
