//! One block-wise 8-bit AdamW step of a parameter (T. Dettmers et al., "8-bit Optimizers
//! via Block-wise Quantization", ICLR 2022, arXiv:2110.02861) and its moments on either
//! device. Dispatches by device: `backend/cpu/adam8bit.rs` on the host,
//! `kernels/adam8bit.cu` (`backend/cuda/adam8bit.rs`, given the CPU twin's maps) on the
//! GPU; both give the same bits. Not differentiated: records no tape node.

use anyhow::{bail, Context, Result};

use super::ensure_same_device;
use super::grad_norm::GradScale;
use crate::backend::cpu::adam8bit::{adam8bit_step, QuantizedMoments};
use crate::backend::cpu::adamw::{AdamConsts, AdamHyper};
use crate::backend::cpu::quant8::{signed_dynamic_map, unsigned_dynamic_map};
use crate::backend::cuda::adam8bit::{self as cuda, DeviceQuantizedMoments};
use crate::backend::cuda::launch::device_of;
use crate::backend::cuda::CudaDevice;
use crate::tensor::{Device, Tensor};

/// Block-wise 8-bit moments of one parameter, where the parameter lives.
pub enum Moments8 {
    Cpu(QuantizedMoments),
    Cuda(DeviceQuantizedMoments),
}

impl Moments8 {
    /// Zero moments for `n` elements on `device` (the maps' zero codes, absmax 0).
    pub fn zeros(device: &Device, n: usize) -> Result<Self> {
        Self::from_host(device, QuantizedMoments::zeros(n))
    }

    /// Moments from host values (e.g. a checkpoint), moved to `device`.
    pub fn from_host(device: &Device, q: QuantizedMoments) -> Result<Self> {
        Ok(match device {
            Device::Cpu => Moments8::Cpu(q),
            Device::Cuda(dev) => Moments8::Cuda(DeviceQuantizedMoments::upload(dev, &q)?),
        })
    }

    /// A host copy (for checkpoints and comparisons).
    pub fn to_host(&self) -> Result<QuantizedMoments> {
        match self {
            Moments8::Cpu(q) => Ok(q.clone()),
            Moments8::Cuda(q) => q.download(),
        }
    }

    /// Bytes held: `2·n + 8·ceil(n/256)`.
    pub fn bytes(&self) -> usize {
        match self {
            Moments8::Cpu(q) => q.bytes(),
            Moments8::Cuda(q) => q.bytes(),
        }
    }
}

/// The signed and unsigned dynamic maps on the GPU: the `maps` of [`adam8bit`] there.
pub fn upload_maps(dev: &CudaDevice) -> Result<Tensor> {
    cuda::upload_maps(dev, signed_dynamic_map(), unsigned_dynamic_map())
}

/// Update `param` (fp32) and its 8-bit moments in place from `grad`, multiplied by
/// `scale`'s coefficient; nothing changes when `scale` says skip. `hp.grad_scale` is
/// ignored (the multiplier comes from `scale`). On the GPU `maps` must come from
/// [`upload_maps`], and the parameter's cached half compute copy is refreshed too.
pub fn adam8bit(
    param: &mut Tensor,
    grad: &Tensor,
    state: &mut Moments8,
    maps: Option<&Tensor>,
    hp: &AdamHyper,
    scale: &GradScale,
) -> Result<()> {
    ensure_same_device("adam8bit", &[&*param, grad])?;
    match (scale, state) {
        (GradScale::Host { skip: true, .. }, _) => Ok(()),
        (GradScale::Host { coef, .. }, Moments8::Cpu(q)) if param.is_cpu() => {
            let hp = AdamHyper { grad_scale: *coef, ..*hp };
            let p = param.as_mut_slice::<f32>().context("updating a parameter")?;
            adam8bit_step(p, grad.as_slice::<f32>()?, q, &hp)
        }
        (GradScale::Device { coef, skip, .. }, Moments8::Cuda(q)) if !param.is_cpu() => {
            let dev = device_of(param)?;
            let maps = maps.context("adam8bit: the 8-bit maps are not on the device")?;
            let c = AdamConsts::new(&AdamHyper { grad_scale: 1.0, ..*hp })?;
            let half = dev.cached_compute_copy(param);
            cuda::adam8bit_step(&dev, param, grad, q, maps, half.as_ref(), &c, coef, skip)
        }
        _ => bail!("adam8bit: the optimizer state or gradient scale is not on the parameter's device"),
    }
}
