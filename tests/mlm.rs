//! Masked-language-model training against transformers' `EsmForMaskedLM`.
//!
//! `tests/fixtures/esm_tiny_mlm` (made by `tools/make_mlm_fixtures.py`) holds the tiny
//! ESM-2 with a random `lm_head`, a fixed corruption of four Pfam domains, and the loss,
//! logits and every parameter gradient transformers computed; `hf_saved/` is what
//! transformers' `save_pretrained` writes for that model. The tests check the engine
//! against them, the corruption rule's statistics, and the training and evaluation
//! commands end to end.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{fixture, rel_err};
use qf_engine::data::batch::PackedBatch;
use qf_engine::data::batching::{pack, BatchConfig, PlanItem};
use qf_engine::data::dataset::LabelledSetBuilder;
use qf_engine::data::masking::{is_maskable, mask_batch, Corruption, MaskingConfig, STANDARD_RESIDUES};
use qf_engine::data::tokenizer::{CLS, EOS, MASK};
use qf_engine::model::checkpoint::MappedSafetensors;
use qf_engine::model::contact_model::ContactModel;
use qf_engine::model::inputs::token_dropout_scale;
use qf_engine::model::lora::{LoraConfig, SaveMode};
use qf_engine::model::{HeadKind, MaskedLm, ModelInputs, SequenceClassifier};
use qf_engine::train::driver::{ModelSource, Warmup};
use qf_engine::train::mlm::{evaluate_mlm, train_mlm, MlmData, MlmTrainConfig};
use qf_engine::train::DeviceChoice;
use qf_engine::{DType, Device, Grads, Tape, Tensor};

/// fp32 parity bar of the project (relative L2 error).
const TOL: f64 = 1e-5;

struct Expected(MappedSafetensors);

impl Expected {
    fn open() -> Expected {
        Expected(MappedSafetensors::open(&fixture("esm_tiny_mlm/expected_mlm.safetensors")).unwrap())
    }
    fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        self.0.with_view(name, |v| Ok((qf_engine::model::checkpoint::view_to_f32(v)?, v.shape().to_vec()))).unwrap()
    }
    fn i64(&self, name: &str) -> (Vec<i64>, Vec<usize>) {
        self.0
            .with_view(name, |v| {
                let vals = v.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
                Ok((vals, v.shape().to_vec()))
            })
            .unwrap()
    }

    /// The padded batch packed (tokens where the attention mask is 1), the packed rows of
    /// the labelled positions, their labels, and the padded index of every packed token.
    fn batch(&self) -> (PackedBatch, Vec<i32>, Vec<i32>, Vec<usize>) {
        let (ids, shape) = self.i64("input_ids");
        let (mask, _) = self.i64("attention_mask");
        let (labels, _) = self.i64("labels");
        let (mut b, mut rows, mut targets, mut padded) = (PackedBatch::new(), Vec::new(), Vec::new(), Vec::new());
        for r in 0..shape[0] {
            let mut toks = Vec::new();
            for j in (0..shape[1]).filter(|&j| mask[r * shape[1] + j] == 1) {
                let k = r * shape[1] + j;
                if labels[k] != -100 {
                    rows.push((b.n_tokens() + toks.len()) as i32);
                    targets.push(labels[k] as i32);
                }
                padded.push(k);
                toks.push(ids[k] as u32);
            }
            b.push(&toks, 0, None, r);
        }
        (b, rows, targets, padded)
    }
}

fn load() -> MaskedLm {
    MaskedLm::from_pretrained(&fixture("esm_tiny_mlm"), 0).unwrap().0
}

fn i32s(v: Vec<i32>) -> Tensor {
    let n = v.len();
    Tensor::from_vec(v, &[n]).unwrap()
}

#[test]
fn the_hub_layout_loads_whole_with_the_tied_decoder_taken_from_the_embeddings() {
    let (model, report) = MaskedLm::from_pretrained(&fixture("esm_tiny_mlm"), 0).unwrap();
    assert!(report.fresh.is_empty(), "fresh: {:?}", report.fresh);
    assert!(report.unused.is_empty(), "unused: {:?}", report.unused);
    // The decoder is the embedding parameter itself, not a copy.
    assert_eq!(model.lm_head.decoder.weight, model.esm.word_embeddings);
    assert!(model.params.id("lm_head.decoder.weight").is_none());
}

