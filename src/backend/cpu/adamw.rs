//! AdamW on fp32 slices, exactly as `torch.optim.AdamW` (single-tensor path): the CPU
//! twin of `kernels/adamw.cu` (launched by `backend/cuda/adamw.rs`, dispatched by
//! `ops/adamw.rs`).
//!
//! References: D. P. Kingma, J. Ba, "Adam: A Method for Stochastic Optimization" (ICLR
//! 2015), Algorithm 1; I. Loshchilov, F. Hutter, "Decoupled Weight Decay Regularization"
//! (ICLR 2019), Algorithm 2 (AdamW); PyTorch `torch/optim/adam.py::_single_tensor_adam`
//! with `decoupled_weight_decay=True`, `amsgrad=False`, `maximize=False`.
//!
//! With gradient `g ← grad_scale · grad` and step `t ≥ 1`, per element, in this order:
//!
//! ```text
//! p ← p · (1 − lr·wd)                                  decoupled weight decay first
//! m ← m + (1 − β1)·(g − m)                             torch: exp_avg.lerp_(g, 1 − β1)
//! v ← v·β2 + ((1 − β2)·g)·g                            torch: exp_avg_sq.mul_(β2).addcmul_(g, g, 1 − β2)
//! denom ← sqrt(v) / sqrt(1 − β2^t) + eps               eps added AFTER the bias-corrected sqrt
//! p ← p + (−lr / (1 − β1^t)) · m / denom               torch: param.addcdiv_(m, denom, -step_size)
//! ```
//!
//! The bias corrections and scalar products are formed in f64 (PyTorch does them on Python
//! floats) and cast to fp32 once per step, as PyTorch casts Python scalars for an fp32
//! tensor op; the element arithmetic is fp32. Results agree with PyTorch to fp32 rounding
//! (PyTorch's vectorised kernels may fuse multiply-adds).
//!
//! The 8-bit optimizer ([`crate::backend::cpu::adam8bit`]) calls the same [`adamw_update`] on
//! dequantised moments, so the two differ only by quantisation. Note that bitsandbytes'
//! CUDA kernels apply the decay *after* the Adam step, `p ← (p − lr·u)(1 − lr·wd)`, which
//! differs from PyTorch by `lr²·wd·u`; we follow PyTorch (and bitsandbytes' own pure-PyTorch
//! reference implementation, which does the same).

use anyhow::{ensure, Result};
use rayon::prelude::*;

/// Hyper-parameters of one AdamW step (f64 like the Python floats PyTorch uses).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamHyper {
    /// Learning rate for this step (after any schedule).
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay coefficient (`p ← p·(1 − lr·wd)`).
    pub weight_decay: f64,
    /// 1-based step count used by the bias corrections.
    pub step: u64,
    /// Multiplies every gradient before use: `1 / loss_scale × clip coefficient`.
    pub grad_scale: f64,
}

impl Default for AdamHyper {
    /// `torch.optim.AdamW` defaults (lr 1e-3, betas (0.9, 0.999), eps 1e-8, wd 1e-2), step 1.
    fn default() -> Self {
        Self { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2, step: 1, grad_scale: 1.0 }
    }
}

impl AdamHyper {
    /// Check the ranges PyTorch checks (plus a 1-based step and a finite gradient scale).
    pub fn validate(&self) -> Result<()> {
        ensure!(self.lr.is_finite() && self.lr >= 0.0, "AdamW: invalid learning rate {}", self.lr);
        ensure!(self.eps.is_finite() && self.eps >= 0.0, "AdamW: invalid eps {}", self.eps);
        ensure!((0.0..1.0).contains(&self.beta1), "AdamW: beta1 must be in [0, 1), got {}", self.beta1);
        ensure!((0.0..1.0).contains(&self.beta2), "AdamW: beta2 must be in [0, 1), got {}", self.beta2);
        ensure!(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "AdamW: invalid weight_decay {}",
            self.weight_decay
        );
        ensure!(self.step >= 1, "AdamW: step is 1-based (bias correction), got 0");
        ensure!(self.grad_scale.is_finite(), "AdamW: gradient scale must be finite, got {}", self.grad_scale);
        Ok(())
    }
}

/// The fp32 scalars of one step, derived once from [`AdamHyper`]; a GPU kernel that must
/// match the CPU reference should take exactly these values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConsts {
    /// `1 − lr·wd`.
    pub decay: f32,
    /// `1 − β1` (the lerp weight).
    pub one_minus_beta1: f32,
    pub beta2: f32,
    /// `1 − β2`.
    pub one_minus_beta2: f32,
    /// `sqrt(1 − β2^t)`.
    pub bias_correction2_sqrt: f32,
    pub eps: f32,
    /// `−lr / (1 − β1^t)`.
    pub neg_step_size: f32,
    pub grad_scale: f32,
}

impl AdamConsts {
    /// Validate `hp` and form the per-step constants (bias corrections in f64).
    pub fn new(hp: &AdamHyper) -> Result<Self> {
        hp.validate()?;
        let t = hp.step as f64;
        let bias_correction1 = 1.0 - hp.beta1.powf(t);
        let bias_correction2 = 1.0 - hp.beta2.powf(t);
        Ok(Self {
            decay: (1.0 - hp.lr * hp.weight_decay) as f32,
            one_minus_beta1: (1.0 - hp.beta1) as f32,
            beta2: hp.beta2 as f32,
            one_minus_beta2: (1.0 - hp.beta2) as f32,
            bias_correction2_sqrt: bias_correction2.sqrt() as f32,
            eps: hp.eps as f32,
            neg_step_size: (-hp.lr / bias_correction1) as f32,
            grad_scale: hp.grad_scale as f32,
        })
    }
}

/// The AdamW update of one element; returns the new `(p, m, v)`.
#[inline(always)]
pub fn adamw_update(p: f32, grad: f32, m: f32, v: f32, c: &AdamConsts) -> (f32, f32, f32) {
    let g = grad * c.grad_scale;
    let p = p * c.decay;
    let m = m + c.one_minus_beta1 * (g - m);
    let v = v * c.beta2 + c.one_minus_beta2 * g * g;
    let denom = v.sqrt() / c.bias_correction2_sqrt + c.eps;
    (p + c.neg_step_size * m / denom, m, v)
}

/// Elements per parallel work item of [`adamw_step_f32`].
const CHUNK: usize = 16 * 1024;

/// One `torch.optim.AdamW` step on a parameter slice with fp32 moments `m`, `v`
/// (initially zero). Non-finite gradients propagate as in PyTorch; the mixed-precision
/// loop skips such steps before calling this. Errors on mismatched lengths or invalid
/// hyper-parameters.
pub fn adamw_step_f32(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], hp: &AdamHyper) -> Result<()> {
    let n = params.len();
    ensure!(
        grads.len() == n && m.len() == n && v.len() == n,
        "adamw_step_f32: lengths differ (params {n}, grads {}, m {}, v {})",
        grads.len(),
        m.len(),
        v.len()
    );
    let c = AdamConsts::new(hp)?;
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            for i in 0..p.len() {
                (p[i], m[i], v[i]) = adamw_update(p[i], g[i], m[i], v[i], &c);
            }
        });
    Ok(())
}
