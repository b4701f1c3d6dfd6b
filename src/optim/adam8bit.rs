//! Block-wise 8-bit AdamW state of one tensor (T. Dettmers et al., "8-bit Optimizers via
//! Block-wise Quantization", ICLR 2022, arXiv:2110.02861, as bitsandbytes' `AdamW8bit`):
//! which tensors are quantised, and the checkpoint layout. The update itself is
//! [`crate::backend::cpu::adam8bit`] (maths, maps and constants) and `kernels/adam8bit.cu`,
//! dispatched by [`crate::ops::adam8bit`].
//!
//! * tensors of at least [`MIN_8BIT_SIZE`] = 4,096 elements keep block-wise 8-bit moments
//!   ([`QuantizedMoments`], ≈ 2.03 bytes per parameter);
//! * smaller ones keep fp32 moments (bitsandbytes' `min_8bit_size`); these are biases and
//!   LayerNorm weights, whose state is a negligible part of the total. Their step is plain
//!   AdamW, which propagates non-finite gradients like PyTorch (the training loop skips
//!   such steps anyway).
//!
//! Checkpoints ([`Adam8bitState::to_tensors`]) use bitsandbytes' state names:
//! `{prefix}.state1` (m: u8 codes `[n]`, or f32 `[n]` for small tensors),
//! `{prefix}.absmax1` (f32 `[ceil(n/256)]`, 8-bit only), `{prefix}.state2` and
//! `{prefix}.absmax2` for v. Bytes are little-endian as safetensors requires; the maps are
//! not stored (they are a fixed function, see [`crate::backend::cpu::quant8`]).

use crate::backend::cpu::adam8bit::{adam8bit_step, QuantizedMoments};
use crate::backend::cpu::adamw::{adamw_step_f32, AdamHyper};
use crate::backend::cpu::quant8::n_blocks;
use anyhow::{bail, ensure, Context, Result};
use safetensors::{Dtype, SafeTensors};

/// Tensors with fewer elements keep fp32 moments (bitsandbytes' `min_8bit_size`).
pub const MIN_8BIT_SIZE: usize = 4096;

/// AdamW state of one tensor: 8-bit block-wise, or fp32 for small tensors.
#[derive(Clone, Debug, PartialEq)]
pub enum Adam8bitState {
    Blockwise8bit(QuantizedMoments),
    Fp32 { m: Vec<f32>, v: Vec<f32> },
}

/// Named state tensors for checkpoints (safetensors views).
pub use crate::model::checkpoint::NamedTensor as StateTensor;

/// Bytes of optimizer state for a tensor of `n_elems` elements under the default
/// [`MIN_8BIT_SIZE`]: `8·n` below it, else `2·n + 8·ceil(n/256)` (≈ 2.03 bytes/param).
pub fn state_bytes(n_elems: usize) -> usize {
    if n_elems < MIN_8BIT_SIZE {
        8 * n_elems
    } else {
        2 * n_elems + 8 * n_blocks(n_elems)
    }
}

impl Adam8bitState {
    /// Zero state for a tensor of `n_elems` elements (8-bit from [`MIN_8BIT_SIZE`] up).
    pub fn new(n_elems: usize) -> Self {
        Self::with_min_8bit_size(n_elems, MIN_8BIT_SIZE)
    }

    /// Zero state, 8-bit when `n_elems >= min_8bit_size`. Zero moments are stored as the
    /// maps' zero codes with absmax 0 (bitsandbytes stores code 0 with absmax 0, which
    /// also decodes to zero).
    pub fn with_min_8bit_size(n_elems: usize, min_8bit_size: usize) -> Self {
        if n_elems < min_8bit_size {
            return Self::Fp32 { m: vec![0.0; n_elems], v: vec![0.0; n_elems] };
        }
        Self::Blockwise8bit(QuantizedMoments::zeros(n_elems))
    }

    /// Number of parameter elements this state belongs to.
    pub fn len(&self) -> usize {
        match self {
            Self::Blockwise8bit(q) => q.len(),
            Self::Fp32 { m, .. } => m.len(),
        }
    }

    /// True for the state of an empty tensor.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the moments are stored in 8 bits.
    pub fn is_8bit(&self) -> bool {
        matches!(self, Self::Blockwise8bit(_))
    }

    /// Bytes this state occupies.
    pub fn bytes(&self) -> usize {
        match self {
            Self::Blockwise8bit(q) => q.bytes(),
            Self::Fp32 { m, v } => 4 * (m.len() + v.len()),
        }
    }

    /// The moments `(m, v)` as fp32 (dequantised when 8-bit), for inspection and tests.
    pub fn moments_f32(&self) -> (Vec<f32>, Vec<f32>) {
        match self {
            Self::Fp32 { m, v } => (m.clone(), v.clone()),
            Self::Blockwise8bit(q) => q.to_f32(),
        }
    }

