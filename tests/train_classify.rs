//! Training loop: learning happens, checkpoints resume bit-for-bit, gradient
//! accumulation matches one large batch, and the saved model reloads unchanged.

mod common;

use std::path::Path;

use common::fixture;
use qf_engine::data::batch::PackedBatch;
use qf_engine::model::checkpoint::MappedSafetensors;
use qf_engine::model::{HeadKind, ModelInputs, SequenceClassifier};
use qf_engine::train::{self, DataSource, DeviceChoice, ModelSource, TrainConfig, Warmup};
use qf_engine::{Device, Tape};

/// A quick run on the demo set with the 2-layer fixture model as the starting point.
fn quick_config(out: &Path) -> TrainConfig {
    let mut cfg = TrainConfig::demo(out.to_path_buf());
    cfg.model = ModelSource::Pretrained(fixture("esm_tiny"));
    cfg.device = DeviceChoice::Cpu;
    cfg.training.max_tokens = 2048;
    cfg.max_len = 512;
    cfg.training.lr = 1e-3;
    cfg.training.warmup = Warmup::Steps(2);
    cfg.eval_limit = Some(40);
    cfg.training.progress = false;
    cfg.verbose = false;
    cfg
}

/// All parameters of a saved model directory, by name.
fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let f = MappedSafetensors::open(&dir.join("model.safetensors")).unwrap();
    let mut names = f.names().unwrap();
    names.sort();
    names
        .into_iter()
        .filter(|n| !n.ends_with("inv_freq"))
        .map(|n| {
            let v = f.with_view(&n, |v| qf_engine::model::checkpoint::view_to_f32(v)).unwrap();
            (n, v)
        })
        .collect()
}

#[test]
fn interrupted_and_resumed_run_equals_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut cfg = quick_config(&a);
    cfg.training.max_steps = Some(6);
    train::train(&cfg).unwrap();

    let mut cfg_b = quick_config(&b);
    cfg_b.training.max_steps = Some(6);
    cfg_b.training.stop_after = Some(3);
    let half = train::train(&cfg_b).unwrap();
    assert_eq!(half.steps, 3);
    assert!(b.join("checkpoints/latest").is_file());
    cfg_b.training.stop_after = None;
    cfg_b.resume = true;
    let full = train::train(&cfg_b).unwrap();
    assert_eq!(full.steps, 6);

    let (wa, wb) = (weights(&a.join("model")), weights(&b.join("model")));
    assert_eq!(wa.len(), wb.len());
    let start = weights(&fixture("esm_tiny"));
    let moved = wa.iter().zip(&start).filter(|((n, x), (_, y))| !n.starts_with("classifier") && x != y).count();
    assert!(moved > 10, "training changed only {moved} tensors");
    for ((na, xa), (nb, xb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        assert!(xa == xb, "{na} differs between the uninterrupted and the resumed run");
    }
}

#[test]
fn resume_without_a_checkpoint_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = quick_config(tmp.path());
    cfg.resume = true;
    let e = train::train(&cfg).unwrap_err().to_string();
    assert!(e.contains("has no checkpoint to resume from"), "{e}");
}

