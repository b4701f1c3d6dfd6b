//! The GPU part of the memory plan printed at the start of a CUDA run (moved up from
//! `backend::cuda`, which knows only device facts): what the
//! parameters, their gradients, the optimizer state and the activations of the CUDA
//! path take, against the device's free memory. A general planner calls
//! [`GpuMemoryPlan::new`] with the optimizer's byte count and prints the result.
//!
//! Activations (per token, per layer, in the compute dtype of size `s`), from what the
//! CUDA ops keep alive between forward and backward:
//!
//! ```text
//!   hidden-sized tensors  15·H·s   layer input, LN₁ out, q/k before and after rotary, v,
//!                                  the padded q/k/v copies, context, attention output,
//!                                  residual, LN₂ out, FFN output
//!   FFN tensors            2·F·s   pre-activation and GELU output
//!   attention rows         A·L·s   probabilities: one row of L per head and query
//!   LN statistics          2·8 B
//! ```
//! plus, for one layer at a time, the fp32 scores and the backward's dP and dS
//! (`A·L·(4 + 2·s)` per token). `L` is the attention length a token sees (the padded
//! length of its sequence); with length-bucketed batches the token-weighted mean
//! length `Σ L² / Σ L` is a good value. This is an estimate from the code, not a
//! measurement: `qf-engine bench` reports the measured peak of the memory pool.

use crate::backend::cuda::CudaDevice;
use crate::model::{EsmConfig, Params};
use crate::tensor::DType;

/// Bytes of activations one token keeps alive in a training step of the CUDA path
/// (see the module documentation), for attention length `attn_len`.
pub fn activation_bytes_per_token(cfg: &EsmConfig, dtype: DType, attn_len: usize) -> usize {
    let s = dtype.size_in_bytes();
    let (h, f, a) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads);
    let per_layer = (15 * h + 2 * f + a * attn_len) * s + 16;
    let transient = a * attn_len * (4 + 2 * s);
    cfg.num_hidden_layers * per_layer + h * s + transient
}

/// Token-weighted mean sequence length `Σ L² / Σ L` of `lens` (each capped at
/// `max_len`): the attention length the average token sees.
pub fn token_weighted_length(lens: impl IntoIterator<Item = usize>, max_len: usize) -> usize {
    let (mut sq, mut sum) = (0f64, 0f64);
    for l in lens {
        let l = l.min(max_len) as f64;
        sq += l * l;
        sum += l;
    }
    if sum == 0.0 {
        0
    } else {
        (sq / sum).round() as usize
    }
}

/// Bytes of the GPU-resident state of a training run, and the device's memory.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuMemoryPlan {
    pub device: String,
    pub dtype: DType,
    /// fp32 master weights (all parameters).
    pub weights: usize,
    /// Half-precision compute copies of the matrix weights (f16/bf16 runs).
    pub half_copies: usize,
    /// fp32 gradients of the trainable parameters.
    pub grads: usize,
    pub optimizer: usize,
    pub activations_per_1k_tokens: usize,
    pub max_tokens: usize,
    /// Free and total device memory when the plan was made.
    pub free: usize,
    pub total: usize,
}

/// Whether a parameter gets a half compute copy: the matrices the linear layers read
/// through cuBLAS (the embedding table is read in fp32 by its kernel).
fn has_half_copy(name: &str, shape: &[usize]) -> bool {
    shape.len() == 2 && !name.contains("embeddings") && !name.contains("contact_head")
}

