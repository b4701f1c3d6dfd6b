//! Every op's backward against central finite differences in f64, on random shapes with
//! odd sizes and several packed sequences of different lengths.

mod common;

use common::gradcheck::{check, param};
use common::TestRng;
use qf_engine::ops::{self, SeqLayout};
use qf_engine::{Device, Tensor};

const TOL: f64 = 1e-6;

fn ints(v: &[i32]) -> Tensor {
    Tensor::from_vec(v.to_vec(), &[v.len()]).unwrap()
}

#[test]
fn linear_with_and_without_bias() {
    let mut rng = TestRng::new(1);
    let (x, w, b) = (param(&mut rng, &[7, 5], 1.0), param(&mut rng, &[3, 5], 0.5), param(&mut rng, &[3], 0.5));
    let f = |t: &qf_engine::Tape, i: &[Tensor]| Ok(vec![ops::linear(t, &i[0], &i[1], Some(&i[2]))?]);
    assert!(check(&f, &[x.clone(), w.clone(), b], &mut rng, 1e-6, 100) < TOL);
    let g = |t: &qf_engine::Tape, i: &[Tensor]| Ok(vec![ops::linear(t, &i[0], &i[1], None)?]);
    assert!(check(&g, &[x, w], &mut rng, 1e-6, 100) < TOL);
}

#[test]
fn linear_skips_frozen_inputs() {
    let mut rng = TestRng::new(2);
    let x = param(&mut rng, &[4, 6], 1.0);
    let w = param(&mut rng, &[5, 6], 0.5).with_requires_grad(false);
    let f = |t: &qf_engine::Tape, i: &[Tensor]| Ok(vec![ops::linear(t, &i[0], &i[1], None)?]);
    assert!(check(&f, &[x, w], &mut rng, 1e-6, 100) < TOL);
}

#[test]
fn layer_norm() {
    let mut rng = TestRng::new(3);
    let x = param(&mut rng, &[9, 13], 2.0);
    let (w, b) = (param(&mut rng, &[13], 1.0), param(&mut rng, &[13], 1.0));
    let f = |t: &qf_engine::Tape, i: &[Tensor]| Ok(vec![ops::layer_norm(t, &i[0], &i[1], &i[2], 1e-5)?]);
    assert!(check(&f, &[x, w, b], &mut rng, 1e-6, 200) < TOL);
}

#[test]
fn bias_gelu_and_tanh() {
    let mut rng = TestRng::new(4);
    let (x, b) = (param(&mut rng, &[6, 11], 1.5), param(&mut rng, &[11], 1.0));
    let f = |t: &qf_engine::Tape, i: &[Tensor]| Ok(vec![ops::bias_gelu(t, &i[0], Some(&i[1]))?]);
    assert!(check(&f, &[x.clone(), b], &mut rng, 1e-6, 200) < TOL);
    let g = |t: &qf_engine::Tape, i: &[Tensor]| Ok(vec![ops::bias_gelu(t, &i[0], None)?, ops::tanh(t, &i[0])?]);
    assert!(check(&g, &[x], &mut rng, 1e-6, 200) < TOL);
}

#[test]
fn add_and_scale_share_gradients() {
    let mut rng = TestRng::new(5);
    let (a, b) = (param(&mut rng, &[3, 7], 1.0), param(&mut rng, &[3, 7], 1.0));
    // `a` is used twice: the gradient buffers must accumulate, not overwrite.
    let f = |t: &qf_engine::Tape, i: &[Tensor]| {
        let s = ops::add(t, &i[0], &i[1])?;
        let s2 = ops::scale(t, &s, -1.7)?;
        Ok(vec![ops::add(t, &s2, &i[0])?])
    };
    assert!(check(&f, &[a, b], &mut rng, 1e-6, 100) < TOL);
}

#[test]
fn embedding_with_row_scale_and_repeated_ids() {
    let mut rng = TestRng::new(6);
    let w = param(&mut rng, &[33, 7], 1.0);
    let ids = ints(&[0, 5, 5, 32, 2, 9, 5]);
    let scale = Tensor::from_vec(vec![0.88, 0.9, 1.1, 0.0, 0.88, 1.0, 0.5], &[7]).unwrap();
    let f = move |t: &qf_engine::Tape, i: &[Tensor]| Ok(vec![ops::embedding(t, &ids, &i[0], &scale)?]);
    assert!(check(&f, &[w], &mut rng, 1e-6, 300) < TOL);
}

#[test]
fn gather_rows_scatters_back() {
    let mut rng = TestRng::new(7);
    let x = param(&mut rng, &[10, 5], 1.0);
    let rows = ints(&[0, 4, 9]);
    let f = move |t: &qf_engine::Tape, i: &[Tensor]| Ok(vec![ops::gather_rows(t, &i[0], &rows)?]);
    assert!(check(&f, &[x], &mut rng, 1e-6, 100) < TOL);
}

