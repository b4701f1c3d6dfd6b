//! Block-wise 8-bit AdamW on fp32 slices: the CPU twin of `kernels/adam8bit.cu`
//! (launched by `backend/cuda/adam8bit.rs`, dispatched by `ops/adam8bit.rs`).
//!
//! Reference: T. Dettmers, M. Lewis, S. Shleifer, L. Zettlemoyer, "8-bit Optimizers via
//! Block-wise Quantization" (ICLR 2022, arXiv:2110.02861), §2-3, as bitsandbytes
//! implements `AdamW8bit` today (`Optimizer2State` with `optim_bits=8`, kernel
//! `kOptimizerStatic8bit2StateBlockwise`).
//!
//! The first moment `m` is stored as codes into the **signed** dynamic map, the second
//! moment `v` into the **unsigned** one ([`crate::backend::cpu::quant8`]), each with one
//! fp32 absmax per block of 256 elements: `1 + 1` code bytes + `2·4/256` absmax bytes,
//! i.e. **2.03125 bytes per parameter** instead of 8 for fp32 moments.
//!
//! One step, per block of 256 elements, in a single pass (parallel over blocks):
//!
//! ```text
//! m, v ← map_s[m_code]·m_absmax, map_u[v_code]·v_absmax         dequantise
//! (p, m, v) ← adamw_update(p, g, m, v)                            exactly the fp32 AdamW maths
//! m_absmax, v_absmax ← max|m|, max|v| over the block              the NEW absmax
//! m_code, v_code ← nearest(m / m_absmax), nearest(v / v_absmax)  requantise
//! ```
//!
//! `adamw_update` is [`crate::backend::cpu::adamw::adamw_update`] (PyTorch's AdamW: decay
//! first, bias corrections, eps after the square root), so with lossless storage the
//! 8-bit step would equal [`crate::backend::cpu::adamw::adamw_step_f32`] bit for bit; in
//! particular the first step from zero state does. The sign of `m` survives
//! requantisation ([`crate::backend::cpu::quant8::encode_block_sign_preserving`]).
//!
//! Non-finite gradients: as in bitsandbytes, an element whose gradient is NaN or ±inf
//! keeps its parameter and has its moments reset to zero, so one bad value cannot poison
//! the shared absmax of the other 255 elements of its block.

use anyhow::{ensure, Result};
use rayon::prelude::*;

use super::adamw::{adamw_update, AdamConsts, AdamHyper};
use super::quant8::{
    block_absmax, decode_block, encode_block, encode_block_sign_preserving, n_blocks, signed_dynamic_map,
    unsigned_dynamic_map, zero_code, QuantMap, BLOCK_SIZE,
};

/// Block-wise 8-bit moments of one tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedMoments {
    /// First-moment codes into the signed dynamic map, one per element.
    pub m_codes: Vec<u8>,
    /// First-moment absmax, one per block of 256.
    pub m_absmax: Vec<f32>,
    /// Second-moment codes into the unsigned dynamic map, one per element.
    pub v_codes: Vec<u8>,
    /// Second-moment absmax, one per block of 256.
    pub v_absmax: Vec<f32>,
}

impl QuantizedMoments {
    /// Zero moments for `n` elements: the maps' zero codes with absmax 0 (bitsandbytes
    /// stores code 0 with absmax 0, which also decodes to zero).
    pub fn zeros(n: usize) -> Self {
        QuantizedMoments {
            m_codes: vec![zero_code(signed_dynamic_map()); n],
            m_absmax: vec![0.0; n_blocks(n)],
            v_codes: vec![zero_code(unsigned_dynamic_map()); n],
            v_absmax: vec![0.0; n_blocks(n)],
        }
    }

    /// Number of parameter elements.
    pub fn len(&self) -> usize {
        self.m_codes.len()
    }

    /// True for the state of an empty tensor.
    pub fn is_empty(&self) -> bool {
        self.m_codes.is_empty()
    }

    /// Bytes held: `2·n + 8·ceil(n/256)`.
    pub fn bytes(&self) -> usize {
        self.m_codes.len() + self.v_codes.len() + 4 * (self.m_absmax.len() + self.v_absmax.len())
    }

