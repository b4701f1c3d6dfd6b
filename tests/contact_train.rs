//! Contact prediction: random crops at their true positions, pair targets of real chains,
//! a short training run, resumption, evaluation with merged windows, and
//! `qf-engine predict-contacts` output files.

mod common;

use approx::assert_abs_diff_eq;
use std::collections::BTreeSet;
use std::path::Path;

use common::{fixture, rel_err, shared_data, TestRng};
use qf_engine::data::batch::PackedBatch;
use qf_engine::data::batching::{crop_start, training_plan, BatchConfig, PlanItem};
use qf_engine::data::contact_batching::{pack_crops, pair_targets, ContactCorpus};
use qf_engine::data::contacts::CONTACT_CUTOFF;
use qf_engine::data::tokenizer::{CLS, EOS};
use qf_engine::model::checkpoint::{view_to_f32, MappedSafetensors};
use qf_engine::model::lora::SaveMode;
use qf_engine::model::{ContactModel, ModelInputs};
use qf_engine::ops::contact_head::contact_offsets;
use qf_engine::train::contact::{load_contact_model, train_contacts, ContactData, ContactTrainConfig};
use qf_engine::train::contact_eval::predict_maps;
use qf_engine::train::{DeviceChoice, ModelSource, Warmup};
use qf_engine::{DType, Device, Tape, Tensor};

/// 2VB1_A (lysozyme, 129 residues) and 5NVG_A (ubiquitin, 76 residues).
fn mini() -> ContactCorpus {
    ContactCorpus::open_split(&fixture("contacts"), "mini").unwrap()
}

fn model() -> ContactModel {
    ContactModel::from_pretrained(&fixture("esm_tiny"), 0).unwrap().0
}

fn item(row: usize, residue_start: usize, residue_len: usize) -> PlanItem {
    PlanItem { row, residue_start, residue_len }
}

/// Hidden states, per-layer attention probabilities and contact logits of a batch.
struct Outputs {
    hidden: Vec<f32>,
    probs: Vec<Vec<f32>>,
    logits: Vec<f32>,
    inp: ModelInputs,
}

fn run(m: &ContactModel, b: &PackedBatch) -> Outputs {
    let inp = ModelInputs::new(b, m.config(), &Device::Cpu, DType::F32).unwrap();
    let tape = Tape::inference();
    let enc = m.esm.forward(&m.params, &tape, &inp, true).unwrap();
    let logits = m.head.forward(&m.params, &tape, &enc.attention_probs, &inp.layout).unwrap();
    Outputs {
        hidden: enc.hidden.to_vec_f32().unwrap(),
        probs: enc.attention_probs.iter().map(|p| p.to_vec_f32().unwrap()).collect(),
        logits: logits.to_vec_f32().unwrap(),
        inp,
    }
}

/// Sequence `s`'s slices of the outputs: hidden rows, attention blocks of every layer, logits.
fn slices(o: &Outputs, s: usize, hidden: usize, heads: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let cu = &o.inp.layout.cu;
    let l = cu[s + 1] - cu[s];
    let h = o.hidden[cu[s] * hidden..cu[s + 1] * hidden].to_vec();
    let (poffs, _) = qf_engine::backend::cpu::attention::prob_offsets(cu, heads);
    let p: Vec<f32> = o.probs.iter().flat_map(|layer| layer[poffs[s]..poffs[s] + heads * l * l].to_vec()).collect();
    let (loffs, _) = contact_offsets(&o.inp.layout);
    let lp = l - 2;
    (h, p, o.logits[loffs[s]..loffs[s] + lp * lp].to_vec())
}

