//! The kernels against their scalar twin and against fp32 attention.

use super::*;

/// Values in [-2, 2).
fn random(len: usize, seed: u64) -> Vec<f32> {
    crate::backend::cpu::test_values(len, seed).into_iter().map(|v| (2.0 * v) as f32).collect()
}

/// Against the scalar twin on ragged sequences (length 1, lengths that are not whole
/// blocks, one longer than two blocks of keys) at ESM-2's head widths (16, 24, 32, 64)
/// and odd ones. Both round the same operands; what may differ is a softmax weight
/// whose fp32 value lies within the sums' rounding of a bf16 tie, which then rounds the
/// other way: one bf16 step (2⁻⁸ relative) of one weight. So nearly every output agrees
/// to fp32 rounding, and none is off by more than one such step.
#[test]
fn matches_the_scalar_twin_on_ragged_sequences() {
    if !supported() {
        eprintln!("skipped: this CPU has no AVX512-BF16");
        return;
    }
    let cu = [0usize, 1, 18, 57, 90, 131, 433];
    let n = cu[cu.len() - 1];
    for &(heads, d) in &[(2usize, 16usize), (3, 24), (2, 32), (1, 64), (2, 6), (1, 40)] {
        let dims = AttnDims { n_heads: heads, head_dim: d };
        let w = heads * d;
        let (q, k, v) = (random(n * w, 11), random(n * w, 12), random(n * w, 13));
        let mut got = vec![f32::NAN; n * w];
        forward_inference(&mut got, &q, &k, &v, &cu, dims, 0.7);
        let want = reference_inference(&q, &k, &v, &cu, dims, 0.7);
        let mut close = 0;
        for (i, (g, r)) in got.iter().zip(&want).enumerate() {
            // |v| < 2: one weight one bf16 step off moves an output by < 2·2⁻⁸.
            assert!((g - r).abs() < 2.0 / 256.0, "heads {heads} d {d} [{i}]: {g} vs {r}");
            close += usize::from((g - r).abs() <= 2e-6 * (1.0 + r.abs()));
        }
        assert!(close as f64 >= 0.99 * want.len() as f64, "heads {heads} d {d}: {close} of {} agree", want.len());
    }
}

