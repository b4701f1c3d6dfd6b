//! The AVX512-BF16 half of [`super`]: row rounding and pairing, and the blocked
//! `vdpbf16ps` micro-kernel ([`block`], one [`super::MR`]×[`super::NR`] tile at a time).

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::{Left, PackedBf16, PanelSource, KC_PAIRS, MR, NR};

/// Words `(bf16(lo[l]), bf16(hi[l]))` (`hi` absent: a zero high half), 16 at a time and
/// the rest through masks.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn pair_rows(lo: &[f32], hi: Option<&[f32]>, dst: &mut [MaybeUninit<u32>]) {
    let mut i = 0;
    while i < dst.len() {
        let mask = column_mask(dst.len() - i, 0);
        let round = |row: &[f32]| {
            let x = _mm512_maskz_loadu_ps(mask, row.as_ptr().add(i));
            _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(x)))
        };
        let l = round(lo);
        let h = hi.map_or(_mm512_setzero_si512(), |h| round(h));
        _mm512_mask_storeu_epi32(dst.as_mut_ptr().add(i) as *mut _, mask, _mm512_or_si512(l, _mm512_slli_epi32(h, 16)));
        i += 16;
    }
}

/// One panel of [`PackedBf16::pack_scaled_columns`]: for each pair `q` of rows, [`NR`]
/// words `(bf16(scale·src[2q, c]), bf16(scale·src[2q+1, c]))`, zero pairs past the
/// source's rows and columns; writes all `pairs·NR` words at `panel`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn pack_panel(panel: *mut u32, s: &PanelSource) {
    let scale = _mm512_set1_ps(s.scale);
    let masks = [column_mask(s.width, 0), column_mask(s.width, 16)];
    let round = |row: usize, h: usize| -> __m512i {
        if row >= s.k {
            return _mm512_setzero_si512();
        }
        let x = _mm512_maskz_loadu_ps(masks[h], s.src.as_ptr().add(row * s.ld + 16 * h));
        let b = _mm512_cvtneps_pbh(_mm512_mul_ps(x, scale));
        _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(b))
    };
    for q in 0..s.k.div_ceil(2) {
        for h in 0..NR / 16 {
            let words = _mm512_or_si512(round(2 * q, h), _mm512_slli_epi32(round(2 * q + 1, h), 16));
            _mm512_storeu_si512(panel.add(q * NR + 16 * h) as *mut _, words);
        }
    }
}

/// Rows `i < n` of `x` (at `x[i·ld..]`, `k` floats each) as bf16 pairs, `pairs` words a
/// row (≥ `k/2` rounded up; the words past the row's floats are zero pairs).
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn pack_rows(dst: &mut [MaybeUninit<u32>], x: &[f32], ld: usize, n: usize, k: usize, pairs: usize) {
    assert!(pairs >= k.div_ceil(2) && dst.len() >= n * pairs, "bf16 pack: short destination");
    assert!(n == 0 || x.len() >= (n - 1) * ld + k, "bf16 pack: short source");
    for i in 0..n {
        pack_row(dst.as_mut_ptr().add(i * pairs), x.as_ptr().add(i * ld), k, pairs);
    }
}

/// One row: `k` floats at `src` as `pairs` words at `dst`, 32 floats a step without masks,
/// then the rest (and any zero pairs past it) through masks.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn pack_row(dst: *mut MaybeUninit<u32>, src: *const f32, k: usize, pairs: usize) {
    let mut q = 0; // pairs written
    while 2 * q + 32 <= k {
        let lo = _mm512_loadu_ps(src.add(2 * q));
        let hi = _mm512_loadu_ps(src.add(2 * q + 16));
        // The second operand fills the low 16 bf16 lanes, in order.
        let v = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(dst.add(q) as *mut _, v);
        q += 16;
    }
    while q < pairs {
        let left = k.saturating_sub(2 * q); // floats left (0 past the row: zero pairs)
        let lo = _mm512_maskz_loadu_ps(first_lanes(left), src.add(2 * q));
        let hi = _mm512_maskz_loadu_ps(first_lanes(left.saturating_sub(16)), src.wrapping_add(2 * q + 16));
        let v = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_mask_storeu_epi32(dst.add(q) as *mut _, first_lanes(pairs - q), v);
        q += 16;
    }
}

/// The first `min(n, 16)` lanes.
fn first_lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
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
            // A panel of at most 16 columns (the last of a ragged width, or a 16-wide
            // attention head) needs one register a row: twice the rows a tile.
            let (tile_rows, narrow) = if cols <= 16 { (MR_NARROW, true) } else { (MR, false) };
            let mut r = 0;
            while r < n {
                let rows = tile_rows.min(n - r);
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
                if narrow {
                    dispatch_narrow(rows, &tile);
                } else {
                    dispatch(rows, &tile);
                }
                r += rows;
            }
        }
        q0 += qn;
    }
}

/// One micro-tile's operands.
#[derive(Clone, Copy)]
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

impl Tile {
    /// The same tile `rows` rows further down.
    unsafe fn below(&self, rows: usize) -> Tile {
        Tile { a: self.a.add(rows * self.a_row), c: self.c.add(rows * self.ldc), ..*self }
    }
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

/// Rows per micro-tile of a panel of at most 16 columns (24 accumulators, as [`MR`]'s).
const MR_NARROW: usize = 2 * MR;

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dispatch_narrow(rows: usize, t: &Tile) {
    match rows {
        24 => narrow_tile::<24>(t),
        17..=23 => {
            narrow_tile::<16>(t);
            dispatch_narrow(rows - 16, &t.below(16));
        }
        9..=16 => {
            narrow_tile::<8>(t);
            dispatch_narrow(rows - 8, &t.below(8));
        }
        8 => narrow_tile::<8>(t),
        5..=7 => {
            narrow_tile::<4>(t);
            dispatch_narrow(rows - 4, &t.below(4));
        }
        4 => narrow_tile::<4>(t),
        3 => {
            narrow_tile::<2>(t);
            narrow_tile::<1>(&t.below(2));
        }
        2 => narrow_tile::<2>(t),
        _ => narrow_tile::<1>(t),
    }
}

/// `R` rows × at most 16 columns: per pair, one panel load and `R` `vdpbf16ps`.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn narrow_tile<const R: usize>(t: &Tile) {
    debug_assert!(R <= MR_NARROW && t.cols <= 16);
    let mask = column_mask(t.cols, 0);
    let mut acc = [_mm512_setzero_ps(); R];
    for (i, v) in acc.iter_mut().enumerate() {
        *v = match (t.first, t.bias) {
            (true, Some(bias)) => _mm512_maskz_loadu_ps(mask, bias),
            (true, None) => _mm512_setzero_ps(),
            (false, _) => _mm512_maskz_loadu_ps(mask, t.c.add(i * t.ldc)),
        };
    }
    for q in 0..t.pairs {
        let b: __m512bh = std::mem::transmute(_mm512_loadu_si512(t.b.add(q * NR) as *const _));
        for (i, v) in acc.iter_mut().enumerate() {
            let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(*t.a.add(i * t.a_row + q * t.a_pair) as i32));
            *v = _mm512_dpbf16_ps(*v, a, b);
        }
    }
    for (i, v) in acc.iter().enumerate() {
        _mm512_mask_storeu_ps(t.c.add(i * t.ldc), mask, *v);
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