    /// The moments `(m, v)` dequantised to fp32.
    pub fn to_f32(&self) -> (Vec<f32>, Vec<f32>) {
        (
            decode_all(&self.m_codes, &self.m_absmax, signed_dynamic_map()),
            decode_all(&self.v_codes, &self.v_absmax, unsigned_dynamic_map()),
        )
    }
}

fn decode_all(codes: &[u8], absmax: &[f32], map: &QuantMap) -> Vec<f32> {
    let mut out = vec![0f32; codes.len()];
    for ((o, c), &a) in out.chunks_mut(BLOCK_SIZE).zip(codes.chunks(BLOCK_SIZE)).zip(absmax) {
        decode_block(c, a, map, o);
    }
    out
}

/// One block-wise 8-bit AdamW step: dequantise, update and requantise block by block in
/// one pass (see the module docs). Errors on mismatched lengths, corrupt state or invalid
/// hyper-parameters; the parameters are untouched then.
pub fn adam8bit_step(params: &mut [f32], grads: &[f32], q: &mut QuantizedMoments, hp: &AdamHyper) -> Result<()> {
    let n = params.len();
    ensure!(
        grads.len() == n && q.m_codes.len() == n,
        "adam8bit step: lengths differ (params {n}, grads {}, optimizer state {})",
        grads.len(),
        q.m_codes.len()
    );
    ensure!(
        q.m_absmax.len() == n_blocks(n) && q.v_absmax.len() == n_blocks(n) && q.v_codes.len() == n,
        "adam8bit step: corrupt 8-bit state ({} elements need {} absmax values per moment)",
        n,
        n_blocks(n)
    );
    let c = AdamConsts::new(hp)?;
    step_blockwise(params, grads, q, &c);
    Ok(())
}

/// The 8-bit update, parallel over blocks of 256 elements.
fn step_blockwise(params: &mut [f32], grads: &[f32], q: &mut QuantizedMoments, c: &AdamConsts) {
    let (smap, umap) = (signed_dynamic_map(), unsigned_dynamic_map());
    params
        .par_chunks_mut(BLOCK_SIZE)
        .zip(grads.par_chunks(BLOCK_SIZE))
        .zip(q.m_codes.par_chunks_mut(BLOCK_SIZE))
        .zip(q.m_absmax.par_iter_mut())
        .zip(q.v_codes.par_chunks_mut(BLOCK_SIZE))
        .zip(q.v_absmax.par_iter_mut())
        .with_min_len(16)
        .for_each(|(((((p, g), mc), ma), vc), va)| {
            update_block(p, g, BlockState { m_codes: mc, m_absmax: ma, v_codes: vc, v_absmax: va }, c, smap, umap);
        });
}

/// Mutable views of one block's 8-bit moments.
struct BlockState<'a> {
    m_codes: &'a mut [u8],
    m_absmax: &'a mut f32,
    v_codes: &'a mut [u8],
    v_absmax: &'a mut f32,
}

/// Dequantise, update, and requantise (with the new absmax) one block.
#[inline]
fn update_block(p: &mut [f32], g: &[f32], s: BlockState, c: &AdamConsts, smap: &QuantMap, umap: &QuantMap) {
    let len = p.len();
    let mut m = [0f32; BLOCK_SIZE];
    let mut v = [0f32; BLOCK_SIZE];
    decode_block(s.m_codes, *s.m_absmax, smap, &mut m[..len]);
    decode_block(s.v_codes, *s.v_absmax, umap, &mut v[..len]);
    for i in 0..len {
        if g[i].is_finite() {
            (p[i], m[i], v[i]) = adamw_update(p[i], g[i], m[i], v[i], c);
        } else {
            (m[i], v[i]) = (0.0, 0.0);
        }
    }
    *s.m_absmax = block_absmax(&m[..len]);
    *s.v_absmax = block_absmax(&v[..len]);
    encode_block_sign_preserving(&m[..len], *s.m_absmax, smap, s.m_codes);
    encode_block(&v[..len], *s.v_absmax, umap, s.v_codes);
}