#[test]
fn mlm_loss_logits_and_every_gradient_match_transformers() {
    let exp = Expected::open();
    let model = load();
    let (b, rows, targets, padded) = exp.batch();
    assert!(b.tokens.contains(&MASK));
    let inp = ModelInputs::new(&b, model.config(), &Device::Cpu, DType::F32).unwrap();

    // Logits of every position (inference).
    let all = model.logits(&Tape::inference(), &inp, None).unwrap().to_vec_f32().unwrap();
    let (want, shape) = exp.f32("logits");
    let v = shape[2];
    let want: Vec<f32> = padded.iter().flat_map(|&k| want[k * v..(k + 1) * v].iter().copied()).collect();
    let e = rel_err(&all, &want);
    eprintln!("logits of {} tokens: rel err {e:.2e}", padded.len());
    assert!(e < TOL, "logits error {e:.2e}");

    // Loss and every parameter gradient, the tied matrix's two uses summed.
    let tape = Tape::new();
    let (_, loss) = model.forward_loss(&tape, &inp, &i32s(rows), &i32s(targets)).unwrap();
    let e = rel_err(&loss.to_vec_f32().unwrap(), &exp.f32("loss").0);
    eprintln!("loss {:.6} vs transformers {:.6}: rel err {e:.2e}", loss.scalar_f32().unwrap(), exp.f32("loss").0[0]);
    assert!(e < TOL, "loss error {e:.2e}");
    let mut grads = Grads::new();
    tape.backward(&loss, &mut grads).unwrap();
    let mut checked = 0;
    let mut worst = (0.0f64, String::new());
    for (name, t) in model.params.iter() {
        if name.starts_with("esm.contact_head") {
            assert!(grads.get(t).is_none(), "the frozen contact head got a gradient");
            continue;
        }
        let (want, _) = exp.f32(&format!("grad.{name}"));
        let got = grads.get(t).map(|g| g.to_vec_f32().unwrap()).unwrap_or_else(|| vec![0.0; t.numel()]);
        let e = rel_err(&got, &want);
        assert!(e < TOL, "{name}: gradient error {e:.2e}");
        if e > worst.0 {
            worst = (e, name.to_string());
        }
        checked += 1;
    }
    eprintln!("{checked} parameter gradients: worst rel err {:.2e} ({})", worst.0, worst.1);
    assert_eq!(checked, 2 * 16 + 3 + 5, "gradients compared");
}

#[test]
fn the_decoder_gradient_flows_into_the_embedding_matrix() {
    // With no <mask> and the encoder frozen out of the picture, the embedding matrix
    // still receives the decoder's gradient: rows of tokens absent from the batch are
    // non-zero only through the decoder.
    let exp = Expected::open();
    let model = load();
    let (b, rows, targets, _) = exp.batch();
    let inp = ModelInputs::new(&b, model.config(), &Device::Cpu, DType::F32).unwrap();
    let tape = Tape::new();
    let (_, loss) = model.forward_loss(&tape, &inp, &i32s(rows), &i32s(targets)).unwrap();
    let mut grads = Grads::new();
    tape.backward(&loss, &mut grads).unwrap();
    let g = grads.get(model.params.get(model.esm.word_embeddings)).unwrap().to_vec_f32().unwrap();
    let h = model.config().hidden_size;
    let absent = (0..model.config().vocab_size as u32).find(|t| !b.tokens.contains(t)).unwrap();
    assert!(g[absent as usize * h..][..h].iter().any(|&x| x != 0.0), "token {absent}: no decoder gradient");
}

/// The parameter names of a safetensors file: the rotary `inv_freq` buffers left out
/// (transformers recomputes them), and LayerNorm `gamma`/`beta` read as `weight`/`bias`,
/// as transformers' loader reads them (its 5.x `save_pretrained` writes the old names;
/// the hub's ESM-2 files and the engine write the new ones; both load with no missing or
/// unexpected key, which `tools/make_mlm_fixtures.py` and `tools/check_mlm_hf_compat.py`
/// check in transformers itself).
fn keys(path: &Path) -> BTreeSet<String> {
    let names = MappedSafetensors::open(path).unwrap().names().unwrap();
    names
        .into_iter()
        .filter(|n| !n.ends_with("inv_freq"))
        .map(|n| match (n.strip_suffix(".gamma"), n.strip_suffix(".beta")) {
            (Some(stem), _) => format!("{stem}.weight"),
            (_, Some(stem)) => format!("{stem}.bias"),
            _ => n,
        })
        .collect()
}

