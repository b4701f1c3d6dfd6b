//! Memory planning: the bytes a training step needs for weights, fp32 master copies,
//! gradients, optimizer state and activations, derived from the model shape and from what
//! each op saves on the autograd tape; and the measurement helpers that check the plan
//! (heap counting in tests, peak RSS on the CPU, the CUDA memory pool's high-water mark).
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
//! ``` A LoRA adapter
//! on a projection `in → out` of rank `r` (`model/lora.rs`) adds the base output, the
//! scaled update and its unscaled copy (`3·n·out·e`), the rank-`r` activation (`n·r·e`) and,
//! with dropout, the dropped-out input (`n·in·e`).
//!
//! Outside the layers: the final LayerNorm input and output, the `<cls>` rows and the head
//! (`S_out = 2·n·h·e + 8n + n_seqs·(4h + 2·classes)·e`) and the model inputs (`16n`).
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

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Result};

use crate::model::esm2::Recompute;
use crate::model::lora::LoraConfig;
use crate::model::{EsmConfig, HeadKind, Params};
use crate::optim::adam8bit;
use crate::optim::OptimizerKind;
use crate::tensor::DType;

/// Bytes in a MiB / GiB.
pub const MIB: f64 = (1u64 << 20) as f64;
pub const GIB: f64 = (1u64 << 30) as f64;

/// CUDA context and cuBLAS workspace: device memory outside the pool (an estimate).
pub const CUDA_RUNTIME_BYTES: u64 = 512 << 20;

/// One parameter tensor as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ParamSpec {
    pub name: String,
    pub numel: usize,
    pub trainable: bool,
    /// Multiplied in a GEMM (`ops::linear`), so a half-precision run keeps a compute copy.
    pub gemm: bool,
}

impl ParamSpec {
    fn new(name: String, numel: usize, trainable: bool, gemm: bool) -> Self {
        ParamSpec { name, numel, trainable, gemm }
    }
}

/// Whether a parameter of this name and rank is a GEMM weight: every 2-D `.weight` except
/// the embedding table and the contact regression (which are not read by `ops::linear`).
fn is_gemm_weight(name: &str, rank: usize) -> bool {
    rank == 2 && name.ends_with("weight") && !name.contains("word_embeddings") && !name.contains("contact_head")
}

/// The specs of an existing parameter store.
pub fn param_specs_of(params: &Params) -> Vec<ParamSpec> {
    params
        .iter()
        .map(|(name, t)| {
            ParamSpec::new(name.into(), t.numel(), t.requires_grad(), is_gemm_weight(name, t.shape().len()))
        })
        .collect()
}

/// What is trained (for specs without building the model).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelShape {
    pub cfg: EsmConfig,
    /// Sequence-classification head and its number of classes (none for a contact model).
    pub head: Option<(HeadKind, usize)>,
    /// LoRA adapters: the base encoder is frozen, adapters (and the head) train.
    pub lora: Option<LoraConfig>,
}

/// `(in, out)` of a LoRA target projection.
fn projection_dims(cfg: &EsmConfig, target: &str) -> Result<(usize, usize)> {
    let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
    Ok(match target {
        "query" | "key" | "value" | "attn_out" => (h, h),
        "ffn_in" => (h, f),
        "ffn_out" => (f, h),
        t => bail!("unknown LoRA target `{t}`"),
    })
}

/// HF name of a LoRA target projection inside layer `i`.
fn projection_name(i: usize, target: &str) -> String {
    let p = match target {
        "query" | "key" | "value" => format!("attention.self.{target}"),
        "attn_out" => "attention.output.dense".into(),
        "ffn_in" => "intermediate.dense".into(),
        _ => "output.dense".into(),
    };
    format!("esm.encoder.layer.{i}.{p}")
}