#[test]
fn mean_pool_over_residues_of_packed_sequences() {
    let mut rng = TestRng::new(17);
    // Sequences of 3 (one residue), 7 and 5 tokens.
    let x = param(&mut rng, &[15, 6], 1.0);
    let layout = ops::SeqLayout::new(&[0, 3, 10, 15], &qf_engine::Device::Cpu).unwrap();
    let f = move |t: &qf_engine::Tape, i: &[Tensor]| Ok(vec![ops::mean_pool(t, &i[0], &layout)?]);
    assert!(check(&f, std::slice::from_ref(&x), &mut rng, 1e-6, 100) < TOL);
    // The <cls> and <eos> rows get no gradient; a residue gets dout / n.
    let tape = qf_engine::Tape::new();
    let layout = ops::SeqLayout::new(&[0, 3, 10, 15], &qf_engine::Device::Cpu).unwrap();
    let y = ops::mean_pool(&tape, &x, &layout).unwrap();
    let mut grads = qf_engine::Grads::new();
    let ones = Tensor::from_vec(vec![1.0f64; 18], &[3, 6]).unwrap();
    tape.backward_from(&y, ones, &mut grads).unwrap();
    let g = grads.get(&x).unwrap().to_vec_f64().unwrap();
    for (row, want) in
        [(0, 0.0), (1, 1.0), (2, 0.0), (3, 0.0), (4, 0.2), (8, 0.2), (9, 0.0), (10, 0.0), (12, 1.0 / 3.0), (14, 0.0)]
    {
        assert!(g[row * 6..][..6].iter().all(|&v| (v - want).abs() < 1e-12), "row {row}: {:?}", &g[row * 6..][..6]);
    }
}

#[test]
fn rotary_with_offsets() {
    let mut rng = TestRng::new(8);
    let x = param(&mut rng, &[9, 3 * 6], 1.0);
    let pos = ints(&[0, 1, 2, 3, 117, 118, 119, 1020, 1021]);
    let f = move |t: &qf_engine::Tape, i: &[Tensor]| Ok(vec![ops::rotary(t, &i[0], &pos, 3, 0.37)?]);
    assert!(check(&f, &[x], &mut rng, 1e-6, 200) < TOL);
}

#[test]
fn attention_over_packed_sequences_with_probs_gradient() {
    let mut rng = TestRng::new(9);
    let cu = [0u32, 5, 6, 13, 16];
    let layout = SeqLayout::new(&cu, &Device::Cpu).unwrap();
    let (heads, d) = (3, 4);
    let q = param(&mut rng, &[16, heads * d], 1.0);
    let k = param(&mut rng, &[16, heads * d], 1.0);
    let v = param(&mut rng, &[16, heads * d], 1.0);
    let f = move |t: &qf_engine::Tape, i: &[Tensor]| {
        let (o, p) = ops::attention(t, &i[0], &i[1], &i[2], &layout, heads, 0.6, true)?;
        Ok(vec![o, p.unwrap()])
    };
    assert!(check(&f, &[q, k, v], &mut rng, 1e-6, 400) < TOL);
}

#[test]
fn attention_with_only_some_inputs_trainable() {
    let mut rng = TestRng::new(10);
    let layout = SeqLayout::new(&[0, 4, 11], &Device::Cpu).unwrap();
    let q = param(&mut rng, &[11, 8], 1.0);
    let k = param(&mut rng, &[11, 8], 1.0).with_requires_grad(false);
    let v = param(&mut rng, &[11, 8], 1.0);
    let f = move |t: &qf_engine::Tape, i: &[Tensor]| {
        Ok(vec![ops::attention(t, &i[0], &i[1], &i[2], &layout, 2, 1.0, false)?.0])
    };
    assert!(check(&f, &[q, k, v], &mut rng, 1e-6, 200) < TOL);
}

/// Positions of a batch: sequence starts at a crop offset (a crop keeps its true residue
/// positions), `<cls>` one before.
fn crop_positions(cu: &[u32], offsets: &[i32]) -> Tensor {
    let mut pos = Vec::new();
    for (w, &off) in cu.windows(2).zip(offsets) {
        pos.extend((0..(w[1] - w[0]) as i32).map(|i| off + i));
    }
    ints(&pos)
}

