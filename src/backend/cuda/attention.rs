//! Attention on the GPU, first path (`kernels/attention.cu` + cuBLAS): the packed q, k, v
//! are scattered into padded per-sequence blocks `[n_seqs, heads, max_len, d]`, the
//! products run as strided-batched GEMMs over `n_seqs·heads` blocks, the masked softmax
//! is fused (fp32 scores in, compute-dtype probabilities out), and the output is
//! gathered back to the packed layout. Length-bucketed batches keep the padding small.
//! The default CUDA attention is now the fused kernel of `flash_attention.rs`; this path
//! is the reference behind `--attention unfused` and the fallback for f32 and for head
//! dims the flash kernels do not take.
//!
//! Launches (from the kernel header): pack/unpack flat grid-stride, block 256, grid
//! min(ceil(elements/256), 32·SMs); softmax forward/backward one warp per score row,
//! block 256, grid ceil(rows/8).

use anyhow::Result;

use super::device::CudaDevice;
use super::gemm::{gemm, Batch, Operand};
use super::kernels;
use super::launch::{device_of, empty, flat_config, int, p, ptr, warp_rows_config};
use super::nvtx;
use crate::backend::SeqLayout;
use crate::tensor::{DType, Tensor};

/// Sizes of one call.
#[derive(Clone, Copy)]
struct Dims {
    n_seqs: usize,
    heads: usize,
    max_len: usize,
    head_dim: usize,
    width: usize,
}

impl Dims {
    fn blocks(&self) -> usize {
        self.n_seqs * self.heads
    }
    fn padded_len(&self) -> usize {
        self.blocks() * self.max_len * self.head_dim
    }
    fn probs_len(&self) -> usize {
        self.blocks() * self.max_len * self.max_len
    }
    fn row_blocks(&self) -> usize {
        self.blocks() * self.max_len
    }
}

fn pack(dev: &CudaDevice, src: &Tensor, layout: &SeqLayout, d: Dims) -> Result<Tensor> {
    let dst = empty(dev, &[d.padded_len()], src.dtype())?;
    // attn_pack_T(dst, src, cu_seqlens, n_seqs, max_len, n_heads, head_dim, src_row_stride)
    kernels::attention::attn_pack(
        dev,
        flat_config(dev, d.padded_len(), 1, 32),
        p(&dst)?,
        p(src)?,
        p(&layout.cu_device)?,
        int(d.n_seqs)?,
        int(d.max_len)?,
        int(d.heads)?,
        int(d.head_dim)?,
        int(d.width)?,
    )?;
    Ok(dst)
}

fn unpack_into(
    dev: &CudaDevice,
    dst: &Tensor,
    src: &Tensor,
    layout: &SeqLayout,
    d: Dims,
    accumulate: bool,
) -> Result<()> {
    // attn_unpack_T(dst, src, cu_seqlens, n_seqs, max_len, n_heads, head_dim, dst_row_stride, accumulate)
    kernels::attention::attn_unpack(
        dev,
        flat_config(dev, d.padded_len(), 1, 32),
        p(dst)?,
        p(src)?,
        p(&layout.cu_device)?,
        int(d.n_seqs)?,
        int(d.max_len)?,
        int(d.heads)?,
        int(d.head_dim)?,
        int(d.width)?,
        accumulate as i32,
    )
}

/// Batched product over the `n_seqs·heads` blocks: `C = op(A)·op(B)`.
#[allow(clippy::too_many_arguments)]
fn batched(
    dev: &CudaDevice,
    m: usize,
    n: usize,
    k: usize,
    a: Operand,
    sa: usize,
    b: Operand,
    sb: usize,
    c: &Tensor,
    sc: usize,
    ldc: usize,
    beta: f32,
    count: usize,
) -> Result<()> {
    let batch = Batch { count, stride_a: sa, stride_b: sb, stride_c: sc };
    gemm(dev, m, n, k, a, b, ptr(c)?, c.dtype(), ldc, 1.0, beta, Some(batch))
}

/// What the backward reads: the padded q, k, v blocks and the probabilities.
pub struct AttnSaved {
    qp: Tensor,
    kp: Tensor,
    vp: Tensor,
    probs: Tensor,
    dims: Dims,
}

