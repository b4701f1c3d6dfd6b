//! The memory planner: the bytes a training step needs for weights, fp32 master copies,
//! gradients, optimizer state and activations, derived from the model shape (the
//! parameter list of `specs.rs`) and from what each op saves on the autograd tape.
//!
//! # Parameters (per element)
//!
//! | part        | bytes                                                                      |
//! |-------------|----------------------------------------------------------------------------|
//! | weights     | fp32 runs: 4 (the parameters themselves); fp16/bf16: 2 per GEMM weight (the half compute copies `backend/cuda/linear.rs` makes; embeddings, LayerNorm and biases are read in fp32) |
//! | master      | fp16/bf16 runs: 4 for every parameter (fp32 masters, frozen ones included); fp32 runs: 0 |
//! | gradients   | 4 per **trainable** element (fp32 accumulation buffers)                    |
//! | optimizer   | AdamW: 8 per trainable element; 8-bit AdamW: `2 + 8/256` = 2.03 per element of trainable tensors with ≥ 4,096 elements, 8 for smaller ones (`optim::adam8bit::state_bytes`) |
//!
//! # Activations (what the tape holds)
//!
//! With `n` tokens, hidden `h`, FFN width `f`, `H` heads, `e` bytes per activation
//! element (4 on the CPU and in fp32, 2 in fp16/bf16), one transformer layer saves, op by
//! op (`ops/*.rs`, `backend/cuda/*.rs`):
//!
//! ```text
//! attn LayerNorm   x (the layer input) + mean, rstd (fp32)        n·h·e + 8n
//! q, k, v linear   LN output (one tensor shared by the three)     n·h·e
//! rotary q, k      q, k before rotation                           2·n·h·e
//! attention        q, k rotated, v, probabilities                 3·n·h·e + P·e
//!                  (CUDA also keeps padded copies of q, k, v)     + 3·n_pad·h·e
//! attn out linear  context                                        n·h·e
//! residual add     both operands (the projection output is new)   n·h·e
//! FFN LayerNorm    x + mean, rstd                                 n·h·e + 8n
//! FFN in linear    LN output                                      n·h·e
//! bias + GELU      pre-activation                                 n·f·e
//! FFN out linear   GELU output                                    n·f·e
//! residual add     the projection output                          n·h·e
//! ─────────────────────────────────────────────────────────────────────────────
//! S_layer = (12·n·h + 2·n·f)·e + P·e + 16n   (+ 3·n_pad·h·e on CUDA)
//! ```
//!
//! `P` is the number of attention probabilities: `H·Σ_s L_s²` on the CPU (packed per
//! sequence), `H·n_seqs·L_max²` on CUDA (padded), `n_pad = n_seqs·L_max`.
//!
//! On CUDA with the flash kernel (the default attention in fp16/bf16 for head dims 16, 24,
//! 32, 64, 128: `backend/cuda/flash_attention.rs`) there is no rotary op and nothing
//! quadratic unless a contact head asks for the probabilities (then packed, `P = H·Σ_s L_s²`):
//!
//! ```text
//! flash attention  q, k, v (unrotated), log-sum-exp (fp32)        3·n·h·e + 4·H·n
//!                  [+ contacts: the packed probabilities]         [+ P·e]
//! S_layer (flash) = (10·n·h + 2·n·f)·e + 16n + 4·H·n [+ P·e]
//! T (flash)       = max((n·h + 2·n·f)·e, 4·n·h·e + 4·H·n)     dq, dk, dv, dO, Δ
//! ```
//!
//! A LoRA adapter on a projection `in → out` of rank `r` (`model/lora/`) adds the base output, the
//! scaled update and its unscaled copy (`3·n·out·e`), the rank-`r` activation (`n·r·e`) and,
//! with dropout, the dropped-out input (`n·in·e`).
//!
//! Outside the layers: the final LayerNorm input and output, the rows the head reads and the
//! head (`S_out = 2·n·h·e + 8n + rows·(4h + 2·classes)·e`, rows = one per sequence for a
//! classifier, the masked tokens for the MLM head with the vocabulary as classes) and the
//! model inputs (`16n`).
//!
//! **Peak.** Without recomputation the tape holds every layer's `S_layer` at the end of the
//! forward pass, and the backward pass of the top layer adds its gradient buffers `T`. With
//! `--recompute layer` the tape holds each layer's input (`n·h·e`, plus the probabilities
//! when a contact head keeps them; the last layer's output is the final LayerNorm's input,
//! in `S_out`), and the backward pass holds one recomputed layer at a time:
//!
//! ```text
//! A_none  = L·S_layer + S_out + 16n + T
//! A_layer = L·n·h·e + [contacts: L·P·e] + (S_layer − n·h·e) + S_out + 16n + T
//! T (CPU) = max((n·h + 2·n·f)·e, 5·n·h·e)             FFN / attention backward buffers
//! T (CUDA)= max((n·h + 2·n·f)·e, (2·P + 2·n_pad·h + 4·n·h)·e, 4·P + 4·n_pad·h·e)
//!                                                      (+ fp32 scores in the forward pass)
//! ```
//!
//! The plan's total is the **sum** of the parts: an upper bound, since gradients are
//! allocated during the backward pass while activations are being released. On CUDA a
//! fixed 512 MiB is added for the context and cuBLAS workspace, which live outside the
//! memory pool that `pool_peak_bytes` measures.

