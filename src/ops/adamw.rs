//! One AdamW step of a parameter with fp32 moments (I. Loshchilov, F. Hutter, "Decoupled
//! Weight Decay Regularization", ICLR 2019; PyTorch's `torch.optim.AdamW` order).
//! Dispatches by device: `backend/cpu/adamw.rs` on the host, `kernels/adamw.cu`
//! (`backend/cuda/adamw.rs`) on the GPU; both give the same bits. Not differentiated:
//! records no tape node.

use anyhow::{bail, Context, Result};

use super::ensure_same_device;
use super::grad_norm::GradScale;
use crate::backend::cpu::adamw::{adamw_step_f32, AdamConsts, AdamHyper};
use crate::backend::cuda;
use crate::backend::cuda::launch::device_of;
use crate::tensor::Tensor;

/// Update `param` (fp32) and its moments `m`, `v` (fp32, same device) in place from
/// `grad`, multiplied by `scale`'s coefficient; nothing changes when `scale` says skip.
/// `hp.grad_scale` is ignored (the multiplier comes from `scale`). On the GPU the
/// parameter's cached half compute copy is refreshed too.
pub fn adamw(
    param: &mut Tensor,
    grad: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    hp: &AdamHyper,
    scale: &GradScale,
) -> Result<()> {
    ensure_same_device("adamw", &[&*param, grad, &*m, &*v])?;
    match scale {
        GradScale::Host { skip: true, .. } => Ok(()),
        GradScale::Host { coef, .. } if param.is_cpu() => {
            let hp = AdamHyper { grad_scale: *coef, ..*hp };
            let p = param.as_mut_slice::<f32>().context("updating a parameter")?;
            adamw_step_f32(p, grad.as_slice::<f32>()?, m.as_mut_slice::<f32>()?, v.as_mut_slice::<f32>()?, &hp)
        }
        GradScale::Device { coef, skip, .. } if !param.is_cpu() => {
            let dev = device_of(param)?;
            let c = AdamConsts::new(&AdamHyper { grad_scale: 1.0, ..*hp })?;
            let half = dev.cached_compute_copy(param);
            cuda::adamw::adamw_step(&dev, param, grad, m, v, half.as_ref(), &c, coef, skip)
        }
        _ => bail!("adamw: the gradient scale is not on the parameter's device"),
    }
}
