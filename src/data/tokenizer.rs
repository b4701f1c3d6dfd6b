//! The ESM-2 alphabet (33 tokens) and the sequence → token-id encoding.
//!
//! The order is fair-esm's `Alphabet.from_architecture("ESM-1b").all_toks`, which is also
//! the `vocab.txt` of every published ESM-2 checkpoint read by transformers' `EsmTokenizer`:
//! `<cls> <pad> <eos> <unk> L A G V S E R T I D P K Q N F Y M H W C X B U Z O . - <null_1> <mask>`
//! (so P = 14, K = 15, Q = 16, N = 17). `tests/tokenizer_reference.rs` checks the table,
//! the special ids and [`encode`] against both libraries through the fixture that
//! `tools/make_reference_fixtures.py` records from them.
//!
//! Encoding, where both references accept the input, gives exactly their ids: `<cls>`
//! first, `<eos>` last, whitespace dropped, and the literal special tokens (`<mask>`,
//! `<unk>`, `<cls>`, `<pad>`, `<eos>`, `<null_1>`) read as those tokens. fair-esm refuses
//! any other character (`KeyError`) and transformers turns each *run* of them into a
//! single `<unk>`, which shortens the sequence. qf-engine does neither: a lower-case
//! letter is read as its upper-case residue (FASTA is case-insensitive), and every other
//! character becomes one `<unk>`, so that token `i + 1` is always residue `i` and
//! per-residue outputs line up with the input. [`Encoded::unknown`] counts those
//! characters so callers can report them.

use anyhow::{bail, Result};

pub const VOCAB: [&str; 33] = [
    "<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y",
    "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
];
pub const VOCAB_SIZE: usize = 33;
pub const CLS: u32 = 0;
pub const PAD: u32 = 1;
pub const EOS: u32 = 2;
pub const UNK: u32 = 3;
pub const MASK: u32 = 32;

/// Marks a byte that is not a one-character token in [`RESIDUE_TABLE`].
const NOT_A_RESIDUE: u8 = u8::MAX;

/// Token id of every byte that is a one-character token of [`VOCAB`] (letters of either
/// case), built from [`VOCAB`] itself so the two can never disagree.
const RESIDUE_TABLE: [u8; 256] = {
    let mut table = [NOT_A_RESIDUE; 256];
    let mut id = 0;
    while id < VOCAB.len() {
        let tok = VOCAB[id].as_bytes();
        if tok.len() == 1 {
            table[tok[0] as usize] = id as u8;
            table[tok[0].to_ascii_lowercase() as usize] = id as u8;
        }
        id += 1;
    }
    table
};

/// Token id of one residue character, or `None` when the character is not in the alphabet.
/// Lower-case letters map like their upper-case forms.
pub fn residue_id(c: u8) -> Option<u32> {
    match RESIDUE_TABLE[c as usize] {
        NOT_A_RESIDUE => None,
        id => Some(id as u32),
    }
}

/// Token id of one residue byte of a sequence read from a file, `<unk>` for a byte
/// outside the alphabet: the per-character rule of [`encode`], for the packed-batch path.
pub fn residue_token(c: u8) -> u32 {
    residue_id(c).unwrap_or(UNK)
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

/// The special token written literally at the start of `text`, if any (`<mask>`, …).
fn literal_special_token(text: &str) -> Option<(u32, usize)> {
    VOCAB
        .iter()
        .enumerate()
        .find(|(_, tok)| tok.len() > 1 && text.starts_with(**tok))
        .map(|(id, tok)| (id as u32, tok.len()))
}

/// Tokenize a protein sequence with `<cls>`/`<eos>` added (see the module documentation
/// for the rules). Errors on a sequence with no token at all, because ESM-2 has nothing
/// to say about it.
pub fn encode(seq: &str) -> Result<Encoded> {
    let mut ids = Vec::with_capacity(seq.len() + 2);
    ids.push(CLS);
    let mut unknown = 0;
    let mut rest = seq;
    while let Some(c) = rest.chars().next() {
        if let Some((id, len)) = literal_special_token(rest) {
            ids.push(id);
            rest = &rest[len..];
            continue;
        }
        rest = &rest[c.len_utf8()..];
        if c.is_whitespace() {
            continue;
        }
        match u8::try_from(c).ok().and_then(residue_id) {
            Some(id) => ids.push(id),
            None => {
                ids.push(UNK);
                unknown += 1;
            }
        }
    }
    if ids.len() == 1 {
        bail!("empty sequence: a protein needs at least one residue");
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
    fn residue_table_follows_vocab() {
        assert_eq!(VOCAB.len(), VOCAB_SIZE);
        for (i, t) in VOCAB.iter().enumerate() {
            if t.len() == 1 {
                assert_eq!(residue_id(t.as_bytes()[0]), Some(i as u32), "{t}");
                assert_eq!(residue_id(t.as_bytes()[0].to_ascii_lowercase()), Some(i as u32), "{t}");
            }
        }
        assert_eq!(residue_id(b'J'), None);
        assert_eq!(residue_id(b'<'), None);
        assert_eq!(VOCAB[MASK as usize], "<mask>");
    }

    #[test]
    fn encode_keeps_one_token_per_residue() {
        let e = encode("mKJ<mask>A*").unwrap();
        assert_eq!(e.ids, vec![CLS, 20, 15, UNK, MASK, 5, UNK, EOS]);
        assert_eq!(e.unknown, 2);
        assert_eq!(encode("é").unwrap().ids, vec![CLS, UNK, EOS]);
        assert!(encode("  \n").unwrap_err().to_string().contains("empty sequence"));
    }
}