#[test]
fn saved_keys_are_those_transformers_save_pretrained_writes() {
    let tmp = tempfile::tempdir().unwrap();
    load().save(tmp.path(), SaveMode::Merged).unwrap();
    let ours = keys(&tmp.path().join("model.safetensors"));
    let theirs = keys(&fixture("esm_tiny_mlm/hf_saved/model.safetensors"));
    assert_eq!(ours, theirs, "engine keys vs transformers save_pretrained keys");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "EsmForMaskedLM");
    assert_eq!(cfg["tie_word_embeddings"], true);
}

#[test]
fn a_saved_model_reloads_to_the_same_logits() {
    let exp = Expected::open();
    let model = load();
    let tmp = tempfile::tempdir().unwrap();
    model.save(tmp.path(), SaveMode::Merged).unwrap();
    let (again, report) = MaskedLm::from_pretrained(tmp.path(), 9).unwrap();
    assert!(report.fresh.is_empty() && report.unused.is_empty(), "{report:?}");
    let (b, ..) = exp.batch();
    let inp = ModelInputs::new(&b, model.config(), &Device::Cpu, DType::F32).unwrap();
    let a = model.logits(&Tape::inference(), &inp, None).unwrap().to_vec_f32().unwrap();
    let c = again.logits(&Tape::inference(), &inp, None).unwrap().to_vec_f32().unwrap();
    assert_eq!(a, c);
}

#[test]
fn the_mlm_encoder_loads_into_the_classifier_and_the_contact_model() {
    let tmp = tempfile::tempdir().unwrap();
    let mlm = load();
    mlm.save(tmp.path(), SaveMode::Merged).unwrap();
    let labels = vec!["a".to_string(), "b".to_string()];
    let (cls, report) =
        SequenceClassifier::from_pretrained(tmp.path(), Some(labels), HeadKind::Classification, 0.0, 1).unwrap();
    assert!(report.fresh.iter().all(|n| n.starts_with("classifier")), "{:?}", report.fresh);
    let (contact, creport) = ContactModel::from_pretrained(tmp.path(), 1).unwrap();
    assert!(creport.fresh.is_empty(), "{:?}", creport.fresh);
    for (name, t) in mlm.params.iter().filter(|(n, _)| n.starts_with("esm.")) {
        let want = t.to_vec_f32().unwrap();
        assert_eq!(cls.params.by_name(name).unwrap().to_vec_f32().unwrap(), want, "classifier {name}");
        assert_eq!(contact.params.by_name(name).unwrap().to_vec_f32().unwrap(), want, "contact model {name}");
    }
}

/// Sequences of the committed Pfam excerpt.
fn sample_set() -> qf_engine::data::dataset::LabelledSet {
    qf_engine::data::fasta::read_fasta(&fixture("pfam/sample.fasta"), &qf_engine::data::fasta::FastaLabels::None)
        .unwrap()
}

/// A synthetic set of `n` random proteins of 50-400 residues (X and B included).
fn random_set(n: usize, seed: u64) -> qf_engine::data::dataset::LabelledSet {
    let mut rng = common::TestRng::new(seed);
    let letters = b"LAGVSERTIDPKQNFYMHWCXB";
    let mut b = LabelledSetBuilder::new();
    for i in 0..n {
        let len = 50 + rng.below(351);
        let seq: Vec<u8> = (0..len).map(|_| letters[rng.below(letters.len())]).collect();
        b.push(&format!("p{i}"), &seq, None).unwrap();
    }
    b.finish()
}

fn whole(set: &qf_engine::data::dataset::LabelledSet, rows: &[usize]) -> Vec<PlanItem> {
    rows.iter().map(|&row| PlanItem { row, residue_start: 0, residue_len: set.seq_len(row) }).collect()
}