#[test]
fn every_crop_start_is_reachable_and_redrawn_each_epoch() {
    let starts: BTreeSet<usize> = (0..400).map(|epoch| crop_start(7, epoch, 3, 30, 10)).collect();
    assert_eq!(starts, (0..=20).collect(), "a 30-residue row cropped to 10 must reach all 21 starts");

    // Through the training plans of the contact set: 2VB1_A (129) cropped to 100 residues.
    let corpus = mini();
    let cfg = BatchConfig::new(4096, 102, 42).unwrap();
    let lens = corpus.token_lengths();
    let mut seen = BTreeSet::new();
    let mut changed = 0;
    let mut last = None;
    for epoch in 0..300 {
        let plan = training_plan(&[0, 1], &lens, &cfg, epoch).unwrap();
        let items: Vec<PlanItem> = plan.into_iter().flat_map(|b| b.items).collect();
        let lyso = items.iter().find(|i| i.row == 0).unwrap();
        let ubi = items.iter().find(|i| i.row == 1).unwrap();
        assert_eq!((lyso.residue_len, ubi.residue_start, ubi.residue_len), (100, 0, 76));
        seen.insert(lyso.residue_start);
        changed += usize::from(last.is_some_and(|s| s != lyso.residue_start));
        last = Some(lyso.residue_start);
    }
    assert_eq!(seen, (0..=29).collect(), "every start 0..=29 must be drawn");
    assert!(changed > 250, "crops should be redrawn each epoch (changed {changed} times in 300)");
}

#[test]
fn crop_items_keep_their_true_positions() {
    let corpus = mini();
    let full = pack_crops(&[item(0, 0, 129)], &corpus).unwrap();
    let crop = pack_crops(&[item(0, 17, 40)], &corpus).unwrap();
    assert_eq!(full.positions, (0..131).collect::<Vec<u32>>());
    // <cls> just before the first residue of the crop, <eos> just after its last.
    assert_eq!(crop.positions, (17..59).collect::<Vec<u32>>());
    assert_eq!((crop.tokens[0], crop.tokens[41]), (CLS, EOS));
    // Residue k of the chain has token full[k + 1] at position k + 1 in both.
    assert_eq!(&crop.tokens[1..41], &full.tokens[18..58]);
    assert_eq!(&crop.positions[1..41], &full.positions[18..58]);
}

/// The chain's full-length tokens with `<cls>`/`<eos>` at the crop's borders, packed as
/// three sequences (before, window, after) at the original positions: a full-length
/// forward whose attention is restricted to the crop window.
fn full_length_restricted(corpus: &ContactCorpus, row: usize, s: usize, w: usize) -> PackedBatch {
    let mut toks = pack_crops(&[item(row, 0, corpus.length(row))], corpus).unwrap().tokens;
    toks[s] = CLS;
    toks[s + w + 1] = EOS;
    let mut b = PackedBatch::new();
    b.push(&toks[..s], 0, None, row);
    b.push(&toks[s..s + w + 2], s as u32, None, row);
    b.push(&toks[s + w + 2..], (s + w + 2) as u32, None, row);
    b
}

#[test]
fn a_crop_equals_the_full_length_forward_restricted_to_the_crop() {
    let (m, corpus) = (model(), mini());
    let (hidden, heads) = (m.config().hidden_size, m.config().num_attention_heads);
    let (s, w) = (37, 50);
    // The crop is packed after another chain, so it also sits at another place in the batch.
    let crop = run(&m, &pack_crops(&[item(1, 0, 76), item(0, s, w)], &corpus).unwrap());
    let full = run(&m, &full_length_restricted(&corpus, 0, s, w));
    assert_eq!(crop.inp.layout.len_of(1), full.inp.layout.len_of(1));
    let (hc, pc, lc) = slices(&crop, 1, hidden, heads);
    let (hf, pf, lf) = slices(&full, 1, hidden, heads);
    for (what, a, b) in [("hidden", &hc, &hf), ("attention", &pc, &pf), ("contact logits", &lc, &lf)] {
        let e = rel_err(a, b);
        assert!(e <= 1e-6, "{what}: crop vs restricted full-length forward error {e:.2e}");
    }
    // Without the restriction the window sees the whole chain and its outputs differ.
    let unrestricted = run(&m, &pack_crops(&[item(0, 0, 129)], &corpus).unwrap());
    let rows = &unrestricted.hidden[(s + 1) * hidden..(s + 1 + w) * hidden];
    assert!(rel_err(rows, &hc[hidden..(w + 1) * hidden]) > 1e-3);
}

