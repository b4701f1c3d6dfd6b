//! Activation recomputation (`autograd::checkpoint`, `--recompute layer`): gradients are
//! bit-identical to the plain backward pass — for a generic block with dropout inside and
//! after it, for ESM-2 classification (with LoRA dropout inside every layer), and for the
//! contact head, whose attention probabilities are outputs of the recomputed layers.

mod common;
mod cuda_common;
mod kernel_emu;

use common::TestRng;
use qf_engine::autograd::{checkpoint, Grads, Tape};
use qf_engine::data::batch::PackedBatch;
use qf_engine::data::rng::Rng;
use qf_engine::model::esm2::Recompute;
use qf_engine::model::lora::{LoraAdapter, LoraConfig};
use qf_engine::model::{EsmConfig, HeadKind, ModelInputs, SequenceClassifier};
use qf_engine::ops;
use qf_engine::{DType, Device, Tensor};

fn tensor(rng: &mut TestRng, shape: &[usize], std: f64, grad: bool) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = rng.normals(n, std).into_iter().map(|x| x as f32).collect();
    Tensor::from_vec(v, shape).unwrap().with_requires_grad(grad)
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec_f32().unwrap().iter().map(|x| x.to_bits()).collect()
}

/// Every gradient of `ts`, bitwise equal in both stores (and present in both or neither).
fn assert_same_grads(names: &[String], ts: &[Tensor], a: &Grads, b: &Grads) -> usize {
    let mut compared = 0;
    for (name, t) in names.iter().zip(ts) {
        match (a.get(t), b.get(t)) {
            (Some(ga), Some(gb)) => {
                assert_eq!(bits(ga), bits(gb), "gradient of `{name}` differs with recomputation");
                compared += 1;
            }
            (None, None) => {}
            (ga, gb) => {
                panic!("`{name}`: gradient present {} without, {} with recomputation", ga.is_some(), gb.is_some())
            }
        }
    }
    compared
}

/// `x + W2·dropout(gelu(W1·LN(x) + b1))` — a transformer-style block with dropout inside.
fn block(tape: &Tape, x: &Tensor, w: &[Tensor]) -> anyhow::Result<Tensor> {
    let h = ops::layer_norm(tape, x, &w[0], &w[1], 1e-5)?;
    let f = ops::linear(tape, &h, &w[2], None)?;
    let f = ops::bias_gelu(tape, &f, Some(&w[3]))?;
    let f = ops::dropout(tape, &f, 0.3)?;
    let f = ops::linear(tape, &f, &w[4], Some(&w[5]))?;
    ops::add(tape, x, &f)
}

#[test]
fn checkpointed_block_gives_bit_identical_gradients_with_dropout() {
    let mut rng = TestRng::new(11);
    let (n, d, f) = (13, 24, 40);
    let w = vec![
        tensor(&mut rng, &[d], 0.1, true),
        tensor(&mut rng, &[d], 0.1, true),
        tensor(&mut rng, &[f, d], 0.2, true),
        tensor(&mut rng, &[f], 0.1, true),
        tensor(&mut rng, &[d, f], 0.2, true),
        tensor(&mut rng, &[d], 0.1, true),
    ];
    let x0 = tensor(&mut rng, &[n, d], 1.0, true);
    let run = |recompute: bool| -> (Grads, Vec<u32>) {
        let tape = Tape::with_seed(99);
        let mut x = x0.clone();
        for _ in 0..3 {
            x = if recompute {
                let ws = w.clone();
                checkpoint(&tape, "block", &[x], move |t, xs| Ok(vec![block(t, &xs[0], &ws)?])).unwrap().remove(0)
            } else {
                block(&tape, &x, &w).unwrap()
            };
        }
        // A dropout after the blocks: the parent's stream must have moved past theirs.
        let y = ops::dropout(&tape, &x, 0.5).unwrap();
        let out = bits(&y);
        let seed = Tensor::from_vec(rng_seed(n * d), &[n, d]).unwrap();
        let mut grads = Grads::new();
        tape.backward_from(&y, seed, &mut grads).unwrap();
        (grads, out)
    };
    let (plain, out_plain) = run(false);
    let (recomputed, out_rec) = run(true);
    assert_eq!(out_plain, out_rec, "forward outputs differ");
    let mut all = w.clone();
    all.push(x0.clone());
    let names: Vec<String> = (0..all.len()).map(|i| format!("input {i}")).collect();
    assert_eq!(assert_same_grads(&names, &all, &plain, &recomputed), all.len());
}

