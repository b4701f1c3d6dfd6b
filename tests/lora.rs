//! LoRA adapters: fresh adapters leave the model unchanged, merging equals applying, only
//! adapters (and the trained head) get gradients and optimizer state, and adapters saved in
//! the PEFT layout load back to the same outputs.

mod common;

use common::{fixture, rel_err, TestRng};
use qf_engine::data::batch::PackedBatch;
use qf_engine::data::tokenizer::encode_ids;
use qf_engine::model::checkpoint::MappedSafetensors;
use qf_engine::model::contact_model::Trainable;
use qf_engine::model::lora::{self, LoraConfig, SaveMode, LORA_TARGETS};
use qf_engine::model::{ContactModel, HeadKind, ModelInputs, SequenceClassifier};
use qf_engine::optim::{OptimConfig, Optimizer};
use qf_engine::{DType, Device, Grads, Tape, Tensor};

const SEQS: [&str; 2] = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIE", "GSHMLEDPVDAFQQVLRKAG"];

fn base() -> ContactModel {
    ContactModel::from_pretrained(&fixture("esm_tiny"), 0).unwrap().0
}

fn inputs(m: &ContactModel) -> ModelInputs {
    let mut b = PackedBatch::new();
    for (i, s) in SEQS.iter().enumerate() {
        b.push(&encode_ids(s).unwrap(), 0, None, i);
    }
    ModelInputs::new(&b, m.config(), &Device::Cpu, DType::F32).unwrap()
}

/// Final hidden states and contact logits on an inference tape.
fn outputs(m: &ContactModel) -> (Vec<f32>, Vec<f32>) {
    let inp = inputs(m);
    let tape = Tape::inference();
    let enc = m.esm.forward(&m.params, &tape, &inp, false).unwrap();
    let logits = m.forward(&tape, &inp).unwrap();
    (enc.hidden.to_vec_f32().unwrap(), logits.to_vec_f32().unwrap())
}

fn all_targets(rank: usize) -> LoraConfig {
    LoraConfig { rank, alpha: 16.0, dropout: 0.1, targets: LORA_TARGETS.iter().map(|t| t.to_string()).collect() }
}

/// Give every adapter's B random values (a fresh B is zero).
fn randomise_b(m: &mut ContactModel, seed: u64) {
    let mut rng = TestRng::new(seed);
    let ids: Vec<_> = m.params.ids().filter(|&id| m.params.name(id).contains(".lora_B.")).collect();
    assert!(!ids.is_empty());
    for id in ids {
        let shape = m.params.get(id).shape().to_vec();
        let n: usize = shape.iter().product();
        let v: Vec<f32> = rng.normals(n, 0.05).into_iter().map(|x| x as f32).collect();
        m.params.set(id, Tensor::from_vec(v, &shape).unwrap()).unwrap();
    }
}

#[test]
fn zero_initialised_adapters_give_exactly_the_base_outputs() {
    let plain = base();
    let mut adapted = base();
    lora::attach(&mut adapted.esm, &mut adapted.params, &all_targets(4), 7).unwrap();
    assert_eq!(adapted.lora().unwrap().targets.len(), 6);
    let (h0, c0) = outputs(&plain);
    let (h1, c1) = outputs(&adapted);
    assert!(h0 == h1, "hidden states changed by zero-initialised adapters");
    assert!(c0 == c1, "contact logits changed by zero-initialised adapters");
    // A is random (PEFT's Kaiming-uniform bound 1/sqrt(in)), B is zero.
    let a = adapted.params.by_name("esm.encoder.layer.0.attention.self.query.lora_A.weight").unwrap();
    let b = adapted.params.by_name("esm.encoder.layer.1.output.dense.lora_B.weight").unwrap();
    assert_eq!(a.shape(), &[4, 64]);
    assert_eq!(b.shape(), &[64, 4]);
    let av = a.to_vec_f32().unwrap();
    assert!(av.iter().any(|&x| x != 0.0) && av.iter().all(|&x| x.abs() <= 1.0 / 8.0));
    assert!(b.to_vec_f32().unwrap().iter().all(|&x| x == 0.0));
}

