//! `--precision bf16` on the CPU: the linear layers multiply bf16-rounded operands with
//! fp32 sums (AVX512-BF16). For inference the logits stay within bf16's rounding of the
//! fp32 ones (which match transformers, see esm_parity.rs) and a recording tape still
//! computes in exact fp32; for training the loss and every parameter gradient stay within
//! bf16's rounding of fp32, and a step's new weights are what the next forward multiplies
//! with. One test function: the switch is process-wide, and this file is its own process.

mod common;

use common::fixture;
use qf_engine::autograd::Grads;
use qf_engine::backend::cpu::matmul_bf16;
use qf_engine::data::batch::PackedBatch;
use qf_engine::data::tokenizer::encode_ids;
use qf_engine::model::{HeadKind, ModelInputs, SequenceClassifier};
use qf_engine::ops;
use qf_engine::ops::linear::{cpu_bf16, set_cpu_bf16, CpuBf16};
use qf_engine::optim::{OptimConfig, Optimizer};
use qf_engine::train::device::{open, open_for_inference, DeviceChoice, Precision};
use qf_engine::{DType, Device, Tape, Tensor};

fn batch() -> PackedBatch {
    let mut b = PackedBatch::new();
    let seqs = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "GSHMLEDPVDAFQQVLRKGGNWQKLLE", "MSDNKRPQ"];
    for (i, s) in seqs.iter().enumerate() {
        b.push(&encode_ids(s).unwrap(), 0, Some(i as u32 % 2), i);
    }
    b
}

/// The classification loss and every parameter's gradient (concatenated in parameter
/// order).
fn loss_and_grads(model: &SequenceClassifier) -> (f32, Vec<f32>, Grads) {
    let inp = ModelInputs::new(&batch(), model.config(), &Device::Cpu, DType::F32).unwrap();
    let tape = Tape::new();
    let logits = model.forward(&tape, &inp).unwrap();
    let ce = ops::cross_entropy(&tape, &logits, inp.labels.as_ref().unwrap(), None).unwrap();
    let loss = ce.to_vec_f32().unwrap()[0];
    let mut grads = Grads::new();
    tape.backward(&ce, &mut grads).unwrap();
    let flat = model.params.iter().filter_map(|(_, t)| grads.get(t)).flat_map(|g| g.to_vec_f32().unwrap()).collect();
    (loss, flat, grads)
}

fn logits(model: &SequenceClassifier, tape: &Tape) -> Vec<f32> {
    let inp = ModelInputs::new(&batch(), model.config(), &Device::Cpu, DType::F32).unwrap();
    model.forward(tape, &inp).unwrap().to_vec_f32().unwrap()
}