#[test]
fn a_shared_rotary_offset_changes_outputs_only_at_rounding_level() {
    let (m, corpus) = (model(), mini());
    let (hidden, heads) = (m.config().hidden_size, m.config().num_attention_heads);
    let at_true = pack_crops(&[item(0, 37, 60)], &corpus).unwrap();
    let mut at_zero = at_true.clone();
    at_zero.positions = (0..62).collect();
    let mut far = at_true.clone();
    far.positions = (900..962).collect();
    let base = run(&m, &at_zero);
    let b = slices(&base, 0, hidden, heads);
    // The rotary angle p·θ is formed in f32 (as Hugging Face does), so its absolute rounding
    // error grows with the position p (≈ p·2⁻²⁴): the bound is the fp32 bar of 1e-5 at the
    // true offset and proportionally looser far out.
    for (name, batch, tol) in [("offset 37", &at_true, 1e-5), ("offset 900", &far, 5e-5)] {
        let o = run(&m, batch);
        let x = slices(&o, 0, hidden, heads);
        for (what, a, r) in [("hidden", &x.0, &b.0), ("attention", &x.1, &b.1), ("contact logits", &x.2, &b.2)] {
            let e = rel_err(a, r);
            eprintln!("{name}: {what} relative error {e:.2e}");
            assert!(e < tol, "{name}: {what} changed by {e:.2e}, more than rounding");
        }
    }
}

/// Row-major L×L of the upper triangle pairs (i < j) selected by a predicate.
fn count_upper(l: usize, f: impl Fn(usize, usize) -> bool) -> usize {
    (0..l).map(|i| (i + 1..l).filter(|&j| f(i, j)).count()).sum()
}

#[test]
fn pair_targets_of_real_chains() {
    let corpus = mini();
    for (row, l, contacts) in [(0, 129, 264), (1, 76, 145)] {
        // Counts from ../shared/data/contacts/README.md (CB-CB < 8 Å, |i-j| >= 6).
        let t = pair_targets(&[item(row, 0, l)], &corpus, CONTACT_CUTOFF, 6).unwrap();
        assert_eq!(t.evaluated, count_upper(l, |i, j| j - i >= 6));
        let hits = t.targets.iter().zip(&t.mask).filter(|(&y, &m)| y == 1.0 && m == 1.0).count();
        assert_eq!(hits, contacts, "{}: contacts at |i-j| >= 6", corpus.name(row));
        for i in 0..l {
            for j in 0..l {
                let on = t.mask[i * l + j] == 1.0;
                assert_eq!(on, j > i && j - i >= 6, "mask at ({i}, {j})");
                assert_eq!(t.targets[i * l + j], t.targets[j * l + i], "targets symmetric");
            }
        }
    }
    // Disulfide C6-C127 of lysozyme (1-based) is a contact; a crop sees the same labels.
    let t = pair_targets(&[item(0, 0, 129)], &corpus, CONTACT_CUTOFF, 6).unwrap();
    assert_eq!(t.targets[5 * 129 + 126], 1.0);
    let c = pair_targets(&[item(0, 20, 50)], &corpus, CONTACT_CUTOFF, 6).unwrap();
    for i in 0..50 {
        for j in 0..50 {
            assert_eq!(c.targets[i * 50 + j], t.targets[(20 + i) * 129 + 20 + j]);
        }
    }

    // Pairs outside the mask do not enter the loss: flipping their targets changes nothing.
    let n = t.targets.len();
    let mut rng = TestRng::new(4);
    let logits: Vec<f32> = rng.normals(n, 2.0).into_iter().map(|x| x as f32).collect();
    let flipped: Vec<f32> = t.targets.iter().zip(&t.mask).map(|(&y, &m)| if m == 0.0 { 1.0 - y } else { y }).collect();
    let tensor = |v: Vec<f32>| Tensor::from_vec(v, &[n]).unwrap();
    let tape = Tape::inference();
    let loss = |y: &[f32]| {
        qf_engine::ops::bce_with_logits(&tape, &tensor(logits.clone()), &tensor(y.to_vec()), &tensor(t.mask.clone()))
            .unwrap()
            .scalar_f32()
            .unwrap()
    };
    assert_eq!(loss(&t.targets), loss(&flipped));
}