use anyhow::{bail, Result};

use super::specs::{projection_dims, ParamSpec};
use super::units::fmt_bytes;
use crate::model::esm2::Recompute;
use crate::model::lora::LoraConfig;
use crate::model::EsmConfig;
use crate::optim::adam8bit;
use crate::optim::OptimizerKind;
use crate::tensor::DType;

/// CUDA context and cuBLAS workspace: device memory outside the pool (an estimate).
pub const CUDA_RUNTIME_BYTES: u64 = 512 << 20;

/// The tokens of one micro-batch as the activation formula needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchShape {
    pub tokens: usize,
    pub n_seqs: usize,
    pub max_len: usize,
    /// `Σ_s L_s²` (attention probabilities per head on the CPU).
    pub sum_sq_len: usize,
    /// Rows the task head reads: one per sequence for a sequence classifier (`<cls>` or
    /// the mean), the masked tokens for the masked-language-model head.
    pub head_rows: usize,
}

impl BatchShape {
    /// A batch of sequences with these lengths.
    pub fn from_lengths(lens: &[usize]) -> Self {
        BatchShape {
            tokens: lens.iter().sum(),
            n_seqs: lens.len(),
            max_len: lens.iter().copied().max().unwrap_or(0),
            sum_sq_len: lens.iter().map(|l| l * l).sum(),
            head_rows: lens.len(),
        }
    }

    /// The same batch with a head that reads `rows` rows.
    pub fn with_head_rows(self, rows: usize) -> Self {
        BatchShape { head_rows: rows, ..self }
    }

    /// The worst case for a token budget: sequences of `max_len` tokens (the last one
    /// shorter), the most attention probabilities per token.
    pub fn full(tokens: usize, max_len: usize) -> Self {
        let max_len = max_len.max(1);
        let mut lens = vec![max_len; tokens / max_len];
        if tokens % max_len > 0 {
            lens.push(tokens % max_len);
        }
        Self::from_lengths(&lens)
    }
}

/// Where and how a run computes.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanOptions {
    /// CUDA (padded attention, compute copies) or the CPU reference.
    pub cuda: bool,
    /// Activation dtype (f32 on the CPU; f32, f16 or bf16 on CUDA).
    pub compute: DType,
    pub optimizer: OptimizerKind,
    pub recompute: Recompute,
    /// A contact head reads every layer's attention probabilities (kept until backward).
    pub contacts: bool,
}