#[test]
fn merged_adapters_equal_unmerged_adapters() {
    let mut m = base();
    lora::attach(&mut m.esm, &mut m.params, &all_targets(4), 3).unwrap();
    randomise_b(&mut m, 11);
    let plain = outputs(&base());
    let (h_unmerged, c_unmerged) = outputs(&m);
    assert!(rel_err(&h_unmerged, &plain.0) > 1e-3, "the adapters should change the outputs");

    // The saved Hugging Face directory holds the merged weights and no adapter tensor.
    let tmp = tempfile::tempdir().unwrap();
    m.save(tmp.path(), SaveMode::Merged).unwrap();
    let names = MappedSafetensors::open(&tmp.path().join("model.safetensors")).unwrap().names().unwrap();
    assert!(names.iter().all(|n| !n.contains("lora_")), "merged checkpoint carries adapter tensors");
    let (reloaded, report) = ContactModel::from_pretrained(tmp.path(), 0).unwrap();
    assert!(report.fresh.is_empty() && report.unused.is_empty(), "{report:?}");
    assert!(reloaded.lora().is_none());
    let (h_saved, c_saved) = outputs(&reloaded);

    let merged = lora::merge_into_base(&mut m.esm, &mut m.params).unwrap();
    assert_eq!(merged, 12, "6 projections × 2 layers");
    assert!(m.lora().is_none());
    let (h_merged, c_merged) = outputs(&m);
    for (what, a, b) in [
        ("hidden (merged)", &h_merged, &h_unmerged),
        ("contacts (merged)", &c_merged, &c_unmerged),
        ("hidden (saved)", &h_saved, &h_unmerged),
        ("contacts (saved)", &c_saved, &c_unmerged),
    ] {
        let e = rel_err(a, b);
        assert!(e < 1e-5, "{what}: merged vs unmerged error {e:.2e}");
    }
    assert!(h_saved == h_merged, "the saved merged model differs from the merged model");
}

#[test]
fn only_adapters_and_the_trained_head_receive_gradients_and_optimizer_state() {
    for head in [true, false] {
        let mut m = base();
        m.enable_lora(&LoraConfig::default(), 1).unwrap();
        let trainable = m.set_trainable(Trainable { lora: true, head }).unwrap();
        // query + value of 2 layers: A [8, 64] + B [64, 8] each; the head has 2·4 + 1.
        let adapters = 2 * 2 * (8 * 64 + 64 * 8);
        assert_eq!(trainable, adapters + if head { 9 } else { 0 });
        randomise_b(&mut m, 5); // so that gradients reach A as well
        let inp = inputs(&m);
        let n: usize = SEQS.iter().map(|s| s.len() * s.len()).sum();
        let mut rng = TestRng::new(3);
        let targets: Vec<f32> = (0..n).map(|_| (rng.uniform() < 0.1) as u8 as f32).collect();
        let targets = Tensor::from_vec(targets, &[n]).unwrap();
        let mask = Tensor::from_vec(vec![1f32; n], &[n]).unwrap();
        let tape = Tape::with_seed(9);
        let (_, loss) = m.forward_loss(&tape, &inp, &targets, &mask).unwrap();
        let mut grads = Grads::new();
        tape.backward(&loss, &mut grads).unwrap();
        for (name, t) in m.params.iter() {
            let should = lora::is_adapter(name) || (head && name.starts_with("esm.contact_head"));
            assert_eq!(t.requires_grad(), should, "{name}: requires_grad");
            // The contact map reads attention probabilities only: the value projection of the
            // last layer feeds nothing it reads, so its adapter's gradient is exactly zero.
            let unused = name.contains("layer.1.attention.self.value");
            match grads.get(t) {
                Some(g) if should => {
                    let nonzero = g.to_vec_f32().unwrap().iter().any(|&x| x != 0.0);
                    assert_eq!(nonzero, !unused, "{name}: gradient non-zero = {nonzero}");
                }
                Some(_) => panic!("frozen parameter {name} received a gradient buffer"),
                None => assert!(!should, "{name} received no gradient"),
            }
        }
        let mut opt = Optimizer::new(OptimConfig::default());
        opt.step(&mut m.params, &grads, 1e-3, 1.0).unwrap();
        let state = opt.state_tensors().unwrap();
        for t in &state {
            let s = &t.name;
            assert!(s.contains("lora_") || (head && s.contains("contact_head")), "optimizer state for {s}");
        }
        let first_moments: usize =
            state.iter().filter(|t| t.name.ends_with(".exp_avg")).map(|t| t.data.len() / 4).sum();
        assert_eq!(first_moments, trainable, "optimizer state covers exactly the trainable parameters");
    }
}

