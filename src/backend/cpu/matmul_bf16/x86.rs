//! The AVX512-BF16 half of [`super`]: row rounding and pairing, and the blocked
//! `vdpbf16ps` micro-kernel ([`block`], one [`super::MR`]×[`super::NR`] tile at a time).

use std::arch::x86_64::*;

use super::{Left, PackedBf16, KC_PAIRS, MR, NR};

/// Words `(bf16(lo[l]), bf16(hi[l]))`, 16 at a time; returns how many it wrote.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn pair_rows(lo: &[f32], hi: Option<&[f32]>, dst: &mut [u32]) -> usize {
    let full = dst.len() / 16;
    for i in 0..full {
        let l = _mm512_cvtneps_pbh(_mm512_loadu_ps(lo.as_ptr().add(16 * i)));
        let h = match hi {
            Some(h) => _mm512_cvtneps_pbh(_mm512_loadu_ps(h.as_ptr().add(16 * i))),
            None => std::mem::transmute::<__m256i, __m256bh>(_mm256_setzero_si256()),
        };
        let l = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(l));
        let h = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(h));
        _mm512_storeu_si512(dst.as_mut_ptr().add(16 * i) as *mut _, _mm512_or_si512(l, _mm512_slli_epi32(h, 16)));
    }
    full * 16
}

/// Round `src` to bf16 pairs, 32 floats at a time and the rest through masks (an odd
/// length leaves a zero in the last pair's high half); returns how many pairs it wrote.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn pack_row(dst: &mut [u32], src: &[f32]) -> usize {
    let pairs = src.len().div_ceil(2).min(dst.len());
    let mut i = 0;
    while 2 * i < 2 * pairs {
        // Floats left from 32·(i/16): masks for the low and high 16.
        let left = src.len() - 2 * i;
        let mask = |from: usize| -> __mmask16 {
            let n = left.saturating_sub(from).min(16);
            if n == 16 {
                0xffff
            } else {
                ((1u32 << n) - 1) as __mmask16
            }
        };
        let lo = _mm512_maskz_loadu_ps(mask(0), src.as_ptr().add(2 * i));
        let hi = _mm512_maskz_loadu_ps(mask(16), src.as_ptr().wrapping_add(2 * i + 16));
        // The second operand fills the low 16 bf16 lanes, in order.
        let v = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
        let words = (pairs - i).min(16);
        let wmask = if words == 16 { 0xffff } else { ((1u32 << words) - 1) as __mmask16 };
        _mm512_mask_storeu_epi32(dst.as_mut_ptr().add(i) as *mut _, wmask, v);
        i += 16;
    }
    pairs
}

/// All of one row block: K blocks outermost, then panels, then micro-tiles. `c` is
/// the block's first row (`ldc` floats apart); with `accumulate` the sums start from
/// `c`, otherwise from the bias (or zero).
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn block(c: *mut f32, ldc: usize, a: Left, n: usize, w: &PackedBf16, b: &[f32], accumulate: bool) {
    let m = w.out_features;
    let mut q0 = 0;
    while q0 < w.pairs {
        let qn = KC_PAIRS.min(w.pairs - q0);
        let first = q0 == 0 && !accumulate;
        for p in 0..w.panels {
            let cols = NR.min(m - p * NR);
            let panel = w.data.as_ptr().add((p * w.pairs + q0) * NR);
            let bias = if first && !b.is_empty() { Some(b.as_ptr().add(p * NR)) } else { None };
            let mut r = 0;
            while r < n {
                let rows = MR.min(n - r);
                let tile = Tile {
                    a: a.words.add(r * a.row_stride + q0 * a.pair_stride),
                    a_row: a.row_stride,
                    a_pair: a.pair_stride,
                    b: panel,
                    pairs: qn,
                    c: c.add(r * ldc + p * NR),
                    ldc,
                    cols,
                    first,
                    bias,
                };
                dispatch(rows, &tile);
                r += rows;
            }
        }
        q0 += qn;
    }
}

/// One micro-tile's operands.
struct Tile {
    a: *const u32,
    a_row: usize,
    a_pair: usize,
    b: *const u32,
    pairs: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    /// The first K block: start from the bias (or zero) instead of reading `c`.
    first: bool,
    bias: Option<*const f32>,
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dispatch(rows: usize, t: &Tile) {
    match rows {
        12 => tile::<12>(t),
        11 => tile::<11>(t),
        10 => tile::<10>(t),
        9 => tile::<9>(t),
        8 => tile::<8>(t),
        7 => tile::<7>(t),
        6 => tile::<6>(t),
        5 => tile::<5>(t),
        4 => tile::<4>(t),
        3 => tile::<3>(t),
        2 => tile::<2>(t),
        _ => tile::<1>(t),
    }
}

/// `R` rows × 32 columns: per pair, two panel loads and `2R` `vdpbf16ps`.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn tile<const R: usize>(t: &Tile) {
    debug_assert!(R <= MR);
    let masks = [column_mask(t.cols, 0), column_mask(t.cols, 16)];
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for (i, row) in acc.iter_mut().enumerate() {
        for (h, v) in row.iter_mut().enumerate() {
            *v = if t.first {
                match t.bias {
                    Some(bias) => _mm512_maskz_loadu_ps(masks[h], bias.add(16 * h)),
                    None => _mm512_setzero_ps(),
                }
            } else {
                _mm512_maskz_loadu_ps(masks[h], t.c.add(i * t.ldc + 16 * h))
            };
        }
    }
    for q in 0..t.pairs {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(t.b.add(q * NR) as *const _));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(t.b.add(q * NR + 16) as *const _));
        for (i, row) in acc.iter_mut().enumerate() {
            let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(*t.a.add(i * t.a_row + q * t.a_pair) as i32));
            row[0] = _mm512_dpbf16_ps(row[0], a, b0);
            row[1] = _mm512_dpbf16_ps(row[1], a, b1);
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (h, v) in row.iter().enumerate() {
            _mm512_mask_storeu_ps(t.c.add(i * t.ldc + 16 * h), masks[h], *v);
        }
    }
}

/// The lanes of the 16-column half starting at `start` that lie inside `cols`.
fn column_mask(cols: usize, start: usize) -> __mmask16 {
    let n = cols.saturating_sub(start).min(16);
    if n == 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}