/// Planned bytes of one training step, by part.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    /// Compute-dtype weights (the fp32 parameters in fp32 runs; half copies otherwise).
    pub weights: u64,
    /// fp32 master parameters in half-precision runs.
    pub master: u64,
    pub gradients: u64,
    pub optimizer: u64,
    /// Activation bytes the tape holds at the end of the forward pass.
    pub saved_activations: u64,
    /// Peak activation bytes (saved + one layer's backward buffers, or the recomputed layer).
    pub activations: u64,
    /// CUDA context and cuBLAS workspace outside the pool (0 on the CPU).
    pub runtime: u64,
    pub tokens: usize,
    pub total_params: usize,
    pub trainable_params: usize,
}

impl MemoryPlan {
    /// Plan a step of `batch` for the parameters `specs` of an encoder `cfg`, with the
    /// CUDA attention new devices get (`--attention`).
    pub fn new(
        cfg: &EsmConfig,
        specs: &[ParamSpec],
        lora: Option<&LoraConfig>,
        n_classes: usize,
        opts: &PlanOptions,
        batch: &BatchShape,
    ) -> Result<MemoryPlan> {
        let attention = crate::backend::cuda::device::default_attention();
        Self::with_attention(cfg, specs, lora, n_classes, opts, batch, attention)
    }

    /// [`MemoryPlan::new`] for a given CUDA attention path.
    pub fn with_attention(
        cfg: &EsmConfig,
        specs: &[ParamSpec],
        lora: Option<&LoraConfig>,
        n_classes: usize,
        opts: &PlanOptions,
        batch: &BatchShape,
        attention: crate::backend::cuda::AttentionKernel,
    ) -> Result<MemoryPlan> {
        let half = matches!(opts.compute, DType::F16 | DType::BF16);
        if half && !opts.cuda {
            bail!("the CPU backend computes in fp32; a {} plan needs CUDA", opts.compute);
        }
        let total: usize = specs.iter().map(|s| s.numel).sum();
        let trainable: usize = specs.iter().filter(|s| s.trainable).map(|s| s.numel).sum();
        let gemm: usize = specs.iter().filter(|s| s.gemm).map(|s| s.numel).sum();
        let optimizer = specs
            .iter()
            .filter(|s| s.trainable)
            .map(|s| match opts.optimizer {
                OptimizerKind::AdamW => 8 * s.numel,
                OptimizerKind::AdamW8bit => adam8bit::state_bytes(s.numel),
            })
            .sum::<usize>();
        let act = Activations::new(cfg, lora, n_classes, opts, batch, flash_attention_in_use(cfg, opts, attention))?;
        Ok(MemoryPlan {
            weights: if half { 2 * gemm as u64 } else { 4 * total as u64 },
            master: if half { 4 * total as u64 } else { 0 },
            gradients: 4 * trainable as u64,
            optimizer: optimizer as u64,
            saved_activations: act.saved(),
            activations: act.peak(),
            runtime: if opts.cuda { CUDA_RUNTIME_BYTES } else { 0 },
            tokens: batch.tokens,
            total_params: total,
            trainable_params: trainable,
        })
    }

    /// Everything: weights + master + gradients + optimizer + peak activations + runtime.
    pub fn total(&self) -> u64 {
        self.weights + self.master + self.gradients + self.optimizer + self.activations + self.runtime
    }

    /// Peak activation bytes per 1,000 tokens of this batch shape.
    pub fn activations_per_1k_tokens(&self) -> u64 {
        (self.activations as f64 * 1000.0 / self.tokens.max(1) as f64) as u64
    }

    /// Optimizer bytes per trainable parameter.
    pub fn optimizer_bytes_per_param(&self) -> f64 {
        self.optimizer as f64 / self.trainable_params.max(1) as f64
    }