fn rng_seed(n: usize) -> Vec<f32> {
    let mut r = TestRng::new(5);
    r.normals(n, 1.0).into_iter().map(|x| x as f32).collect()
}

#[test]
fn checkpoint_on_an_inference_tape_just_runs_the_block() {
    let tape = Tape::inference();
    let x = Tensor::from_vec(vec![1f32, 2.0, 3.0], &[1, 3]).unwrap();
    let y = checkpoint(&tape, "scale", &[x], |t, xs| Ok(vec![ops::scale(t, &xs[0], 2.0)?])).unwrap();
    assert_eq!(y[0].to_vec_f32().unwrap(), vec![2.0, 4.0, 6.0]);
    assert!(tape.is_empty());
}

/// Four sequences of different lengths (random residues), packed.
fn batch(rng: &mut TestRng, n_classes: u32) -> PackedBatch {
    let mut b = PackedBatch::new();
    for (r, len) in [23usize, 9, 31, 14].into_iter().enumerate() {
        let mut toks = vec![0u32];
        toks.extend((0..len).map(|_| 4 + rng.below(20) as u32));
        toks.push(2);
        b.push(&toks, 0, Some(r as u32 % n_classes), r);
    }
    b
}

/// A tiny ESM-2 classifier with LoRA (dropout 0.1, non-zero B) on query and value of every
/// layer, head dropout, and a trainable contact head.
fn model() -> SequenceClassifier {
    let cfg = EsmConfig::preset("esm2_tiny").unwrap();
    let labels = (0..5).map(|i| format!("c{i}")).collect();
    let mut m = SequenceClassifier::new_random(&cfg, labels, HeadKind::Classification, 0.1, 3).unwrap();
    let lcfg = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.1, targets: vec!["query".into(), "value".into()] };
    let mut rng = Rng::new(17);
    let h = cfg.hidden_size;
    for i in 0..cfg.num_hidden_layers {
        for (target, prefix) in [("query", "attention.self.query"), ("value", "attention.self.value")] {
            let name = format!("esm.encoder.layer.{i}.{prefix}");
            let a = LoraAdapter::new(&mut m.params, &name, h, h, &lcfg, &mut rng).unwrap();
            // B starts at zero in LoRA; make it non-zero so the adapter path carries gradient.
            let b: Vec<f32> = (0..h * lcfg.rank).map(|_| (rng.next_f64() as f32 - 0.5) * 0.1).collect();
            m.params.set(a.b, Tensor::from_vec(b, &[h, lcfg.rank]).unwrap()).unwrap();
            let layer = &mut m.esm.layers[i];
            match target {
                "query" => layer.query.lora = Some(a),
                _ => layer.value.lora = Some(a),
            }
        }
    }
    m.params.set_trainable(m.contact.weight, true);
    m.params.set_trainable(m.contact.bias, true);
    m
}

/// Loss and gradients of one training step: classification cross-entropy, plus (when
/// `contacts`) a BCE on the contact logits so that gradient flows into every layer's
/// attention probabilities.
fn step(m: &SequenceClassifier, b: &PackedBatch, recompute: Recompute, contacts: bool) -> (Grads, Vec<u32>, usize) {
    step_on(m, b, recompute, contacts, &Device::Cpu)
}

fn step_on(
    m: &SequenceClassifier,
    b: &PackedBatch,
    recompute: Recompute,
    contacts: bool,
    device: &Device,
) -> (Grads, Vec<u32>, usize) {
    let mut m = clone_model(m);
    m.esm.recompute = recompute;
    let inp = ModelInputs::new(b, m.config(), device, DType::F32).unwrap();
    let tape = Tape::with_seed(1234);
    let enc = m.esm.forward(&m.params, &tape, &inp, contacts).unwrap();
    assert_eq!(enc.attention_probs.len(), if contacts { m.config().num_hidden_layers } else { 0 });
    let cls = ops::gather_rows(&tape, &enc.hidden, &inp.cls_rows).unwrap();
    let logits = m.head.forward(&m.params, &tape, &cls).unwrap();
    let ce = ops::cross_entropy(&tape, &logits, inp.labels.as_ref().unwrap(), None).unwrap();
    let mut outputs = bits(&logits);
    let one = || Tensor::from_f32(vec![1f32], &[1], DType::F32, device).unwrap();
    let mut roots = vec![(ce.clone(), one())];
    if contacts {
        let c = m.contact.forward(&m.params, &tape, &enc.attention_probs, &inp.layout).unwrap();
        let targets: Vec<f32> = (0..c.numel()).map(|i| ((i * 7919) % 5 == 0) as u8 as f32).collect();
        let targets = Tensor::from_f32(targets, c.shape(), DType::F32, device).unwrap();
        let mask = Tensor::from_f32(vec![1f32; c.numel()], c.shape(), DType::F32, device).unwrap();
        let bce = ops::bce_with_logits(&tape, &c, &targets, &mask).unwrap();
        outputs.extend(bits(&c));
        roots.push((bce, one()));
    }
    let mut grads = Grads::new();
    let nodes = tape.len();
    let roots: Vec<(&Tensor, Tensor)> = roots.iter().map(|(t, s)| (t, s.clone())).collect();
    tape.backward_from_many(&roots, &mut grads).unwrap();
    (grads, outputs, nodes)
}