#[test]
fn contact_set_label_statistics_match_its_readme() {
    let Some(dir) = shared_data("contacts") else { return };
    let valid = ContactCorpus::open_split(&dir, "valid").unwrap();
    let (mut all, mut long) = (0usize, 0usize);
    for row in 0..valid.len() {
        let l = valid.length(row);
        let t = pair_targets(&[item(row, 0, l)], &valid, CONTACT_CUTOFF, 6).unwrap();
        for i in 0..l {
            for j in i + 6..l {
                if t.targets[i * l + j] == 1.0 {
                    all += 1;
                    long += usize::from(j - i >= 24);
                }
            }
        }
    }
    assert_eq!((all, long), (497_342, 333_557), "valid contacts at |i-j| >= 6 and >= 24");
}

#[test]
fn windows_of_a_long_protein_are_merged_by_averaging() {
    let (m, corpus) = (model(), mini());
    let full_cfg = BatchConfig::new(4096, 1024, 0).unwrap();
    let win_cfg = BatchConfig::new(4096, 42, 0).unwrap(); // 40-residue windows: (0,40) (20,40) (36,40)
    let bar = indicatif::ProgressBar::hidden();
    let mut maps = Vec::new();
    predict_maps(&m, &corpus, &[1], &win_cfg, &Device::Cpu, &bar, |p| {
        maps.push(p);
        Ok(())
    })
    .unwrap();
    predict_maps(&m, &corpus, &[1], &full_cfg, &Device::Cpu, &bar, |p| {
        maps.push(p);
        Ok(())
    })
    .unwrap();
    let (win, whole) = (&maps[0], &maps[1]);
    assert_eq!((whole.windows, whole.uncovered_pairs), (1, 0));
    assert_eq!(win.windows, 3);
    let windows = [(0usize, 40usize), (20, 40), (36, 40)];
    let covering = |i: usize, j: usize| windows.iter().filter(|(s, w)| i >= *s && j < s + w).count();
    assert_eq!(win.uncovered_pairs, count_upper(76, |i, j| covering(i, j) == 0));
    // One window alone: the crop forward's probabilities.
    let o = run(&m, &pack_crops(&[item(1, 0, 40)], &corpus).unwrap());
    let p = |x: f32| 1.0 / (1.0 + (-x).exp());
    for (i, j) in [(0, 19), (3, 15), (10, 1)] {
        assert_eq!(covering(i.min(j), i.max(j)), 1);
        assert_abs_diff_eq!(win.probs[i * 76 + j], p(o.logits[i * 40 + j]), epsilon = 1e-6);
    }
    for i in 0..76 {
        // The diagonal keeps the model's value, as transformers' predict_contacts does.
        assert!(win.probs[i * 76 + i] > 0.0);
        for j in 0..76 {
            assert_eq!(win.probs[i * 76 + j], win.probs[j * 76 + i]);
            if covering(i.min(j), i.max(j)) == 0 && i != j {
                assert_eq!(win.probs[i * 76 + j], 0.0);
            }
        }
    }
}

fn quick_config(out: &Path) -> ContactTrainConfig {
    let data =
        ContactData::Prepared { dir: fixture("contacts"), train_split: "mini".into(), eval_split: Some("mini".into()) };
    let mut cfg = ContactTrainConfig::new(data, out.to_path_buf());
    cfg.model = ModelSource::Preset("esm2_tiny".into());
    cfg.device = DeviceChoice::Cpu;
    cfg.crop = 64;
    cfg.training.max_tokens = 1024;
    cfg.max_len = 256;
    cfg.training.lr = 5e-3;
    cfg.training.warmup = Warmup::Steps(2);
    cfg.training.log_every = 1;
    cfg.training.progress = false;
    cfg.verbose = false;
    cfg
}

