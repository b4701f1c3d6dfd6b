//! ESM-2 parity with PyTorch + transformers: the fixtures in `tests/fixtures/esm_tiny`
//! (made by `tools/make_parity_fixtures.py`) hold a random 2-layer ESM-2 with a
//! classification head and contact head, real Pfam sequences in a padded batch, and
//! the logits, losses, hidden states, attention and every parameter gradient that
//! PyTorch computed. The model is loaded through the real Hugging Face loader and run on
//! the same sequences packed without padding.

mod common;

use common::{fixture, rel_err};
use qf_engine::data::batch::PackedBatch;
use qf_engine::model::checkpoint::MappedSafetensors;
use qf_engine::model::{HeadKind, ModelInputs, SequenceClassifier};
use qf_engine::ops;
use qf_engine::{Device, Grads, Tape, Tensor};

/// fp32 parity bar of the project (relative L2 error).
const TOL: f64 = 1e-5;

struct Expected(MappedSafetensors);

impl Expected {
    fn open(name: &str) -> Expected {
        Expected(MappedSafetensors::open(&fixture(&format!("esm_tiny/{name}"))).unwrap())
    }
    fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        self.0.with_view(name, |v| Ok((qf_engine::model::checkpoint::view_to_f32(v)?, v.shape().to_vec()))).unwrap()
    }
    fn i64(&self, name: &str) -> (Vec<i64>, Vec<usize>) {
        self.0
            .with_view(name, |v| {
                Ok((
                    v.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
                    v.shape().to_vec(),
                ))
            })
            .unwrap()
    }
    fn has(&self, name: &str) -> bool {
        self.0.names().unwrap().iter().any(|n| n == name)
    }

    /// The padded batch as packed sequences (tokens where the attention mask is 1).
    fn batch(&self) -> PackedBatch {
        let (ids, shape) = self.i64("input_ids");
        let (mask, _) = self.i64("attention_mask");
        let labels = if self.has("labels") { Some(self.i64("labels").0) } else { None };
        let mut b = PackedBatch::new();
        for r in 0..shape[0] {
            let toks: Vec<u32> =
                (0..shape[1]).filter(|&j| mask[r * shape[1] + j] == 1).map(|j| ids[r * shape[1] + j] as u32).collect();
            b.push(&toks, 0, labels.as_ref().map(|l| l[r] as u32), r);
        }
        b
    }
}

fn load() -> SequenceClassifier {
    SequenceClassifier::from_pretrained(&fixture("esm_tiny"), None, HeadKind::Classification, 0.0, 0).unwrap().0
}

fn inputs(model: &SequenceClassifier, b: &PackedBatch) -> ModelInputs {
    ModelInputs::new(b, model.config(), &Device::Cpu, qf_engine::DType::F32).unwrap()
}

/// Rows of a padded `[B, Lmax, …]` tensor at the positions of the packed tokens.
fn unpad(v: &[f32], b: &PackedBatch, lmax: usize, width: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for s in 0..b.n_seqs() {
        let len = (b.cu_seqlens[s + 1] - b.cu_seqlens[s]) as usize;
        out.extend_from_slice(&v[s * lmax * width..][..len * width]);
    }
    out
}

/// Compare every `grad.<name>` of the fixture with the model's parameter gradients.
/// Assert a relative error against the fixture and print it (`--nocapture` shows the
/// measured parity).
fn check(e: f64, what: &str) {
    eprintln!("{what}: relative error {e:.2e}");
    assert!(e < TOL, "{what} error {e:.2e}");
}

fn check_param_grads(model: &SequenceClassifier, grads: &Grads, exp: &Expected) {
    let (mut checked, mut worst) = (0, 0f64);
    for (name, t) in model.params.iter() {
        let key = format!("grad.{name}");
        if !exp.has(&key) {
            assert!(name.starts_with("classifier") || name.contains("contact_head"), "fixture lacks {key}");
            continue;
        }
        let (want, _) = exp.f32(&key);
        let got = match grads.get(t) {
            Some(g) => g.to_vec_f32().unwrap(),
            None => vec![0.0; t.numel()],
        };
        let zero = want.iter().all(|&x| x == 0.0);
        let err = if zero { got.iter().map(|x| x.abs() as f64).fold(0.0, f64::max) } else { rel_err(&got, &want) };
        assert!(err < TOL, "{name}: gradient error {err:.2e}");
        worst = worst.max(err);
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} gradients compared");
    eprintln!("{checked} parameter gradients: worst relative error {worst:.2e}");
}