#[test]
fn flash_attention_with_rotary_and_probs_gradient() {
    let mut rng = TestRng::new(20);
    let cu = [0u32, 5, 6, 13, 16];
    let layout = SeqLayout::new(&cu, &Device::Cpu).unwrap();
    let positions = crop_positions(&cu, &[0, 7, 130, 2]);
    let (heads, d) = (3, 4);
    let q = param(&mut rng, &[16, heads * d], 1.0);
    let k = param(&mut rng, &[16, heads * d], 1.0);
    let v = param(&mut rng, &[16, heads * d], 1.0);
    let f = move |t: &qf_engine::Tape, i: &[Tensor]| {
        let (o, p) = ops::flash_attention(t, &i[0], &i[1], &i[2], &positions, &layout, heads, 0.6, true)?;
        Ok(vec![o, p.unwrap()])
    };
    assert!(check(&f, &[q, k, v], &mut rng, 1e-6, 400) < TOL);
}

#[test]
fn flash_attention_with_only_some_inputs_trainable() {
    let mut rng = TestRng::new(21);
    let cu = [0u32, 4, 11];
    let layout = SeqLayout::new(&cu, &Device::Cpu).unwrap();
    let positions = crop_positions(&cu, &[3, 0]);
    let q = param(&mut rng, &[11, 8], 1.0);
    let k = param(&mut rng, &[11, 8], 1.0).with_requires_grad(false);
    let v = param(&mut rng, &[11, 8], 1.0);
    let f = move |t: &qf_engine::Tape, i: &[Tensor]| {
        Ok(vec![ops::flash_attention(t, &i[0], &i[1], &i[2], &positions, &layout, 2, 0.5, false)?.0])
    };
    assert!(check(&f, &[q, k, v], &mut rng, 1e-6, 200) < TOL);
}

/// The fused op is `rotary(q)·c_q`, `rotary(k)`, then attention with scale 1: outputs,
/// probabilities and all three gradients agree in f64 to rounding.
#[test]
fn flash_attention_is_rotary_then_attention() {
    let mut rng = TestRng::new(22);
    let cu = [0u32, 1, 9, 30];
    let layout = SeqLayout::new(&cu, &Device::Cpu).unwrap();
    let positions = crop_positions(&cu, &[0, 40, 1000]);
    let (heads, d, c_q) = (2, 6, 6f64.powf(-0.5));
    let ins: Vec<Tensor> = (0..3).map(|_| param(&mut rng, &[30, heads * d], 1.0)).collect();
    let seeds = [rng.normals(30 * heads * d, 1.0), rng.normals(2 * (1 + 64 + 441), 1.0)];
    let run = |fused: bool| -> Vec<Vec<f64>> {
        let tape = qf_engine::Tape::new();
        let (o, p) = if fused {
            ops::flash_attention(&tape, &ins[0], &ins[1], &ins[2], &positions, &layout, heads, c_q, true).unwrap()
        } else {
            let q = ops::rotary(&tape, &ins[0], &positions, heads, c_q).unwrap();
            let k = ops::rotary(&tape, &ins[1], &positions, heads, 1.0).unwrap();
            ops::attention(&tape, &q, &k, &ins[2], &layout, heads, 1.0, true).unwrap()
        };
        let p = p.unwrap();
        let mut out = vec![o.to_vec_f64().unwrap(), p.to_vec_f64().unwrap()];
        let roots = [
            (&o, Tensor::from_vec(seeds[0].clone(), o.shape()).unwrap()),
            (&p, Tensor::from_vec(seeds[1].clone(), p.shape()).unwrap()),
        ];
        let mut grads = qf_engine::Grads::new();
        tape.backward_from_many(&roots, &mut grads).unwrap();
        out.extend(ins.iter().map(|x| grads.get(x).unwrap().to_vec_f64().unwrap()));
        out
    };
    let (fused, unfused) = (run(true), run(false));
    for (what, (a, b)) in ["out", "probs", "dq", "dk", "dv"].iter().zip(fused.iter().zip(&unfused)) {
        let err = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
        assert!(err <= 1e-12 * scale.max(1.0), "{what}: fused and unfused differ by {err:e}");
    }
}

#[test]
fn weighted_cross_entropy_with_ignored_rows() {
    let mut rng = TestRng::new(11);
    let logits = param(&mut rng, &[6, 7], 2.0);
    let labels = ints(&[3, -100, 0, 6, 3, 1]);
    let w = Tensor::from_vec(vec![0.5f32, 2.0, 1.0, 3.0, 0.25, 1.0, 1.5], &[7]).unwrap();
    let f = move |t: &qf_engine::Tape, i: &[Tensor]| Ok(vec![ops::cross_entropy(t, &i[0], &labels, Some(&w))?]);
    assert!(check(&f, &[logits], &mut rng, 1e-6, 100) < TOL);
}