/// Every parameter of the model `shape` describes, with the same names, sizes and
/// trainable flags as the model built by `SequenceClassifier` (contact head frozen) or,
/// with LoRA, only adapters and head trainable.
pub fn param_specs(shape: &ModelShape) -> Result<Vec<ParamSpec>> {
    let cfg = &shape.cfg;
    let (h, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let base = shape.lora.is_none();
    let mut out = vec![ParamSpec::new("esm.embeddings.word_embeddings.weight".into(), v * h, base, false)];
    let linear = |out: &mut Vec<ParamSpec>, prefix: String, i: usize, o: usize, trainable: bool| {
        out.push(ParamSpec::new(format!("{prefix}.weight"), i * o, trainable, true));
        out.push(ParamSpec::new(format!("{prefix}.bias"), o, trainable, false));
    };
    let ln = |out: &mut Vec<ParamSpec>, prefix: String| {
        out.push(ParamSpec::new(format!("{prefix}.weight"), h, base, false));
        out.push(ParamSpec::new(format!("{prefix}.bias"), h, base, false));
    };
    for i in 0..cfg.num_hidden_layers {
        let p = format!("esm.encoder.layer.{i}");
        ln(&mut out, format!("{p}.attention.LayerNorm"));
        for proj in ["query", "key", "value"] {
            linear(&mut out, format!("{p}.attention.self.{proj}"), h, h, base);
        }
        linear(&mut out, format!("{p}.attention.output.dense"), h, h, base);
        ln(&mut out, format!("{p}.LayerNorm"));
        linear(&mut out, format!("{p}.intermediate.dense"), h, f, base);
        linear(&mut out, format!("{p}.output.dense"), f, h, base);
    }
    ln(&mut out, "esm.encoder.emb_layer_norm_after".into());
    let channels = cfg.num_hidden_layers * cfg.num_attention_heads;
    out.push(ParamSpec::new("esm.contact_head.regression.weight".into(), channels, false, false));
    out.push(ParamSpec::new("esm.contact_head.regression.bias".into(), 1, false, false));
    match shape.head {
        Some((HeadKind::Classification, c)) => {
            linear(&mut out, "classifier.dense".into(), h, h, true);
            linear(&mut out, "classifier.out_proj".into(), h, c, true);
        }
        Some((HeadKind::Linear, c)) => linear(&mut out, "classifier".into(), h, c, true),
        None => {}
    }
    if let Some(l) = &shape.lora {
        l.validate()?;
        for i in 0..cfg.num_hidden_layers {
            for t in &l.targets {
                let (fin, fout) = projection_dims(cfg, t)?;
                let name = projection_name(i, t);
                out.push(ParamSpec::new(format!("{name}.lora_A.weight"), l.rank * fin, true, true));
                out.push(ParamSpec::new(format!("{name}.lora_B.weight"), fout * l.rank, true, true));
            }
        }
    }
    Ok(out)
}

/// The tokens of one micro-batch as the activation formula needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchShape {
    pub tokens: usize,
    pub n_seqs: usize,
    pub max_len: usize,
    /// `Σ_s L_s²` (attention probabilities per head on the CPU).
    pub sum_sq_len: usize,
}

