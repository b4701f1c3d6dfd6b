//! Launcher of `kernels/adamw.cu`: one fused AdamW step (I. Loshchilov, F. Hutter,
//! "Decoupled Weight Decay Regularization", ICLR 2019, in PyTorch's operation order) of a
//! fp32 parameter with fp32 moments, refreshing its half compute copy. The per-step
//! scalars are [`AdamConsts`], formed on the host exactly as the CPU twin
//! (`backend/cpu/adamw.rs`) forms them, so the two agree bit for bit; the gradient
//! multiplier and the skip flag are device scalars (from `backend/cuda/grad_norm.rs`).
//! `ops/adamw.rs` dispatches.
//!
//! Launch shape as the kernel file documents: 256-thread blocks, grid
//! `min(ceil(n/256), 32·num_SMs)` (grid-stride).

use anyhow::Result;

use super::device::CudaDevice;
use super::kernels;
use super::launch::{flat_config, long, p, p_opt, Arg};
use crate::backend::cpu::adamw::AdamConsts;
use crate::tensor::{DType, Tensor};

/// `half_kind` of the optimizer kernels' ABI: 0 none, 1 f16, 2 bf16.
pub(crate) fn half_kind(half: Option<&Tensor>) -> i32 {
    match half.map(Tensor::dtype) {
        Some(DType::F16) => 1,
        Some(DType::BF16) => 2,
        _ => 0,
    }
}

/// The per-step scalars in `AdamConsts` declaration order (the ABI of both optimizer
/// kernels; public so that the emulated kernel tests launch with exactly these).
pub fn consts_args(c: &AdamConsts) -> [Arg; 7] {
    [
        Arg::F32(c.decay),
        Arg::F32(c.one_minus_beta1),
        Arg::F32(c.beta2),
        Arg::F32(c.one_minus_beta2),
        Arg::F32(c.bias_correction2_sqrt),
        Arg::F32(c.eps),
        Arg::F32(c.neg_step_size),
    ]
}

/// One fused AdamW step of a fp32 parameter, refreshing its half compute copy.
/// `c.grad_scale` is not used: the kernel reads the multiplier from `grad_scale`.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    dev: &CudaDevice,
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    half: Option<&Tensor>,
    c: &AdamConsts,
    grad_scale: &Tensor,
    skip: &Tensor,
) -> Result<()> {
    let n = param.numel();
    kernels::adamw::adamw_step(
        dev,
        flat_config(dev, n, 1, 32),
        p(param)?,
        p(grad)?,
        p(m)?,
        p(v)?,
        p_opt(half)?,
        half_kind(half),
        long(n),
        c.decay,
        c.one_minus_beta1,
        c.beta2,
        c.one_minus_beta2,
        c.bias_correction2_sqrt,
        c.eps,
        c.neg_step_size,
        p(grad_scale)?,
        p(skip)?,
    )
}