/// The packed output `[tokens, heads·d]`, the padded probabilities
/// `[n_seqs, heads, max_len, max_len]` and what the backward needs.
pub fn forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: &SeqLayout,
    n_heads: usize,
    scale: f64,
) -> Result<(Tensor, Tensor, AttnSaved)> {
    let _r = nvtx::fwd("attention");
    let dev = device_of(q)?;
    let (n, width) = q.dims2()?;
    let dt = q.dtype();
    if k.dtype() != dt || v.dtype() != dt {
        anyhow::bail!("attention on CUDA: q, k, v dtypes differ ({dt}, {}, {})", k.dtype(), v.dtype());
    }
    let d = Dims { n_seqs: layout.n_seqs(), heads: n_heads, max_len: layout.max_len, head_dim: width / n_heads, width };
    let (l, hd, blocks) = (d.max_len, d.head_dim, d.blocks());
    let (qp, kp, vp) = (pack(&dev, q, layout, d)?, pack(&dev, k, layout, d)?, pack(&dev, v, layout, d)?);
    let op =
        |t: &Tensor, ld: usize, trans: bool| -> Result<Operand> { Ok(Operand { ptr: ptr(t)?, dtype: dt, ld, trans }) };

    // S = Q Kᵀ in fp32, then P = softmax(scale·S) in the compute dtype.
    let scores = empty(&dev, &[d.probs_len()], DType::F32)?;
    batched(&dev, l, l, hd, op(&qp, hd, false)?, l * hd, op(&kp, hd, true)?, l * hd, &scores, l * l, l, 0.0, blocks)?;
    let probs = empty(&dev, &[d.n_seqs, n_heads, l, l], dt)?;
    // attn_softmax_forward_T(probs, scores, cu_seqlens, n_seqs, n_heads, max_len, scale)
    kernels::attention::attn_softmax_forward(
        &dev,
        warp_rows_config(d.row_blocks()),
        p(&probs)?,
        p(&scores)?,
        p(&layout.cu_device)?,
        int(d.n_seqs)?,
        int(n_heads)?,
        int(l)?,
        scale as f32,
    )?;
    drop(scores);
    // O = P V, back to the packed layout.
    let op_pad = empty(&dev, &[d.padded_len()], dt)?;
    batched(
        &dev,
        l,
        hd,
        l,
        op(&probs, l, false)?,
        l * l,
        op(&vp, hd, false)?,
        l * hd,
        &op_pad,
        l * hd,
        hd,
        0.0,
        blocks,
    )?;
    let out = empty(&dev, &[n, width], dt)?;
    unpack_into(&dev, &out, &op_pad, layout, d, false)?;
    drop(op_pad);

    let saved = AttnSaved { qp, kp, vp, probs: probs.clone(), dims: d };
    Ok((out, probs, saved))
}

/// `dq`, `dk`, `dv` += the gradients from `dout` (the output's gradient) and `dprobs`
/// (a gradient on the probabilities, from the contact head); each output skipped when
/// `None`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dq: Option<&Tensor>,
    dk: Option<&Tensor>,
    dv: Option<&Tensor>,
    dout: Option<&Tensor>,
    dprobs: Option<&Tensor>,
    s: &AttnSaved,
    layout: &SeqLayout,
    scale: f64,
) -> Result<()> {
    let _r = nvtx::bwd("attention");
    let dev = device_of(&s.probs)?;
    let d = s.dims;
    let dt = s.probs.dtype();
    let (l, hd, blocks) = (d.max_len, d.head_dim, d.blocks());
    let op =
        |t: &Tensor, ld: usize, trans: bool| -> Result<Operand> { Ok(Operand { ptr: ptr(t)?, dtype: dt, ld, trans }) };
    // dP = dO Vᵀ (+ the gradient on P from the contact head).
    let dp = match dprobs {
        Some(g) => g.deep_clone()?,
        None => empty(&dev, &[d.probs_len()], dt)?,
    };
    let beta_dp = if dprobs.is_some() { 1.0 } else { 0.0 };
    if let Some(dout) = dout {
        let dop = pack(&dev, dout, layout, d)?;
        batched(
            &dev,
            l,
            l,
            hd,
            op(&dop, hd, false)?,
            l * hd,
            op(&s.vp, hd, true)?,
            l * hd,
            &dp,
            l * l,
            l,
            beta_dp,
            blocks,
        )?;
        if let Some(dv) = dv {
            // dV = Pᵀ dO
            let dvp = empty(&dev, &[d.padded_len()], dt)?;
            batched(
                &dev,
                l,
                hd,
                l,
                op(&s.probs, l, true)?,
                l * l,
                op(&dop, hd, false)?,
                l * hd,
                &dvp,
                l * hd,
                hd,
                0.0,
                blocks,
            )?;
            unpack_into(&dev, dv, &dvp, layout, d, true)?;
        }
    } else if beta_dp == 0.0 {
        return Ok(());
    }
    // dS = scale·P ⊙ (dP − rowsum(dP ⊙ P)), written over dP's storage type.
    let ds = empty(&dev, &[d.probs_len()], dt)?;
    // attn_softmax_backward_T(dscores, probs, dprobs, cu_seqlens, n_seqs, n_heads, max_len, scale)
    kernels::attention::attn_softmax_backward(
        &dev,
        warp_rows_config(d.row_blocks()),
        p(&ds)?,
        p(&s.probs)?,
        p(&dp)?,
        p(&layout.cu_device)?,
        int(d.n_seqs)?,
        int(d.heads)?,
        int(l)?,
        scale as f32,
    )?;
    drop(dp);
    if let Some(dq) = dq {
        // dQ = dS K
        let dqp = empty(&dev, &[d.padded_len()], dt)?;
        batched(
            &dev,
            l,
            hd,
            l,
            op(&ds, l, false)?,
            l * l,
            op(&s.kp, hd, false)?,
            l * hd,
            &dqp,
            l * hd,
            hd,
            0.0,
            blocks,
        )?;
        unpack_into(&dev, dq, &dqp, layout, d, true)?;
    }
    if let Some(dk) = dk {
        // dK = dSᵀ Q
        let dkp = empty(&dev, &[d.padded_len()], dt)?;
        batched(
            &dev,
            l,
            hd,
            l,
            op(&ds, l, true)?,
            l * l,
            op(&s.qp, hd, false)?,
            l * hd,
            &dkp,
            l * hd,
            hd,
            0.0,
            blocks,
        )?;
        unpack_into(&dev, dk, &dkp, layout, d, true)?;
    }
    Ok(())
}
