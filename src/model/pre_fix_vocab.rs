//! Upgrading a model directory saved before the vocabulary fix (2026-12-06).
//!
//! Until then the engine tokenized with a table that had `N K Q` at ids 15, 16, 17, where
//! ESM-2 has `K Q N`. A model trained then learned the embedding row of N at id 15, of K
//! at 16 and of Q at 17. [`upgrade_pre_fix_model`] moves those rows to the ids the real
//! alphabet gives the same residues (and the rows of an MLM decoder and its bias, which
//! are tied to them), so that the upgraded model, fed the correct ids, computes exactly
//! what the old model computed under the old ids. It then writes ESM-2's tokenizer files,
//! which also marks the directory as upgraded.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::checkpoint::{write_atomic, MappedSafetensors, NamedTensor};
use super::pretrained::{save_tensors, WEIGHTS_FILE};
use super::tokenizer_files::{write_tokenizer_files, VOCAB_FILE};
use crate::data::tokenizer::VOCAB;

/// The engine's token table before the fix (`… D P N K Q F …`).
pub const PRE_FIX_VOCAB: [&str; 33] = [
    "<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "N", "K", "Q", "F", "Y",
    "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
];

/// For each id of the real alphabet, the pre-fix id of the same token.
pub fn pre_fix_id_of() -> [usize; 33] {
    std::array::from_fn(|new| PRE_FIX_VOCAB.iter().position(|t| *t == VOCAB[new]).expect("same tokens"))
}

/// Tensors whose rows are indexed by token id.
fn is_token_indexed(name: &str) -> bool {
    let name = name.strip_prefix("esm.").unwrap_or(name);
    matches!(name, "embeddings.word_embeddings.weight" | "lm_head.decoder.weight" | "lm_head.bias")
}

/// Row `new` of the result is row `pre_fix_id_of()[new]` of `data` (rows of `row_bytes`).
fn reorder_rows(data: &[u8], row_bytes: usize) -> Vec<u8> {
    pre_fix_id_of().iter().flat_map(|&old| &data[old * row_bytes..(old + 1) * row_bytes]).copied().collect()
}

/// Copy the model directory `src` to `dst` with its token-indexed rows moved to the real
/// alphabet's ids and ESM-2's tokenizer files added. Refuses a directory that already has
/// a `vocab.txt` (saved after the fix, or not by this engine) and a training checkpoint
/// (its optimizer state is not moved; continue from `model/` instead).
pub fn upgrade_pre_fix_model(src: &Path, dst: &Path) -> Result<usize> {
    if src.join(VOCAB_FILE).is_file() {
        bail!(
            "{}: has a vocab.txt, so it was saved after the vocabulary fix (or by another tool) and its \
             token ids are already ESM-2's; nothing to upgrade",
            src.display()
        );
    }
    if src.join("training_state.safetensors").is_file() {
        bail!(
            "{}: is a training checkpoint; its optimizer state cannot be carried across the vocabulary fix. \
             Upgrade the run's model/ directory and start a new run from it with --checkpoint",
            src.display()
        );
    }
    if src.canonicalize()? == dst.canonicalize().unwrap_or_else(|_| dst.to_path_buf()) {
        bail!("--output must differ from --model (the old directory is kept as it is)");
    }
    let file = MappedSafetensors::open(&src.join(WEIGHTS_FILE))?;
    let mut tensors = Vec::new();
    let mut moved = 0;
    for name in file.names()? {
        let t = file.with_view(&name, |v| {
            Ok(NamedTensor { name: name.clone(), dtype: v.dtype(), shape: v.shape().to_vec(), data: v.data().to_vec() })
        })?;
        if !is_token_indexed(&name) {
            tensors.push(t);
            continue;
        }
        if t.shape.first() != Some(&VOCAB.len()) {
            bail!(
                "{}: `{name}` has shape {:?}; expected {} rows, one per token",
                file.path().display(),
                t.shape,
                VOCAB.len()
            );
        }
        let row_bytes = t.data.len() / VOCAB.len();
        tensors.push(NamedTensor { data: reorder_rows(&t.data, row_bytes), ..t });
        moved += 1;
    }
    if moved == 0 {
        bail!("{}: no word-embedding tensor to upgrade", file.path().display());
    }
    std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if path.is_file() && name != WEIGHTS_FILE {
            write_atomic(&dst.join(&name), &std::fs::read(&path)?)?;
        }
    }
    save_tensors(&dst.join(WEIGHTS_FILE), &tensors)?;
    write_tokenizer_files(dst)?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_n_k_q_move() {
        let map = pre_fix_id_of();
        for (new, &old) in map.iter().enumerate() {
            assert_eq!(PRE_FIX_VOCAB[old], VOCAB[new]);
            assert_eq!(new == old, !(15..18).contains(&new), "id {new}");
        }
        assert_eq!(&map[15..18], &[16, 17, 15]);
    }
}
