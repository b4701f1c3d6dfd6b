//! Dynamic 8-bit quantisation maps and block-wise (de)quantisation: the maps and
//! constants of the 8-bit optimizer state ([`crate::backend::cpu::adam8bit`]); the CUDA
//! kernel (`kernels/adam8bit.cu`) receives the same maps as an argument.
//!
//! Reference: T. Dettmers, M. Lewis, S. Shleifer, L. Zettlemoyer, "8-bit Optimizers via
//! Block-wise Quantization" (ICLR 2022, arXiv:2110.02861), §2 (block-wise quantisation,
//! dynamic tree quantisation), as implemented today by bitsandbytes
//! (`functional.create_dynamic_map`, the CUDA `quantize_2D` helper of
//! `kOptimizerStatic8bit2StateBlockwise`).
//!
//! # The dynamic maps
//!
//! `create_dynamic_map(signed, max_exponent_bits = 7, total_bits = 8)` builds 256 sorted
//! fp32 values. For each "decade" `i = 0..7` it takes `k_i + 1` points evenly spaced in
//! `[0.1, 1]` (fp32 `torch.linspace`), keeps the midpoints of adjacent points, and scales
//! them by `10^(i-6)`:
//!
//! * signed map (Adam's first moment): `k_i = 2^i` midpoints per decade, each with both
//!   signs (254 values), plus `0` and `+1.0`. Index 127 is `0`, index 255 is `+1.0`, and
//!   entries 128..=254 mirror 0..=126 exactly (`map[127 + j] == -map[127 - j]`). There is
//!   **no** `-1.0`: the most negative entry is `-(1 - 0.9/128) ≈ -0.992968738`.
//! * unsigned map (second moment): `k_i = 2^(i+1)` midpoints per decade (254 values), plus
//!   `0` (index 0) and `1.0` (index 255).
//!
//! The fp32 arithmetic follows PyTorch's scalar CPU kernels (`linspace`: `start + step·i`
//! for the first half, `end - step·(n-1-i)` for the second; midpoints as `(a + b) / 2`;
//! the scale cast to fp32 before the product). PyTorch's vectorised `linspace` may round a
//! few entries differently (≤ 1 ulp); no result here depends on that.
//!
//! # Block-wise quantisation and its error bound
//!
//! A tensor is cut into blocks of [`BLOCK_SIZE`] = 256 elements; each block stores one fp32
//! `absmax = max |x|` and one code per element, the index of the map value nearest to
//! `x / absmax` (binary search over the sorted map; on an exact tie between two neighbours
//! the **even** index wins, which is what bitsandbytes' pivot search returns).
//! Dequantisation is `map[code] · absmax`.
//!
//! With `u = x / absmax ∈ [-1, 1]`, the round-trip error is at most half the spacing of
//! the map interval containing `u`, so for every element
//!
//! ```text
//! |dequant(quant(x)) - x| ≤ absmax · (Δ_max / 2) + absmax · 2^-22   (fp32 rounding)
//! ```
//!
//! where `Δ_max / 2` is [`max_round_trip_error`]: the largest map gap, which sits in the top
//! decade, is `0.9/64` for the signed map and `0.9/128` for the unsigned one, so the bound
//! is `0.00703125 · absmax` (signed; the same number also covers `u ∈ [-1, map[0])`, since
//! `1 - 0.99296875 = 0.9/128`) and `0.003515625 · absmax` (unsigned). Towards zero the
//! spacing shrinks five-fold per decade (values ten times smaller, half as many codes), so
//! the small elements of a block keep a few significant bits instead of all rounding to
//! zero as they would with a linear int8 code.
//! `absmax` itself is stored exactly, so the block's largest element round-trips exactly
//! when it is positive (code 255 = 1.0).

use anyhow::{bail, ensure, Result};
use rayon::prelude::*;
use std::sync::OnceLock;

/// Number of entries in a quantisation map (8-bit codes).
pub const MAP_SIZE: usize = 256;

/// Elements per quantisation block (bitsandbytes' `blocksize` for 8-bit optimizer state).
pub const BLOCK_SIZE: usize = 256;

/// A sorted quantisation map: code `c` stands for `map[c] · absmax`.
pub type QuantMap = [f32; MAP_SIZE];

/// Blocks needed for `n` elements (the last block may be partial).
pub fn n_blocks(n: usize) -> usize {
    n.div_ceil(BLOCK_SIZE)
}

/// Points evenly spaced in `[start, end]`, with PyTorch's fp32 scalar `linspace` rounding.
fn torch_linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| if i < halfway { start + step * i as f32 } else { end - step * (steps - i - 1) as f32 })
        .collect()
}

/// Midpoints of `count` equal intervals of `[0.1, 1]` scaled by `scale` (fp32 product).
fn scaled_interval_midpoints(count: usize, scale: f32) -> Vec<f32> {
    let bounds = torch_linspace_f32(0.1, 1.0, count + 1);
    bounds.windows(2).map(|w| scale * ((w[0] + w[1]) / 2.0)).collect()
}

