//! The tokenizer files of a Hugging Face ESM-2 model directory: written beside every
//! model the engine saves (so `AutoTokenizer.from_pretrained(dir)` and
//! `pipeline(..., model=dir)` work on it), and checked when a directory is loaded (a
//! `vocab.txt` that is not ESM-2's alphabet is refused). The file contents are those
//! transformers writes; `tests/tokenizer_reference.rs` compares them with the files
//! `tools/make_reference_fixtures.py` saved through `EsmTokenizer.save_pretrained`.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::checkpoint::write_atomic;
use crate::data::tokenizer::{CLS, EOS, MASK, PAD, UNK, VOCAB};

pub const VOCAB_FILE: &str = "vocab.txt";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const SPECIAL_TOKENS_MAP_FILE: &str = "special_tokens_map.json";

/// `vocab.txt` as transformers' `EsmTokenizer.save_pretrained` writes it: one token per
/// line, in id order, no newline after the last.
pub fn vocab_txt() -> String {
    VOCAB.join("\n")
}

/// The special tokens by role, as `EsmTokenizer.special_tokens_map` lists them.
const SPECIAL_ROLES: [(&str, u32); 5] =
    [("cls_token", CLS), ("eos_token", EOS), ("mask_token", MASK), ("pad_token", PAD), ("unk_token", UNK)];

/// `special_tokens_map.json`: each role and its token.
pub fn special_tokens_map_json() -> serde_json::Value {
    SPECIAL_ROLES.iter().map(|&(role, id)| (role.to_string(), serde_json::Value::from(VOCAB[id as usize]))).collect()
}

/// `tokenizer_config.json` as transformers 5 writes it for ESM-2: the special tokens in
/// `added_tokens_decoder`, the roles, the class. `model_max_length` is transformers'
/// "no limit" sentinel `int(1e30)`, which does not fit a JSON number library's integers,
/// so the file is written as text.
pub fn tokenizer_config_json_text() -> String {
    let mut out = String::from("{\n  \"added_tokens_decoder\": {\n");
    let specials = [CLS, PAD, EOS, UNK, MASK];
    for (i, id) in specials.iter().enumerate() {
        out += &format!(
            "    \"{id}\": {{\n      \"content\": \"{}\",\n      \"lstrip\": false,\n      \"normalized\": false,\n      \"rstrip\": false,\n      \"single_word\": false,\n      \"special\": true\n    }}{}\n",
            VOCAB[*id as usize],
            if i + 1 < specials.len() { "," } else { "" }
        );
    }
    out += "  },\n  \"backend\": \"custom\",\n";
    for (role, id) in SPECIAL_ROLES {
        out += &format!("  \"{role}\": \"{}\",\n", VOCAB[id as usize]);
        if role == "mask_token" {
            out += "  \"model_max_length\": 1000000000000000019884624838656,\n";
        }
    }
    out += "  \"tokenizer_class\": \"EsmTokenizer\"\n}\n";
    out
}

/// Write `vocab.txt`, `tokenizer_config.json` and `special_tokens_map.json` into `dir`,
/// so that `AutoTokenizer.from_pretrained(dir)` (and `pipeline(..., model=dir)`) find
/// ESM-2's tokenizer there.
pub fn write_tokenizer_files(dir: &Path) -> Result<()> {
    write_atomic(&dir.join(VOCAB_FILE), vocab_txt().as_bytes())?;
    write_atomic(&dir.join(TOKENIZER_CONFIG_FILE), tokenizer_config_json_text().as_bytes())?;
    let map = serde_json::to_string_pretty(&special_tokens_map_json())? + "\n";
    write_atomic(&dir.join(SPECIAL_TOKENS_MAP_FILE), map.as_bytes())
}

/// Check a model directory's `vocab.txt`, when it has one: the engine runs the ESM-2
/// alphabet only, so any other vocabulary (another order, another size) is refused with
/// the first token that differs. A directory without `vocab.txt` is accepted.
pub fn check_vocab_file(dir: &Path) -> Result<()> {
    let path = dir.join(VOCAB_FILE);
    if !path.is_file() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let tokens: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    // transformers' `load_vocab` keeps every line, so a blank last line would be a token.
    let first_difference = (0..tokens.len().max(VOCAB.len())).find(|&i| tokens.get(i) != VOCAB.get(i));
    let Some(i) = first_difference else {
        return Ok(());
    };
    let show = |t: Option<&&str>| t.map_or("nothing (the file ends)".to_string(), |t| format!("`{t}`"));
    bail!(
        "{}: token id {i} (line {}) is {} but ESM-2's alphabet has {} there; qf-engine runs the 33-token \
         ESM-2 vocabulary only (`<cls> <pad> <eos> <unk> L A G V S E R T I D P K Q N F Y M H W C X B U Z O . - \
         <null_1> <mask>`), and a model trained with other token ids would read every residue wrongly",
        path.display(),
        i + 1,
        show(tokens.get(i)),
        show(VOCAB.get(i)),
    )
}
