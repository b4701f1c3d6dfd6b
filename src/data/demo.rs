//! The built-in demo set that `qf-engine train` uses when no data is given: 20 real Pfam
//! families, 100 training and 25 held-out domains each, embedded in the binary (170 KB).
//!
//! Source: `../shared/data/pfam` (train/ for training rows, dev/ for held-out rows), cut by
//! `tools/make_demo_set.py` (family choice and row order are documented there).

use std::path::Path;

use anyhow::Result;

use super::dataset::LabelledSet;
use super::fasta::{read_fasta_from, FastaLabels};

const TRAIN_GZ: &[u8] = include_bytes!("demo/demo_train.fasta.gz");
const TEST_GZ: &[u8] = include_bytes!("demo/demo_test.fasta.gz");

fn read(bytes: &'static [u8], name: &str) -> Result<LabelledSet> {
    let reader = Box::new(std::io::BufReader::new(flate2::read::GzDecoder::new(bytes)));
    read_fasta_from(reader, Path::new(name), &FastaLabels::Header)
}

/// The demo training and held-out sets.
pub fn demo_sets() -> Result<(LabelledSet, LabelledSet)> {
    Ok((read(TRAIN_GZ, "<built-in demo train>")?, read(TEST_GZ, "<built-in demo test>")?))
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
}
