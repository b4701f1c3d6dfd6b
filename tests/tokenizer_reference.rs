//! The ESM-2 tokenizer against two independent references: fair-esm 2.0.0's alphabet and
//! batch converter, and transformers' `EsmTokenizer` over a `vocab.txt` written from that
//! alphabet. `tests/fixtures/reference/` holds what both libraries returned
//! (`tools/make_reference_fixtures.py`); nothing in it was typed by hand.

mod common;

use std::path::Path;

use common::fixture;
use qf_engine::data::tokenizer::{encode, residue_token, CLS, EOS, MASK, PAD, UNK, VOCAB};
use qf_engine::model::tokenizer_files::{
    check_vocab_file, special_tokens_map_json, tokenizer_config_json_text, vocab_txt, write_tokenizer_files, VOCAB_FILE,
};
use serde_json::Value;

fn reference() -> Value {
    let text = std::fs::read_to_string(fixture("reference/tokenizer_cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect()
}

#[test]
fn vocabulary_is_fair_esm_alphabet_and_transformers_vocab() {
    let r = reference();
    let ours: Vec<String> = VOCAB.iter().map(|t| t.to_string()).collect();
    assert_eq!(ours, strings(&r["fair_esm_all_toks"]), "against fair-esm's Alphabet('ESM-1b').all_toks");
    assert_eq!(ours, strings(&r["transformers_vocab"]), "against EsmTokenizer's id → token");
}

#[test]
fn special_token_ids_match_both_references() {
    let r = reference();
    for source in ["fair_esm", "transformers"] {
        let s = &r["special_ids"][source];
        for (name, ours) in [("cls", CLS), ("pad", PAD), ("eos", EOS), ("unk", UNK), ("mask", MASK)] {
            assert_eq!(s[name].as_u64(), Some(ours as u64), "{name} id against {source}");
        }
    }
    // fair-esm prepends <cls> and appends <eos> for ESM-2, as `encode` does.
    assert_eq!(r["special_ids"]["fair_esm"]["prepend_bos"], Value::Bool(true));
    assert_eq!(r["special_ids"]["fair_esm"]["append_eos"], Value::Bool(true));
}

#[test]
fn encode_gives_both_references_ids_wherever_both_accept_the_input() {
    let r = reference();
    let mut checked = 0;
    for case in r["cases"].as_array().unwrap() {
        let (name, input) = (case["name"].as_str().unwrap(), case["input"].as_str().unwrap());
        if case["fair_esm"].is_null() {
            continue;
        }
        let want = ids(&case["fair_esm"]);
        assert_eq!(want, ids(&case["transformers"]), "{name}: the references disagree");
        let got = encode(input).unwrap();
        assert_eq!(got.ids, want, "{name}: {input:?}");
        assert_eq!(got.unknown, 0, "{name}");
        checked += 1;
    }
    // standard residues, N/K/Q, X B U Z O, gaps, a Pfam domain, <mask> three ways,
    // literal special tokens, whitespace
    assert!(checked >= 11, "only {checked} accepted cases in the fixture");
}

/// fair-esm raises on lower-case letters and unknown characters; transformers gives one
/// `<unk>` per run of them. The engine reads a lower-case letter as its residue and every
/// other unknown character as one `<unk>`: the references' ids of the input rewritten
/// that way (recorded by the fixture script from both libraries).
#[test]
fn inputs_fair_esm_refuses_follow_the_documented_rule() {
    let r = reference();
    let mut kinds = std::collections::BTreeSet::new();
    for case in r["cases"].as_array().unwrap() {
        if !case["fair_esm"].is_null() {
            continue;
        }
        let (name, input) = (case["name"].as_str().unwrap(), case["input"].as_str().unwrap());
        assert!(case["fair_esm_error"].as_str().unwrap().starts_with("KeyError"), "{name}");
        let rule = &case["engine_rule"];
        let want = ids(&rule["fair_esm"]);
        assert_eq!(want, ids(&rule["transformers"]), "{name}: the references disagree on the rewritten input");
        let got = encode(input).unwrap();
        assert_eq!(got.ids, want, "{name}: {input:?} (rewritten {})", rule["input"]);
        assert_eq!(got.unknown as u64, rule["unknown_chars"].as_u64().unwrap(), "{name}");
        // One token per character: transformers' ids are shorter wherever a run of unknown
        // characters was folded into one <unk>.
        let hf = ids(&case["transformers"]);
        if got.ids.len() != hf.len() {
            assert!(hf.len() < got.ids.len(), "{name}");
        }
        kinds.insert(if input.chars().any(|c| c.is_ascii_lowercase()) { "lowercase" } else { "unknown" });
    }
    assert_eq!(kinds.len(), 2, "the fixture must cover lower-case input and unknown letters");
}

#[test]
fn packed_batch_tokens_follow_encode() {
    // The training and prediction batches tokenize sequence bytes one by one.
    for b in 0u8..=255 {
        if (b as char).is_whitespace() || b == b'<' || !b.is_ascii() {
            continue;
        }
        let s = (b as char).to_string();
        assert_eq!(encode(&s).unwrap().ids[1], residue_token(b), "byte {b}");
    }
}

#[test]
fn parity_fixture_ids_are_what_the_engine_gives_its_sequences() {
    let text = std::fs::read_to_string(fixture("esm_tiny/sequences.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    for row in v["rows"].as_array().unwrap() {
        let seq = row["sequence"].as_str().unwrap();
        assert_eq!(encode(seq).unwrap().ids, ids(&row["input_ids"]), "{}", row["sequence_name"]);
        let batch: Vec<u32> =
            std::iter::once(CLS).chain(seq.bytes().map(residue_token)).chain(std::iter::once(EOS)).collect();
        assert_eq!(batch, ids(&row["input_ids"]));
    }
}

fn json_file(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn tokenizer_files_are_those_transformers_writes() {
    let saved = fixture("reference/hf_tokenizer");
    assert_eq!(vocab_txt(), std::fs::read_to_string(saved.join("vocab.txt")).unwrap());
    let ours: Value = serde_json::from_str(&tokenizer_config_json_text()).unwrap();
    assert_eq!(ours, json_file(&saved.join("tokenizer_config.json")));
    assert_eq!(special_tokens_map_json(), json_file(&saved.join("special_tokens_map.json")));

    let dir = tempfile::tempdir().unwrap();
    write_tokenizer_files(dir.path()).unwrap();
    for f in ["vocab.txt", "tokenizer_config.json", "special_tokens_map.json"] {
        assert!(dir.path().join(f).is_file(), "{f} not written");
    }
    check_vocab_file(dir.path()).unwrap();
    check_vocab_file(&saved).unwrap();
}

fn vocab_dir(tokens: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text: String = tokens.iter().map(|t| format!("{t}\n")).collect();
    std::fs::write(dir.path().join(VOCAB_FILE), text).unwrap();
    dir
}

#[test]
fn a_vocab_that_is_not_esm2s_is_refused_at_its_first_difference() {
    // The table this project used before: P N K Q instead of P K Q N.
    let mut old = VOCAB.to_vec();
    old[15..18].copy_from_slice(&["N", "K", "Q"]);
    let err = check_vocab_file(vocab_dir(&old).path()).unwrap_err().to_string();
    assert!(err.contains("token id 15 (line 16) is `N` but ESM-2's alphabet has `K`"), "{err}");

    let short = &VOCAB[..32];
    let err = check_vocab_file(vocab_dir(short).path()).unwrap_err().to_string();
    assert!(err.contains("token id 32 (line 33) is nothing (the file ends)"), "{err}");

    let mut longer = VOCAB.to_vec();
    longer.push("<extra>");
    let err = check_vocab_file(vocab_dir(&longer).path()).unwrap_err().to_string();
    assert!(err.contains("token id 33 (line 34) is `<extra>`"), "{err}");

    // A directory without vocab.txt is accepted (many checkpoints have only weights).
    check_vocab_file(tempfile::tempdir().unwrap().path()).unwrap();
}

/// A model saved before the fix saw N, K and Q under the old ids; `upgrade-vocab` moves
/// its embedding rows so that, fed the real ids, it computes exactly what it computed.
#[test]
fn upgraded_pre_fix_model_predicts_with_real_ids_what_it_did_with_old_ids() {
    use qf_engine::data::batch::PackedBatch;
    use qf_engine::model::pre_fix_vocab::{pre_fix_id_of, upgrade_pre_fix_model};
    use qf_engine::model::{HeadKind, ModelInputs, SequenceClassifier};
    use qf_engine::{DType, Device, Tape};

    let logits = |dir: &Path, ids: &[u32]| {
        let (m, _) = SequenceClassifier::from_pretrained(dir, None, HeadKind::Classification, 0.0, 0).unwrap();
        let mut b = PackedBatch::new();
        b.push(ids, 0, None, 0);
        let inp = ModelInputs::new(&b, m.config(), &Device::Cpu, DType::F32).unwrap();
        m.forward(&Tape::inference(), &inp).unwrap().to_vec_f32().unwrap()
    };
    // The fixture stands for an old model (random weights, no vocab.txt).
    let old = fixture("esm_tiny");
    let tmp = tempfile::tempdir().unwrap();
    let new = tmp.path().join("upgraded");
    assert_eq!(upgrade_pre_fix_model(&old, &new).unwrap(), 1);
    check_vocab_file(&new).unwrap();

    let real = encode("MNKQLLNKQEFGHWNNKKQQ").unwrap().ids;
    let pre_fix: Vec<u32> = real.iter().map(|&i| pre_fix_id_of()[i as usize] as u32).collect();
    assert_ne!(real, pre_fix);
    assert_eq!(logits(&new, &real), logits(&old, &pre_fix), "bit-identical predictions");
    assert_ne!(logits(&old, &real), logits(&old, &pre_fix), "the ids matter for this model");

    let err = upgrade_pre_fix_model(&new, &tmp.path().join("twice")).unwrap_err().to_string();
    assert!(err.contains("has a vocab.txt"), "{err}");
}