#[test]
fn masking_selects_15_percent_of_residues_80_10_10_and_never_special_tokens() {
    let set = random_set(400, 3);
    let items = whole(&set, &(0..set.len()).collect::<Vec<_>>());
    let packed = pack(&items, &set, |_| None).unwrap();
    let m = mask_batch(&packed, &items, &MaskingConfig::default(), 11, 0).unwrap();
    let residues = packed.tokens.iter().filter(|&&t| is_maskable(t)).count() as f64;
    let n = m.n_targets() as f64;
    // Binomial(residues, 0.15): 5 standard deviations.
    let sd = (residues * 0.15 * 0.85).sqrt();
    assert!((n - 0.15 * residues).abs() < 5.0 * sd, "selected {n} of {residues}");
    let count = |k: Corruption| m.kinds.iter().filter(|&&x| x == k).count() as f64;
    for (kind, p) in [(Corruption::Mask, 0.8), (Corruption::Random, 0.1), (Corruption::Kept, 0.1)] {
        let sd = (n * p * (1.0 - p)).sqrt();
        assert!((count(kind) - p * n).abs() < 5.0 * sd, "{kind:?}: {} of {n}", count(kind));
    }
    for ((&row, &orig), &kind) in m.target_rows.iter().zip(&m.targets).zip(&m.kinds) {
        let (before, after) = (packed.tokens[row as usize], m.batch.tokens[row as usize]);
        assert_eq!(before, orig);
        assert!(is_maskable(orig) && orig != CLS && orig != EOS, "special token {orig} selected");
        match kind {
            Corruption::Mask => assert_eq!(after, MASK),
            Corruption::Random => assert!(STANDARD_RESIDUES.contains(&after), "random token {after}"),
            Corruption::Kept => assert_eq!(after, orig),
        }
    }
    // Nothing else changed.
    let targets: BTreeSet<u32> = m.target_rows.iter().copied().collect();
    for (i, (&a, &b)) in packed.tokens.iter().zip(&m.batch.tokens).enumerate() {
        if !targets.contains(&(i as u32)) {
            assert_eq!(a, b, "token {i} changed without being selected");
        }
    }
    // <cls>/<eos> were candidates in every sequence and were never selected.
    assert!(packed.tokens.iter().filter(|&&t| t == CLS || t == EOS).count() == 2 * set.len());
}

#[test]
fn masking_is_deterministic_by_seed_and_independent_of_the_batch() {
    let set = random_set(40, 5);
    let cfg = MaskingConfig::default();
    let all = whole(&set, &(0..40).collect::<Vec<_>>());
    let run = |items: &[PlanItem], seed: u64, epoch: u64| {
        let packed = pack(items, &set, |_| None).unwrap();
        mask_batch(&packed, items, &cfg, seed, epoch).unwrap()
    };
    let a = run(&all, 1, 0);
    let b = run(&all, 1, 0);
    assert_eq!((&a.batch.tokens, &a.target_rows, &a.kinds), (&b.batch.tokens, &b.target_rows, &b.kinds));
    assert_ne!(a.target_rows, run(&all, 2, 0).target_rows, "another seed gave the same masks");
    assert_ne!(a.target_rows, run(&all, 1, 1).target_rows, "another epoch gave the same masks");
    // Protein 17 alone is corrupted as inside the full batch.
    let alone = run(&all[17..18], 1, 0);
    let (start, end) = (a.batch.cu_seqlens[17] as usize, a.batch.cu_seqlens[18] as usize);
    assert_eq!(alone.batch.tokens, a.batch.tokens[start..end].to_vec());
}

#[test]
fn token_dropout_scales_by_each_sequences_own_mask_ratio() {
    // transformers' EsmEmbeddings: × (1 − 0.15·0.8) / (1 − masks/length), <mask> rows zero.
    let set = random_set(6, 8);
    let items = whole(&set, &(0..6).collect::<Vec<_>>());
    let packed = pack(&items, &set, |_| None).unwrap();
    let m = mask_batch(&packed, &items, &MaskingConfig::default(), 4, 0).unwrap();
    let cfg = load().config().clone();
    let scale = token_dropout_scale(&m.batch, &cfg);
    for s in 0..m.batch.n_seqs() {
        let (a, b) = (m.batch.cu_seqlens[s] as usize, m.batch.cu_seqlens[s + 1] as usize);
        let masks = m.batch.tokens[a..b].iter().filter(|&&t| t == MASK).count();
        assert!(masks > 0);
        let want = (1.0 - 0.12) / (1.0 - masks as f64 / (b - a) as f64);
        for (i, (&got, &t)) in scale[a..b].iter().zip(&m.batch.tokens[a..b]).enumerate() {
            let w = if t == MASK { 0.0 } else { want };
            assert!((got as f64 - w).abs() < 1e-6, "seq {s} token {}: {got} vs {w}", a + i);
        }
    }
}

