//! A linear layer of a model: weight (and bias) ids into the parameter store, and an
//! optional LoRA adapter whose update it applies. This file owns the adapter type and its
//! forward maths; `model::lora` creates, merges and saves adapters and imports this file,
//! never the reverse (no `lora` import here).

use anyhow::Result;

use super::init::Init;
use super::params::{ParamId, Params};
use crate::autograd::Tape;
use crate::ops;
use crate::tensor::Tensor;

#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: ParamId,
    pub bias: Option<ParamId>,
    pub lora: Option<LoraAdapter>,
    pub in_features: usize,
    pub out_features: usize,
}

impl Linear {
    /// Register `{prefix}.weight` `[out, in]` (N(0, std²)) and `{prefix}.bias` (zeros).
    pub fn new(
        params: &mut Params,
        prefix: &str,
        in_f: usize,
        out_f: usize,
        bias: bool,
        init: &mut Init,
    ) -> Result<Linear> {
        let w = Tensor::from_vec(init.normal(in_f * out_f), &[out_f, in_f])?;
        let weight = params.add(&format!("{prefix}.weight"), w, true)?;
        let bias = if bias {
            Some(params.add(&format!("{prefix}.bias"), Tensor::from_vec(vec![0f32; out_f], &[out_f])?, false)?)
        } else {
            None
        };
        Ok(Linear { weight, bias, lora: None, in_features: in_f, out_features: out_f })
    }

    /// `x·Wᵀ + b` (+ the LoRA update when an adapter is attached).
    pub fn forward(&self, p: &Params, tape: &Tape, x: &Tensor) -> Result<Tensor> {
        let y = ops::linear(tape, x, p.get(self.weight), self.bias.map(|b| p.get(b)))?;
        match &self.lora {
            Some(lora) => lora.add_update(p, tape, x, y),
            None => Ok(y),
        }
    }

    /// `x·Wᵀ` without the bias (so that the caller can fuse bias and activation).
    pub fn forward_no_bias(&self, p: &Params, tape: &Tape, x: &Tensor) -> Result<Tensor> {
        let y = ops::linear(tape, x, p.get(self.weight), None)?;
        match &self.lora {
            Some(lora) => lora.add_update(p, tape, x, y),
            None => Ok(y),
        }
    }
}

/// A LoRA adapter on a linear layer: `A: [r, in]`, `B: [out, r]` in the parameter store.
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    pub a: ParamId,
    pub b: ParamId,
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
}

impl LoraAdapter {
    /// `α / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// `y + (α/r)·dropout(x)·Aᵀ·Bᵀ`.
    pub fn add_update(&self, p: &Params, tape: &Tape, x: &Tensor, y: Tensor) -> Result<Tensor> {
        let xd = ops::dropout(tape, x, self.dropout)?;
        let u = ops::linear(tape, &xd, p.get(self.a), None)?;
        let u = ops::linear(tape, &u, p.get(self.b), None)?;
        let u = ops::scale(tape, &u, self.scale())?;
        ops::add(tape, &y, &u)
    }
}

/// LayerNorm parameters.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: ParamId,
    pub bias: ParamId,
    pub eps: f64,
}

impl LayerNorm {
    /// Register `{prefix}.weight` (ones) and `{prefix}.bias` (zeros).
    pub fn new(params: &mut Params, prefix: &str, dim: usize, eps: f64) -> Result<LayerNorm> {
        let weight = params.add(&format!("{prefix}.weight"), Tensor::from_vec(vec![1f32; dim], &[dim])?, false)?;
        let bias = params.add(&format!("{prefix}.bias"), Tensor::from_vec(vec![0f32; dim], &[dim])?, false)?;
        Ok(LayerNorm { weight, bias, eps })
    }

    pub fn forward(&self, p: &Params, tape: &Tape, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(tape, x, p.get(self.weight), p.get(self.bias), self.eps)
    }
}
