//! The ESM-2 encoder, exactly as Hugging Face `EsmModel` (Lin et al. 2023):
//!
//! ```text
//! x = embed(tokens) · token-dropout scale                      (no position embedding)
//! for each layer:  x = x + Wo·Attn(LN₁(x)) + bo                (pre-LayerNorm)
//!                  x = x + W₂·gelu(W₁·LN₂(x) + b₁) + b₂
//! h = LN_final(x)                                              (emb_layer_norm_after)
//! ```
//! Attention: `q = (Wq·x + bq)·d^-½` is scaled *before* the rotary embedding, `k` is
//! rotated unscaled, the softmax uses scale 1, sequences are packed (no padding). On CUDA
//! the rotary embedding and attention run as one flash kernel (`ops::flash_attention`)
//! unless `--attention unfused` chose the separate ops, which the CPU always uses.
//! Parameter names are Hugging Face's under the `esm.` prefix.
//!
//! With [`Recompute::Layer`] each block runs through [`autograd::checkpoint`]: a
//! recording forward keeps only the block's input `[tokens, hidden]` and re-runs the block
//! in the backward pass (bit-identical gradients; see `autograd/checkpoint.rs`). Attention
//! probabilities, when asked for, are outputs of the checkpointed block, so a contact head
//! reads them and its gradient flows back through the recomputation.

use std::rc::Rc;

use anyhow::{bail, Result};

use super::config::EsmConfig;
use super::init::Init;
use super::inputs::ModelInputs;
use super::linear::{LayerNorm, Linear};
use super::params::{ParamId, Params};
use crate::autograd::{self, Tape};
use crate::ops;
use crate::tensor::Tensor;

/// Hugging Face prefix of the encoder inside task models.
pub const ESM_PREFIX: &str = "esm";

#[derive(Clone, Debug)]
pub struct EsmLayer {
    pub attn_ln: LayerNorm,
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub attn_out: Linear,
    pub ffn_ln: LayerNorm,
    pub ffn_in: Linear,
    pub ffn_out: Linear,
}

#[derive(Clone, Debug)]
pub struct Esm2 {
    pub cfg: EsmConfig,
    pub word_embeddings: ParamId,
    pub layers: Vec<EsmLayer>,
    pub final_ln: LayerNorm,
    /// Activation recomputation in training (`--recompute`).
    pub recompute: Recompute,
}

/// Which activations a training forward keeps (`--recompute none|layer`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recompute {
    /// Keep every activation the ops save (fastest).
    #[default]
    None,
    /// Keep only each transformer layer's input; recompute the layer in the backward pass.
    Layer,
}

impl std::str::FromStr for Recompute {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" | "off" => Ok(Recompute::None),
            "layer" | "layers" => Ok(Recompute::Layer),
            _ => bail!("unknown recompute mode `{s}`: use none or layer"),
        }
    }
}

impl std::fmt::Display for Recompute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Recompute::None => "none",
            Recompute::Layer => "layer",
        })
    }
}

/// What a checkpointed layer needs to run again in the backward pass (shared by all
/// layers of one forward; tensor handles, so cloning copies no data).
struct Replay {
    model: Esm2,
    params: Params,
    inputs: ModelInputs,
}

/// Encoder outputs: the final hidden states `[tokens, hidden]`, and per layer the
/// attention probabilities when they were asked for.
pub struct EncoderOutput {
    pub hidden: Tensor,
    pub attention_probs: Vec<Tensor>,
}

