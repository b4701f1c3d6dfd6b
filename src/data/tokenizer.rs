//! The ESM-2 alphabet (33 tokens) and the sequence → token-id encoding.
//!
//! Order and ids are those of fair-esm's `Alphabet("ESM-1b")` and Hugging Face's
//! `EsmTokenizer` vocabulary for every ESM-2 checkpoint:
//! `<cls> <pad> <eos> <unk> L A G V S E R T I D P N K Q F Y M H W C X B U Z O . - <null_1> <mask>`.
//!
//! Encoding prepends `<cls>` and appends `<eos>`. Residue letters are upper-cased first;
//! a letter that is not in the alphabet (e.g. `J`, `*`, a digit) becomes `<unk>` (id 3),
//! exactly as ESM's tokenizers do, and is counted in [`Encoded::unknown`] so callers can
//! report it.

use anyhow::{bail, Result};

pub const VOCAB: [&str; 33] = [
    "<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "N", "K", "Q", "F", "Y",
    "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
];
pub const VOCAB_SIZE: usize = 33;
pub const CLS: u32 = 0;
pub const PAD: u32 = 1;
pub const EOS: u32 = 2;
pub const UNK: u32 = 3;
pub const MASK: u32 = 32;

/// Token id of one residue character, or `None` when the character is not in the alphabet.
/// Lower-case letters map like their upper-case forms.
pub fn residue_id(c: u8) -> Option<u32> {
    let id = match c.to_ascii_uppercase() {
        b'L' => 4,
        b'A' => 5,
        b'G' => 6,
        b'V' => 7,
        b'S' => 8,
        b'E' => 9,
        b'R' => 10,
        b'T' => 11,
        b'I' => 12,
        b'D' => 13,
        b'P' => 14,
        b'N' => 15,
        b'K' => 16,
        b'Q' => 17,
        b'F' => 18,
        b'Y' => 19,
        b'M' => 20,
        b'H' => 21,
        b'W' => 22,
        b'C' => 23,
        b'X' => 24,
        b'B' => 25,
        b'U' => 26,
        b'Z' => 27,
        b'O' => 28,
        b'.' => 29,
        b'-' => 30,
        _ => return None,
    };
    Some(id)
}

/// One-letter code of a residue token id (`?` for special tokens).
pub fn id_to_char(id: u32) -> char {
    match VOCAB.get(id as usize) {
        Some(s) if s.len() == 1 => s.as_bytes()[0] as char,
        _ => '?',
    }
}

/// A tokenized sequence: `<cls> residues… <eos>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// Number of characters that were not in the alphabet and became `<unk>`.
    pub unknown: usize,
}

/// Tokenize a protein sequence with `<cls>`/`<eos>` added. The literal `<mask>` (as
/// written by masked-LM tooling) is recognised as the mask token. Errors on an empty
/// sequence, because ESM-2 has nothing to say about it.
pub fn encode(seq: &str) -> Result<Encoded> {
    let bytes = seq.trim().as_bytes();
    if bytes.is_empty() {
        bail!("empty sequence: a protein needs at least one residue");
    }
    let mut ids = Vec::with_capacity(bytes.len() + 2);
    ids.push(CLS);
    let mut unknown = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"<mask>") {
            ids.push(MASK);
            i += 6;
            continue;
        }
        match residue_id(bytes[i]) {
            Some(id) => ids.push(id),
            None => {
                ids.push(UNK);
                unknown += 1;
            }
        }
        i += 1;
    }
    ids.push(EOS);
    Ok(Encoded { ids, unknown })
}

/// Like [`encode`] but returns only the ids.
pub fn encode_ids(seq: &str) -> Result<Vec<u32>> {
    Ok(encode(seq)?.ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_matches_esm2_order() {
        assert_eq!(VOCAB.len(), VOCAB_SIZE);
        for (i, t) in VOCAB.iter().enumerate() {
            if t.len() == 1 {
                assert_eq!(residue_id(t.as_bytes()[0]), Some(i as u32), "{t}");
            }
        }
        assert_eq!(VOCAB[MASK as usize], "<mask>");
    }

    #[test]
    fn encode_adds_cls_eos_and_maps_unknown() {
        let e = encode("mKJ<mask>A").unwrap();
        assert_eq!(e.ids, vec![CLS, 20, 16, UNK, MASK, 5, EOS]);
        assert_eq!(e.unknown, 1);
        assert!(encode("  ").unwrap_err().to_string().contains("empty sequence"));
    }
}
