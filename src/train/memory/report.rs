//! What a training run prints and logs about its memory, shared by the tasks: the plan of
//! its worst-case micro-batch at its `--recompute` setting, the activations the other
//! setting would need, the device plan on CUDA, and at the end the measured peak.

use anyhow::Result;
use serde_json::{json, Value};

use super::gpu_plan::{token_weighted_length, GpuMemoryPlan};
use super::measure::measured_peak;
use super::plan::MemoryPlan;
use super::units::fmt_bytes;
use crate::model::esm2::Recompute;
use crate::model::{EsmConfig, Params};
use crate::tensor::{DType, Device};

/// A run's memory plan and the lines that describe it.
pub struct RunMemory {
    pub plan: MemoryPlan,
    pub lines: Vec<String>,
}

/// What the device plan of a CUDA run needs (nothing is planned on the CPU).
pub struct GpuPlanInputs<'a> {
    pub config: &'a EsmConfig,
    pub params: &'a Params,
    pub dtype: DType,
    pub optimizer_bytes: usize,
    pub max_tokens: usize,
    /// Token lengths of the training set and the crop length, for the attention rows.
    pub lens: &'a [u32],
    pub max_len: usize,
}

/// Plan at `recompute` (and at the other setting, for comparison) with `plan_at`;
/// `worst_case` says which micro-batch was planned.
pub fn plan_run(
    recompute: Recompute,
    plan_at: impl Fn(Recompute) -> Result<MemoryPlan>,
    worst_case: &str,
    device: &Device,
    gpu: GpuPlanInputs<'_>,
) -> Result<RunMemory> {
    let plan = plan_at(recompute)?;
    let other = match recompute {
        Recompute::None => Recompute::Layer,
        Recompute::Layer => Recompute::None,
    };
    let other_activations = plan_at(other)?.activations;
    let mut lines = vec![format!(
        "{} ({worst_case}); activations with --recompute {other}: {}",
        plan.summary(),
        fmt_bytes(other_activations)
    )];
    if let Device::Cuda(d) = device {
        let attn_len = token_weighted_length(gpu.lens.iter().map(|&l| l as usize), gpu.max_len);
        let g = GpuMemoryPlan::new(d, gpu.config, gpu.params, gpu.dtype, gpu.optimizer_bytes, gpu.max_tokens, attn_len);
        lines.push(g.to_string());
    }
    Ok(RunMemory { plan, lines })
}

impl MemoryPlan {
    /// The parts and the total, as the `start` event of `metrics.jsonl` records them.
    pub fn to_json(&self) -> Value {
        json!({
            "weights": self.weights, "master": self.master, "gradients": self.gradients,
            "optimizer": self.optimizer, "activations": self.activations, "runtime": self.runtime,
            "total": self.total(),
        })
    }
}

/// The peak measured so far on `device` and the line that sets it beside the plan.
pub fn peak_report(device: &Device, plan: &MemoryPlan) -> (Option<u64>, Option<String>) {
    match measured_peak(device) {
        Some((bytes, what)) => (
            Some(bytes),
            Some(format!("peak memory measured: {} ({what}); planned {}", fmt_bytes(bytes), fmt_bytes(plan.total()))),
        ),
        None => (None, None),
    }
}