fn events(dir: &Path) -> Vec<serde_json::Value> {
    let log = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    log.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_short_contact_run_lowers_the_loss_and_writes_metrics_and_models() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = quick_config(tmp.path());
    // Whole chains, so that every epoch sees the same pairs and the loss curve is smooth.
    cfg.crop = 0;
    cfg.lora = None;
    cfg.training.lr = 3e-2;
    cfg.training.epochs = 24;
    let s = train_contacts(&cfg).unwrap();
    assert_eq!((s.steps, s.epochs_done), (24, 24));
    let ev = events(tmp.path());
    let losses: Vec<f64> = ev.iter().filter(|e| e["event"] == "step").map(|e| e["loss"].as_f64().unwrap()).collect();
    eprintln!("losses {losses:?}");
    assert_eq!(losses.len(), 24);
    let (first, last) = (losses[..3].iter().sum::<f64>() / 3.0, losses[21..].iter().sum::<f64>() / 3.0);
    // The best constant prediction (the contact rate of the two chains) sets the bar: the
    // model must beat it, i.e. learn which pairs are in contact, not only how many.
    let corpus = mini();
    let t = pair_targets(&[item(0, 0, 129), item(1, 0, 76)], &corpus, CONTACT_CUTOFF, 6).unwrap();
    let rate = t.targets.iter().zip(&t.mask).filter(|(&y, &m)| y * m == 1.0).count() as f64 / t.evaluated as f64;
    let constant = -(rate * rate.ln() + (1.0 - rate) * (1.0 - rate).ln());
    eprintln!("loss: first steps {first:.4}, last steps {last:.4}, best constant {constant:.4}");
    assert!(last < first - 0.01, "training loss did not fall: first steps {first:.4}, last steps {last:.4}");
    assert!(last < constant, "loss {last:.4} does not beat the best constant prediction ({constant:.4})");
    for kind in ["start", "step", "eval", "checkpoint", "end"] {
        assert!(ev.iter().any(|e| e["event"] == kind), "no {kind} event in metrics.jsonl");
    }
    // curves.png beside the log: loss, MCC and long-range P@L panels.
    let curves = std::fs::File::open(tmp.path().join("curves.png")).expect("curves.png written");
    let info = png::Decoder::new(std::io::BufReader::new(curves)).read_info().unwrap().info().clone();
    assert_eq!(info.width, 3 * qf_engine::plot::curves::PANEL_WIDTH, "loss, MCC and P@L panels");
    let eval = s.eval.expect("evaluated");
    assert_eq!(eval.report.proteins, 2);
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("eval.json")).unwrap()).unwrap();
    for key in ["mcc_mean", "mcc_pooled", "precision", "pooled"] {
        assert!(j["report"].get(key).is_some(), "eval.json lacks report.{key}");
    }
    assert_eq!(j["report"]["precision"].as_array().unwrap().len(), 4);

    // A Hugging Face model with the contact head; all weights trained, so no adapter.
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("model/config.json")).unwrap()).unwrap();
    assert_eq!(cfg_json["architectures"][0], "EsmModel");
    let names = MappedSafetensors::open(&tmp.path().join("model/model.safetensors")).unwrap().names().unwrap();
    assert!(names.contains(&"esm.contact_head.regression.weight".to_string()));
    assert!(names.iter().all(|n| !n.contains("lora")));
    assert!(!tmp.path().join("adapter").exists());
    let (reloaded, report) = ContactModel::from_pretrained(&tmp.path().join("model"), 0).unwrap();
    assert!(report.fresh.is_empty() && report.unused.is_empty(), "{report:?}");
    assert!(reloaded.lora().is_none());
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let f = MappedSafetensors::open(&dir.join("model.safetensors")).unwrap();
    let mut names = f.names().unwrap();
    names.sort();
    names.into_iter().map(|n| (n.clone(), f.with_view(&n, view_to_f32).unwrap())).collect()
}

