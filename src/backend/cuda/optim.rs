//! Launchers for the optimizer kernels: the fused AdamW step (`kernels/adamw.cu`) and the
//! on-device gradient norm / clipping / overflow check (`kernels/grad_norm.cu`).

use anyhow::Result;

use super::device::CudaDevice;
use super::launch::{grid_stride_config, launch, long, p, p_opt, Arg};
use crate::optim::adamw_step::AdamConsts;
use crate::tensor::{DType, Tensor};

/// `*acc += Σ x²`; `*nonfinite = 1` if any element of `x` is inf/nan.
pub fn sum_squares(dev: &CudaDevice, acc: &Tensor, nonfinite: &Tensor, x: &Tensor) -> Result<()> {
    let n = x.numel();
    launch(dev, "grad_norm", "sum_squares_f32", grid_stride_config(n), &[p(acc)?, p(nonfinite)?, p(x)?, long(n)])
}

/// From the sum of squares: the gradient multiplier (clip × 1/loss-scale), the skip flag
/// and the unscaled norm, all written on the device.
pub fn clip_and_scale(
    dev: &CudaDevice,
    coef: &Tensor,
    sumsq: &Tensor,
    nonfinite: &Tensor,
    skip: &Tensor,
    max_norm: f32,
    inv_loss_scale: f32,
    norm: &Tensor,
) -> Result<()> {
    let one = cudarc::driver::LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1, 1, 1), shared_mem_bytes: 0 };
    launch(
        dev,
        "grad_norm",
        "clip_and_scale",
        one,
        &[p(coef)?, p(sumsq)?, p(nonfinite)?, p(skip)?, Arg::F32(max_norm), Arg::F32(inv_loss_scale), p(norm)?],
    )
}

/// One fused AdamW step of a fp32 parameter, refreshing its half compute copy.
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
    let half_kind = match half.map(Tensor::dtype) {
        Some(DType::F16) => 1,
        Some(DType::BF16) => 2,
        _ => 0,
    };
    launch(
        dev,
        "adamw",
        "adamw_step",
        grid_stride_config(n),
        &[
            p(param)?,
            p(grad)?,
            p(m)?,
            p(v)?,
            p_opt(half)?,
            Arg::I32(half_kind),
            long(n),
            Arg::F32(c.decay),
            Arg::F32(c.one_minus_beta1),
            Arg::F32(c.beta2),
            Arg::F32(c.one_minus_beta2),
            Arg::F32(c.bias_correction2_sqrt),
            Arg::F32(c.eps),
            Arg::F32(c.neg_step_size),
            p(grad_scale)?,
            p(skip)?,
        ],
    )
}