impl BatchShape {
    /// A batch of sequences with these lengths.
    pub fn from_lengths(lens: &[usize]) -> Self {
        BatchShape {
            tokens: lens.iter().sum(),
            n_seqs: lens.len(),
            max_len: lens.iter().copied().max().unwrap_or(0),
            sum_sq_len: lens.iter().map(|l| l * l).sum(),
        }
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
        let outside = 2 * n * h * e + 8 * n + b.n_seqs as u64 * (4 * h + 2 * n_classes as u64) * e + 16 * n;
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

/// Largest token budget (a multiple of `step`) whose planned total fits `limit` bytes,
/// searching budgets of full-length sequences of `max_len` tokens; 0 when none does.
pub fn largest_budget(
    limit: u64,
    step: usize,
    max_tokens: usize,
    plan: impl Fn(usize) -> Result<u64>,
) -> Result<usize> {
    let step = step.max(1);
    let (mut lo, mut hi) = (1usize, max_tokens / step);
    if hi == 0 || plan(step)? > limit {
        return Ok(0);
    }
    // plan() grows with the budget: binary search for the last fitting multiple.
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if plan(mid * step)? <= limit {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(lo * step)
}

/// A linear model `bytes(T) = fixed + per_token·T` through two measurements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearFit {
    pub fixed: f64,
    pub per_token: f64,
}

impl LinearFit {
    /// Through `(t1, b1)` and `(t2, b2)`, `t1 < t2`.
    pub fn through(t1: usize, b1: u64, t2: usize, b2: u64) -> Result<LinearFit> {
        if t2 <= t1 {
            bail!("a fit needs two different budgets ({t1} and {t2} tokens)");
        }
        let per_token = (b2 as f64 - b1 as f64) / (t2 - t1) as f64;
        Ok(LinearFit { fixed: b1 as f64 - per_token * t1 as f64, per_token })
    }

    pub fn at(&self, tokens: usize) -> f64 {
        self.fixed + self.per_token * tokens as f64
    }

    /// Largest multiple of `step` tokens with `at(T) ≤ limit` (0 when the fixed part alone
    /// exceeds it; `None` when memory does not grow with the budget).
    pub fn largest_budget(&self, limit: u64, step: usize) -> Option<usize> {
        if self.per_token <= 0.0 {
            return None;
        }
        let t = ((limit as f64 - self.fixed) / self.per_token).floor();
        if t < step as f64 {
            return Some(0);
        }
        let step = step.max(1);
        Some((t as usize / step) * step)
    }
}

/// `1.23 GiB`, `45.6 MiB` or `789 KiB`.
pub fn fmt_bytes(b: u64) -> String {
    let x = b as f64;
    if x >= GIB {
        format!("{:.2} GiB", x / GIB)
    } else if x >= MIB {
        format!("{:.1} MiB", x / MIB)
    } else {
        format!("{:.0} KiB", x / 1024.0)
    }
}

/// Parse a memory size: `12GB`, `12GiB`, `800MB`, `12e9` (bytes). GB means GiB here as in
/// GPU spec sheets' usage for memory sizes (`12GB` = 12·2³⁰ bytes); `GiB` is accepted too.
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let (num, unit) = match lower.find(|c: char| c.is_ascii_alphabetic() && c != 'e') {
        Some(i) => (&lower[..i], lower[i..].trim()),
        None => (lower.as_str(), ""),
    };
    let mult: f64 = match unit {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => GIB * 1024.0,
        u => bail!("memory size `{s}`: unknown unit `{u}` (use e.g. 12GB, 800MB)"),
    };
    let v: f64 = num.trim().parse().map_err(|_| anyhow::anyhow!("memory size `{s}` is not a number with a unit"))?;
    if !(v.is_finite() && v > 0.0) {
        bail!("memory size `{s}` must be positive");
    }
    Ok((v * mult) as u64)
}

// ---------------------------------------------------------------------------------------
// Measurement
// ---------------------------------------------------------------------------------------

static HEAP_LIVE: AtomicUsize = AtomicUsize::new(0);
static HEAP_PEAK: AtomicUsize = AtomicUsize::new(0);

/// A global allocator that counts live heap bytes and their high-water mark (install it
/// with `#[global_allocator]` in a test binary; [`heap_live_bytes`] and
/// [`heap_peak_bytes`] then report exact figures for the CPU backend).
pub struct CountingAllocator;

fn count_alloc(size: usize) {
    let live = HEAP_LIVE.fetch_add(size, Ordering::Relaxed) + size;
    HEAP_PEAK.fetch_max(live, Ordering::Relaxed);
}

// Safety: every call is forwarded to the system allocator unchanged; only counters move.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            count_alloc(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            count_alloc(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        HEAP_LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            HEAP_LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            count_alloc(new_size);
        }
        p
    }
}

/// Live heap bytes (0 unless [`CountingAllocator`] is the global allocator).
pub fn heap_live_bytes() -> usize {
    HEAP_LIVE.load(Ordering::Relaxed)
}

/// Highest live heap bytes since the last [`reset_heap_peak`].
pub fn heap_peak_bytes() -> usize {
    HEAP_PEAK.load(Ordering::Relaxed)
}