fn quick_config(out: &Path) -> MlmTrainConfig {
    let data = MlmData::Fasta { train: fixture("pfam/sample.fasta"), eval: None };
    let mut cfg = MlmTrainConfig::new(data, out.to_path_buf());
    cfg.model = ModelSource::Pretrained(fixture("esm_tiny_mlm"));
    cfg.device = DeviceChoice::Cpu;
    cfg.training.max_tokens = 1024;
    cfg.max_len = 128;
    cfg.training.lr = 2e-3;
    cfg.training.warmup = Warmup::Steps(2);
    cfg.training.log_every = 1;
    cfg.training.progress = false;
    cfg.verbose = false;
    cfg
}

fn events(dir: &Path, kind: &str) -> Vec<serde_json::Value> {
    let log = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    log.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).filter(|e| e["event"] == kind).collect()
}

#[test]
fn a_short_mlm_run_lowers_the_held_out_loss_and_saves_an_esm_for_masked_lm() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = quick_config(tmp.path());
    cfg.training.epochs = 3;
    let s = train_mlm(&cfg).unwrap();
    let evals = events(tmp.path(), "eval");
    assert_eq!(evals.len(), 3);
    let first = evals[0]["loss"].as_f64().unwrap();
    let last = evals[2]["loss"].as_f64().unwrap();
    assert!(last < first, "held-out loss did not fall: {first} → {last}");
    assert!((evals[2]["perplexity"].as_f64().unwrap() - last.exp()).abs() < 1e-9);
    assert!(!events(tmp.path(), "step").is_empty());
    // The run plans its memory (masked rows at the head) and reports plan and peak at the end.
    let plan = &events(tmp.path(), "start")[0]["memory_plan"];
    assert!(plan["activations"].as_u64().unwrap() > 0 && plan["weights"].as_u64().unwrap() > 0, "{plan}");
    let end = &events(tmp.path(), "end")[0];
    assert_eq!(end["planned_memory_bytes"], plan["total"]);
    assert!(end["peak_memory_bytes"].as_u64().unwrap() > 0);
    // model/ is an EsmForMaskedLM that evaluates to the logged numbers.
    let (model, report) = MaskedLm::from_pretrained(&s.model_dir, 0).unwrap();
    assert!(report.fresh.is_empty());
    let set = sample_set();
    let (_, held) = qf_engine::train::mlm::holdout_split(set.len(), cfg.training.seed);
    let bcfg = BatchConfig::new(1024, 128, 0).unwrap();
    let bar = indicatif::ProgressBar::hidden();
    let e = evaluate_mlm(&model, &set, &held, &bcfg, &cfg.masking, 0, &Device::Cpu, &bar).unwrap();
    assert!((e.loss - last).abs() < 1e-6 * last, "{} vs logged {last}", e.loss);
}

#[test]
fn evaluation_with_a_fixed_mask_seed_does_not_depend_on_the_batch_size() {
    let model = load();
    let set = sample_set();
    let rows: Vec<usize> = (0..set.len()).collect();
    let bar = indicatif::ProgressBar::hidden();
    let cfg = MaskingConfig::default();
    let run = |max_tokens, seed| {
        let bcfg = BatchConfig::new(max_tokens, 128, 0).unwrap();
        evaluate_mlm(&model, &set, &rows, &bcfg, &cfg, seed, &Device::Cpu, &bar).unwrap()
    };
    let (a, b) = (run(512, 0), run(4096, 0));
    assert_eq!(a.n_targets, b.n_targets);
    assert!((a.loss - b.loss).abs() < 1e-9 * a.loss, "{} vs {}", a.loss, b.loss);
    assert_eq!(a.accuracy, b.accuracy);
    assert_ne!(run(512, 1).n_targets, 0);
    assert!(a.accuracy > 0.0 && a.accuracy < 1.0 && a.loss > 0.0);
}

