//! `--pool cls|mean` of the sequence classifier: the mean-pooled vector is the mean of the
//! encoder's residue rows, a saved mean model reloads as one (and predicts the same), and
//! its config is one that transformers' Auto classes refuse (`model_type` unknown to
//! them; `tools/check_mlm_hf_compat.py --mean-pool` checks the refusal in transformers).

mod common;

use common::fixture;
use qf_engine::data::batch::PackedBatch;
use qf_engine::data::tokenizer::encode_ids;
use qf_engine::model::classifier::{MEAN_POOL_MODEL_TYPE, POOL_KEY};
use qf_engine::model::lora::SaveMode;
use qf_engine::model::{HeadKind, ModelInputs, Pooling, SequenceClassifier};
use qf_engine::train::trained::load_trained;
use qf_engine::{DType, Device, Tape};

fn batch() -> PackedBatch {
    let mut b = PackedBatch::new();
    for (i, s) in ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "GSHMLEDPVDAFQQVLRKGG", "MSD"].iter().enumerate() {
        b.push(&encode_ids(s).unwrap(), 0, None, i);
    }
    b
}

fn mean_model() -> SequenceClassifier {
    let mut m =
        SequenceClassifier::from_pretrained(&fixture("esm_tiny"), None, HeadKind::Classification, 0.0, 0).unwrap().0;
    m.pool = Pooling::Mean;
    m
}

#[test]
fn the_mean_pooled_vector_is_the_mean_of_the_residue_rows() {
    let model = mean_model();
    let b = batch();
    let inp = ModelInputs::new(&b, model.config(), &Device::Cpu, DType::F32).unwrap();
    let tape = Tape::inference();
    let hidden = model.esm.forward(&model.params, &tape, &inp, false).unwrap().hidden;
    let pooled = model.pooled(&tape, &inp, &hidden).unwrap().to_vec_f32().unwrap();
    let h = hidden.to_vec_f32().unwrap();
    let dim = model.config().hidden_size;
    for s in 0..b.n_seqs() {
        let (a, e) = (b.cu_seqlens[s] as usize, b.cu_seqlens[s + 1] as usize);
        for d in 0..dim {
            let want: f64 = (a + 1..e - 1).map(|r| h[r * dim + d] as f64).sum::<f64>() / (e - a - 2) as f64;
            assert!((pooled[s * dim + d] as f64 - want).abs() < 1e-5, "seq {s} dim {d}");
        }
    }
    // Not the <cls> vector.
    assert_ne!(&pooled[..dim], &h[..dim]);
}

#[test]
fn a_saved_mean_model_reloads_as_one_and_is_not_an_hf_esm_config() {
    let model = mean_model();
    let tmp = tempfile::tempdir().unwrap();
    model.save(tmp.path(), SaveMode::Merged).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg[POOL_KEY], "mean");
    assert_eq!(cfg["model_type"], MEAN_POOL_MODEL_TYPE);
    assert_ne!(cfg["architectures"][0], "EsmForSequenceClassification");
    let again = load_trained(tmp.path(), &Device::Cpu).unwrap().model;
    assert_eq!(again.pool, Pooling::Mean);
    let b = batch();
    let inp = ModelInputs::new(&b, model.config(), &Device::Cpu, DType::F32).unwrap();
    let a = model.forward(&Tape::inference(), &inp).unwrap().to_vec_f32().unwrap();
    let c = again.forward(&Tape::inference(), &inp).unwrap().to_vec_f32().unwrap();
    assert_eq!(a, c);
    // A cls model keeps Hugging Face's config.
    let mut cls = mean_model();
    cls.pool = Pooling::Cls;
    let tmp2 = tempfile::tempdir().unwrap();
    cls.save(tmp2.path(), SaveMode::Merged).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp2.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "esm");
    assert!(cfg.get(POOL_KEY).is_none());
    assert_eq!(load_trained(tmp2.path(), &Device::Cpu).unwrap().model.pool, Pooling::Cls);
}

#[test]
fn unknown_poolings_are_refused() {
    assert!("max".parse::<Pooling>().is_err());
    let model = mean_model();
    let tmp = tempfile::tempdir().unwrap();
    model.save(tmp.path(), SaveMode::Merged).unwrap();
    let path = tmp.path().join("config.json");
    let text =
        std::fs::read_to_string(&path).unwrap().replace("\"qf_engine_pool\": \"mean\"", "\"qf_engine_pool\": \"max\"");
    std::fs::write(&path, text).unwrap();
    let err = SequenceClassifier::from_pretrained(tmp.path(), None, HeadKind::Classification, 0.0, 0).err().unwrap();
    assert!(format!("{err:#}").contains("unknown pooling `max`"), "{err:#}");
}

/// A mean-pooled LoRA classifier has no PEFT class to apply its adapters to:
/// `save_adapters` refuses (and writes nothing), and a training run writes the merged
/// `model/` but no `adapter/`.
#[test]
fn a_mean_pooled_lora_run_writes_no_peft_adapter_directory() {
    let mut m = mean_model();
    m.enable_lora(&qf_engine::model::lora::LoraConfig::default(), 1).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("adapter");
    let err = m.save_adapters(&dir, "base").unwrap_err().to_string();
    assert!(err.contains("mean-pooled classifier has no transformers class"), "{err}");
    assert!(!dir.exists());

    let out = tmp.path().join("run");
    let mut cfg = qf_engine::train::TrainConfig::demo(out.clone());
    cfg.model = qf_engine::train::ModelSource::Pretrained(fixture("esm_tiny"));
    cfg.device = qf_engine::train::DeviceChoice::Cpu;
    cfg.training.max_steps = Some(2);
    cfg.training.max_tokens = 1024;
    cfg.max_len = 256;
    cfg.eval_limit = Some(8);
    cfg.training.progress = false;
    cfg.verbose = false;
    cfg.pool = Some(Pooling::Mean);
    cfg.lora = Some(qf_engine::model::lora::LoraConfig::default());
    qf_engine::train::train(&cfg).unwrap();
    assert!(out.join("model/config.json").exists());
    assert!(!out.join("adapter").exists(), "a mean-pooled LoRA run wrote a PEFT adapter/");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model/config.json")).unwrap()).unwrap();
    assert_eq!(config[POOL_KEY], "mean");
}