/// Start a new high-water mark at the current live bytes.
pub fn reset_heap_peak() {
    HEAP_PEAK.store(HEAP_LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// A field of `/proc/self/status` in bytes (Linux).
fn proc_status_bytes(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resident set size now (Linux `VmRSS`).
pub fn current_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS:")
}

/// Peak resident set size since the process started or the last reset (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_heap() {
    extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // Safety: glibc's malloc_trim only returns free pages to the kernel.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_heap() {}

/// Return free heap pages to the kernel and restart the peak RSS at the current RSS
/// (`/proc/self/clear_refs` ← 5, Linux ≥ 4.0), so that the next [`peak_rss_bytes`] minus
/// this call's return value is the growth of a measured section. Returns the RSS now.
pub fn reset_peak_rss() -> Result<u64> {
    release_free_heap();
    std::fs::write("/proc/self/clear_refs", "5").map_err(|e| {
        anyhow::anyhow!("cannot reset the peak RSS (/proc/self/clear_refs: {e}); CPU memory measurement needs Linux")
    })?;
    current_rss_bytes().ok_or_else(|| anyhow::anyhow!("cannot read /proc/self/status"))
}

/// Bytes in use in a CUDA device's default memory pool now.
pub fn pool_used_bytes(dev: &crate::backend::cuda::CudaDevice) -> Result<u64> {
    pool_attribute(dev, cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT, None)
}

/// Restart the pool's high-water mark (`pool_peak_bytes`) at the bytes in use now.
pub fn reset_pool_peak(dev: &crate::backend::cuda::CudaDevice) -> Result<()> {
    pool_attribute(dev, cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, Some(0)).map(|_| ())
}

fn pool_attribute(
    dev: &crate::backend::cuda::CudaDevice,
    attr: cudarc::driver::sys::CUmemPool_attribute,
    set: Option<u64>,
) -> Result<u64> {
    use cudarc::driver::sys;
    dev.synchronize()?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut value: u64 = set.unwrap_or(0);
    // Safety: plain driver queries on the device's own default pool.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, dev.context().cu_device()).result()?;
        let v = &mut value as *mut u64 as *mut std::ffi::c_void;
        match set {
            Some(_) => sys::cuMemPoolSetAttribute(pool, attr, v).result()?,
            None => sys::cuMemPoolGetAttribute(pool, attr, v).result()?,
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classifier(preset: &str, classes: usize) -> ModelShape {
        ModelShape {
            cfg: EsmConfig::preset(preset).unwrap(),
            head: Some((HeadKind::Classification, classes)),
            lora: None,
        }
    }

    #[test]
    fn param_specs_match_a_real_classifier() {
        let shape = classifier("esm2_tiny", 7);
        let labels = (0..7).map(|i| format!("c{i}")).collect();
        let m =
            crate::model::SequenceClassifier::new_random(&shape.cfg, labels, HeadKind::Classification, 0.0, 1).unwrap();
        let mut want = param_specs_of(&m.params);
        let mut got = param_specs(&shape).unwrap();
        want.sort();
        got.sort();
        assert_eq!(got, want);
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

    #[test]
    fn byte_sizes_parse() {
        assert_eq!(parse_bytes("12GB").unwrap(), 12 << 30);
        assert_eq!(parse_bytes("12 GiB").unwrap(), 12 << 30);
        assert_eq!(parse_bytes("800MB").unwrap(), 800 << 20);
        assert_eq!(parse_bytes("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("12 apples").is_err());
        assert!(parse_bytes("-3GB").is_err());
    }

    #[test]
    fn fits_and_searches() {
        let fit = LinearFit::through(1000, 3_000, 3000, 7_000).unwrap();
        assert_eq!((fit.fixed, fit.per_token), (1000.0, 2.0));
        assert_eq!(fit.largest_budget(21_000, 1000), Some(10_000));
        assert_eq!(fit.largest_budget(500, 1000), Some(0));
        let b = largest_budget(21_000, 1000, 1 << 20, |t| Ok(1000 + 2 * t as u64)).unwrap();
        assert_eq!(b, 10_000);
        assert_eq!(largest_budget(10, 1000, 1 << 20, |t| Ok(1000 + 2 * t as u64)).unwrap(), 0);
    }
}
