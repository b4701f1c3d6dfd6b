//! The inference kernel (x86, AVX512-BF16) for one (sequence, head), with the query rows
//! in the vector lanes: [`ROWS`] queries a block, as two vectors of 16 lanes.
//!
//! - Scores, `Sᵀ[j] = Σ_c K[j, c]·Q[rows, c]`: the block's query pairs stay in vectors
//!   (gathered once a block); each key's pair is one 32-bit broadcast straight from the
//!   rounded `K`, so `K` is never repacked. [`STEP`] keys a step: per pair, 12 broadcasts
//!   feed 24 `vdpbf16ps` (the linear layers' micro-kernel ratio), and a key is never padded.
//! - Softmax down the keys, lane by lane (one query row a lane): no horizontal reduction
//!   and no masks. `exp(s − max)` is `2^(s·log₂e − max·log₂e)` ([`exp2`]); the weights of
//!   two adjacent keys are rounded to bf16 and interleaved into one pair a row.
//! - `Oᵀ[c] = Σ_j V[j, c]·P[rows, j]` over key pairs: each value pair is one broadcast,
//!   [`STEP`] output columns a step (head widths split into near-equal steps, none padded),
//!   then the block is divided by the row sums and written back row by row.
//!
//! Rows of a short last block read zero queries (finite scores) and are never written.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::x86::{exp2, first, interleaved_pairs};
use super::{HeadView, LANES};

/// Query rows per block: two vectors of lanes.
const ROWS: usize = 2 * LANES;
/// Keys per scores step and output columns per `P V` step: `STEP × 2` fp32 sums, 24 of
/// the 32 zmm registers.
const STEP: usize = 12;

/// Calls `$f::<N>(args)` for a count `N` in `1..=STEP` known only at run time.
macro_rules! by_count {
    ($n:expr, $f:ident, $($arg:expr),*) => {
        match $n {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            8 => $f::<8>($($arg),*),
            9 => $f::<9>($($arg),*),
            10 => $f::<10>($($arg),*),
            11 => $f::<11>($($arg),*),
            _ => $f::<12>($($arg),*),
        }
    };
}

/// One (sequence, head): pack `V`, then every block of [`ROWS`] queries.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn head(h: &HeadView, out: *mut f32) {
    let (l, d) = (h.len, h.d);
    let dp = d.div_ceil(LANES) * LANES;
    let vp = pack_values(h, dp);
    // Scratch that every block overwrites in full before reading (written through
    // `MaybeUninit` slots: a `Vec::push` could reallocate, which makes the compiler
    // spill every accumulator around it).
    let mut queries = Vec::with_capacity(d / 2);
    let mut scores = Vec::with_capacity(l);
    let mut weights = Vec::with_capacity(l.div_ceil(2));
    let (queries, scores, weights) = (
        &mut queries.spare_capacity_mut()[..d / 2],
        &mut scores.spare_capacity_mut()[..l],
        &mut weights.spare_capacity_mut()[..l.div_ceil(2)],
    );
    for i0 in (0..l).step_by(ROWS) {
        let rows = ROWS.min(l - i0);
        let queries = gather_queries(h, i0, rows, queries);
        let max = score_keys(h, queries, scores);
        let sums = softmax_weights(slice_init(scores), max, weights);
        let weights = slice_init(weights);
        let inv = [_mm512_div_ps(_mm512_set1_ps(1.0), sums[0]), _mm512_div_ps(_mm512_set1_ps(1.0), sums[1])];
        let steps = d.div_ceil(STEP);
        let mut c0 = 0;
        for step in 0..steps {
            // Near-equal steps: 16 columns go as 8 + 8, not 12 + 4.
            let cols = (d - c0) / (steps - step);
            let dst = out.add((h.start + i0) * h.width + h.col + c0);
            by_count!(cols, weigh_values, weights, vp.as_ptr().add(c0), dp, inv, dst, h.width, rows);
            c0 += cols;
        }
    }
}

/// The block's query pairs, one vector pair per pair of head columns: lane `r` of half
/// `h` holds row `i0 + 16h + r`'s word (zero past `rows`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn gather_queries<'a>(
    h: &HeadView,
    i0: usize,
    rows: usize,
    queries: &'a mut [MaybeUninit<[__m512i; 2]>],
) -> &'a [[__m512i; 2]] {
    let stride = h.width / 2; // words a token
    let index = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32(stride as i32),
    );
    let block = h.q.as_ptr().add((h.start + i0) * h.width + h.col) as *const i32;
    let masks = [first(rows), first(rows.saturating_sub(LANES))];
    for (c, slot) in queries.iter_mut().enumerate() {
        let half = |k: usize| {
            let base = block.add(c + k * LANES * stride);
            _mm512_mask_i32gather_epi32::<4>(_mm512_setzero_si512(), masks[k], index, base)
        };
        slot.write([half(0), half(1)]);
    }
    slice_init(queries)
}

/// A slice whose every slot was written.
unsafe fn slice_init<T>(slots: &[MaybeUninit<T>]) -> &[T] {
    std::slice::from_raw_parts(slots.as_ptr() as *const T, slots.len())
}

/// Every key's scores for the block (`scores[j]`, two halves of rows) and the rows' maxima.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn score_keys(h: &HeadView, queries: &[[__m512i; 2]], scores: &mut [MaybeUninit<[__m512; 2]>]) -> [__m512; 2] {
    let mut max = [_mm512_set1_ps(f32::MIN); 2];
    let key = |j: usize| h.k.as_ptr().add((h.start + j) * h.width + h.col) as *const u32;
    for (j0, step) in (0..h.len).step_by(STEP).zip(scores.chunks_mut(STEP)) {
        by_count!(step.len(), score_step, queries, key(j0), h.width / 2, step, &mut max);
    }
    max
}

