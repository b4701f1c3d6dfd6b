//! ESM-2's constants, each checked against what an independent reference implementation
//! does (`tests/fixtures/reference/esm2_constants.json`, recorded by
//! `tools/make_reference_fixtures.py` from transformers' and fair-esm's code), and the
//! Pfam split's column meanings checked on real rows. `docs/REFERENCES.md` lists every
//! constant with its source.

mod common;

use common::{fixture, shared_data};
use qf_engine::backend::cpu::contact_head::{self, SeqSlot};
use qf_engine::backend::cpu::rotary::inv_freq;
use qf_engine::data::batch::PackedBatch;
use qf_engine::data::pfam::read_pfam_split;
use qf_engine::data::tokenizer::{CLS, EOS, MASK};
use qf_engine::model::inputs::token_dropout_scale;
use qf_engine::model::EsmConfig;
use serde_json::{json, Value};

fn constants() -> Value {
    let text = std::fs::read_to_string(fixture("reference/esm2_constants.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A config.json with only the keys that have no default, as an ESM-2 checkpoint needs.
fn minimal_config() -> Value {
    json!({
        "model_type": "esm", "vocab_size": 33, "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 128, "position_embedding_type": "rotary",
    })
}

#[test]
fn config_defaults_are_transformers_defaults() {
    let hf = &constants()["transformers_esm_config_defaults"];
    let cfg = EsmConfig::from_json(&minimal_config(), "minimal").unwrap();
    assert_eq!(cfg.layer_norm_eps, hf["layer_norm_eps"].as_f64().unwrap());
    assert_eq!(cfg.token_dropout, hf["token_dropout"].as_bool().unwrap());
    assert_eq!(cfg.hidden_dropout_prob, hf["hidden_dropout_prob"].as_f64().unwrap());
    assert_eq!(cfg.max_position_embeddings as u64, hf["max_position_embeddings"].as_u64().unwrap());
    assert_eq!(cfg.initializer_range, hf["initializer_range"].as_f64().unwrap());
    assert_eq!(hf["rope_theta"].as_f64(), Some(10000.0));

    // transformers builds absolute (ESM-1b) position embeddings when the key is missing.
    assert_eq!(hf["position_embedding_type"], "absolute");
    let mut no_type = minimal_config();
    no_type.as_object_mut().unwrap().remove("position_embedding_type");
    let err = EsmConfig::from_json(&no_type, "cfg").unwrap_err().to_string();
    assert!(err.contains("position_embedding_type is missing, which transformers reads as `absolute`"), "{err}");
    let mut other_theta = minimal_config();
    other_theta["rope_theta"] = json!(500000.0);
    assert!(EsmConfig::from_json(&other_theta, "cfg").unwrap_err().to_string().contains("rope_theta"));
}

#[test]
fn presets_use_fair_esm_esm2_numerics() {
    let fair = &constants()["fair_esm_esm2"];
    for name in EsmConfig::preset_names() {
        let cfg = EsmConfig::preset(name).unwrap();
        assert_eq!(cfg.layer_norm_eps, fair["layer_norm_eps"].as_f64().unwrap(), "{name}");
        assert_eq!(cfg.token_dropout, fair["token_dropout_default"].as_bool().unwrap(), "{name}");
        assert_eq!((cfg.mask_token_id, cfg.pad_token_id), (MASK, 1), "{name}");
    }
}

#[test]
fn rotary_inverse_frequencies_are_bit_identical_to_both() {
    let r = &constants()["rotary_inv_freq"];
    for d in [16usize, 24, 32, 64, 128] {
        let ours: Vec<u64> = inv_freq(d).iter().map(|f| f.to_bits() as u64).collect();
        for source in ["transformers_f32_bits", "fair_esm_f32_bits"] {
            let want: Vec<u64> =
                r[d.to_string()][source].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(ours, want, "head dim {d} against {source}");
        }
    }
}

/// One sequence of `n` tokens (`<cls>`, residues, `<eos>`) with `m` residues masked, as the
/// fixture script built it.
fn masked_sequence(n: usize, m: usize) -> Vec<u32> {
    let mut residues = vec![5u32; n - 2]; // `A`
    let len = residues.len();
    for i in 0..m {
        residues[(i * 7) % len] = MASK;
    }
    std::iter::once(CLS).chain(residues).chain(std::iter::once(EOS)).collect()
}

#[test]
fn token_dropout_scale_matches_both() {
    let cfg = EsmConfig::preset("esm2_t6_8M").unwrap();
    let cases = constants()["token_dropout_scales"].as_array().unwrap().clone();
    // All cases packed in one batch: the scale is per sequence.
    let mut batch = PackedBatch::new();
    for (i, c) in cases.iter().enumerate() {
        batch.push(
            &masked_sequence(c["tokens"].as_u64().unwrap() as usize, c["masks"].as_u64().unwrap() as usize),
            0,
            None,
            i,
        );
    }
    let scale = token_dropout_scale(&batch, &cfg);
    for (i, c) in cases.iter().enumerate() {
        let (a, b) = (batch.cu_seqlens[i] as usize, batch.cu_seqlens[i + 1] as usize);
        for source in ["fair_esm", "transformers"] {
            let want = c[source].as_f64().unwrap();
            let got = scale[a] as f64; // position 0, `<cls>`, is never masked
            assert!((got - want).abs() <= 2e-7 * want, "{c}: {got} vs {source} {want}");
        }
        assert!(c["masked_rows_zero"].as_bool().unwrap());
        for t in a..b {
            if batch.tokens[t] == MASK {
                assert_eq!(scale[t], 0.0, "a masked embedding must be zeroed");
            } else {
                assert_eq!(scale[t], scale[a]);
            }
        }
    }
}

#[test]
fn classification_reads_the_cls_token_of_every_sequence() {
    let read = &constants()["classification_head_reads_positions"];
    assert_eq!(read, &json!([0]), "EsmClassificationHead reads position 0 only");
    let mut batch = PackedBatch::new();
    for (i, n) in [5usize, 12, 3].into_iter().enumerate() {
        batch.push(&masked_sequence(n, 0), 0, None, i);
    }
    let rows = batch.first_token_rows();
    assert_eq!(rows, batch.cu_seqlens[..3].to_vec(), "position 0 of each packed sequence");
    assert!(rows.iter().all(|&r| batch.tokens[r as usize] == CLS));
}

#[test]
fn contact_head_trims_the_positions_both_references_trim() {
    let c = &constants()["contact_head"];
    let t = c["fair_esm"]["tokens"].as_u64().unwrap() as usize;
    let (layers, heads) = (2, 2);
    let mut rng = common::TestRng::new(7);
    let probs: Vec<Vec<f64>> = (0..layers).map(|_| (0..heads * t * t).map(|_| rng.uniform()).collect()).collect();
    let w: Vec<f64> = (0..layers * heads).map(|_| rng.normal()).collect();
    let run = |probs: &[Vec<f64>]| {
        let mut out = vec![0f64; (t - 2) * (t - 2)];
        let refs: Vec<&[f64]> = probs.iter().map(|p| p.as_slice()).collect();
        contact_head::forward(&mut out, &refs, &[SeqSlot { len: t, prob_offset: 0, out_offset: 0 }], heads, &w, 0.1);
        out
    };
    let base = run(&probs);
    let mut ignored = Vec::new();
    for pos in 0..t {
        let mut p = probs.clone();
        for layer in &mut p {
            for h in 0..heads {
                for k in 0..t {
                    layer[h * t * t + pos * t + k] += 0.5;
                    layer[h * t * t + k * t + pos] += 0.5;
                }
            }
        }
        if run(&p) == base {
            ignored.push(pos as u64);
        }
    }
    for source in ["fair_esm", "transformers"] {
        let want: Vec<u64> =
            c[source]["ignored_positions"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(ignored, want, "trimmed positions against {source}");
        assert_eq!(c[source]["map_size"].as_u64(), Some((t - 2) as u64));
    }
}

/// The columns of the Pfam random split as the dataset describes them (Bileschi et al.
/// 2022; the Kaggle page `googleai/pfam-seed-random-split`): `sequence` = the domain's
/// amino acids, `aligned_sequence` = its row of the family alignment, `family_id` = the
/// family's one-word name (the class label), `family_accession` = `PFxxxxx.y`,
/// `sequence_name` = `uniprot_accession/start-end`. Checked on every row of a real split,
/// and that the reader takes the label and the residues from the right columns.
fn check_pfam_columns(dir: &std::path::Path, split: &str) -> usize {
    let set = read_pfam_split(dir, split).unwrap();
    let index: std::collections::HashMap<&str, usize> = (0..set.len()).map(|i| (set.name(i), i)).collect();
    let mut rows = 0;
    for shard in qf_engine::data::pfam::list_shards(&dir.join(split)).unwrap() {
        let text = std::fs::read_to_string(&shard).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
        for line in lines {
            let f: Vec<&str> = line.split(',').collect();
            let (family, name, acc, aligned, seq) = (
                f[col("family_id")],
                f[col("sequence_name")],
                f[col("family_accession")],
                f[col("aligned_sequence")],
                f[col("sequence")],
            );
            let unaligned: String = aligned.chars().filter(|&c| c != '.' && c != '-').collect();
            assert_eq!(unaligned.to_ascii_uppercase(), seq, "{name}: aligned_sequence is not `sequence` aligned");
            assert!(seq.bytes().all(|b| b.is_ascii_uppercase()), "{name}: `sequence` is upper-case residues");
            let (_, range) = name.split_once('/').unwrap();
            let (start, end) = range.split_once('-').unwrap();
            let (start, end): (usize, usize) = (start.parse().unwrap(), end.parse().unwrap());
            assert_eq!(end + 1 - start, seq.len(), "{name}: start-end spans the domain");
            let (pf, version) = acc.split_once('.').unwrap();
            assert!(pf.len() == 7 && pf.starts_with("PF") && version.parse::<u32>().is_ok(), "{acc}");
            assert!(!family.is_empty() && !family.contains(' '));
            // The reader: residues from `sequence`, label from `family_id`.
            let i = index[name];
            assert_eq!(set.sequence(i), seq);
            let fam = set.family(i).unwrap();
            assert_eq!((fam.id.as_str(), fam.accession.as_deref()), (family, Some(acc)));
            rows += 1;
        }
    }
    rows
}

#[test]
fn pfam_columns_mean_what_the_dataset_says() {
    let dir = fixture("pfam/split");
    assert_eq!(check_pfam_columns(&dir, "train") + check_pfam_columns(&dir, "dev"), 32);
    if let Some(shared) = shared_data("pfam") {
        assert!(check_pfam_columns(&shared, "dev") > 20_000);
    }
}