    /// One line for the training log.
    pub fn summary(&self) -> String {
        let gib = |b: u64| fmt_bytes(b);
        let mut s = format!(
            "memory plan: weights {}, master {}, gradients {}, optimizer {} ({:.2} B/param), activations {} \
             ({} tokens; {} per 1k tokens)",
            gib(self.weights),
            gib(self.master),
            gib(self.gradients),
            gib(self.optimizer),
            self.optimizer_bytes_per_param(),
            gib(self.activations),
            self.tokens,
            gib(self.activations_per_1k_tokens()),
        );
        if self.runtime > 0 {
            s.push_str(&format!(", CUDA runtime {}", gib(self.runtime)));
        }
        s.push_str(&format!(" = {} planned", gib(self.total())));
        s
    }
}

/// The activation formula of the module docs for one batch.
struct Activations {
    layers: u64,
    /// `S_layer`.
    layer: u64,
    /// A layer's input `n·h·e`.
    input: u64,
    /// One layer's probabilities `P·e`.
    probs: u64,
    /// `S_out + 16n`.
    outside: u64,
    /// `T`.
    transient: u64,
    recompute: bool,
    contacts: bool,
}

/// Whether a CUDA run of this model computes its attention with the flash kernel: the
/// flash attention chosen, and a dtype and head dim it takes (else the unfused fallback).
fn flash_attention_in_use(
    cfg: &EsmConfig,
    opts: &PlanOptions,
    attention: crate::backend::cuda::AttentionKernel,
) -> bool {
    use crate::backend::cuda::{flash_attention::supports, AttentionKernel};
    opts.cuda && attention == AttentionKernel::Flash && supports(opts.compute, cfg.head_dim())
}

impl Activations {
    fn new(
        cfg: &EsmConfig,
        lora: Option<&LoraConfig>,
        n_classes: usize,
        opts: &PlanOptions,
        b: &BatchShape,
        flash: bool,
    ) -> Result<Self> {
        let e = opts.compute.size_in_bytes() as u64;
        let (n, h, f) = (b.tokens as u64, cfg.hidden_size as u64, cfg.intermediate_size as u64);
        let heads = cfg.num_attention_heads as u64;
        let (p, n_pad) = if opts.cuda && !flash {
            (heads * (b.n_seqs * b.max_len * b.max_len) as u64, (b.n_seqs * b.max_len) as u64)
        } else {
            (heads * b.sum_sq_len as u64, n)
        };
        let mut layer = if flash {
            // No rotary op, no padded copies; the probabilities exist only for a contact head.
            (10 * n * h + 2 * n * f) * e + 16 * n + 4 * heads * n + if opts.contacts { p * e } else { 0 }
        } else {
            (12 * n * h + 2 * n * f + p) * e + 16 * n
        };
        if opts.cuda && !flash {
            layer += 3 * n_pad * h * e;
        }
        if let Some(l) = lora {
            for t in &l.targets {
                let (fin, fout) = projection_dims(cfg, t)?;
                let dropped = if l.dropout > 0.0 { n * fin as u64 } else { 0 };
                layer += (3 * n * fout as u64 + n * l.rank as u64 + dropped) * e;
            }
        }
        let transient = if flash {
            ((n * h + 2 * n * f) * e).max(4 * n * h * e + 4 * heads * n)
        } else if opts.cuda {
            ((n * h + 2 * n * f) * e).max((2 * p + 2 * n_pad * h + 4 * n * h) * e).max(4 * p + 4 * n_pad * h * e)
        } else {
            ((n * h + 2 * n * f) * e).max(5 * n * h * e)
        };
        let outside = 2 * n * h * e + 8 * n + b.head_rows as u64 * (4 * h + 2 * n_classes as u64) * e + 16 * n;
        Ok(Activations {
            layers: cfg.num_hidden_layers as u64,
            layer,
            input: n * h * e,
            probs: p * e,
            outside,
            transient,
            recompute: opts.recompute == Recompute::Layer,
            contacts: opts.contacts,
        })
    }

    /// Held by the tape when the forward pass ends.
    fn saved(&self) -> u64 {
        if self.recompute {
            self.layers * self.input + if self.contacts { self.layers * self.probs } else { 0 } + self.outside
        } else {
            self.layers * self.layer + self.outside
        }
    }

