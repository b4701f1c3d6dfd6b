//! The training optimizer over a parameter store: AdamW with fp32 moments or blockwise
//! 8-bit moments, gradient clipping by global norm, and skipping of steps whose
//! gradients overflowed (fp16 loss scaling). Biases, LayerNorm parameters and
//! embeddings take no weight decay (the store records which parameters decay).
//!
//! State is kept only for trainable parameters (frozen ones, e.g. a LoRA base, have none)
//! and is saved by parameter name, so a checkpoint restores it exactly. On the GPU the
//! state lives on the device: fp32 moments updated by `kernels/adamw.cu`, or for 8-bit
//! AdamW block-wise 8-bit moments updated by `kernels/adam8bit.cu` (tensors under 4,096
//! elements keep fp32 moments there too, as on the CPU). Checkpoints use the same names
//! and layouts on both devices, so a run can resume on the other one.
//!
//! CPU vs CUDA 8-bit: the kernel mirrors the CPU reference operation by operation (every
//! fp32 operation explicitly rounded, no fused multiply-adds, exact block maxima, the same
//! binary search and tie rule), so parameters, absmax values and codes are expected to be
//! bit-identical; the documented tolerance is "identical up to requantisation rounding
//! ties" (a code may differ by one where `m/absmax` lies exactly on the midpoint of two
//! map entries), which `tests/optim_8bit_cuda.rs` checks.

use std::collections::HashMap;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::adam8bit::{self, Adam8bitState, MIN_8BIT_SIZE};
use crate::autograd::Grads;
use crate::backend::cpu::adamw::AdamHyper;
use crate::model::checkpoint::{view_to_f32, MappedSafetensors, NamedTensor};
use crate::model::params::{ParamId, Params};
use crate::ops::adam8bit::{adam8bit as adam8bit_op, upload_maps, Moments8};
use crate::ops::adamw::adamw;
use crate::ops::grad_norm::{grad_norm, GradScale};
use crate::tensor::{DType, Device, Tensor};

/// Which moments the optimizer keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OptimizerKind {
    /// fp32 first and second moments (8 bytes per parameter).
    AdamW,
    /// Blockwise 8-bit moments (Dettmers et al. 2021; ≈ 2.03 bytes per parameter).
    AdamW8bit,
}

impl std::str::FromStr for OptimizerKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "adamw" => Ok(OptimizerKind::AdamW),
            "adamw8bit" | "adamw-8bit" => Ok(OptimizerKind::AdamW8bit),
            _ => bail!("unknown optimizer `{s}`: use adamw or adamw8bit"),
        }
    }
}

/// Optimizer hyper-parameters (the learning rate comes from the schedule each step).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub kind: OptimizerKind,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (none when `None`).
    pub max_grad_norm: Option<f64>,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            kind: OptimizerKind::AdamW,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            max_grad_norm: Some(1.0),
        }
    }
}

/// Optimizer state of one parameter, on the parameter's device.
enum State {
    /// fp32 moments (AdamW, or a tensor under [`MIN_8BIT_SIZE`] elements of an 8-bit run).
    Fp32 { m: Tensor, v: Tensor },
    /// Block-wise 8-bit moments.
    Blockwise8bit(Moments8),
}

/// What one step did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepStats {
    /// Global norm of the (unscaled) gradients before clipping.
    pub grad_norm: f64,
    /// The step was skipped: some gradient was inf or nan.
    pub skipped: bool,
}

pub struct Optimizer {
    pub cfg: OptimConfig,
    /// Optimizer steps taken (skipped ones excluded): the `t` of Adam's bias correction.
    pub step: u64,
    states: HashMap<String, State>,
    /// The 8-bit quantisation maps on the GPU (made on the first 8-bit CUDA step).
    device_maps: Option<Tensor>,
}

impl Optimizer {
    pub fn new(cfg: OptimConfig) -> Self {
        Optimizer { cfg, step: 0, states: HashMap::new(), device_maps: None }
    }

    fn hyper(&self, lr: f64, decays: bool, grad_scale: f64) -> AdamHyper {
        AdamHyper {
            lr,
            beta1: self.cfg.beta1,
            beta2: self.cfg.beta2,
            eps: self.cfg.eps,
            weight_decay: if decays { self.cfg.weight_decay } else { 0.0 },
            step: self.step + 1,
            grad_scale,
        }
    }