#[test]
fn an_interrupted_mlm_run_resumes_bit_identically() {
    let (full, split) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut cfg = quick_config(full.path());
    cfg.training.epochs = 2;
    cfg.eval_limit = Some(2);
    train_mlm(&cfg).unwrap();
    let mut cfg2 = quick_config(split.path());
    cfg2.training.epochs = 2;
    cfg2.eval_limit = Some(2);
    cfg2.training.stop_after = Some(3);
    train_mlm(&cfg2).unwrap();
    cfg2.training.stop_after = None;
    cfg2.resume = true;
    train_mlm(&cfg2).unwrap();
    let read = |d: &Path| {
        let f = MappedSafetensors::open(&d.join("model/model.safetensors")).unwrap();
        let mut names = f.names().unwrap();
        names.sort();
        names.iter().map(|n| f.with_view(n, qf_engine::model::checkpoint::view_to_f32).unwrap()).collect::<Vec<_>>()
    };
    assert!(read(full.path()) == read(split.path()), "resumed weights differ from the uninterrupted run");
}

#[test]
fn lora_mlm_trains_adapters_and_the_head_only() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = quick_config(tmp.path());
    cfg.training.max_steps = Some(3);
    cfg.lora = Some(LoraConfig::default());
    let s = train_mlm(&cfg).unwrap();
    let before = load();
    let (after, _) = MaskedLm::from_pretrained(&s.model_dir, 0).unwrap();
    // Adapters on query and value are merged into model/; everything else of the encoder,
    // the tied embeddings included, is frozen; the head trained.
    for (name, t) in before.params.iter() {
        let got = after.params.by_name(name).unwrap().to_vec_f32().unwrap();
        let same = got == t.to_vec_f32().unwrap();
        if name.starts_with("lm_head.") {
            assert!(!same, "{name} did not train");
        } else if !name.contains("attention.self.query.weight") && !name.contains("attention.self.value.weight") {
            assert!(same, "{name} changed under LoRA");
        }
    }
    // PEFT's layout for EsmForMaskedLM: the head saved as the whole `lm_head` module, its
    // tied decoder included (tools/check_mlm_hf_compat.py --mlm-lora loads it with PEFT).
    let adapter = tmp.path().join("adapter");
    let names = keys(&adapter.join("adapter_model.safetensors"));
    for k in ["lm_head.bias", "lm_head.dense.weight", "lm_head.layer_norm.weight", "lm_head.decoder.weight"] {
        assert!(names.contains(&format!("base_model.model.{k}")), "adapter lacks {k}: {names:?}");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["modules_to_save"], serde_json::json!(["lm_head"]));
}

/// With `QF_MLM_EXPORT=DIR`: train the fixture model a few steps, save it to `DIR/model`
/// and write the engine's logits of the fixture batch (corrupted, padded) to
/// `DIR/engine_logits.safetensors`, for `tools/check_mlm_hf_compat.py --mlm DIR`.
#[test]
fn export_for_transformers() {
    let Some(dir) = std::env::var_os("QF_MLM_EXPORT") else {
        eprintln!("SKIP: set QF_MLM_EXPORT=DIR to export a trained MLM model for tools/check_mlm_hf_compat.py");
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let mut cfg = quick_config(&dir);
    cfg.training.max_steps = Some(5);
    cfg.eval_limit = Some(2);
    let s = train_mlm(&cfg).unwrap();
    let (model, _) = MaskedLm::from_pretrained(&s.model_dir, 0).unwrap();
    let exp = Expected::open();
    let (b, _, _, padded) = exp.batch();
    let inp = ModelInputs::new(&b, model.config(), &Device::Cpu, DType::F32).unwrap();
    let logits = model.logits(&Tape::inference(), &inp, None).unwrap().to_vec_f32().unwrap();
    let (ids, shape) = exp.i64("input_ids");
    let (am, _) = exp.i64("attention_mask");
    let v = model.config().vocab_size;
    let mut full = vec![0f32; shape[0] * shape[1] * v];
    for (i, &k) in padded.iter().enumerate() {
        full[k * v..(k + 1) * v].copy_from_slice(&logits[i * v..(i + 1) * v]);
    }
    use qf_engine::model::checkpoint::NamedTensor;
    let as_i64 = |name: &str, x: &[i64]| NamedTensor::i64(name, &shape, x);
    let tensors = vec![
        as_i64("input_ids", &ids),
        as_i64("attention_mask", &am),
        NamedTensor::f32("logits", &[shape[0], shape[1], v], &full),
    ];
    qf_engine::model::pretrained::save_tensors(&dir.join("engine_logits.safetensors"), &tensors).unwrap();
    eprintln!("exported {} and engine_logits.safetensors", s.model_dir.display());
}
