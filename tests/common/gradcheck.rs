//! Central finite-difference gradient checks in f64.
#![allow(dead_code)]

use anyhow::Result;
use qf_engine::{Grads, Tape, Tensor};

use super::TestRng;

/// A function of the inputs returning one or more outputs.
pub type OpFn<'a> = dyn Fn(&Tape, &[Tensor]) -> Result<Vec<Tensor>> + 'a;

/// Σ_o Σ_i out_o[i]·seed_o[i]: the scalar whose gradient the check compares.
fn weighted_sum(outs: &[Tensor], seeds: &[Vec<f64>]) -> f64 {
    outs.iter().zip(seeds).map(|(o, s)| o.to_vec_f64().unwrap().iter().zip(s).map(|(a, b)| a * b).sum::<f64>()).sum()
}

/// Check the analytic gradient of every input that requires a gradient against central
/// differences (step `h`) on up to `max_elems` elements per input; returns the worst
/// relative error ‖num − ana‖ / max(‖num‖, ‖ana‖).
pub fn check(f: &OpFn<'_>, inputs: &[Tensor], rng: &mut TestRng, h: f64, max_elems: usize) -> f64 {
    let tape = Tape::new();
    let outs = f(&tape, inputs).expect("forward");
    let seeds: Vec<Vec<f64>> = outs.iter().map(|o| rng.normals(o.numel(), 1.0)).collect();
    let roots: Vec<(&Tensor, Tensor)> =
        outs.iter().zip(&seeds).map(|(o, s)| (o, Tensor::from_vec(s.clone(), o.shape()).unwrap())).collect();
    let mut grads = Grads::new();
    tape.backward_from_many(&roots, &mut grads).expect("backward");
    let mut worst = 0.0f64;
    for (idx, x) in inputs.iter().enumerate() {
        if !x.requires_grad() {
            assert!(grads.get(x).is_none(), "input {idx} needs no gradient but got one");
            continue;
        }
        let ana = match grads.get(x) {
            Some(g) => g.to_vec_f64().unwrap(),
            None => vec![0.0; x.numel()],
        };
        let base = x.to_vec_f64().unwrap();
        let n = base.len();
        let picks: Vec<usize> =
            if n <= max_elems { (0..n).collect() } else { (0..max_elems).map(|_| rng.below(n)).collect() };
        let (mut num_sq, mut ana_sq, mut diff_sq) = (0.0, 0.0, 0.0);
        for &j in &picks {
            let eval = |delta: f64| {
                let mut v = base.clone();
                v[j] += delta;
                let mut ins = inputs.to_vec();
                ins[idx] = Tensor::from_vec(v, x.shape()).unwrap();
                // A recording tape with the same dropout seed as the analytic pass (an
                // inference tape would switch dropout off).
                let o = f(&Tape::new(), &ins).expect("forward");
                weighted_sum(&o, &seeds)
            };
            let num = (eval(h) - eval(-h)) / (2.0 * h);
            num_sq += num * num;
            ana_sq += ana[j] * ana[j];
            diff_sq += (num - ana[j]).powi(2);
        }
        let scale = num_sq.sqrt().max(ana_sq.sqrt()).max(1e-12);
        let rel = diff_sq.sqrt() / scale;
        eprintln!("input {idx}: |grad| {:.3e}, rel err {rel:.2e}", ana_sq.sqrt());
        worst = worst.max(rel);
    }
    worst
}

/// An f64 tensor of N(0, std²) values that requires a gradient.
pub fn param(rng: &mut TestRng, shape: &[usize], std: f64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec(rng.normals(n, std), shape).unwrap().with_requires_grad(true)
}