    /// Trainable parameters that received a gradient.
    fn with_grads<'a>(params: &Params, grads: &'a Grads) -> Vec<(ParamId, &'a Tensor)> {
        params
            .ids()
            .filter(|&id| params.get(id).requires_grad())
            .filter_map(|id| grads.get(params.get(id)).map(|g| (id, g)))
            .collect()
    }

    /// One update with learning rate `lr`. Gradients are multiplied by `inv_loss_scale`
    /// first (1 without loss scaling). Returns the gradient norm and whether the step was
    /// skipped for non-finite gradients.
    ///
    /// On the GPU the norm, clip coefficient and overflow flag stay on the device and are
    /// read by the update kernels; the host reads back only the norm and the flag (one
    /// small copy per optimizer step, after all updates are queued).
    pub fn step(&mut self, params: &mut Params, grads: &Grads, lr: f64, inv_loss_scale: f64) -> Result<StepStats> {
        let items = Self::with_grads(params, grads);
        let Some(&(first, _)) = items.first() else {
            bail!("no trainable parameter received a gradient");
        };
        let all_grads: Vec<&Tensor> = items.iter().map(|&(_, g)| g).collect();
        let scale = grad_norm(&all_grads, self.cfg.max_grad_norm, inv_loss_scale)?;
        if let GradScale::Host { norm, skip: true, .. } = scale {
            return Ok(StepStats { grad_norm: norm, skipped: true });
        }
        if let Device::Cuda(dev) = params.get(first).device() {
            if self.cfg.kind == OptimizerKind::AdamW8bit && self.device_maps.is_none() {
                self.device_maps = Some(upload_maps(&dev)?);
            }
        }
        for &(id, g) in &items {
            let name = params.name(id).to_string();
            let hp = self.hyper(lr, params.decays(id), 1.0);
            let state = match self.states.entry(name) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(new_state(self.cfg.kind, params.get(id))?),
            };
            let p = params.get_mut(id);
            match state {
                State::Fp32 { m, v } => adamw(p, g, m, v, &hp, &scale)?,
                State::Blockwise8bit(q) => adam8bit_op(p, g, q, self.device_maps.as_ref(), &hp, &scale)?,
            }
        }
        let (grad_norm, skipped) = scale.read()?;
        if !skipped {
            self.step += 1;
        }
        Ok(StepStats { grad_norm, skipped })
    }

    /// Bytes of optimizer state held now.
    pub fn state_bytes(&self) -> usize {
        self.states
            .values()
            .map(|s| match s {
                State::Fp32 { m, .. } => m.numel() * 8,
                State::Blockwise8bit(q) => q.bytes(),
            })
            .sum()
    }

    /// Bytes of state a parameter of `n` elements will need.
    pub fn bytes_for(&self, n: usize) -> usize {
        match self.cfg.kind {
            OptimizerKind::AdamW => 8 * n,
            OptimizerKind::AdamW8bit => adam8bit::state_bytes(n),
        }
    }

    /// State tensors for a checkpoint, by parameter name (`<name>.exp_avg`,
    /// `<name>.exp_avg_sq` for fp32; bitsandbytes' `state1/absmax1/state2/absmax2` for 8-bit).
    pub fn state_tensors(&self) -> Result<Vec<NamedTensor>> {
        let mut names: Vec<&String> = self.states.keys().collect();
        names.sort();
        let mut out = Vec::new();
        let eight_bit = self.cfg.kind == OptimizerKind::AdamW8bit;
        for name in names {
            match &self.states[name] {
                // A small tensor of an 8-bit run: fp32 moments under the 8-bit names.
                State::Fp32 { m, v } if eight_bit => {
                    let st = Adam8bitState::Fp32 { m: m.to_vec_f32()?, v: v.to_vec_f32()? };
                    out.extend(st.to_tensors(name));
                }
                State::Fp32 { m, v } => {
                    out.push(NamedTensor::f32_1d(format!("{name}.exp_avg"), &m.to_vec_f32()?));
                    out.push(NamedTensor::f32_1d(format!("{name}.exp_avg_sq"), &v.to_vec_f32()?));
                }
                State::Blockwise8bit(q) => out.extend(Adam8bitState::Blockwise8bit(q.to_host()?).to_tensors(name)),
            }
        }
        Ok(out)
    }

    /// Restore state saved by [`Optimizer::state_tensors`] for the trainable parameters.
    pub fn load_state(&mut self, file: &MappedSafetensors, params: &Params, step: u64) -> Result<()> {
        self.states.clear();
        self.step = step;
        let names = file.names()?;
        for id in params.ids().filter(|&id| params.get(id).requires_grad()) {
            let name = params.name(id);
            let p = params.get(id);
            let n = p.numel();
            let state = match self.cfg.kind {
                OptimizerKind::AdamW => {
                    let key = format!("{name}.exp_avg");
                    if !names.contains(&key) {
                        continue;
                    }
                    let m = file.with_view(&key, view_to_f32)?;
                    let v = file.with_view(&format!("{name}.exp_avg_sq"), view_to_f32)?;
                    if m.len() != n || v.len() != n {
                        bail!(
                            "{}: optimizer state of `{name}` has {} elements, the parameter {n}",
                            file.path().display(),
                            m.len()
                        );
                    }
                    fp32_state(p, m, v)?
                }
                OptimizerKind::AdamW8bit => {
                    if !names.iter().any(|k| k == &format!("{name}.state1")) {
                        continue;
                    }
                    match Adam8bitState::from_safetensors(name, n, &file.tensors()?)? {
                        Adam8bitState::Fp32 { m, v } => fp32_state(p, m, v)?,
                        Adam8bitState::Blockwise8bit(q) => State::Blockwise8bit(Moments8::from_host(&p.device(), q)?),
                    }
                }
            };
            self.states.insert(name.to_string(), state);
        }
        Ok(())
    }
}

/// Zero state for a parameter, on its device: 8-bit moments for an 8-bit run and a tensor
/// of at least [`MIN_8BIT_SIZE`] elements, else fp32 moments.
fn new_state(kind: OptimizerKind, p: &Tensor) -> Result<State> {
    let n = p.numel();
    Ok(match kind {
        OptimizerKind::AdamW8bit if n >= MIN_8BIT_SIZE => State::Blockwise8bit(Moments8::zeros(&p.device(), n)?),
        _ => {
            let zeros = || Tensor::zeros(p.shape(), DType::F32, &p.device());
            State::Fp32 { m: zeros()?, v: zeros()? }
        }
    })
}

/// fp32 moments restored from a checkpoint, on the parameter's device.
fn fp32_state(p: &Tensor, m: Vec<f32>, v: Vec<f32>) -> Result<State> {
    let d = p.device();
    Ok(State::Fp32 {
        m: Tensor::from_f32(m, p.shape(), DType::F32, &d)?,
        v: Tensor::from_f32(v, p.shape(), DType::F32, &d)?,
    })
}