impl Esm2 {
    /// Register every encoder parameter (randomly initialised) in `params`.
    pub fn new(cfg: &EsmConfig, params: &mut Params, init: &mut Init) -> Result<Esm2> {
        let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
        let mut emb = init.normal(cfg.vocab_size * h);
        emb[cfg.pad_token_id as usize * h..][..h].iter_mut().for_each(|v| *v = 0.0);
        let word_embeddings = params.add(
            &format!("{ESM_PREFIX}.embeddings.word_embeddings.weight"),
            Tensor::from_vec(emb, &[cfg.vocab_size, h])?,
            false,
        )?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("{ESM_PREFIX}.encoder.layer.{i}");
            layers.push(EsmLayer {
                attn_ln: LayerNorm::new(params, &format!("{p}.attention.LayerNorm"), h, cfg.layer_norm_eps)?,
                query: Linear::new(params, &format!("{p}.attention.self.query"), h, h, true, init)?,
                key: Linear::new(params, &format!("{p}.attention.self.key"), h, h, true, init)?,
                value: Linear::new(params, &format!("{p}.attention.self.value"), h, h, true, init)?,
                attn_out: Linear::new(params, &format!("{p}.attention.output.dense"), h, h, true, init)?,
                ffn_ln: LayerNorm::new(params, &format!("{p}.LayerNorm"), h, cfg.layer_norm_eps)?,
                ffn_in: Linear::new(params, &format!("{p}.intermediate.dense"), h, f, true, init)?,
                ffn_out: Linear::new(params, &format!("{p}.output.dense"), f, h, true, init)?,
            });
        }
        let final_ln =
            LayerNorm::new(params, &format!("{ESM_PREFIX}.encoder.emb_layer_norm_after"), h, cfg.layer_norm_eps)?;
        Ok(Esm2 { cfg: cfg.clone(), word_embeddings, layers, final_ln, recompute: Recompute::None })
    }

    /// Run the encoder over a packed batch.
    pub fn forward(&self, p: &Params, tape: &Tape, inp: &ModelInputs, want_attention: bool) -> Result<EncoderOutput> {
        self.forward_keeping(p, tape, inp, want_attention, |_, _| {})
    }

    /// The hidden states of `layers` (fair-esm's `repr_layers` numbering: 0 is the
    /// embedding output, `i` in `1..num_layers` the output of block `i`, `num_layers` the
    /// output after `emb_layer_norm_after`; the numbering of transformers'
    /// `hidden_states`), each `[tokens, hidden]`, in the order asked, with the encoder's
    /// output.
    pub fn forward_hidden_states(
        &self,
        p: &Params,
        tape: &Tape,
        inp: &ModelInputs,
        layers: &[usize],
        want_attention: bool,
    ) -> Result<(EncoderOutput, Vec<Tensor>)> {
        let n = self.cfg.num_hidden_layers;
        if let Some(&bad) = layers.iter().find(|&&l| l > n) {
            bail!("hidden state of layer {bad} asked for, but the model has layers 0..={n}");
        }
        let mut kept: Vec<Option<Tensor>> = vec![None; layers.len()];
        let out = self.forward_keeping(p, tape, inp, want_attention, |layer, x| {
            for (slot, _) in kept.iter_mut().zip(layers).filter(|(_, &l)| l == layer) {
                *slot = Some(x.clone());
            }
        })?;
        let states = kept.into_iter().collect::<Option<Vec<_>>>().expect("every layer 0..=n is visited");
        Ok((out, states))
    }

    /// The encoder, handing `keep(layer, x)` the hidden state after each stage (0: the
    /// embeddings; `i`: block `i`, the last one after the final LayerNorm).
    fn forward_keeping(
        &self,
        p: &Params,
        tape: &Tape,
        inp: &ModelInputs,
        want_attention: bool,
        mut keep: impl FnMut(usize, &Tensor),
    ) -> Result<EncoderOutput> {
        let n = self.layers.len();
        let mut x = ops::embedding(tape, &inp.ids, p.get(self.word_embeddings), &inp.row_scale)?;
        keep(0, &x);
        let mut probs = Vec::new();
        let replay = (self.recompute == Recompute::Layer && tape.is_recording())
            .then(|| Rc::new(Replay { model: self.clone(), params: p.clone(), inputs: inp.clone() }));
        for (i, layer) in self.layers.iter().enumerate() {
            let _r = crate::backend::cuda::nvtx::range_with(|| format!("layer {i}"));
            let (y, pr) = match &replay {
                Some(r) => Self::layer_checkpointed(r, i, tape, &x, want_attention)?,
                None => self.layer_forward(layer, p, tape, inp, &x, want_attention)?,
            };
            x = y;
            probs.extend(pr);
            if i + 1 < n {
                keep(i + 1, &x);
            }
        }
        let hidden = self.final_ln.forward(p, tape, &x)?;
        keep(n, &hidden);
        Ok(EncoderOutput { hidden, attention_probs: probs })
    }

    /// The final hidden state of each sequence's first token (`<cls>`), `[n_seqs, hidden]`:
    /// the encoder output a `<cls>`-pooled classifier reads, for inference on the CPU. Every
    /// layer but the last runs as in [`Esm2::forward`]; the last one computes keys and
    /// values for every token but the query, the attention output, the feed-forward block
    /// and the final LayerNorm for the `<cls>` rows alone (the other rows' outputs are never
    /// read). Equals gathering the `<cls>` rows of [`Esm2::forward`]'s output, up to the order
    /// of fp32 sums.
    pub fn forward_cls(&self, p: &Params, tape: &Tape, inp: &ModelInputs) -> Result<Tensor> {
        let Some((last, body)) = self.layers.split_last() else {
            let x = ops::embedding(tape, &inp.ids, p.get(self.word_embeddings), &inp.row_scale)?;
            let x = ops::gather_rows(tape, &x, &inp.cls_rows)?;
            return self.final_ln.forward(p, tape, &x);
        };
        let mut x = ops::embedding(tape, &inp.ids, p.get(self.word_embeddings), &inp.row_scale)?;
        for layer in body {
            x = self.layer_forward(layer, p, tape, inp, &x, false)?.0;
        }
        let heads = self.cfg.num_attention_heads;
        let h = last.attn_ln.forward(p, tape, &x)?;
        let k = ops::rotary(tape, &last.key.forward(p, tape, &h)?, &inp.positions, heads, 1.0)?;
        let v = last.value.forward(p, tape, &h)?;
        let h_cls = ops::gather_rows(tape, &h, &inp.cls_rows)?;
        let q_scale = (self.cfg.head_dim() as f64).powf(-0.5);
        let q = ops::rotary(tape, &last.query.forward(p, tape, &h_cls)?, &cls_positions(inp)?, heads, q_scale)?;
        let ctx = ops::attention_first_query(tape, &q, &k, &v, &inp.layout, heads, 1.0)?;
        let x = ops::add(tape, &ops::gather_rows(tape, &x, &inp.cls_rows)?, &last.attn_out.forward(p, tape, &ctx)?)?;
        let h = last.ffn_ln.forward(p, tape, &x)?;
        let f = last.ffn_in.forward_no_bias(p, tape, &h)?;
        let f = ops::bias_gelu(tape, &f, last.ffn_in.bias.map(|b| p.get(b)))?;
        let x = ops::add(tape, &x, &last.ffn_out.forward(p, tape, &f)?)?;
        self.final_ln.forward(p, tape, &x)
    }

    /// Layer `i` through [`autograd::checkpoint`]: outputs `[y]` or `[y, probs]`.
    fn layer_checkpointed(
        replay: &Rc<Replay>,
        i: usize,
        tape: &Tape,
        x: &Tensor,
        want_attention: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let r = Rc::clone(replay);
        let outs = autograd::checkpoint(tape, "esm_layer (recomputed)", std::slice::from_ref(x), move |t, xs| {
            let (y, pr) = r.model.layer_forward(&r.model.layers[i], &r.params, t, &r.inputs, &xs[0], want_attention)?;
            Ok(std::iter::once(y).chain(pr).collect())
        })?;
        let mut outs = outs.into_iter();
        match (outs.next(), outs.next()) {
            (Some(y), probs) => Ok((y, probs)),
            (None, _) => bail!("checkpointed layer {i} returned no output"),
        }
    }

    /// One transformer block; returns the new hidden states and the attention
    /// probabilities when asked.
    pub fn layer_forward(
        &self,
        layer: &EsmLayer,
        p: &Params,
        tape: &Tape,
        inp: &ModelInputs,
        x: &Tensor,
        want_attention: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let heads = self.cfg.num_attention_heads;
        let h = layer.attn_ln.forward(p, tape, x)?;
        let q = layer.query.forward(p, tape, &h)?;
        let k = layer.key.forward(p, tape, &h)?;
        let v = layer.value.forward(p, tape, &h)?;
        let q_scale = (self.cfg.head_dim() as f64).powf(-0.5);
        let (ctx, probs) = if ops::flash_attention::is_default_on(&q.device()) {
            // The same maths in one fused kernel (rotary inside).
            ops::flash_attention(tape, &q, &k, &v, &inp.positions, &inp.layout, heads, q_scale, want_attention)?
        } else {
            let q = ops::rotary(tape, &q, &inp.positions, heads, q_scale)?;
            let k = ops::rotary(tape, &k, &inp.positions, heads, 1.0)?;
            ops::attention(tape, &q, &k, &v, &inp.layout, heads, 1.0, want_attention)?
        };
        let a = layer.attn_out.forward(p, tape, &ctx)?;
        let x = ops::add(tape, x, &a)?;
        let h = layer.ffn_ln.forward(p, tape, &x)?;
        let f = layer.ffn_in.forward_no_bias(p, tape, &h)?;
        let f = ops::bias_gelu(tape, &f, layer.ffn_in.bias.map(|b| p.get(b)))?;
        let f = layer.ffn_out.forward(p, tape, &f)?;
        Ok((ops::add(tape, &x, &f)?, probs))
    }
}

/// The position of each sequence's first token (`<cls>`), `[n_seqs]` i32.
fn cls_positions(inp: &ModelInputs) -> Result<Tensor> {
    let pos = inp.positions.as_slice::<i32>()?;
    let rows = inp.cls_rows.as_slice::<i32>()?;
    Tensor::from_i32(rows.iter().map(|&r| pos[r as usize]).collect(), &[rows.len()], &inp.positions.device())
}