#[test]
fn an_interrupted_and_resumed_contact_run_equals_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut cfg = quick_config(&a);
    cfg.training.epochs = 6;
    cfg.eval_limit = Some(1);
    train_contacts(&cfg).unwrap();
    let mut cfg_b = quick_config(&b);
    cfg_b.training.epochs = 6;
    cfg_b.eval_limit = Some(1);
    cfg_b.training.stop_after = Some(3);
    assert_eq!(train_contacts(&cfg_b).unwrap().steps, 3);
    cfg_b.training.stop_after = None;
    cfg_b.resume = true;
    assert_eq!(train_contacts(&cfg_b).unwrap().steps, 6);
    let (wa, wb) = (weights(&a.join("model")), weights(&b.join("model")));
    assert_eq!(wa.len(), wb.len());
    for ((na, xa), (nb, xb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        assert!(xa == xb, "{na} differs between the uninterrupted and the resumed run");
    }

    // LoRA run from a random preset: the merged model equals base + PEFT adapter (+ head).
    let merged = load_contact_model(&a.join("model"), None, &Device::Cpu).unwrap();
    let applied = load_contact_model(&a.join("base"), Some(&a.join("adapter")), &Device::Cpu).unwrap();
    let corpus = mini();
    let b = pack_crops(&[item(0, 0, 129)], &corpus).unwrap();
    let (x, y) = (run(&merged, &b).logits, run(&applied, &b).logits);
    assert!(rel_err(&x, &y) < 1e-5, "base + adapter differs from the merged model: {:.2e}", rel_err(&x, &y));
    let moved = wa.iter().zip(weights(&a.join("base")).iter()).filter(|((_, x), (_, y))| x != y).count();
    assert!(moved >= 4, "training left the adapted weights unchanged ({moved} tensors moved)");
}

#[test]
fn predict_contacts_writes_csv_npy_png_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tmp.path().join("model");
    model().save(&model_dir, SaveMode::Merged).unwrap();
    let out = tmp.path().join("out");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_qf-engine"))
        .args(["predict-contacts", "--model"])
        .arg(&model_dir)
        .arg("--structure")
        .arg(fixture("pdb/pdb1ubi_trimmed.pdb"))
        .arg(format!("{}:A", fixture("pdb/1A8O_excerpt.pdb").display()))
        .args(["--sequence", "MKTAYIAKQRQISFVKSHFSRQ", "--max-len", "60", "--device", "cpu", "--quiet", "--output"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(status.status.success(), "predict-contacts failed: {stderr}");
    assert!(stderr.contains("windows, pair probabilities averaged"), "long chain not reported: {stderr}");
    for (stem, l) in [("pdb1ubi_trimmed_A", 76), ("1A8O_excerpt_A", 10), ("sequence1", 22)] {
        let csv = std::fs::read_to_string(out.join(format!("{stem}.csv"))).unwrap();
        assert_eq!(csv.lines().count(), l, "{stem}.csv rows");
        assert!(csv.lines().all(|r| r.split(',').count() == l && r.split(',').all(|v| v.parse::<f32>().is_ok())));
        let npy = std::fs::read(out.join(format!("{stem}.npy"))).unwrap();
        assert!(String::from_utf8_lossy(&npy[..128]).contains(&format!("'shape': ({l}, {l})")));
        assert_eq!(npy.len() % 64, (l * l * 4) % 64);
        let png = std::fs::File::open(out.join(format!("{stem}.png"))).unwrap();
        let info = png::Decoder::new(std::io::BufReader::new(png)).read_info().unwrap().info().clone();
        let layout = qf_engine::plot::contact_map::Layout::new(l, (1000 / l as u32).max(1)).unwrap();
        assert_eq!((info.width, info.height), (layout.width, layout.height), "{stem}.png size");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(summary["metrics"]["proteins"], 2, "metrics over the two structures only");
    let ubi = summary["proteins"].as_array().unwrap().iter().find(|p| p["name"] == "pdb1ubi_trimmed_A").unwrap();
    assert_eq!(ubi["windows"], 2, "76 residues in 58-residue windows: starts 0 and 18");
    assert!(ubi["mcc"].is_number());

    // Clear errors for bad input.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_qf-engine"))
        .args(["predict-contacts", "--model"])
        .arg(&model_dir)
        .args(["--sequence", "MK1T", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a residue letter"));
    let no_data = std::process::Command::new(env!("CARGO_BIN_EXE_qf-engine"))
        .args(["train", "--task", "contact", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&no_data.stderr).contains("needs --contacts DIR"));
}
