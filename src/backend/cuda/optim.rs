//! Launchers for the optimizer kernels: the fused AdamW step (`kernels/adamw.cu`), the
//! block-wise 8-bit AdamW step (`kernels/adam8bit.cu`) with its device state, and the
//! on-device gradient norm / clipping / overflow check (`kernels/grad_norm.cu`).
//!
//! Launch shapes are the ones each kernel file documents: 256-thread blocks and a grid of
//! `min(blocks needed, k·num_SMs)` with `k` = 32 for `adamw_step`, 8 for `sum_squares_f32`
//! and `adam8bit_step` (grid-stride / block-stride loops cover the rest).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context, Result};
use cudarc::driver::{sys, CudaSlice, DevicePtr, LaunchConfig};

use super::device::CudaDevice;
use super::kernels;
use super::launch::{long, p, p_opt, Arg, Ptr};
use crate::optim::adam8bit::QuantizedMoments;
use crate::optim::adamw_step::AdamConsts;
use crate::optim::quant8::{n_blocks, signed_dynamic_map, unsigned_dynamic_map, zero_code, BLOCK_SIZE, MAP_SIZE};
use crate::tensor::{DType, Device, Tensor};

/// Threads per block of every optimizer kernel (`adam8bit_step` requires exactly this).
const THREADS: u32 = 256;

/// Multiprocessor count of a device (cached per ordinal).
fn sm_count(dev: &CudaDevice) -> Result<u32> {
    static CACHE: OnceLock<Mutex<HashMap<usize, u32>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&n) = map.get(&dev.ordinal()) {
        return Ok(n);
    }
    let n = dev
        .context()
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .context("querying the multiprocessor count")?
        .max(1) as u32;
    map.insert(dev.ordinal(), n);
    Ok(n)
}

/// `blocks` blocks of 256 threads, at most `per_sm` per multiprocessor.
fn capped_config(dev: &CudaDevice, blocks: usize, per_sm: u32) -> Result<LaunchConfig> {
    let cap = per_sm.saturating_mul(sm_count(dev)?).max(1) as usize;
    let grid = blocks.clamp(1, cap) as u32;
    Ok(LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 })
}

/// `*acc += Σ x²`; `*nonfinite = 1` if any element of `x` is inf/nan.
pub fn sum_squares(dev: &CudaDevice, acc: &Tensor, nonfinite: &Tensor, x: &Tensor) -> Result<()> {
    let n = x.numel();
    let cfg = capped_config(dev, n.div_ceil(THREADS as usize), 8)?;
    kernels::grad_norm::sum_squares_f32(dev, cfg, p(acc)?, p(nonfinite)?, p(x)?, long(n))
}

/// From the sum of squares: the gradient multiplier (clip × 1/loss-scale), the skip flag
/// and the unscaled norm, all written on the device.
#[allow(clippy::too_many_arguments)]
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
    let one = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1, 1, 1), shared_mem_bytes: 0 };
    kernels::grad_norm::clip_and_scale(
        dev,
        one,
        p(coef)?,
        p(sumsq)?,
        p(nonfinite)?,
        p(skip)?,
        max_norm,
        inv_loss_scale,
        p(norm)?,
    )
}

/// `half_kind` of the kernels' ABI: 0 none, 1 f16, 2 bf16.
fn half_kind(half: Option<&Tensor>) -> i32 {
    match half.map(Tensor::dtype) {
        Some(DType::F16) => 1,
        Some(DType::BF16) => 2,
        _ => 0,
    }
}

