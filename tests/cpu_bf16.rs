//! `--precision bf16` for CPU inference: the linear layers multiply bf16-rounded operands
//! with fp32 sums (AVX512-BF16). The logits stay within bf16's rounding of the fp32 ones
//! (which match transformers, see esm_parity.rs), a recording tape still computes in
//! exact fp32, and training refuses bf16 on the CPU. One test function: the switch is
//! process-wide, and this file is its own process.

mod common;

use common::fixture;
use qf_engine::backend::cpu::matmul_bf16;
use qf_engine::data::batch::PackedBatch;
use qf_engine::data::tokenizer::encode_ids;
use qf_engine::model::{HeadKind, ModelInputs, SequenceClassifier};
use qf_engine::ops::linear::set_cpu_bf16;
use qf_engine::train::device::{open, open_for_inference, DeviceChoice, Precision};
use qf_engine::{DType, Device, Tape};

fn batch() -> PackedBatch {
    let mut b = PackedBatch::new();
    let seqs = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "GSHMLEDPVDAFQQVLRKGGNWQKLLE", "MSDNKRPQ"];
    for (i, s) in seqs.iter().enumerate() {
        b.push(&encode_ids(s).unwrap(), 0, None, i);
    }
    b
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
    let bf16 = "the CPU backend trains in fp32; Bf16 needs --device cuda \
                (predict, eval and embed also take bf16 on a CPU with AVX512-BF16)";
    let err = open(&DeviceChoice::Cpu, Precision::Bf16).unwrap_err();
    assert_eq!(err.to_string(), bf16);
    if !matmul_bf16::supported() {
        let err = open_for_inference(&DeviceChoice::Cpu, Precision::Bf16).unwrap_err();
        assert!(err.to_string().contains("needs AVX512-BF16"), "{err}");
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
    set_cpu_bf16(false).unwrap();
    assert_eq!(logits(&model, &Tape::inference()), exact);
}
