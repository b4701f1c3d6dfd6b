//! What both benchmarks run: a random model of the benchmark's shape, one training step
//! with each phase timed and waited for ([`PhaseMs`]), and the labels of their reports.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::autograd::{Grads, Tape};
use crate::backend::cuda::{self, nvtx};
use crate::model::esm2::Recompute;
use crate::model::lora::LoraConfig;
use crate::model::{EsmConfig, HeadKind, ModelInputs, SequenceClassifier};
use crate::optim::{LossScaler, Optimizer};
use crate::tensor::Device;

/// Wall time per step of each phase (device work waited for at the end of each phase).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct PhaseMs {
    /// Packing the batch and uploading the model inputs.
    pub data: f64,
    pub forward: f64,
    pub backward: f64,
    pub optimizer: f64,
}

/// Wait for the device's queued work (phase boundaries of the timings).
pub(super) fn sync(device: &Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda(d) => d.synchronize(),
    }
}

/// One training step (forward, backward, optimizer) of a micro-batch, each phase timed
/// and waited for; adds the phase times to `phases` (ms).
#[allow(clippy::too_many_arguments)]
pub(super) fn train_step(
    model: &mut SequenceClassifier,
    opt: &mut Optimizer,
    grads: &mut Grads,
    inp: &ModelInputs,
    seed: u64,
    scaler: &mut LossScaler,
    max_tokens: usize,
    phases: &mut PhaseMs,
) -> Result<()> {
    let oom = |e: anyhow::Error| cuda::device::with_budget_hint(e, max_tokens);
    let device = model.params.get(model.esm.word_embeddings).device();
    let _step = nvtx::range_with(|| format!("step {seed}"));
    let tape = Tape::with_seed(seed);
    let t = Instant::now();
    let (_, loss) = {
        let _r = nvtx::range("forward");
        model.forward_loss(&tape, inp, None).map_err(oom)?
    };
    sync(&device)?;
    phases.forward += ms_since(t);
    let t = Instant::now();
    {
        let _r = nvtx::range("backward");
        tape.backward_scaled(&loss, scaler.scale as f32, grads).map_err(oom)?;
    }
    sync(&device)?;
    phases.backward += ms_since(t);
    let t = Instant::now();
    {
        let _r = nvtx::optimizer("optimizer");
        let stats = opt.step(&mut model.params, grads, 1e-5, 1.0 / scaler.scale).map_err(oom)?;
        scaler.update(stats.skipped);
    }
    grads.clear();
    loss.scalar_f32().map_err(oom)?; // waits for the GPU
    phases.optimizer += ms_since(t);
    Ok(())
}

pub(super) fn ms_since(t: Instant) -> f64 {
    1000.0 * t.elapsed().as_secs_f64()
}

/// A random model of the benchmark's shape on `device`: `n_classes` classes, LoRA
/// adapters when asked (encoder frozen), recomputation as asked.
pub(super) fn bench_model(
    ecfg: &EsmConfig,
    n_classes: usize,
    lora: Option<&LoraConfig>,
    recompute: Recompute,
    device: &Device,
    seed: u64,
) -> Result<SequenceClassifier> {
    let labels: Vec<String> = (0..n_classes).map(|i| format!("family_{i}")).collect();
    let mut model = SequenceClassifier::new_random(ecfg, labels, HeadKind::Classification, 0.0, seed)?;
    if let Some(l) = lora {
        model.enable_lora(l, seed)?;
    }
    model.params.to_device(device)?;
    model.esm.recompute = recompute;
    Ok(model)
}

/// How a LoRA run is described in reports.
pub(super) fn describe_lora(l: &LoraConfig) -> String {
    format!("r={} alpha={} dropout={} on {}", l.rank, l.alpha, l.dropout, l.targets.join(","))
}

/// What a benchmark ran on, for its report.
pub(super) fn device_label(device: &Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
        Device::Cuda(d) => d.name().to_string(),
    }
}