fn clone_model(m: &SequenceClassifier) -> SequenceClassifier {
    SequenceClassifier {
        params: m.params.clone(),
        esm: m.esm.clone(),
        head: m.head.clone(),
        contact: m.contact.clone(),
        labels: m.labels.clone(),
        pool: m.pool,
    }
}

fn check_model(contacts: bool) {
    let m = model();
    let b = batch(&mut TestRng::new(8), 5);
    let (plain, out_plain, nodes_plain) = step(&m, &b, Recompute::None, contacts);
    let (rec, out_rec, nodes_rec) = step(&m, &b, Recompute::Layer, contacts);
    // One node per layer instead of the layer's ops.
    let layers = m.config().num_hidden_layers;
    assert!(nodes_rec + layers * 20 <= nodes_plain, "{nodes_rec} nodes with recomputation, {nodes_plain} without");
    assert_eq!(out_plain, out_rec, "forward outputs differ with recomputation");
    let names: Vec<String> = m.params.iter().map(|(n, _)| n.to_string()).collect();
    let ts: Vec<Tensor> = m.params.iter().map(|(_, t)| t.clone()).collect();
    let compared = assert_same_grads(&names, &ts, &plain, &rec);
    let trainable = ts.iter().filter(|t| t.requires_grad()).count();
    // Every trainable parameter received a gradient (the contact head only with contacts).
    let expected = if contacts { trainable } else { trainable - 2 };
    assert_eq!(compared, expected, "parameters with gradients");
    let lora_b = m.params.by_name("esm.encoder.layer.0.attention.self.query.lora_B.weight").unwrap();
    assert!(plain.get(lora_b).unwrap().to_vec_f32().unwrap().iter().any(|&g| g != 0.0));
}

#[test]
fn esm_layer_recompute_gives_bit_identical_gradients() {
    check_model(false);
}

#[test]
fn esm_layer_recompute_with_attention_probabilities_gives_bit_identical_gradients() {
    check_model(true);
}

#[test]
fn recompute_mode_parses() {
    assert_eq!("layer".parse::<Recompute>().unwrap(), Recompute::Layer);
    assert_eq!("none".parse::<Recompute>().unwrap(), Recompute::None);
    let e = "block".parse::<Recompute>().unwrap_err().to_string();
    assert!(e.contains("none or layer"), "{e}");
}

/// The GPU (or, without one, the CPU emulation of CUDA), or `None` after printing why
/// the test is skipped.
fn cuda() -> Option<qf_engine::backend::cuda::CudaDevice> {
    cuda_common::open_cuda("recompute on CUDA")
}

/// On CUDA (fp32 compute) the recomputed forward is bit-identical (no forward kernel uses
/// atomics), but some backward kernels accumulate with float atomics whose order varies
/// from run to run, so gradients are compared at fp32 rounding level.
#[test]
fn esm_layer_recompute_on_cuda_matches_the_plain_backward() {
    let Some(dev) = cuda() else { return };
    let d = Device::Cuda(dev.clone());
    dev.set_compute_dtype(DType::F32).unwrap();
    let mut m = model();
    m.params.to_device(&d).unwrap();
    let b = batch(&mut TestRng::new(8), 5);
    for contacts in [false, true] {
        let (plain, out_plain, _) = step_on(&m, &b, Recompute::None, contacts, &d);
        let (rec, out_rec, _) = step_on(&m, &b, Recompute::Layer, contacts, &d);
        assert_eq!(out_plain, out_rec, "forward outputs differ with recomputation on CUDA");
        for (name, t) in m.params.iter() {
            match (plain.get(t), rec.get(t)) {
                (Some(a), Some(r)) => {
                    let e = common::rel_err(&r.to_vec_f32().unwrap(), &a.to_vec_f32().unwrap());
                    assert!(e <= 1e-5, "{name}: relative gradient difference {e:.2e}");
                }
                (None, None) => {}
                _ => panic!("{name}: gradient present in one run only"),
            }
        }
    }
}