#[test]
fn training_learns_the_demo_families_and_writes_logs_and_a_loadable_model() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = quick_config(tmp.path());
    cfg.stratify = "top:4".parse().unwrap();
    cfg.training.epochs = 6;
    cfg.training.max_tokens = 1024;
    cfg.training.lr = 2e-3;
    cfg.eval_limit = None;
    let s = train::train(&cfg).unwrap();
    let e = s.eval.expect("evaluation ran");
    // 4 classes: chance is 25 %.
    assert_eq!(s.n_classes, 4);
    assert!(e.accuracy > 0.5, "accuracy {:.3} is not clearly above chance", e.accuracy);
    assert!(s.final_train_loss < 0.8 * 4f64.ln(), "train loss {} did not fall well below ln 4", s.final_train_loss);

    let log = std::fs::read_to_string(tmp.path().join("metrics.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for kind in ["start", "step", "eval", "checkpoint", "end"] {
        assert!(events.iter().any(|e| e["event"] == kind), "no {kind} event in metrics.jsonl");
    }
    // curves.png beside the log: the loss and eval accuracy panels.
    let curves = std::fs::File::open(tmp.path().join("curves.png")).expect("curves.png written");
    let info = png::Decoder::new(std::io::BufReader::new(curves)).read_info().unwrap().info().clone();
    let panel = qf_engine::plot::curves::PANEL_WIDTH;
    assert_eq!(info.width, 2 * panel, "loss and accuracy panels");

    // The saved directory is a Hugging Face checkpoint with the label map; it reloads to
    // the same predictions.
    let dir = tmp.path().join("model");
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg_json["architectures"][0], "EsmForSequenceClassification");
    assert_eq!(cfg_json["id2label"].as_object().unwrap().len(), 4);
    assert!(dir.join("label_map.json").is_file());
    let (m, report) = SequenceClassifier::from_pretrained(&dir, None, HeadKind::Classification, 0.0, 0).unwrap();
    assert!(report.fresh.is_empty() && report.unused.is_empty(), "{report:?}");
    let mut b = PackedBatch::new();
    b.push(&qf_engine::data::tokenizer::encode_ids("MKTAYIAKQRQISFVKSHFSRQ").unwrap(), 0, None, 0);
    let inp = ModelInputs::new(&b, m.config(), &Device::Cpu, qf_engine::DType::F32).unwrap();
    let logits = m.forward(&Tape::inference(), &inp).unwrap().to_vec_f32().unwrap();
    assert_eq!(logits.len(), 4);
    assert!(logits.iter().all(|x| x.is_finite()));
}

#[test]
fn gradient_accumulation_equals_one_large_batch() {
    // Two micro-batches of one sequence each, accumulated with weight 1/2, equal one
    // batch of both sequences (the loss is a mean over sequences).
    let m =
        SequenceClassifier::from_pretrained(&fixture("esm_tiny"), None, HeadKind::Classification, 0.0, 0).unwrap().0;
    let seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "GSHMLEDPVDAFQQVLRK"];
    let batch = |idx: &[usize]| {
        let mut b = PackedBatch::new();
        for &i in idx {
            b.push(&qf_engine::data::tokenizer::encode_ids(seqs[i]).unwrap(), 0, Some(i as u32), i);
        }
        ModelInputs::new(&b, m.config(), &Device::Cpu, qf_engine::DType::F32).unwrap()
    };
    let mut acc = qf_engine::Grads::new();
    for i in 0..2 {
        let tape = Tape::new();
        let (_, loss) = m.forward_loss(&tape, &batch(&[i]), None).unwrap();
        tape.backward_scaled(&loss, 0.5, &mut acc).unwrap();
    }
    let mut one = qf_engine::Grads::new();
    let tape = Tape::new();
    let (_, loss) = m.forward_loss(&tape, &batch(&[0, 1]), None).unwrap();
    tape.backward(&loss, &mut one).unwrap();
    for (name, t) in m.params.iter().filter(|(_, t)| t.requires_grad()) {
        let (a, b) = (acc.get(t).unwrap().to_vec_f32().unwrap(), one.get(t).unwrap().to_vec_f32().unwrap());
        let e = common::rel_err(&a, &b);
        assert!(e < 1e-5, "{name}: accumulated vs single-batch gradient error {e:.2e}");
    }
}

#[test]
fn empty_training_set_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("empty.fasta");
    std::fs::write(&f, "").unwrap();
    let mut cfg = quick_config(&tmp.path().join("out"));
    cfg.data = DataSource::Files { train: f, eval: None, labels_tsv: None };
    let e = format!("{:#}", train::train(&cfg).unwrap_err());
    assert!(e.contains("empty"), "{e}");
}