#[test]
fn bce_with_mask() {
    let mut rng = TestRng::new(12);
    let logits = param(&mut rng, &[4, 5], 2.0);
    let targets = Tensor::from_vec((0..20).map(|i| (i % 3 == 0) as i32 as f64).collect(), &[4, 5]).unwrap();
    let mask = Tensor::from_vec((0..20).map(|i| (i % 4 != 1) as i32 as f64).collect(), &[4, 5]).unwrap();
    let f = move |t: &qf_engine::Tape, i: &[Tensor]| Ok(vec![ops::bce_with_logits(t, &i[0], &targets, &mask)?]);
    assert!(check(&f, &[logits], &mut rng, 1e-6, 100) < TOL);
}

#[test]
fn cross_entropy_matches_a_hand_computed_value() {
    // logits [[0, ln 3]], label 1: p = 3/4, loss = −ln(3/4).
    let logits = Tensor::from_vec(vec![0.0f64, 3f64.ln()], &[1, 2]).unwrap();
    let loss = ops::cross_entropy(&qf_engine::Tape::inference(), &logits, &ints(&[1]), None).unwrap();
    assert!((loss.to_vec_f64().unwrap()[0] - (4.0f64 / 3.0).ln()).abs() < 1e-12);
}

#[test]
fn bad_inputs_are_errors() {
    let t = qf_engine::Tape::inference();
    let x = Tensor::from_vec(vec![0.0f32; 6], &[2, 3]).unwrap();
    let w = Tensor::from_vec(vec![0.0f32; 8], &[2, 4]).unwrap();
    let e = ops::linear(&t, &x, &w, None).unwrap_err().to_string();
    assert!(e.contains("input has 3 features but the weight [2, 4] expects 4"), "{e}");
    let e = ops::cross_entropy(&t, &x, &ints(&[0, 7]), None).unwrap_err().to_string();
    assert!(e.contains("label 7 is outside 0..3"), "{e}");
    let table = Tensor::from_vec(vec![0.0f32; 6], &[2, 3]).unwrap();
    let s = Tensor::from_vec(vec![1.0f32], &[1]).unwrap();
    let e = ops::embedding(&t, &ints(&[2]), &table, &s).unwrap_err().to_string();
    assert!(e.contains("token id 2 is outside the vocabulary of 2"), "{e}");
}

#[test]
fn dropout_with_a_fixed_mask() {
    let mut rng = TestRng::new(13);
    let x = param(&mut rng, &[7, 9], 1.0);
    let f = |t: &qf_engine::Tape, i: &[Tensor]| Ok(vec![ops::dropout(t, &i[0], 0.3)?]);
    assert!(check(&f, std::slice::from_ref(&x), &mut rng, 1e-6, 100) < TOL);
    // The mask is real: some elements are dropped, the rest scaled by 1/(1 − p).
    let y = ops::dropout(&qf_engine::Tape::new(), &x, 0.3).unwrap().to_vec_f64().unwrap();
    let xs = x.to_vec_f64().unwrap();
    let dropped = y.iter().filter(|&&v| v == 0.0).count();
    assert!(dropped > 5 && dropped < 40, "{dropped} of 63 dropped");
    // The scale is the fp32 value of 1/(1 − p), as the CUDA kernel computes it.
    let scale = (1.0f32 / (1.0f32 - 0.3f32)) as f64;
    for (a, b) in y.iter().zip(&xs) {
        assert!(*a == 0.0 || (a - b * scale).abs() < 1e-12, "{a} vs {b}");
    }
}

#[test]
fn contact_head_symmetrisation_apc_and_regression() {
    // Two layers × two heads of attention maps for sequences of 6 and 8 tokens
    // (<cls> + residues + <eos>); any values will do for a gradient check.
    let mut rng = TestRng::new(14);
    let layout = SeqLayout::new(&[0, 6, 14], &Device::Cpu).unwrap();
    let per_layer = 2 * (6 * 6 + 8 * 8);
    let p0 =
        Tensor::from_vec(rng.normals(per_layer, 1.0).iter().map(|v| v.abs() + 0.1).collect::<Vec<f64>>(), &[per_layer])
            .unwrap()
            .with_requires_grad(true);
    let p1 =
        Tensor::from_vec(rng.normals(per_layer, 1.0).iter().map(|v| v.abs() + 0.1).collect::<Vec<f64>>(), &[per_layer])
            .unwrap()
            .with_requires_grad(true);
    let w = param(&mut rng, &[1, 4], 1.0);
    let b = param(&mut rng, &[1], 1.0);
    let f = move |t: &qf_engine::Tape, i: &[Tensor]| {
        Ok(vec![ops::contact_head(t, &[i[0].clone(), i[1].clone()], &layout, 2, &i[2], &i[3])?])
    };
    assert!(check(&f, &[p0, p1, w, b], &mut rng, 1e-6, 300) < TOL);
}
