//! Flash attention on the GPU (`kernels/flash_attention.cu`): one fused kernel for the
//! forward pass (rotary on q and k as their tiles load, online softmax, the log-sum-exp
//! saved, optionally the probabilities written for the contact head in a second pass),
//! and three for the backward pass (Δ = rowsum(dO∘O) (+ rowsum(G∘P)); dK and dV per key
//! tile; dQ per query tile — deterministic, no atomics), all on packed sequences with no
//! padding and no `L×L` buffer. The CPU twin is `backend/cpu/flash_attention.rs`.
//!
//! fp16 and bf16 with head dims 16, 24, 32, 64 and 128 run the kernels; f32 (no tensor
//! cores at fp32 precision) and other head dims fall back to the unfused path (the rotary
//! kernel, then `attention.rs`), whose probabilities are padded
//! (`[n_seqs, heads, max_len, max_len]`) instead of packed (1-D, the CPU layout).
//!
//! Launches (from the kernel header): forward, kv and q kernels: block 128, grid
//! (ceil(max_len / 64), n_seqs, heads), dynamic shared memory [`flash_smem_bytes`]; the Δ
//! kernel: one warp per (head, token) row, [`warp_rows_config`].

use anyhow::{bail, Result};
use cudarc::driver::LaunchConfig;

use super::device::CudaDevice;
use super::kernels;
use super::launch::{device_of, dynamic_smem, empty, int, kname, p, p_opt, warp_rows_config, zeros};
use super::nvtx;
use crate::backend::cpu::attention::prob_offsets;
use crate::backend::SeqLayout;
use crate::tensor::{DType, Tensor};

/// Head dimensions with their own kernels.
pub const FLASH_HEAD_DIMS: [usize; 5] = [16, 24, 32, 64, 128];
/// Threads per block (4 warps of 16 rows each) and rows per block.
const THREADS: u32 = 128;
const ROWS_PER_BLOCK: usize = 64;
/// Largest grid.y and grid.z CUDA accepts.
const MAX_GRID_YZ: usize = 65_535;

/// The three tiled kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashStage {
    Forward,
    BackwardKv,
    BackwardQ,
}

/// Whether the flash kernels take this dtype and head dimension.
pub fn supports(dtype: DType, head_dim: usize) -> bool {
    matches!(dtype, DType::F16 | DType::BF16) && FLASH_HEAD_DIMS.contains(&head_dim)
}

/// Dynamic shared memory of a kernel (the kernel header's formulas): the rotary
/// frequencies, then tiles of rows of `head_dim + 8` 16-bit elements (`+ 16` for head dim
/// 24: rows ≡ 8 mod 16 elements keep ldmatrix free of bank conflicts).
pub fn flash_smem_bytes(stage: FlashStage, head_dim: usize) -> usize {
    let step = if head_dim <= 64 { 64 } else { 32 }; // keys (forward, q) or queries (kv) per step
    let row = (head_dim + if head_dim % 16 == 8 { 16 } else { 8 }) * 2;
    let inv_freq = head_dim / 2 * 4;
    match stage {
        FlashStage::Forward => inv_freq + (ROWS_PER_BLOCK + 2 * step) * row,
        FlashStage::BackwardKv => inv_freq + (2 * ROWS_PER_BLOCK + 2 * step) * row + 8 * step,
        FlashStage::BackwardQ => inv_freq + (2 * ROWS_PER_BLOCK + 2 * step) * row,
    }
}

