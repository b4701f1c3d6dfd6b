//! Launcher of `kernels/adam8bit.cu`: one fused block-wise 8-bit AdamW step (T. Dettmers
//! et al., "8-bit Optimizers via Block-wise Quantization", ICLR 2022, arXiv:2110.02861),
//! and the device state it updates. The CPU twin is `backend/cpu/adam8bit.rs`, whose
//! dynamic maps the caller uploads with [`upload_maps`]; `ops/adam8bit.rs` dispatches.
//!
//! Launch shape as the kernel file documents: blocks of exactly 256 threads (one per
//! element of a quantisation block), grid `min(ceil(n/256), 8·num_SMs)` (block-stride
//! over quantisation blocks).

use anyhow::{bail, Context, Result};
use cudarc::driver::{CudaSlice, DevicePtr};

use super::adamw::half_kind;
use super::device::CudaDevice;
use super::kernels;
use super::launch::{flat_config, long, p, p_opt, Ptr, BLOCK};
use crate::backend::cpu::adam8bit::QuantizedMoments;
use crate::backend::cpu::adamw::AdamConsts;
use crate::tensor::{DType, Device, Tensor};

/// Elements per quantisation block (`kBlock` of the kernel; also its threads per block).
pub const QUANT_BLOCK: usize = 256;

/// Entries of one dynamic map (`kMapSize` of the kernel).
pub const MAP_SIZE: usize = 256;

/// Quantisation blocks (absmax values per moment) of `n` elements.
fn n_blocks(n: usize) -> usize {
    n.div_ceil(QUANT_BLOCK)
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
/// `adam8bit_step` reads (the CPU twin's maps, `backend::cpu::quant8`).
pub fn upload_maps(dev: &CudaDevice, signed: &[f32; MAP_SIZE], unsigned: &[f32; MAP_SIZE]) -> Result<Tensor> {
    let mut maps = Vec::with_capacity(2 * MAP_SIZE);
    maps.extend_from_slice(signed);
    maps.extend_from_slice(unsigned);
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
    let cfg = flat_config(dev, n, 1, 8);
    debug_assert_eq!(QUANT_BLOCK as u32, BLOCK);
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