    fn peak(&self) -> u64 {
        // The recomputed layer's input is the saved handle, not a new tensor.
        let recomputed = if self.recompute { self.layer - self.input } else { 0 };
        self.saved() + recomputed + self.transient
    }
}

#[cfg(test)]
mod tests {
    use super::super::specs::{param_specs, ModelShape};
    use super::*;
    use crate::model::HeadKind;

    fn classifier(preset: &str, classes: usize) -> ModelShape {
        ModelShape {
            cfg: EsmConfig::preset(preset).unwrap(),
            head: Some((HeadKind::Classification, classes)),
            lora: None,
        }
    }
    #[test]
    fn eight_bit_state_is_about_two_bytes_per_parameter() {
        let shape = classifier("esm2_t33_650M", 1000);
        let specs = param_specs(&shape).unwrap();
        let opts = PlanOptions {
            cuda: true,
            compute: DType::BF16,
            optimizer: OptimizerKind::AdamW8bit,
            recompute: Recompute::Layer,
            contacts: false,
        };
        let plan = MemoryPlan::new(&shape.cfg, &specs, None, 1000, &opts, &BatchShape::full(1024, 1024)).unwrap();
        let bpp = plan.optimizer_bytes_per_param();
        assert!((2.03..2.1).contains(&bpp), "{bpp}");
        let fp32 = MemoryPlan::new(
            &shape.cfg,
            &specs,
            None,
            1000,
            &PlanOptions { optimizer: OptimizerKind::AdamW, ..opts },
            &BatchShape::full(1024, 1024),
        )
        .unwrap();
        assert_eq!(fp32.optimizer_bytes_per_param(), 8.0);
    }

    /// At a fixed token budget the flash path's activations do not grow with the longest
    /// sequence (classification: nothing quadratic is kept); the unfused path's padded
    /// probabilities grow with max_len².
    #[test]
    fn flash_activations_do_not_grow_with_the_longest_sequence() {
        let shape = classifier("esm2_t12_35M", 1000);
        let opts = PlanOptions {
            cuda: true,
            compute: DType::BF16,
            optimizer: OptimizerKind::AdamW,
            recompute: Recompute::None,
            contacts: false,
        };
        let act = |flash: bool, max_len: usize| {
            let b = BatchShape::full(16384, max_len);
            Activations::new(&shape.cfg, None, 1000, &opts, &b, flash).unwrap().peak()
        };
        // (Fewer, longer sequences: only the per-sequence head rows change, downwards.)
        let (short, long) = (act(true, 128), act(true, 1024));
        assert!(long <= short, "flash activations grow with max_len: {short} → {long}");
        // Padded probabilities: H·n_seqs·L² = H·n·L at n tokens, 8× more at L = 1024.
        let (unfused_short, unfused_long) = (act(false, 128), act(false, 1024));
        assert!(unfused_long > 2 * unfused_short, "unfused {unfused_short} → {unfused_long}");
        // 35M, 16,384 tokens of 1,024: 3.6 GB planned for flash, 13.9 GB unfused.
        assert!(long < unfused_long / 3, "flash {long} against unfused {unfused_long} at max_len 1024");
        let flash = crate::backend::cuda::AttentionKernel::Flash;
        assert!(flash_attention_in_use(&shape.cfg, &opts, flash), "35M (head dim 24) in bf16 runs the flash kernel");
        let f32_opts = PlanOptions { compute: DType::F32, ..opts.clone() };
        assert!(!flash_attention_in_use(&shape.cfg, &f32_opts, flash), "f32 falls back to the unfused path");
    }

    #[test]
    fn batch_shapes() {
        let b = BatchShape::full(2500, 1024);
        assert_eq!((b.tokens, b.n_seqs, b.max_len, b.sum_sq_len), (2500, 3, 1024, 2 * 1024 * 1024 + 452 * 452));
    }
}
