//! LoRA adapters (Hu et al. 2021): a frozen linear layer `y = x·Wᵀ + b` gains a trainable
//! low-rank update `y += (α/r)·dropout(x)·Aᵀ·Bᵀ`, with `A: [r, in]` initialised like PEFT
//! (Kaiming-uniform, bound `1/√in`) and `B: [out, r]` zero, so a fresh adapter leaves the
//! model's outputs unchanged. Names follow PEFT: `<layer>.lora_A.weight`, `<layer>.lora_B.weight`.

use anyhow::{bail, Result};

use super::params::{ParamId, Params};
use crate::autograd::Tape;
use crate::data::rng::Rng;
use crate::ops;
use crate::tensor::Tensor;

#[derive(Clone, Debug)]
pub struct LoraAdapter {
    pub a: ParamId,
    pub b: ParamId,
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
}

/// LoRA hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Projection names: `query`, `key`, `value`, `attn_out`, `ffn_in`, `ffn_out`.
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    /// ContactProject's choice: query and value, r = 8, α = 8, dropout 0.05.
    fn default() -> Self {
        LoraConfig { rank: 8, alpha: 8.0, dropout: 0.05, targets: vec!["query".into(), "value".into()] }
    }
}

/// Every projection LoRA can target.
pub const LORA_TARGETS: [&str; 6] = ["query", "key", "value", "attn_out", "ffn_in", "ffn_out"];

impl LoraConfig {
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            bail!("LoRA rank must be at least 1");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("LoRA dropout must be in [0, 1), got {}", self.dropout);
        }
        for t in &self.targets {
            if !LORA_TARGETS.contains(&t.as_str()) {
                bail!("unknown LoRA target `{t}`; choose from {}", LORA_TARGETS.join(", "));
            }
        }
        if self.targets.is_empty() {
            bail!("LoRA needs at least one target projection");
        }
        Ok(())
    }
}

impl LoraAdapter {
    /// Register the adapter of the layer whose weight is called `{prefix}.weight`.
    pub fn new(
        params: &mut Params,
        prefix: &str,
        in_f: usize,
        out_f: usize,
        cfg: &LoraConfig,
        rng: &mut Rng,
    ) -> Result<LoraAdapter> {
        let bound = 1.0 / (in_f as f64).sqrt();
        let a: Vec<f32> = (0..cfg.rank * in_f).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect();
        let a = params.add(&format!("{prefix}.lora_A.weight"), Tensor::from_vec(a, &[cfg.rank, in_f])?, false)?;
        let b = params.add(
            &format!("{prefix}.lora_B.weight"),
            Tensor::from_vec(vec![0f32; out_f * cfg.rank], &[out_f, cfg.rank])?,
            false,
        )?;
        Ok(LoraAdapter { a, b, rank: cfg.rank, alpha: cfg.alpha, dropout: cfg.dropout })
    }

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