/// Against fp32 attention: within bf16's rounding (a different computation, so an
/// error in the twin's shared reading of the maths would show here).
#[test]
fn stays_within_bf16_rounding_of_fp32_attention() {
    if !supported() {
        eprintln!("skipped: this CPU has no AVX512-BF16");
        return;
    }
    let cu = [0usize, 7, 70, 300];
    let n = cu[3];
    let dims = AttnDims { n_heads: 2, head_dim: 24 };
    let w = 48;
    let (q, k, v) = (random(n * w, 21), random(n * w, 22), random(n * w, 23));
    let mut got = vec![0f32; n * w];
    forward_inference(&mut got, &q, &k, &v, &cu, dims, 0.4);
    let mut want = vec![0f32; n * w];
    crate::backend::cpu::attention::forward_inference(&mut want, &q, &k, &v, &cu, dims, 0.4);
    let num: f64 = got.iter().zip(&want).map(|(g, r)| ((g - r) as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|r| (*r as f64).powi(2)).sum();
    let rel = (num / den).sqrt();
    assert!(rel < 2e-2 && rel > 1e-5, "relative error {rel:e} (bf16 rounds at 2⁻⁹)");
}

/// Training: the bf16 products against the fp32 kernels.
mod training {
    use super::*;
    use crate::backend::cpu::attention as fp32;

    fn random(len: usize, seed: u64) -> Vec<f32> {
        crate::backend::cpu::test_values(len, seed).into_iter().map(|v| (2.0 * v) as f32).collect()
    }

    /// ‖a − b‖ / ‖b‖.
    fn rel(a: &[f32], b: &[f32]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (num / den).sqrt()
    }

    /// The training forward (output and kept probabilities) and backward (dq, dk, dv
    /// accumulated onto existing values, with and without a gradient into the
    /// probabilities, and with that gradient alone) against the fp32 kernels: within bf16's rounding (8 significant bits),
    /// and not equal (the bf16 products ran). Ragged sequences, ESM-2's head widths and an
    /// odd one.
    #[test]
    fn training_attention_stays_within_bf16_rounding_of_fp32() {
        if !supported() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let cu = [0usize, 1, 18, 57, 140];
        let n = cu[cu.len() - 1];
        for &(heads, d) in &[(2usize, 16usize), (3, 24), (1, 64), (2, 5)] {
            let dims = AttnDims { n_heads: heads, head_dim: d };
            let w = heads * d;
            let (q, k, v) = (random(n * w, 31), random(n * w, 32), random(n * w, 33));
            let (_, total) = fp32::prob_offsets(&cu, heads);
            let (mut out, mut probs) = (vec![0f32; n * w], vec![0f32; total]);
            forward_training(&mut out, &mut probs, &q, &k, &v, &cu, dims, 0.6);
            let (mut out32, mut probs32) = (vec![0f32; n * w], vec![0f32; total]);
            fp32::forward(&mut out32, &mut probs32, &q, &k, &v, &cu, dims, 0.6);
            for (what, got, want) in [("out", &out, &out32), ("probs", &probs, &probs32)] {
                let e = rel(got, want);
                assert!(e < 2e-2 && e > 1e-6, "heads {heads} d {d} {what}: relative error {e:.2e}");
            }
            let dout = random(n * w, 34);
            let dprobs = random(total, 35);
            for (with_dout, with_dprobs) in [(true, false), (true, true), (false, true)] {
                let start = (random(n * w, 36), random(n * w, 37), random(n * w, 38));
                let (mut dq, mut dk, mut dv) = start.clone();
                let (dp, dout) = (with_dprobs.then_some(&dprobs[..]), with_dout.then_some(&dout[..]));
                let inp = BackwardInputs {
                    dout,
                    dprobs: dp,
                    probs: &probs32,
                    q: &q,
                    k: &k,
                    v: &v,
                    cu: &cu,
                    dims,
                    scale: 0.6,
                };
                backward_training(&mut dq, &mut dk, &mut dv, inp);
                let (mut dq32, mut dk32, mut dv32) = start.clone();
                fp32::backward(&mut dq32, &mut dk32, &mut dv32, dout, dp, &probs32, &q, &k, &v, &cu, dims, 0.6);
                let sub = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<f32>>();
                for (what, got, want, s) in
                    [("dq", &dq, &dq32, &start.0), ("dk", &dk, &dk32, &start.1), ("dv", &dv, &dv32, &start.2)]
                {
                    if what == "dv" && !with_dout {
                        assert_eq!(got, s, "dv changed without an output gradient");
                        continue;
                    }
                    // The added gradient, so that the start values do not hide its error.
                    let e = rel(&sub(got, s), &sub(want, s));
                    let case = format!("heads {heads} d {d} {what} (dout {with_dout}, dprobs {with_dprobs})");
                    assert!(e < 3e-2 && e > 1e-6, "{case}: {e:.2e}");
                }
            }
        }
    }

    /// The new-buffer variants (written once, never zero-filled) equal the in-place ones bit
    /// for bit: inference, the training forward, and the backward onto zeros for every
    /// subset of wanted gradients, with and without a gradient into the probabilities.
    #[test]
    fn new_buffers_equal_the_in_place_kernels() {
        if !supported() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let cu = [0usize, 1, 18, 57, 140];
        let n = cu[cu.len() - 1];
        let dims = AttnDims { n_heads: 3, head_dim: 24 };
        let w = 72;
        let (q, k, v) = (random(n * w, 41), random(n * w, 42), random(n * w, 43));
        let mut out = vec![0f32; n * w];
        forward_inference(&mut out, &q, &k, &v, &cu, dims, 0.6);
        assert_eq!(forward_inference_new(&q, &k, &v, &cu, dims, 0.6), out, "inference");
        let (_, total) = fp32::prob_offsets(&cu, dims.n_heads);
        let (mut out, mut probs) = (vec![0f32; n * w], vec![0f32; total]);
        forward_training(&mut out, &mut probs, &q, &k, &v, &cu, dims, 0.6);
        assert_eq!(forward_training_new(&q, &k, &v, &cu, dims, 0.6), (out, probs.clone()), "training forward");
        let (dout, dprobs) = (random(n * w, 44), random(total, 45));
        for dp in [None, Some(&dprobs[..])] {
            for want in [[true, true, true], [false, true, true], [true, false, false], [false, false, true]] {
                let mut zeros = want.map(|on| vec![0f32; if on { n * w } else { 0 }]);
                let [dq, dk, dv] = &mut zeros;
                let inp = BackwardInputs {
                    dout: Some(&dout),
                    dprobs: dp,
                    probs: &probs,
                    q: &q,
                    k: &k,
                    v: &v,
                    cu: &cu,
                    dims,
                    scale: 0.6,
                };
                backward_training(dq, dk, dv, inp);
                let new = backward_training_new(want, inp);
                assert_eq!(new, zeros, "backward, wanted {want:?}, dprobs {}", dp.is_some());
            }
        }
    }
}
