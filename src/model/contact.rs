//! The contact head's parameters (`esm.contact_head.regression.{weight,bias}`: one weight
//! per layer·head channel) and its forward over the encoder's attention probabilities.

use anyhow::Result;

use super::config::EsmConfig;
use super::init::Init;
use super::params::{ParamId, Params};
use crate::autograd::Tape;
use crate::ops::{self, SeqLayout};
use crate::tensor::Tensor;

#[derive(Clone, Debug)]
pub struct ContactHead {
    pub weight: ParamId,
    pub bias: ParamId,
    pub n_heads: usize,
}

impl ContactHead {
    pub fn new(cfg: &EsmConfig, params: &mut Params, init: &mut Init) -> Result<ContactHead> {
        let ch = cfg.num_hidden_layers * cfg.num_attention_heads;
        let weight =
            params.add("esm.contact_head.regression.weight", Tensor::from_vec(init.normal(ch), &[1, ch])?, false)?;
        let bias = params.add("esm.contact_head.regression.bias", Tensor::from_vec(vec![0f32], &[1])?, false)?;
        Ok(ContactHead { weight, bias, n_heads: cfg.num_attention_heads })
    }

    /// Contact logits (packed per sequence, see `ops::contact_head`).
    pub fn forward(&self, p: &Params, tape: &Tape, probs: &[Tensor], layout: &SeqLayout) -> Result<Tensor> {
        ops::contact_head(tape, probs, layout, self.n_heads, p.get(self.weight), p.get(self.bias))
    }
}
