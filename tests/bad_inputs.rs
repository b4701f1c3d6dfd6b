//! Bad input gives a clear error naming the file, tensor or sequence — never a panic.

mod common;

use std::path::{Path, PathBuf};

use common::fixture;
use qf_engine::data::fasta::{read_fasta, FastaLabels};
use qf_engine::data::tokenizer::{encode, UNK};
use qf_engine::model::checkpoint::{view_to_f32, write_safetensors, MappedSafetensors, NamedTensor};
use qf_engine::model::{HeadKind, SequenceClassifier};

fn load(dir: &Path) -> String {
    match SequenceClassifier::from_pretrained(dir, None, HeadKind::Classification, 0.0, 0) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

/// A copy of the fixture checkpoint whose tensors pass through `edit`.
fn edited_checkpoint(tmp: &Path, edit: impl Fn(NamedTensor) -> Option<NamedTensor>) -> PathBuf {
    let dir = tmp.join("ckpt");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture("esm_tiny/config.json"), dir.join("config.json")).unwrap();
    let src = MappedSafetensors::open(&fixture("esm_tiny/model.safetensors")).unwrap();
    let mut out = Vec::new();
    for name in src.names().unwrap() {
        let (values, shape) = src.with_view(&name, |v| Ok((view_to_f32(v)?, v.shape().to_vec()))).unwrap();
        if let Some(t) = edit(NamedTensor::f32(&name, &shape, &values)) {
            out.push(t);
        }
    }
    write_safetensors(&dir.join("model.safetensors"), &out, None).unwrap();
    dir
}

#[test]
fn missing_config_json() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("esm_tiny/model.safetensors"), tmp.path().join("model.safetensors")).unwrap();
    let e = load(tmp.path());
    assert!(e.contains("config.json is missing"), "{e}");
}

#[test]
fn missing_weights_file() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("esm_tiny/config.json"), tmp.path().join("config.json")).unwrap();
    let e = load(tmp.path());
    assert!(e.contains("model.safetensors is missing"), "{e}");
}

#[test]
fn missing_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = edited_checkpoint(tmp.path(), |t| (t.name != "esm.encoder.layer.1.output.dense.weight").then_some(t));
    let e = load(&dir);
    assert!(e.contains("tensor `esm.encoder.layer.1.output.dense.weight` is missing"), "{e}");
}

#[test]
fn tensor_of_the_wrong_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = edited_checkpoint(tmp.path(), |t| {
        if t.name == "esm.encoder.layer.0.attention.self.key.weight" {
            Some(NamedTensor::f32(&t.name, &[64, 32], &vec![0.0; 64 * 32]))
        } else {
            Some(t)
        }
    });
    let e = load(&dir);
    assert!(
        e.contains("tensor `esm.encoder.layer.0.attention.self.key.weight` has shape [64, 32], expected [64, 64]"),
        "{e}"
    );
}

#[test]
fn non_float_dtype() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = edited_checkpoint(tmp.path(), |t| {
        if t.name == "esm.embeddings.word_embeddings.weight" {
            let n: usize = t.shape.iter().product();
            Some(NamedTensor::i64(&t.name, &t.shape, &vec![1; n]))
        } else {
            Some(t)
        }
    });
    let e = load(&dir);
    assert!(e.contains("esm.embeddings.word_embeddings.weight"), "{e}");
    assert!(e.contains("model weights must be floating point"), "{e}");
}

#[test]
fn truncated_safetensors_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture("esm_tiny/config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(fixture("esm_tiny/model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = load(&dir);
    assert!(e.contains("not a valid safetensors file") && e.contains("truncated"), "{e}");
}

#[test]
fn config_of_another_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("config.json"), r#"{"model_type": "bert", "hidden_size": 8}"#).unwrap();
    let e = load(tmp.path());
    assert!(e.contains("model_type is `bert`"), "{e}");
}

#[test]
fn unknown_amino_acid_letters_become_unk_and_are_counted() {
    // ESM's tokenizers map letters outside the alphabet (J here) to <unk>.
    let enc = encode("MKJLV").unwrap();
    assert_eq!(enc.ids[3], UNK);
    assert_eq!(enc.unknown, 1);
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("x.fasta");
    std::fs::write(&f, ">a fam1\nMKJLV\n>b fam2\nMKKLV\n").unwrap();
    let set = read_fasta(&f, &FastaLabels::Header).unwrap();
    assert_eq!(set.sequence(0), "MKJLV");
    assert!(set.nonstandard_residues() >= 1);
}

#[test]
fn empty_sequences_are_errors() {
    assert!(encode("").unwrap_err().to_string().contains("empty sequence"));
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("x.fasta");
    std::fs::write(&f, ">a fam1\n>b fam2\nMKKLV\n").unwrap();
    let e = format!("{:#}", read_fasta(&f, &FastaLabels::Header).unwrap_err());
    assert!(e.contains("x.fasta:1: record `a` has no sequence"), "{e}");
}

/// Replace values of tensor `name`: NaN at the indices in `nan`, +Inf at those in `inf`.
fn poison(t: NamedTensor, name: &str, nan: &[usize], inf: &[usize]) -> Option<NamedTensor> {
    if t.name != name {
        return Some(t);
    }
    let mut v: Vec<f32> = t.data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    nan.iter().for_each(|&i| v[i] = f32::NAN);
    inf.iter().for_each(|&i| v[i] = f32::INFINITY);
    Some(NamedTensor::f32(&t.name, &t.shape, &v))
}

#[test]
fn weights_with_nan_or_inf_are_refused_naming_tensor_and_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = edited_checkpoint(tmp.path(), |t| {
        let t = poison(t, "esm.encoder.layer.0.attention.self.key.weight", &[3, 70, 900], &[5])?;
        poison(t, "classifier.out_proj.bias", &[], &[1, 2])
    });
    let e = load(&dir);
    assert!(e.contains("the model's weights holds non-finite values in 2 tensor(s)"), "{e}");
    assert!(e.contains("`esm.encoder.layer.0.attention.self.key.weight`: 3 NaN and 1 infinite of 4096 values"), "{e}");
    assert!(e.contains("`classifier.out_proj.bias`: 0 NaN and 2 infinite of 5 values"), "{e}");
    assert!(e.contains("--allow-nonfinite"), "{e}");
}