#[test]
fn classification_logits_loss_hidden_attention_and_gradients_match_pytorch() {
    let exp = Expected::open("expected_cls.safetensors");
    let model = load();
    let b = exp.batch();
    let inp = inputs(&model, &b);

    // Hidden states and first-layer attention (inference, no tape).
    let enc = model.esm.forward(&model.params, &Tape::inference(), &inp, true).unwrap();
    let (hid, hshape) = exp.f32("last_hidden_state");
    let want_h = unpad(&hid, &b, hshape[1], hshape[2]);
    let e = rel_err(&enc.hidden.to_vec_f32().unwrap(), &want_h);
    check(e, "last_hidden_state");
    let (attn, ashape) = exp.f32("attn0");
    let (heads, lmax) = (ashape[1], ashape[2]);
    let mut want_a = Vec::new();
    for s in 0..b.n_seqs() {
        let len = (b.cu_seqlens[s + 1] - b.cu_seqlens[s]) as usize;
        for h in 0..heads {
            for i in 0..len {
                want_a.extend_from_slice(&attn[((s * heads + h) * lmax + i) * lmax..][..len]);
            }
        }
    }
    let e = rel_err(&enc.attention_probs[0].to_vec_f32().unwrap(), &want_a);
    check(e, "attention");

    // Logits, loss and every parameter gradient.
    let tape = Tape::new();
    let (logits, loss) = model.forward_loss(&tape, &inp, None).unwrap();
    let e = rel_err(&logits.to_vec_f32().unwrap(), &exp.f32("logits").0);
    check(e, "logits");
    // Inference runs the last layer for the <cls> rows only: the same logits.
    let e = rel_err(&model.forward(&Tape::inference(), &inp).unwrap().to_vec_f32().unwrap(), &exp.f32("logits").0);
    check(e, "logits (inference: the last layer for <cls> only)");
    let e = rel_err(&loss.to_vec_f32().unwrap(), &exp.f32("loss").0);
    check(e, "loss");
    let mut grads = Grads::new();
    tape.backward(&loss, &mut grads).unwrap();
    check_param_grads(&model, &grads, &exp);
}

/// The `<cls>`-only last layer of inference against the whole encoder's `<cls>` rows, on
/// sequences that start past position 0 (a window of a long protein keeps its offset: the
/// `<cls>` query must rotate by its own position, not 0, for the relative angles to the keys
/// to stay right), with a length-1 sequence.
#[test]
fn inference_runs_the_last_layer_for_cls_rows_only_with_the_same_result() {
    let model = load();
    let mut b = PackedBatch::new();
    let seqs = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "GSHMLEDPVDAFQQVLRKGGNWQKLLE", "M"];
    for (i, (s, offset)) in seqs.iter().zip([0, 17, 300]).enumerate() {
        b.push(&qf_engine::data::tokenizer::encode_ids(s).unwrap(), offset, None, i);
    }
    let inp = inputs(&model, &b);
    let tape = Tape::inference();
    let enc = model.esm.forward(&model.params, &tape, &inp, false).unwrap();
    let whole = ops::gather_rows(&tape, &enc.hidden, &inp.cls_rows).unwrap().to_vec_f32().unwrap();
    let pruned = model.esm.forward_cls(&model.params, &tape, &inp).unwrap();
    assert_eq!(pruned.shape(), &[3, model.config().hidden_size]);
    let e = rel_err(&pruned.to_vec_f32().unwrap(), &whole);
    assert!(e < 1e-6, "<cls>-only last layer differs from the whole encoder's <cls> rows by {e:.2e}");
}

#[test]
fn weighted_cross_entropy_matches_pytorch() {
    let exp = Expected::open("expected_cls.safetensors");
    let (logits, shape) = exp.f32("logits");
    let logits = Tensor::from_vec(logits, &shape).unwrap().with_requires_grad(true);
    let labels: Vec<i32> = exp.i64("labels").0.iter().map(|&l| l as i32).collect();
    let labels = Tensor::from_vec(labels, &[shape[0]]).unwrap();
    let (w, ws) = exp.f32("class_weights");
    let w = Tensor::from_vec(w, &ws).unwrap();
    let tape = Tape::new();
    let loss = ops::cross_entropy(&tape, &logits, &labels, Some(&w)).unwrap();
    let e = rel_err(&loss.to_vec_f32().unwrap(), &exp.f32("weighted_loss").0);
    check(e, "weighted loss");
    let mut grads = Grads::new();
    tape.backward(&loss, &mut grads).unwrap();
    let e = rel_err(&grads.get(&logits).unwrap().to_vec_f32().unwrap(), &exp.f32("weighted_dlogits").0);
    check(e, "weighted dlogits");
}

#[test]
fn token_dropout_with_mask_tokens_matches_pytorch() {
    let exp = Expected::open("expected_mask.safetensors");
    let model = load();
    let b = exp.batch();
    assert!(b.tokens.contains(&32), "fixture must contain <mask> tokens");
    let inp = inputs(&model, &b);
    let tape = Tape::new();
    let (logits, loss) = model.forward_loss(&tape, &inp, None).unwrap();
    let e = rel_err(&logits.to_vec_f32().unwrap(), &exp.f32("logits").0);
    check(e, "logits");
    // Inference runs the last layer for the <cls> rows only: the same logits.
    let e = rel_err(&model.forward(&Tape::inference(), &inp).unwrap().to_vec_f32().unwrap(), &exp.f32("logits").0);
    check(e, "logits (inference: the last layer for <cls> only)");
    let e = rel_err(&loss.to_vec_f32().unwrap(), &exp.f32("loss").0);
    check(e, "loss");
    let mut grads = Grads::new();
    tape.backward(&loss, &mut grads).unwrap();
    check_param_grads(&model, &grads, &exp);
}