impl GpuMemoryPlan {
    /// The plan of a run over `params` with `optimizer_bytes` of optimizer state,
    /// micro-batches of `max_tokens` tokens whose attention length is about `attn_len`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        device: &CudaDevice,
        cfg: &EsmConfig,
        params: &Params,
        dtype: DType,
        optimizer_bytes: usize,
        max_tokens: usize,
        attn_len: usize,
    ) -> GpuMemoryPlan {
        let (mut weights, mut half, mut grads) = (0, 0, 0);
        for (name, t) in params.iter() {
            weights += t.numel() * 4;
            if t.requires_grad() {
                grads += t.numel() * 4;
            }
            if dtype != DType::F32 && has_half_copy(name, t.shape()) {
                half += t.numel() * dtype.size_in_bytes();
            }
        }
        let (free, total) = device.memory_info().unwrap_or((0, 0));
        GpuMemoryPlan {
            device: device.name().to_string(),
            dtype,
            weights,
            half_copies: half,
            grads,
            optimizer: optimizer_bytes,
            activations_per_1k_tokens: 1000 * activation_bytes_per_token(cfg, dtype, attn_len),
            max_tokens,
            free,
            total,
        }
    }

    /// Activations of one micro-batch of `max_tokens` tokens.
    pub fn activations(&self) -> usize {
        self.activations_per_1k_tokens * self.max_tokens / 1000
    }

    /// Everything together.
    pub fn total_bytes(&self) -> usize {
        self.weights + self.half_copies + self.grads + self.optimizer + self.activations()
    }

    /// The largest token budget whose plan fits in 90 % of the free memory (0 when not
    /// even the state fits), when the planned one does not fit.
    pub fn suggested_max_tokens(&self) -> Option<usize> {
        let budget = self.free as f64 * 0.9;
        if self.free == 0 || (self.total_bytes() as f64) <= budget {
            return None;
        }
        let state = (self.total_bytes() - self.activations()) as f64;
        let per_token = self.activations_per_1k_tokens as f64 / 1000.0;
        Some(if budget <= state || per_token <= 0.0 { 0 } else { ((budget - state) / per_token) as usize })
    }
}

impl std::fmt::Display for GpuMemoryPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
        write!(
            f,
            "GPU memory plan ({}, {:.0} MiB free of {:.0} MiB): weights {:.1} MiB",
            self.device,
            mib(self.free),
            mib(self.total),
            mib(self.weights)
        )?;
        if self.half_copies > 0 {
            write!(f, " + {:.1} MiB {} copies", mib(self.half_copies), self.dtype)?;
        }
        write!(
            f,
            ", gradients {:.1} MiB, optimizer {:.1} MiB, activations ≈ {:.1} MiB per 1k tokens \
             (≈ {:.0} MiB at {} tokens per micro-batch); total ≈ {:.0} MiB",
            mib(self.grads),
            mib(self.optimizer),
            mib(self.activations_per_1k_tokens),
            mib(self.activations()),
            self.max_tokens,
            mib(self.total_bytes())
        )?;
        if let Some(n) = self.suggested_max_tokens() {
            write!(f, " — more than the free memory: lower --max-tokens to about {n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_weighted_length_favours_long_sequences() {
        assert_eq!(token_weighted_length([100, 100], 1024), 100);
        // Σ L² / Σ L = (100² + 300²) / 400 = 250
        assert_eq!(token_weighted_length([100, 300], 1024), 250);
        assert_eq!(token_weighted_length([100, 3000], 200), 167); // (100² + 200²) / 300
        assert_eq!(token_weighted_length([], 200), 0);
    }

    #[test]
    fn activation_estimate_scales_with_dtype_and_length() {
        let cfg = EsmConfig::preset("esm2_t12_35M").unwrap();
        let a32 = activation_bytes_per_token(&cfg, DType::F32, 160);
        let a16 = activation_bytes_per_token(&cfg, DType::BF16, 160);
        assert!(a16 < a32 && a32 < 2 * a16 + 20_000, "{a16} {a32}");
        assert!(activation_bytes_per_token(&cfg, DType::BF16, 320) > a16);
        // 12 layers × (15·480 + 2·1920 + 20·160)·2 B ≈ 340 KB per token in bf16.
        assert!((300_000..450_000).contains(&a16), "{a16}");
    }
}