/// `N` keys (`stride` words apart from `key`) against the block's queries.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[inline]
unsafe fn score_step<const N: usize>(
    queries: &[[__m512i; 2]],
    key: *const u32,
    stride: usize,
    scores: &mut [MaybeUninit<[__m512; 2]>],
    max: &mut [__m512; 2],
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; N];
    for (c, q) in queries.iter().enumerate() {
        let q: [__m512bh; 2] = std::mem::transmute(*q);
        for (t, sums) in acc.iter_mut().enumerate() {
            let k: __m512bh = std::mem::transmute(_mm512_set1_epi32(key.add(t * stride + c).read_unaligned() as i32));
            sums[0] = _mm512_dpbf16_ps(sums[0], k, q[0]);
            sums[1] = _mm512_dpbf16_ps(sums[1], k, q[1]);
        }
    }
    for (sums, slot) in acc.into_iter().zip(scores.iter_mut()) {
        max[0] = _mm512_max_ps(max[0], sums[0]);
        max[1] = _mm512_max_ps(max[1], sums[1]);
        slot.write(sums);
    }
}

/// `bf16(exp(s − max))` for every key, two adjacent keys interleaved into one pair a row
/// (zero for the missing partner of an odd last key); returns the rows' fp32 sums of the
/// unrounded weights.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn softmax_weights(
    scores: &[[__m512; 2]],
    max: [__m512; 2],
    weights: &mut [MaybeUninit<[__m512i; 2]>],
) -> [__m512; 2] {
    let log2e = _mm512_set1_ps(std::f32::consts::LOG2_E);
    // s·log₂e − max·log₂e in one rounding (an FMA); the rounding of max·log₂e scales every
    // weight of a row alike and cancels in the division by their sum.
    let shift = [_mm512_mul_ps(max[0], log2e), _mm512_mul_ps(max[1], log2e)];
    let weight = |s: __m512, k: usize| exp2(_mm512_fmsub_ps(s, log2e, shift[k]));
    let mut sums = [_mm512_setzero_ps(); 2];
    for (pair, slot) in scores.chunks(2).zip(weights.iter_mut()) {
        let mut words = [_mm512_setzero_si512(); 2];
        for k in 0..2 {
            let lo = weight(pair[0][k], k);
            let hi = if pair.len() == 2 { weight(pair[1][k], k) } else { _mm512_setzero_ps() };
            sums[k] = _mm512_add_ps(sums[k], _mm512_add_ps(lo, hi));
            words[k] = interleaved_pairs(lo, hi);
        }
        slot.write(words);
    }
    sums
}

/// `N` output columns of the block: `Σ_j V[j, c]·P[rows, j]` over key pairs, times the
/// rows' `inv` sums, written to the block's first `rows` rows at `dst` (`width` apart).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn weigh_values<const N: usize>(
    weights: &[[__m512i; 2]],
    values: *const u32,
    dp: usize,
    inv: [__m512; 2],
    dst: *mut f32,
    width: usize,
    rows: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; N];
    for (jp, p) in weights.iter().enumerate() {
        let p: [__m512bh; 2] = std::mem::transmute(*p);
        for (u, sums) in acc.iter_mut().enumerate() {
            let v: __m512bh = std::mem::transmute(_mm512_set1_epi32(values.add(jp * dp + u).read() as i32));
            sums[0] = _mm512_dpbf16_ps(sums[0], v, p[0]);
            sums[1] = _mm512_dpbf16_ps(sums[1], v, p[1]);
        }
    }
    // Column-major in the lanes; the output is row-major.
    let mut tile = [[0f32; ROWS]; N];
    for (u, sums) in acc.iter().enumerate() {
        _mm512_storeu_ps(tile[u].as_mut_ptr(), _mm512_mul_ps(sums[0], inv[0]));
        _mm512_storeu_ps(tile[u].as_mut_ptr().add(LANES), _mm512_mul_ps(sums[1], inv[1]));
    }
    for r in 0..rows {
        let row = dst.add(r * width);
        for (u, column) in tile.iter().enumerate() {
            *row.add(u) = column[r];
        }
    }
}

/// `V` as pairs along the keys, `vp[j/2][c] = (v[j][c], v[j+1][c])`, `dp` words a row;
/// zero past the sequence and the head; written once, not zero-filled first.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn pack_values(h: &HeadView, dp: usize) -> Vec<u32> {
    let (l, d) = (h.len, h.d);
    let mut vp: Vec<u32> = Vec::with_capacity(l.div_ceil(2) * dp);
    let row = |j: usize| h.v.as_ptr().add((h.start + j) * h.width + h.col);
    for jp in 0..l.div_ceil(2) {
        for c0 in (0..d).step_by(LANES) {
            let m = first(d - c0);
            let lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, row(2 * jp).add(c0) as *const i16));
            let hi = if 2 * jp + 1 < l {
                _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, row(2 * jp + 1).add(c0) as *const i16))
            } else {
                _mm512_setzero_si512()
            };
            let w = _mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi));
            _mm512_storeu_si512(vp.as_mut_ptr().add(jp * dp + c0) as *mut _, w);
        }
    }
    // Every word of every row was stored: `dp` is `d` rounded up to whole vectors.
    vp.set_len(l.div_ceil(2) * dp);
    vp
}