#[test]
fn contact_predictions_and_gradients_match_pytorch() {
    let exp = Expected::open("expected_contacts.safetensors");
    let mut model = load();
    // The contact head is frozen in a classifier; this test trains through it.
    model.params.set_trainable(model.contact.weight, true);
    model.params.set_trainable(model.contact.bias, true);
    let b = exp.batch();
    let inp = inputs(&model, &b);
    let tape = Tape::new();
    let enc = model.esm.forward(&model.params, &tape, &inp, true).unwrap();
    let logits = model.contact.forward(&model.params, &tape, &enc.attention_probs, &inp.layout).unwrap();
    let (contacts, cshape) = exp.f32("contacts");
    let (r, _) = exp.f32("R");
    let lmax = cshape[1];
    // Expected probabilities and R at each sequence's L'×L' block.
    let (mut want, mut seed) = (Vec::new(), Vec::new());
    for s in 0..b.n_seqs() {
        let lp = (b.cu_seqlens[s + 1] - b.cu_seqlens[s]) as usize - 2;
        for i in 0..lp {
            want.extend_from_slice(&contacts[(s * lmax + i) * lmax..][..lp]);
            seed.extend_from_slice(&r[(s * lmax + i) * lmax..][..lp]);
        }
    }
    let got: Vec<f32> = logits.to_vec_f32().unwrap().iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect();
    let e = rel_err(&got, &want);
    check(e, "contact probabilities");
    // loss = Σ sigmoid(logit)·R  ⇒  ∂loss/∂logit = R·p·(1 − p)
    let g: Vec<f32> = got.iter().zip(&seed).map(|(&p, &r)| r * p * (1.0 - p)).collect();
    let mut grads = Grads::new();
    tape.backward_from(&logits, Tensor::from_vec(g, logits.shape()).unwrap(), &mut grads).unwrap();
    check_param_grads(&model, &grads, &exp);
}

#[test]
fn packed_batch_equals_sequences_one_by_one() {
    let exp = Expected::open("expected_cls.safetensors");
    let model = load();
    let b = exp.batch();
    let packed = model.forward(&Tape::inference(), &inputs(&model, &b)).unwrap().to_vec_f32().unwrap();
    let c = model.n_classes();
    for s in 0..b.n_seqs() {
        let toks = &b.tokens[b.cu_seqlens[s] as usize..b.cu_seqlens[s + 1] as usize];
        let mut one = PackedBatch::new();
        one.push(toks, 0, Some(b.labels[s]), s);
        let alone = model.forward(&Tape::inference(), &inputs(&model, &one)).unwrap().to_vec_f32().unwrap();
        let e = rel_err(&alone, &packed[s * c..(s + 1) * c]);
        assert!(e < 1e-6, "sequence {s}: packed vs alone error {e:.2e}");
    }
}

#[test]
fn esm_model_layout_without_prefix_and_gamma_beta_names_loads_the_same_encoder() {
    // The same weights as a bare `EsmModel` file: no `esm.` prefix, no classifier, and
    // LayerNorm parameters named gamma/beta as transformers 5's save_pretrained writes them.
    use qf_engine::model::checkpoint::{view_to_f32, write_safetensors, NamedTensor};
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("esm_tiny/config.json"), tmp.path().join("config.json")).unwrap();
    let src = MappedSafetensors::open(&fixture("esm_tiny/model.safetensors")).unwrap();
    let mut out = Vec::new();
    for name in src.names().unwrap() {
        let Some(bare) = name.strip_prefix("esm.") else { continue };
        let bare = bare.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta");
        let (v, shape) = src.with_view(&name, |t| Ok((view_to_f32(t)?, t.shape().to_vec()))).unwrap();
        out.push(NamedTensor::f32(bare, &shape, &v));
    }
    write_safetensors(&tmp.path().join("model.safetensors"), &out, None).unwrap();

    let labels: Vec<String> = (0..5).map(|i| format!("LABEL_{i}")).collect();
    let (m, report) =
        SequenceClassifier::from_pretrained(tmp.path(), Some(labels), HeadKind::Classification, 0.0, 0).unwrap();
    assert!(report.fresh.iter().all(|n| n.starts_with("classifier")), "{:?}", report.fresh);
    let exp = Expected::open("expected_cls.safetensors");
    let b = exp.batch();
    let enc = m.esm.forward(&m.params, &Tape::inference(), &inputs(&m, &b), false).unwrap();
    let (hid, hshape) = exp.f32("last_hidden_state");
    let e = rel_err(&enc.hidden.to_vec_f32().unwrap(), &unpad(&hid, &b, hshape[1], hshape[2]));
    check(e, "last_hidden_state");
}
