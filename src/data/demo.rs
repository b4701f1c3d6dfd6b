//! The built-in demo set that `qf-engine train` uses when no data is given: 20 real Pfam
//! families, 100 training and 25 held-out domains each, embedded in the binary (170 KB).
//!
//! Source: `../shared/data/pfam` (train/ for training rows, dev/ for held-out rows), cut by
//! `tools/make_demo_set.py` (family choice and row order are documented there).
//!
//! Beside it, the demo's pretrained encoder (0.9 MB): `esm2_tiny` after 30 minutes of
//! qf-engine's own MLM training on the training split's sequences (never the dev rows the
//! demo scores), made by `tools/make_demo_encoder.py` (its header has the commands).

use std::path::Path;

use anyhow::Result;

use super::dataset::LabelledSet;
use super::fasta::{read_fasta_from, FastaLabels};

const TRAIN_GZ: &[u8] = include_bytes!("demo/demo_train.fasta.gz");
const TEST_GZ: &[u8] = include_bytes!("demo/demo_test.fasta.gz");
const ENCODER_CONFIG: &[u8] = include_bytes!("demo/encoder/config.json");
const ENCODER_WEIGHTS: &[u8] = include_bytes!("demo/encoder/model.safetensors");

/// Where a demo run keeps the built-in encoder, inside its output directory.
pub const ENCODER_DIR: &str = "pretrained_encoder";

fn read(bytes: &'static [u8], name: &str) -> Result<LabelledSet> {
    let reader = Box::new(std::io::BufReader::new(flate2::read::GzDecoder::new(bytes)));
    read_fasta_from(reader, Path::new(name), &FastaLabels::Header)
}

/// The demo training and held-out sets.
pub fn demo_sets() -> Result<(LabelledSet, LabelledSet)> {
    Ok((read(TRAIN_GZ, "<built-in demo train>")?, read(TEST_GZ, "<built-in demo test>")?))
}

/// Write the built-in pretrained encoder (an `EsmModel` directory: config.json and fp16
/// model.safetensors) into `dir`, so that it loads as any Hugging Face checkpoint, and a
/// LoRA adapter or `--resume` can name it.
pub fn write_encoder(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("config.json"), ENCODER_CONFIG)?;
    std::fs::write(dir.join("model.safetensors"), ENCODER_WEIGHTS)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn demo_set_has_twenty_families_of_real_sequences() {
        let (train, test) = super::demo_sets().unwrap();
        assert_eq!((train.len(), test.len()), (2000, 500));
        assert_eq!(train.families().len(), 20);
        assert!(train.family_counts().iter().all(|&c| c == 100));
        assert!(test.family_counts().iter().all(|&c| c == 25));
    }

    /// The shipped encoder is a whole esm2_tiny encoder in the EsmModel layout: a classifier
    /// built on it finds every encoder tensor in the file (only the new head is fresh), and
    /// the file stays under 1 MB.
    #[test]
    fn the_builtin_encoder_is_a_complete_esm2_tiny() {
        use crate::model::{EsmConfig, HeadKind, SequenceClassifier};
        let dir = tempfile::tempdir().unwrap();
        super::write_encoder(dir.path()).unwrap();
        assert!(super::ENCODER_WEIGHTS.len() < 1_000_000);
        let labels = vec!["PF00001".to_string(), "PF00002".to_string()];
        let (model, report) =
            SequenceClassifier::from_pretrained(dir.path(), Some(labels), HeadKind::Classification, 0.0, 0).unwrap();
        let tiny = EsmConfig::preset("esm2_tiny").unwrap();
        let cfg = &model.esm.cfg;
        assert_eq!((cfg.num_hidden_layers, cfg.hidden_size), (tiny.num_hidden_layers, tiny.hidden_size));
        assert!(report.fresh.iter().all(|n| n.starts_with("classifier.")), "not in the file: {:?}", report.fresh);
        assert!(report.unused.is_empty(), "unused: {:?}", report.unused);
    }
}