/// `10^exponent` as Python evaluates `10 ** exponent` (a correctly rounded double), cast
/// to fp32 the way PyTorch casts a Python scalar multiplying an fp32 tensor.
fn decade_scale(exponent: i32) -> f32 {
    let as_double: f64 = format!("1e{exponent}").parse().expect("a literal power of ten always parses");
    as_double as f32
}

/// The dynamic quantisation map of bitsandbytes' `create_dynamic_map(signed,
/// max_exponent_bits, total_bits = 8)`: 256 sorted values in `[-1, 1]` (signed) or
/// `[0, 1]` (unsigned). Errors where bitsandbytes' own construction fails its
/// 256-entry assertion (every unsigned map except `max_exponent_bits = 7`) or the
/// exponent width is out of range.
pub fn create_dynamic_map(signed: bool, max_exponent_bits: u32) -> Result<QuantMap> {
    const NON_SIGN_BITS: u32 = 7;
    ensure!(
        (1..=NON_SIGN_BITS).contains(&max_exponent_bits),
        "dynamic map: max_exponent_bits must be in 1..=7 for an 8-bit map, got {max_exponent_bits}"
    );
    let extra_items = (1usize << (NON_SIGN_BITS - max_exponent_bits)) - 1;
    let mut data: Vec<f32> = Vec::with_capacity(MAP_SIZE);
    let mut push_decade = |count: usize, exponent: i32| {
        let scale = decade_scale(exponent);
        let midpoints = scaled_interval_midpoints(count, scale);
        data.extend_from_slice(&midpoints);
        if signed {
            data.extend(midpoints.iter().map(|&m| -m));
        }
    };
    for i in 0..max_exponent_bits {
        let fraction_bits = i + NON_SIGN_BITS - max_exponent_bits + u32::from(!signed);
        push_decade(1usize << fraction_bits, i as i32 - (max_exponent_bits as i32 - 1));
    }
    if extra_items > 0 {
        // bitsandbytes puts the "all exponent bits zero" extras at the last decade's scale.
        push_decade(extra_items, 0);
    }
    data.push(0.0);
    data.push(1.0);
    if data.len() != MAP_SIZE {
        bail!(
            "dynamic map (signed={signed}, max_exponent_bits={max_exponent_bits}) has {} entries, \
             not 256; bitsandbytes rejects this combination too",
            data.len()
        );
    }
    data.sort_by(f32::total_cmp);
    let mut map = [0f32; MAP_SIZE];
    map.copy_from_slice(&data);
    Ok(map)
}

/// The signed dynamic map (`create_dynamic_map(signed=True)`), used for Adam's first moment.
pub fn signed_dynamic_map() -> &'static QuantMap {
    static MAP: OnceLock<QuantMap> = OnceLock::new();
    MAP.get_or_init(|| create_dynamic_map(true, 7).expect("the default signed map is valid"))
}

/// The unsigned dynamic map (`create_dynamic_map(signed=False)`), used for the second moment.
pub fn unsigned_dynamic_map() -> &'static QuantMap {
    static MAP: OnceLock<QuantMap> = OnceLock::new();
    MAP.get_or_init(|| create_dynamic_map(false, 7).expect("the default unsigned map is valid"))
}

/// Index of the map entry nearest to `u` (a value already divided by its block absmax).
///
/// Binary search for the bracketing pair `map[lo] < u ≤ map[lo + 1]`, then compare `u`
/// with their fp32 midpoint `(a + b) · 0.5`; an exact tie goes to the even index of the
/// pair, as bitsandbytes' 7-step pivot search (which always ends on an even pivot) does.
/// Values below `map[0]` or above `map[255]` clamp to the ends; NaN gives code 0.
#[inline]
pub fn nearest_code(map: &QuantMap, u: f32) -> u8 {
    let hi = map.partition_point(|&c| c < u);
    if hi == 0 {
        return 0;
    }
    if hi == MAP_SIZE {
        return (MAP_SIZE - 1) as u8;
    }
    let lo = hi - 1;
    let midpoint = (map[lo] + map[hi]) * 0.5;
    let code = if u < midpoint {
        lo
    } else if u > midpoint {
        hi
    } else if lo % 2 == 0 {
        lo
    } else {
        hi
    };
    code as u8
}

/// The code whose map value is exactly zero (127 for the signed map, 0 for the unsigned).
pub fn zero_code(map: &QuantMap) -> u8 {
    nearest_code(map, 0.0)
}