/// ‖a − b‖ / ‖b‖.
fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn bf16_inference_on_the_cpu() {
    let fp16 = "the CPU computes in fp32, or bf16 on a CPU with AVX512-BF16; Fp16 needs --device cuda";
    assert_eq!(open(&DeviceChoice::Cpu, Precision::Fp16).unwrap_err().to_string(), fp16);
    if !matmul_bf16::supported() {
        for opened in
            [open(&DeviceChoice::Cpu, Precision::Bf16), open_for_inference(&DeviceChoice::Cpu, Precision::Bf16)]
        {
            let err = opened.unwrap_err();
            assert!(err.to_string().contains("needs AVX512-BF16"), "{err}");
        }
        eprintln!("skipped the rest: this CPU has no AVX512-BF16");
        return;
    }
    let model =
        SequenceClassifier::from_pretrained(&fixture("esm_tiny"), None, HeadKind::Classification, 0.0, 0).unwrap().0;
    let exact = logits(&model, &Tape::inference());
    // A recording tape keeps the attention probabilities, so it sums in another order than
    // inference (≈ 1e-7): compare it with itself.
    let exact_recorded = logits(&model, &Tape::new());

    let (device, dtype, _) = open_for_inference(&DeviceChoice::Cpu, Precision::Bf16).unwrap();
    assert!(device.is_cpu() && dtype == DType::F32, "activations stay fp32");
    let rounded = logits(&model, &Tape::inference());
    let e = relative_error(&rounded, &exact);
    // bf16 keeps 8 significant bits (relative rounding 2⁻⁹ ≈ 2e-3 per operand).
    assert!(e < 2e-2, "bf16 logits are {e:.2e} from fp32");
    assert!(e > 1e-6, "bf16 logits equal the fp32 ones ({e:.2e}): the bf16 path did not run");

    // A recording tape with trainable weights computes in exact fp32 even with bf16 on.
    assert_eq!(logits(&model, &Tape::new()), exact_recorded);

    // Turning it off restores fp32 inference bit for bit.
    set_cpu_bf16(CpuBf16::Off).unwrap();
    assert_eq!(logits(&model, &Tape::inference()), exact);

    // Training: the loss and the gradients within bf16's rounding of fp32.
    let (loss, grads, fp32_grads) = loss_and_grads(&model);
    let (device, dtype, _) = open(&DeviceChoice::Cpu, Precision::Bf16).unwrap();
    assert!(device.is_cpu() && dtype == DType::F32 && cpu_bf16() == CpuBf16::Training);
    let (bf16_loss, bf16_grads, _) = loss_and_grads(&model);
    assert_eq!(bf16_grads.len(), grads.len(), "every parameter has its gradient");
    let (le, ge) = (((bf16_loss - loss) / loss).abs() as f64, relative_error(&bf16_grads, &grads));
    assert!(le < 2e-2 && ge < 5e-2, "bf16 training: loss {le:.2e}, gradients {ge:.2e} from fp32");
    assert!(ge > 1e-6, "bf16 gradients equal the fp32 ones ({ge:.2e}): the bf16 backward did not run");
    shared_input_gradients_match_the_scalar_twins();

    // The optimizer changes the weights in place: the next bf16 forward must multiply with
    // the new ones (no packed copy kept across steps), inference tape or not.
    let mut model = model;
    let mut opt = Optimizer::new(OptimConfig::default());
    opt.step(&mut model.params, &fp32_grads, 0.05, 1.0).unwrap();
    let stepped = [logits(&model, &Tape::new()), logits(&model, &Tape::inference())];
    set_cpu_bf16(CpuBf16::Off).unwrap();
    let stepped_exact = logits(&model, &Tape::new());
    assert!(relative_error(&stepped_exact, &exact_recorded) > 0.1, "the step hardly changed the model");
    for got in stepped {
        let e = relative_error(&got, &stepped_exact);
        assert!(e < 2e-2, "after a step, bf16 logits are {e:.2e} from the new fp32 ones");
    }
}

/// Values in [−1, 1) from a fixed linear congruential sequence.
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A bf16 training backward through two linears that share their input (as query, key and
/// value share theirs): the first contribution to `dx` is written into a fresh buffer and
/// the second added to it, and the weight gradients are fresh buffers; all against the
/// scalar twins (f64 sums of the same bf16 roundings).
fn shared_input_gradients_match_the_scalar_twins() {
    let (n, k, m) = (37, 48, 20);
    let param = |v: Vec<f32>, shape: &[usize]| Tensor::from_vec(v, shape).unwrap().with_requires_grad(true);
    let (xs, w1s, w2s) = (values(n * k, 1), values(m * k, 2), values(m * k, 3));
    let (x, w1, w2) = (param(xs.clone(), &[n, k]), param(w1s.clone(), &[m, k]), param(w2s.clone(), &[m, k]));
    let tape = Tape::new();
    let y1 = ops::linear(&tape, &x, &w1, None).unwrap();
    let y2 = ops::linear(&tape, &x, &w2, None).unwrap();
    let (dy1, dy2) = (values(n * m, 4), values(n * m, 5));
    let seed = |v: &[f32]| Tensor::from_vec(v.to_vec(), &[n, m]).unwrap();
    let mut grads = Grads::new();
    tape.backward_from_many(&[(&y1, seed(&dy1)), (&y2, seed(&dy2))], &mut grads).unwrap();

    let dx_first = matmul_bf16::reference_backward_input(&vec![0.0; n * k], &dy2, &w2s, n, m, k);
    let want_dx = matmul_bf16::reference_backward_input(&dx_first, &dy1, &w1s, n, m, k);
    let want_dw1 = matmul_bf16::reference_backward_weight(&vec![0.0; m * k], &dy1, &xs, n, m, k);
    let want_dw2 = matmul_bf16::reference_backward_weight(&vec![0.0; m * k], &dy2, &xs, n, m, k);
    for (t, want, terms) in [(&x, want_dx, 2 * m), (&w1, want_dw1, n), (&w2, want_dw2, n)] {
        let got = grads.get(t).expect("a gradient").to_vec_f32().unwrap();
        for (i, (g, r)) in got.iter().zip(&want).enumerate() {
            let tol = 1e-6 * (terms as f32).sqrt() * (1.0 + r.abs());
            assert!((g - r).abs() <= tol, "gradient {:?} [{i}]: {g} vs {r}", t.shape());
        }
    }
}