#[test]
fn adapters_saved_in_peft_layout_load_back_to_the_same_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = base();
    let cfg = LoraConfig { targets: vec!["query".into(), "value".into(), "ffn_in".into()], ..LoraConfig::default() };
    m.enable_lora(&cfg, 2).unwrap();
    randomise_b(&mut m, 21);
    m.params.set(m.head.bias, Tensor::from_vec(vec![-3.5f32], &[1]).unwrap()).unwrap();
    let (h, c) = outputs(&m);
    let dir = tmp.path().join("adapter");
    m.save_adapters(&dir, true, "tests/fixtures/esm_tiny").unwrap();

    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 8);
    assert_eq!(config["lora_alpha"], 8.0);
    assert_eq!(config["lora_dropout"], 0.05);
    // What PEFT itself writes for EsmModel with these targets and the head to save.
    let peft = &peft_layout()["EsmModel"];
    assert_eq!(config["target_modules"], peft["target_modules"]);
    assert_eq!(config["modules_to_save"], peft["modules_to_save"]);
    assert_eq!(adapter_keys(&dir), strings(&peft["keys"]), "tensor keys of a PeftModel over EsmModel");
    assert_only_peft_config_keys(&config);
    for f in ["vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "qf_engine_adapter.json"] {
        assert!(dir.join(f).is_file(), "{f} missing from the adapter directory");
    }

    let mut fresh = base();
    let loaded = lora::load_adapters(&dir, &mut fresh.esm, &mut fresh.params).unwrap();
    assert_eq!(loaded, cfg);
    let (h2, c2) = outputs(&fresh);
    assert!(h == h2 && c == c2, "outputs differ after saving and loading the adapters");

    // A training checkpoint keeps the adapters unmerged and resumes with them attached.
    let ck = tmp.path().join("checkpoint");
    m.save(&ck, SaveMode::Unmerged).unwrap();
    let (resumed, report) = ContactModel::from_pretrained(&ck, 0).unwrap();
    assert!(report.fresh.is_empty(), "{report:?}");
    assert_eq!(resumed.lora(), Some(cfg));
    let (h3, c3) = outputs(&resumed);
    assert!(h == h3 && c == c3, "outputs differ after an unmerged checkpoint round trip");
}

/// How PEFT saves ESM-2 adapters (`tools/make_reference_fixtures.py`, from PEFT itself).
fn peft_layout() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("reference/peft_layout.json")).unwrap()).unwrap()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn adapter_keys(dir: &std::path::Path) -> Vec<String> {
    let mut names = MappedSafetensors::open(&dir.join("adapter_model.safetensors")).unwrap().names().unwrap();
    names.sort();
    names
}

/// An `adapter_config.json` key that `LoraConfig` does not know makes PEFT warn.
fn assert_only_peft_config_keys(config: &serde_json::Value) {
    let known = strings(&peft_layout()["lora_config_fields"]);
    for key in config.as_object().unwrap().keys() {
        assert!(known.contains(key), "adapter_config.json key `{key}` is not a PEFT LoraConfig field");
    }
}

#[test]
fn classifier_adapters_have_the_keys_peft_writes_for_esm_for_sequence_classification() {
    let (mut m, _) =
        SequenceClassifier::from_pretrained(&fixture("esm_tiny"), None, HeadKind::Classification, 0.0, 0).unwrap();
    m.enable_lora(&LoraConfig { dropout: 0.0, ..LoraConfig::default() }, 4).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    m.save_adapters(tmp.path(), "tests/fixtures/esm_tiny").unwrap();
    let peft = &peft_layout()["EsmForSequenceClassification"];
    assert_eq!(adapter_keys(tmp.path()), strings(&peft["keys"]));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["target_modules"], peft["target_modules"]);
    assert_eq!(config["modules_to_save"], peft["modules_to_save"]);
    assert_only_peft_config_keys(&config);
}

#[test]
fn peft_target_modules_name_exactly_the_adapted_modules() {
    let t = |v: &[&str]| lora::peft_target_modules(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    assert_eq!(t(&["query", "value"]), serde_json::json!(["query", "value"]));
    assert_eq!(t(&["attn_out", "ffn_out"]), serde_json::json!(["output.dense"]));
    assert_eq!(t(&["attn_out"]), serde_json::json!(["attention.output.dense"]));
    // `output.dense` would also match attention.output.dense: a full-name regex instead.
    assert_eq!(
        t(&["key", "ffn_out"]),
        serde_json::json!(".*encoder\\.layer\\.\\d+\\.(attention\\.self\\.key|output\\.dense)")
    );
    assert!(LoraConfig::parse_targets("query,nope").is_err());
    assert!(LoraConfig::parse_targets("query,query").is_err());
    assert_eq!(LoraConfig::parse_targets("all").unwrap().len(), 6);
}

#[test]
fn classifier_with_lora_trains_adapters_and_head_only() {
    let (mut m, _) =
        SequenceClassifier::from_pretrained(&fixture("esm_tiny"), None, HeadKind::Classification, 0.0, 0).unwrap();
    let trainable = m.enable_lora(&LoraConfig::default(), 4).unwrap();
    let head: usize =
        m.params.iter().filter(|(n, _)| n.starts_with("classifier")).map(|(_, t)| t.numel()).sum::<usize>();
    assert_eq!(trainable, 2 * 2 * (8 * 64 + 64 * 8) + head);
    let tmp = tempfile::tempdir().unwrap();
    m.save(tmp.path(), SaveMode::Unmerged).unwrap();
    let (back, _) = SequenceClassifier::from_pretrained(tmp.path(), None, HeadKind::Classification, 0.0, 0).unwrap();
    assert!(back.lora().is_some(), "an unmerged checkpoint reloads with its adapters");
}