/// Largest round-trip error in units of the block absmax, `max(Δ_max / 2, edge gaps)`:
/// half the widest gap between neighbouring map entries, or the distance from the ends of
/// the representable range (`[-1, 1]` when the map has negative entries, else `[0, 1]`)
/// to the nearest map end, whichever is larger.
pub fn max_round_trip_error(map: &QuantMap) -> f32 {
    let half_gap = map.windows(2).map(|w| (w[1] - w[0]) * 0.5).fold(0f32, f32::max);
    let low_end = if map[0] < 0.0 { -1.0 } else { 0.0 };
    let edge_gap = (map[0] - low_end).max(1.0 - map[MAP_SIZE - 1]);
    half_gap.max(edge_gap)
}

/// `max |x|` over a block (0 for an empty block; NaN elements are ignored).
#[inline]
pub fn block_absmax(values: &[f32]) -> f32 {
    values.iter().fold(0f32, |acc, &x| acc.max(x.abs()))
}

/// Encode `values` with a given block `absmax` (codes of `x / absmax`). An all-zero block
/// (`absmax == 0`) gets the zero code everywhere, so it decodes to exact zeros.
#[inline]
pub fn encode_block(values: &[f32], absmax: f32, map: &QuantMap, codes: &mut [u8]) {
    debug_assert_eq!(values.len(), codes.len());
    if absmax == 0.0 {
        codes.fill(zero_code(map));
        return;
    }
    for (code, &x) in codes.iter_mut().zip(values) {
        *code = nearest_code(map, x / absmax);
    }
}

/// Like [`encode_block`] for the signed first moment, but a non-zero value never changes
/// sign through quantisation: a negative value whose nearest entry is the map's `0` moves
/// one code down (to the smallest negative entry), as bitsandbytes' 8-bit optimizer does
/// so that Adam's update direction survives. (bitsandbytes tests the sign bit, so it also
/// moves `-0.0`; here only values `< 0` move.) Positive values never round to a negative
/// entry because the map contains 0, so the upward correction is only a safeguard.
#[inline]
pub fn encode_block_sign_preserving(values: &[f32], absmax: f32, map: &QuantMap, codes: &mut [u8]) {
    encode_block(values, absmax, map, codes);
    for (code, &x) in codes.iter_mut().zip(values) {
        let q = map[*code as usize];
        if x < 0.0 && q >= 0.0 && *code > 0 {
            *code -= 1;
        } else if x > 0.0 && q < 0.0 && (*code as usize) < MAP_SIZE - 1 {
            *code += 1;
        }
    }
}

/// Decode one block: `out[i] = map[codes[i]] · absmax`.
#[inline]
pub fn decode_block(codes: &[u8], absmax: f32, map: &QuantMap, out: &mut [f32]) {
    debug_assert_eq!(codes.len(), out.len());
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = map[c as usize] * absmax;
    }
}

/// A block-wise quantised tensor: one code per element, one fp32 absmax per 256 elements.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockwiseQuantized {
    pub codes: Vec<u8>,
    pub absmax: Vec<f32>,
}

impl BlockwiseQuantized {
    /// Number of quantised elements.
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// True for a tensor with no elements.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// Storage in bytes: 1 per element plus 4 per block.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * self.absmax.len()
    }
}

/// Quantise `x` block-wise with `map` (blocks of 256, parallel over blocks). Errors on a
/// non-finite element, naming its index.
pub fn quantize_blockwise(x: &[f32], map: &QuantMap) -> Result<BlockwiseQuantized> {
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        bail!("quantize_blockwise: element {i} is {} (only finite values can be quantised)", x[i]);
    }
    let mut codes = vec![0u8; x.len()];
    let mut absmax = vec![0f32; n_blocks(x.len())];
    x.par_chunks(BLOCK_SIZE).zip(codes.par_chunks_mut(BLOCK_SIZE)).zip(absmax.par_iter_mut()).for_each(
        |((block, block_codes), block_absmax_out)| {
            let a = block_absmax(block);
            encode_block(block, a, map, block_codes);
            *block_absmax_out = a;
        },
    );
    Ok(BlockwiseQuantized { codes, absmax })
}

/// Dequantise a block-wise tensor. Errors when the absmax count does not match the codes.
pub fn dequantize_blockwise(q: &BlockwiseQuantized, map: &QuantMap) -> Result<Vec<f32>> {
    ensure!(
        q.absmax.len() == n_blocks(q.codes.len()),
        "dequantize_blockwise: {} codes need {} absmax values, got {}",
        q.codes.len(),
        n_blocks(q.codes.len()),
        q.absmax.len()
    );
    let mut out = vec![0f32; q.codes.len()];
    out.par_chunks_mut(BLOCK_SIZE)
        .zip(q.codes.par_chunks(BLOCK_SIZE))
        .zip(q.absmax.par_iter())
        .for_each(|((block_out, block_codes), &a)| decode_block(block_codes, a, map, block_out));
    Ok(out)
}

/// `dequantize(quantize(x))`: what 8-bit storage does to `x`.
pub fn round_trip(x: &[f32], map: &QuantMap) -> Result<Vec<f32>> {
    dequantize_blockwise(&quantize_blockwise(x, map)?, map)
}