    /// The state as named tensors `{prefix}.state1`, `{prefix}.state2` (and
    /// `{prefix}.absmax1`, `{prefix}.absmax2` when 8-bit); see the module docs.
    pub fn to_tensors(&self, prefix: &str) -> Vec<StateTensor> {
        match self {
            Self::Fp32 { m, v } => vec![
                StateTensor::f32_1d(format!("{prefix}.state1"), m),
                StateTensor::f32_1d(format!("{prefix}.state2"), v),
            ],
            Self::Blockwise8bit(q) => vec![
                StateTensor::u8_1d(format!("{prefix}.state1"), &q.m_codes),
                StateTensor::f32_1d(format!("{prefix}.absmax1"), &q.m_absmax),
                StateTensor::u8_1d(format!("{prefix}.state2"), &q.v_codes),
                StateTensor::f32_1d(format!("{prefix}.absmax2"), &q.v_absmax),
            ],
        }
    }

    /// Restore the state of an `n_elems`-element tensor from tensors written by
    /// [`Self::to_tensors`]; the dtype of `{prefix}.state1` says which kind it is.
    pub fn from_tensors(prefix: &str, n_elems: usize, tensors: &[StateTensor]) -> Result<Self> {
        restore(prefix, n_elems, |name| {
            tensors.iter().find(|t| t.name == name).map(|t| (t.dtype, t.shape.clone(), t.data.as_slice()))
        })
    }

    /// Restore from a loaded safetensors file (same names as [`Self::from_tensors`]).
    pub fn from_safetensors(prefix: &str, n_elems: usize, file: &SafeTensors) -> Result<Self> {
        restore(prefix, n_elems, |name| file.tensor(name).ok().map(|t| (t.dtype(), t.shape().to_vec(), t.data())))
    }
}

type Found<'a> = (Dtype, Vec<usize>, &'a [u8]);

/// Fetch `name`, check its dtype and 1-D length, and return its bytes.
fn fetch<'a>(lookup: &impl Fn(&str) -> Option<Found<'a>>, name: &str, dtype: Dtype, len: usize) -> Result<&'a [u8]> {
    let (found_dtype, shape, data) =
        lookup(name).with_context(|| format!("optimizer state: tensor `{name}` is missing"))?;
    ensure!(found_dtype == dtype, "optimizer state: `{name}` has dtype {found_dtype:?}, expected {dtype:?}");
    ensure!(shape == [len], "optimizer state: `{name}` has shape {shape:?}, expected [{len}] for this parameter");
    let elem = if dtype == Dtype::F32 { 4 } else { 1 };
    ensure!(data.len() == len * elem, "optimizer state: `{name}` holds {} bytes, expected {}", data.len(), len * elem);
    Ok(data)
}

fn f32s_from_le(name: &str, data: &[u8], require_nonnegative: bool) -> Result<Vec<f32>> {
    let values: Vec<f32> = data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    if let Some(i) = values.iter().position(|x| !x.is_finite() || (require_nonnegative && *x < 0.0)) {
        bail!("optimizer state: `{name}`[{i}] = {} is not a valid value", values[i]);
    }
    Ok(values)
}

fn restore<'a>(prefix: &str, n: usize, lookup: impl Fn(&str) -> Option<Found<'a>>) -> Result<Adam8bitState> {
    let s1 = format!("{prefix}.state1");
    let (dtype, _, _) = lookup(&s1).with_context(|| format!("optimizer state: tensor `{s1}` is missing"))?;
    let s2 = format!("{prefix}.state2");
    match dtype {
        Dtype::F32 => {
            let m = f32s_from_le(&s1, fetch(&lookup, &s1, Dtype::F32, n)?, false)?;
            let v = f32s_from_le(&s2, fetch(&lookup, &s2, Dtype::F32, n)?, true)?;
            Ok(Adam8bitState::Fp32 { m, v })
        }
        Dtype::U8 => {
            let (a1, a2) = (format!("{prefix}.absmax1"), format!("{prefix}.absmax2"));
            let blocks = n_blocks(n);
            Ok(Adam8bitState::Blockwise8bit(QuantizedMoments {
                m_codes: fetch(&lookup, &s1, Dtype::U8, n)?.to_vec(),
                m_absmax: f32s_from_le(&a1, fetch(&lookup, &a1, Dtype::F32, blocks)?, true)?,
                v_codes: fetch(&lookup, &s2, Dtype::U8, n)?.to_vec(),
                v_absmax: f32s_from_le(&a2, fetch(&lookup, &a2, Dtype::F32, blocks)?, true)?,
            }))
        }
        other => bail!("optimizer state: `{s1}` has dtype {other:?}; expected U8 (8-bit) or F32"),
    }
}

/// One AdamW step for one tensor on the CPU: fp32 state goes through
/// [`adamw_step_f32`], 8-bit state through [`adam8bit_step`] (dequantised, updated and
/// requantised block by block in one pass). Errors on mismatched lengths or invalid
/// hyper-parameters; the parameters are untouched then.
pub fn step(params: &mut [f32], grads: &[f32], state: &mut Adam8bitState, hp: &AdamHyper) -> Result<()> {
    let n = params.len();
    ensure!(
        grads.len() == n && state.len() == n,
        "adam8bit step: lengths differ (params {n}, grads {}, optimizer state {})",
        grads.len(),
        state.len()
    );
    match state {
        Adam8bitState::Fp32 { m, v } => adamw_step_f32(params, grads, m, v, hp),
        Adam8bitState::Blockwise8bit(q) => adam8bit_step(params, grads, q, hp),
    }
}