/// Grid (ceil(max_len / 64), n_seqs, heads) of blocks of 128 threads.
pub fn flash_config(stage: FlashStage, head_dim: usize, layout: &SeqLayout, heads: usize) -> Result<LaunchConfig> {
    if layout.n_seqs() > MAX_GRID_YZ || heads > MAX_GRID_YZ {
        bail!("flash attention: at most {MAX_GRID_YZ} sequences and heads per call");
    }
    Ok(LaunchConfig {
        grid_dim: (layout.max_len.div_ceil(ROWS_PER_BLOCK).max(1) as u32, layout.n_seqs() as u32, heads as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: flash_smem_bytes(stage, head_dim) as u32,
    })
}

/// The launch configuration with the kernel's shared-memory limit raised where it needs
/// more than 48 KiB.
fn config(
    dev: &CudaDevice,
    stage: FlashStage,
    name: &str,
    head_dim: usize,
    layout: &SeqLayout,
    heads: usize,
) -> Result<LaunchConfig> {
    let cfg = flash_config(stage, head_dim, layout, heads)?;
    let granted = dynamic_smem(dev, "flash_attention", name, cfg.shared_mem_bytes as usize)?;
    if granted < cfg.shared_mem_bytes {
        bail!(
            "flash attention: `{name}` needs {} bytes of shared memory per block, more than this GPU gives; \
             use --attention unfused",
            cfg.shared_mem_bytes
        );
    }
    Ok(cfg)
}

/// Sizes of one call.
#[derive(Clone, Copy)]
struct Dims {
    tokens: usize,
    heads: usize,
    head_dim: usize,
}

/// The forward kernel: `(out, lse, probs)`.
#[allow(clippy::too_many_arguments)]
fn run_forward(
    dev: &CudaDevice,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    positions: &Tensor,
    layout: &SeqLayout,
    d: Dims,
    q_scale: f32,
    want_probs: bool,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let dt = q.dtype();
    let out = empty(dev, &[d.tokens, d.heads * d.head_dim], dt)?;
    let lse = empty(dev, &[d.heads, d.tokens], DType::F32)?;
    let probs = if want_probs { Some(empty(dev, &[prob_offsets(&layout.cu, d.heads).1], dt)?) } else { None };
    use kernels::flash_attention as fa;
    let forward = match d.head_dim {
        16 => fa::flash_attention_forward_d16,
        24 => fa::flash_attention_forward_d24,
        32 => fa::flash_attention_forward_d32,
        64 => fa::flash_attention_forward_d64,
        128 => fa::flash_attention_forward_d128,
        hd => bail!("no flash attention kernel for head dim {hd}"),
    };
    let name = kname(&format!("flash_attention_forward_d{}", d.head_dim), dt)?;
    let cfg = config(dev, FlashStage::Forward, &name, d.head_dim, layout, d.heads)?;
    forward(
        dev,
        cfg,
        p(&out)?,
        p(&lse)?,
        p_opt(probs.as_ref())?,
        p(q)?,
        p(k)?,
        p(v)?,
        p(positions)?,
        p(&layout.cu_device)?,
        int(layout.n_seqs())?,
        int(d.tokens)?,
        int(d.heads)?,
        q_scale,
    )?;
    Ok((out, lse, probs))
}

/// What the backward pass reads.
pub struct FlashSaved {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    positions: Tensor,
    layout: SeqLayout,
    out: Tensor,
    lse: Tensor,
    probs: Option<Tensor>,
    d: Dims,
    q_scale: f32,
}

/// Gradients into `dq`, `dk`, `dv` (accumulated; `None` skips one) from the gradient on
/// the output `dout` and on the probabilities `dprobs`.
fn run_backward(
    dev: &CudaDevice,
    s: &FlashSaved,
    dout: &Tensor,
    dprobs: Option<&Tensor>,
    grads: (Option<&Tensor>, Option<&Tensor>, Option<&Tensor>),
) -> Result<()> {
    let (dt, d) = (s.q.dtype(), s.d);
    let (dq, dk, dv) = grads;
    let delta = empty(dev, &[d.heads, d.tokens], DType::F32)?;
    let probs_for_delta = if dprobs.is_some() { s.probs.as_ref() } else { None };
    // flash_attention_backward_dot_T(delta, out, dout, probs, dprobs, cu_seqlens, n_seqs,
    //                                n_tokens, n_heads, head_dim)
    kernels::flash_attention::flash_attention_backward_dot(
        dev,
        warp_rows_config(d.heads * d.tokens),
        p(&delta)?,
        p(&s.out)?,
        p(dout)?,
        p_opt(probs_for_delta)?,
        p_opt(dprobs)?,
        p(&s.layout.cu_device)?,
        int(s.layout.n_seqs())?,
        int(d.tokens)?,
        int(d.heads)?,
        int(d.head_dim)?,
    )?;
    if dk.is_some() || dv.is_some() {
        use kernels::flash_attention as fa;
        let backward_kv = match d.head_dim {
            16 => fa::flash_attention_backward_kv_d16,
            24 => fa::flash_attention_backward_kv_d24,
            32 => fa::flash_attention_backward_kv_d32,
            64 => fa::flash_attention_backward_kv_d64,
            128 => fa::flash_attention_backward_kv_d128,
            hd => bail!("no flash attention kernel for head dim {hd}"),
        };
        let name = kname(&format!("flash_attention_backward_kv_d{}", d.head_dim), dt)?;
        let cfg = config(dev, FlashStage::BackwardKv, &name, d.head_dim, &s.layout, d.heads)?;
        backward_kv(
            dev,
            cfg,
            p_opt(dk)?,
            p_opt(dv)?,
            p(&s.q)?,
            p(&s.k)?,
            p(&s.v)?,
            p(dout)?,
            p(&s.lse)?,
            p(&delta)?,
            p_opt(dprobs)?,
            p(&s.positions)?,
            p(&s.layout.cu_device)?,
            int(s.layout.n_seqs())?,
            int(d.tokens)?,
            int(d.heads)?,
            s.q_scale,
        )?;
    }
    if let Some(dq) = dq {
        use kernels::flash_attention as fa;
        let backward_q = match d.head_dim {
            16 => fa::flash_attention_backward_q_d16,
            24 => fa::flash_attention_backward_q_d24,
            32 => fa::flash_attention_backward_q_d32,
            64 => fa::flash_attention_backward_q_d64,
            128 => fa::flash_attention_backward_q_d128,
            hd => bail!("no flash attention kernel for head dim {hd}"),
        };
        let name = kname(&format!("flash_attention_backward_q_d{}", d.head_dim), dt)?;
        let cfg = config(dev, FlashStage::BackwardQ, &name, d.head_dim, &s.layout, d.heads)?;
        backward_q(
            dev,
            cfg,
            p(dq)?,
            p(&s.q)?,
            p(&s.k)?,
            p(&s.v)?,
            p(dout)?,
            p(&s.lse)?,
            p(&delta)?,
            p_opt(dprobs)?,
            p(&s.positions)?,
            p(&s.layout.cu_device)?,
            int(s.layout.n_seqs())?,
            int(d.tokens)?,
            int(d.heads)?,
            s.q_scale,
        )?;
    }
    Ok(())
}

/// Attention with rotary inside (see `ops::flash_attention`) for a dtype and head
/// dimension that [`supports`] takes: the output, the probabilities when asked (packed
/// 1-D like the CPU's) and what the backward reads.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    positions: &Tensor,
    layout: &SeqLayout,
    n_heads: usize,
    q_scale: f64,
    want_probs: bool,
) -> Result<(Tensor, Option<Tensor>, FlashSaved)> {
    let dev = device_of(q)?;
    let (n, width) = q.dims2()?;
    let dt = q.dtype();
    if k.dtype() != dt || v.dtype() != dt {
        bail!("flash attention on CUDA: q, k, v dtypes differ ({dt}, {}, {})", k.dtype(), v.dtype());
    }
    let head_dim = width / n_heads;
    if !supports(dt, head_dim) {
        bail!("no flash attention kernel for {dt} with head dim {head_dim}");
    }
    let _r = nvtx::fwd("flash_attention");
    let d = Dims { tokens: n, heads: n_heads, head_dim };
    let (out, lse, probs) = run_forward(&dev, q, k, v, positions, layout, d, q_scale as f32, want_probs)?;
    let saved = FlashSaved {
        q: q.clone(),
        k: k.clone(),
        v: v.clone(),
        positions: positions.clone(),
        layout: layout.clone(),
        out: out.clone(),
        lse,
        probs: probs.clone(),
        d,
        q_scale: q_scale as f32,
    };
    Ok((out, probs, saved))
}

/// `dq`, `dk`, `dv` += the gradients from `dout` (the output's gradient) and `dprobs`
/// (a gradient on the probabilities); each output skipped when `None`.
pub fn backward(
    dq: Option<&Tensor>,
    dk: Option<&Tensor>,
    dv: Option<&Tensor>,
    dout: Option<&Tensor>,
    dprobs: Option<&Tensor>,
    s: &FlashSaved,
) -> Result<()> {
    let _r = nvtx::bwd("flash_attention");
    let dev = device_of(&s.out)?;
    let d = s.d;
    let dout = match dout {
        Some(g) => g.clone(),
        None if dprobs.is_some() => zeros(&dev, &[d.tokens, d.heads * d.head_dim], s.q.dtype())?,
        None => return Ok(()),
    };
    run_backward(&dev, s, &dout, dprobs, (dq, dk, dv))
}