/// The per-step scalars in `AdamConsts` declaration order (both kernels' ABI; public so
/// that the emulated kernel tests launch with exactly these).
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
    let cfg = capped_config(dev, n.div_ceil(THREADS as usize), 32)?;
    kernels::adamw::adamw_step(
        dev,
        cfg,
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

/// Block-wise 8-bit moments of one tensor on the device: one code byte per element for
/// each moment and one fp32 absmax per 256-element block (2.03 bytes per parameter),
/// laid out exactly as [`QuantizedMoments`] on the CPU.
pub struct DeviceQuantizedMoments {
    n: usize,
    m_codes: CudaSlice<u8>,
    m_absmax: Tensor,
    v_codes: CudaSlice<u8>,
    v_absmax: Tensor,
    device: CudaDevice,
}

impl DeviceQuantizedMoments {
    /// Zero moments for `n` elements (the maps' zero codes, absmax 0), as
    /// `Adam8bitState::new` on the CPU.
    pub fn zeros(dev: &CudaDevice, n: usize) -> Result<Self> {
        let q = QuantizedMoments {
            m_codes: vec![zero_code(signed_dynamic_map()); n],
            m_absmax: vec![0.0; n_blocks(n)],
            v_codes: vec![zero_code(unsigned_dynamic_map()); n],
            v_absmax: vec![0.0; n_blocks(n)],
        };
        Self::upload(dev, &q)
    }

    /// Copy CPU state (e.g. restored from a checkpoint) to the device.
    pub fn upload(dev: &CudaDevice, q: &QuantizedMoments) -> Result<Self> {
        let n = q.m_codes.len();
        if q.v_codes.len() != n || q.m_absmax.len() != n_blocks(n) || q.v_absmax.len() != n_blocks(n) {
            bail!("8-bit optimizer state: inconsistent lengths for {n} elements");
        }
        let d = Device::Cuda(dev.clone());
        let st = dev.stream();
        Ok(DeviceQuantizedMoments {
            n,
            m_codes: st.clone_htod(&q.m_codes).context("uploading 8-bit optimizer state")?,
            m_absmax: Tensor::from_f32(q.m_absmax.clone(), &[q.m_absmax.len()], DType::F32, &d)?,
            v_codes: st.clone_htod(&q.v_codes).context("uploading 8-bit optimizer state")?,
            v_absmax: Tensor::from_f32(q.v_absmax.clone(), &[q.v_absmax.len()], DType::F32, &d)?,
            device: dev.clone(),
        })
    }

    /// Copy the state to the host (for checkpoints and comparisons with the CPU).
    pub fn download(&self) -> Result<QuantizedMoments> {
        let st = self.device.stream();
        Ok(QuantizedMoments {
            m_codes: st.clone_dtoh(&self.m_codes).context("downloading 8-bit optimizer state")?,
            m_absmax: self.m_absmax.to_vec_f32()?,
            v_codes: st.clone_dtoh(&self.v_codes).context("downloading 8-bit optimizer state")?,
            v_absmax: self.v_absmax.to_vec_f32()?,
        })
    }

    /// Number of parameter elements.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Device bytes held: `2·n + 8·ceil(n/256)`.
    pub fn bytes(&self) -> usize {
        2 * self.n + 8 * n_blocks(self.n)
    }

    fn code_ptrs(&self) -> (u64, u64) {
        let st = self.device.stream();
        (self.m_codes.device_ptr(st).0, self.v_codes.device_ptr(st).0)
    }
}

/// The signed then the unsigned dynamic map (`[512]` f32) on the device, the table
/// `adam8bit_step` reads.
pub fn upload_maps(dev: &CudaDevice) -> Result<Tensor> {
    let mut maps = Vec::with_capacity(2 * MAP_SIZE);
    maps.extend_from_slice(signed_dynamic_map());
    maps.extend_from_slice(unsigned_dynamic_map());
    Tensor::from_f32(maps, &[2 * MAP_SIZE], DType::F32, &Device::Cuda(dev.clone()))
}

/// One block-wise 8-bit AdamW step of a fp32 parameter (see `kernels/adam8bit.cu`),
/// refreshing its half compute copy. `maps` comes from [`upload_maps`].
#[allow(clippy::too_many_arguments)]
pub fn adam8bit_step(
    dev: &CudaDevice,
    param: &Tensor,
    grad: &Tensor,
    state: &mut DeviceQuantizedMoments,
    maps: &Tensor,
    half: Option<&Tensor>,
    c: &AdamConsts,
    grad_scale: &Tensor,
    skip: &Tensor,
) -> Result<()> {
    let n = param.numel();
    if grad.numel() != n || state.len() != n {
        bail!("adam8bit step: lengths differ (parameter {n}, gradient {}, state {})", grad.numel(), state.len());
    }
    if maps.numel() != 2 * MAP_SIZE || maps.dtype() != DType::F32 {
        bail!("adam8bit step: the quantisation maps must be 512 f32 values");
    }
    let (m_codes, v_codes) = state.code_ptrs();
    let cfg = capped_config(dev, n.div_ceil(BLOCK_SIZE), 8)?;
    debug_assert_eq!(BLOCK_SIZE as u32, THREADS);
    kernels::adam8bit::adam8bit_step(
        dev,
        cfg,
        p(param)?,
        p(grad)?,
        Ptr::from_addr(m_codes),
        p(&state.m_absmax)?,
        Ptr::from_addr(v_codes),
        p(&state.v_absmax)?,
        p(maps)?,
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
