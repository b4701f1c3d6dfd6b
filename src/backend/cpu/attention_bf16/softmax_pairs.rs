//! The softmax passes of bf16 training attention, fused with the bf16 pairing of their
//! results for the next products: each `l × l` block is read once more instead of once per
//! product that consumes it.
//!
//! Two layouts of bf16 pairs feed `matmul_bf16`'s kernel (see [`PairedLeft`]):
//! - row pairs, for `M·B` (K runs along a row of `M`): word `(i, q)` at `i·pairs + q` is
//!   `(M[i, 2q], M[i, 2q+1])`;
//! - column pairs, for `Mᵀ·B` (K runs down a column): word `(j, q)` at `q·l + j` is
//!   `(M[2q, j], M[2q+1, j])`.
//!
//! An odd `l` pads the last pair's high half with zero in both.

use crate::backend::cpu::matmul_bf16::PairedLeft;

/// The forward's softmax: `P = softmax(scale·S)` row by row, in place over `p` (fp32, kept
/// for the backward), and `P`'s row pairs (for `O = P·V`).
pub(super) fn softmax_with_row_pairs(p: &mut [f32], l: usize, scale: f32) -> Vec<u32> {
    assert!(super::supported(), "bf16 attention needs AVX512-BF16");
    let pairs = l.div_ceil(2);
    let mut rows = vec![0u32; l * pairs];
    for (row, words) in p.chunks_mut(l).zip(rows.chunks_mut(pairs)) {
        // Safety: AVX512-BF16 and BW were checked above.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            x86::softmax_row(row, scale, words)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (row, words, scale);
    }
    rows
}

/// The backward's pairs of one `l × l` block, from `dP` and the kept `P`.
pub(super) struct BackwardPairs {
    /// `dS`'s row pairs (for `dQ = dS·K`).
    pub ds_rows: Vec<u32>,
    /// `dS`'s column pairs (for `dK = dSᵀ·Q`).
    pub ds_columns: Vec<u32>,
    /// `P`'s column pairs (for `dV = Pᵀ·dO`), when asked for.
    pub p_columns: Option<Vec<u32>>,
}

impl BackwardPairs {
    pub fn ds(&self, l: usize) -> PairedLeft<'_> {
        PairedLeft::row_major(&self.ds_rows, l, l.div_ceil(2))
    }
    pub fn ds_transposed(&self, l: usize) -> PairedLeft<'_> {
        PairedLeft::pair_major(&self.ds_columns, l, l.div_ceil(2))
    }
    pub fn p_transposed(&self, l: usize) -> Option<PairedLeft<'_>> {
        self.p_columns.as_ref().map(|w| PairedLeft::pair_major(w, l, l.div_ceil(2)))
    }
}

/// The softmax backward `dS = P ⊙ (dP − rowsum(dP ⊙ P))` (Bridle's softmax Jacobian,
/// row by row), returned only as bf16 pairs, with `P`'s column pairs when `with_p`.
pub(super) fn softmax_backward_pairs(dp: &[f32], p: &[f32], l: usize, with_p: bool) -> BackwardPairs {
    assert!(super::supported(), "bf16 attention needs AVX512-BF16");
    let pairs = l.div_ceil(2);
    let mut out = BackwardPairs {
        ds_rows: vec![0u32; l * pairs],
        ds_columns: vec![0u32; pairs * l],
        p_columns: with_p.then(|| vec![0u32; pairs * l]),
    };
    fn row(m: &[f32], i: usize, l: usize) -> Option<&[f32]> {
        (i < l).then(|| &m[i * l..][..l])
    }
    for q in 0..pairs {
        let (a, b) = (2 * q, 2 * q + 1);
        let rows = [(row(dp, a, l), row(p, a, l)), (row(dp, b, l), row(p, b, l))];
        let (rows_a, rest) = out.ds_rows[a * pairs..].split_at_mut(pairs);
        let rows_b = if b < l { &mut rest[..pairs] } else { &mut [] };
        let span = q * l..(q + 1) * l;
        let p_columns = out.p_columns.as_mut().map(|w| &mut w[span.clone()]);
        // Safety: AVX512-BF16 and BW were checked above.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            x86::softmax_backward_two_rows(rows, [rows_a, rows_b], &mut out.ds_columns[span], p_columns)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (rows, rows_a, rows_b, span, p_columns);
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::x86::{exp2, first, interleaved_pairs};

    /// 32 floats (two halves) as 16 words of adjacent pairs: `(x[2w], x[2w+1])`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn adjacent_pairs(lo: __m512, hi: __m512) -> __m512i {
        // The second operand fills the low 16 bf16 lanes, in order.
        std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo))
    }

    /// One row of the forward: `row = softmax(scale·row)` in fp32 (max, `exp(x − max)`
    /// and its sum, then the division) and its row pairs into `words`; every pass takes
    /// its last partial vector through masks.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn softmax_row(row: &mut [f32], scale: f32, words: &mut [u32]) {
        let (l, s) = (row.len(), _mm512_set1_ps(scale));
        let mut max = _mm512_set1_ps(f32::MIN);
        for c in (0..l).step_by(16) {
            let (mask, at) = (first(l - c), row.as_mut_ptr().add(c));
            let mut x = _mm512_maskz_loadu_ps(mask, at);
            if scale != 1.0 {
                x = _mm512_mul_ps(x, s);
                _mm512_mask_storeu_ps(at, mask, x);
            }
            max = _mm512_mask_max_ps(max, mask, max, x);
        }
        // exp(x − max) = 2^(x·log₂e − max·log₂e), the second term rounded once for the row.
        let log2e = _mm512_set1_ps(std::f32::consts::LOG2_E);
        let shift = _mm512_set1_ps(_mm512_reduce_max_ps(max) * std::f32::consts::LOG2_E);
        let mut sum = _mm512_setzero_ps();
        for c in (0..l).step_by(16) {
            let (mask, at) = (first(l - c), row.as_mut_ptr().add(c));
            let t = _mm512_fmsub_ps(_mm512_maskz_loadu_ps(mask, at), log2e, shift);
            let e = _mm512_maskz_mov_ps(mask, exp2(t));
            _mm512_mask_storeu_ps(at, mask, e);
            sum = _mm512_add_ps(sum, e);
        }
        scale_and_pair_row(row, 1.0 / _mm512_reduce_add_ps(sum), words);
    }

    /// `Σ a·b` over two rows of equal length, the last partial vector through a mask.
    #[target_feature(enable = "avx512f")]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut sum = _mm512_setzero_ps();
        for c in (0..a.len()).step_by(16) {
            let mask = first(a.len() - c);
            let (x, y) =
                (_mm512_maskz_loadu_ps(mask, a.as_ptr().add(c)), _mm512_maskz_loadu_ps(mask, b.as_ptr().add(c)));
            sum = _mm512_fmadd_ps(x, y, sum);
        }
        _mm512_reduce_add_ps(sum)
    }

    /// `row *= inv` (fp32, in place) and its row pairs into `words`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn scale_and_pair_row(row: &mut [f32], inv: f32, words: &mut [u32]) {
        let (l, s) = (row.len(), _mm512_set1_ps(inv));
        let mut c = 0;
        while c < l {
            let (m0, m1) = (first(l - c), first((l - c).saturating_sub(16)));
            let ptr = row.as_mut_ptr().add(c);
            let lo = _mm512_mul_ps(_mm512_maskz_loadu_ps(m0, ptr), s);
            let hi = _mm512_mul_ps(_mm512_maskz_loadu_ps(m1, ptr.wrapping_add(16)), s);
            _mm512_mask_storeu_ps(ptr, m0, lo);
            _mm512_mask_storeu_ps(ptr.wrapping_add(16), m1, hi);
            let w = first((l - c).div_ceil(2));
            _mm512_mask_storeu_epi32(words.as_mut_ptr().add(c / 2) as *mut _, w, adjacent_pairs(lo, hi));
            c += 32;
        }
    }

    /// Rows `a` and `b` (absent past `l`) of `dS = P ⊙ (dP − dot)`: their row pairs,
    /// their column pairs (pair `q` of every column) and `P`'s column pairs.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn softmax_backward_two_rows(
        rows: [(Option<&[f32]>, Option<&[f32]>); 2],
        ds_rows: [&mut [u32]; 2],
        ds_columns: &mut [u32],
        mut p_columns: Option<&mut [u32]>,
    ) {
        let l = ds_columns.len();
        let dots = rows.map(|r| match r {
            (Some(dp), Some(p)) => dot(dp, p),
            _ => 0.0,
        });
        let zero = _mm512_setzero_ps();
        let load = |m: Option<&[f32]>, at: usize, mask| match m {
            Some(m) => _mm512_maskz_loadu_ps(mask, m.as_ptr().wrapping_add(at)),
            None => zero,
        };
        let mut c = 0;
        while c < l {
            let masks = [first(l - c), first((l - c).saturating_sub(16))];
            // [row][half] of P and dS.
            let mut p = [[zero; 2]; 2];
            let mut ds = [[zero; 2]; 2];
            for r in 0..2 {
                let dot = _mm512_set1_ps(dots[r]);
                for h in 0..2 {
                    p[r][h] = load(rows[r].1, c + 16 * h, masks[h]);
                    let dp = load(rows[r].0, c + 16 * h, masks[h]);
                    ds[r][h] = _mm512_mul_ps(p[r][h], _mm512_sub_ps(dp, dot));
                }
            }
            let w = first((l - c).div_ceil(2));
            for r in 0..2 {
                if !ds_rows[r].is_empty() {
                    let dst = ds_rows[r].as_mut_ptr().add(c / 2) as *mut _;
                    _mm512_mask_storeu_epi32(dst, w, adjacent_pairs(ds[r][0], ds[r][1]));
                }
            }
            for h in 0..2 {
                let at = c + 16 * h;
                if at < l {
                    let dst = ds_columns.as_mut_ptr().add(at) as *mut _;
                    _mm512_mask_storeu_epi32(dst, masks[h], interleaved_pairs(ds[0][h], ds[1][h]));
                    if let Some(pc) = p_columns.as_deref_mut() {
                        let dst = pc.as_mut_ptr().add(at) as *mut _;
                        _mm512_mask_storeu_epi32(dst, masks[h], interleaved_pairs(p[0][h], p[1][h]));
                    }
                }
            }
            c += 32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(len: usize, seed: u64) -> Vec<f32> {
        crate::backend::cpu::test_values(len, seed).into_iter().map(|v| (3.0 * v) as f32).collect()
    }

    /// The low (`hi` false) or high half of a pair word as f32.
    fn half(word: u32, hi: bool) -> f32 {
        f32::from_bits(if hi { word & 0xffff_0000 } else { word << 16 })
    }

    /// Within one bf16 ulp (8 significant bits) of `want`: its rounding, and room for
    /// the fp32 passes' own last bit (FMA contraction) to tip a tie.
    fn close(got: f32, want: f32) -> bool {
        (got - want).abs() <= want.abs() * 2f32.powi(-7)
    }

    /// Every word of both layouts against the fp32 matrix it pairs (odd and even `l`,
    /// tails shorter than a vector); the zero padding of an odd `l`.
    fn check_pairs(m: &[f32], l: usize, rows: Option<&[u32]>, columns: Option<&[u32]>, what: &str) {
        let pairs = l.div_ceil(2);
        let at = |i: usize, j: usize| if i < l && j < l { m[i * l + j] } else { 0.0 };
        for i in 0..l {
            for q in 0..pairs {
                if let Some(rows) = rows {
                    let w = rows[i * pairs + q];
                    let (lo, hi) = (at(i, 2 * q), at(i, 2 * q + 1));
                    assert!(close(half(w, false), lo) && close(half(w, true), hi), "{what} l {l} row ({i}, {q})");
                }
                if let Some(columns) = columns {
                    let w = columns[q * l + i];
                    let (lo, hi) = (at(2 * q, i), at(2 * q + 1, i));
                    assert!(close(half(w, false), lo) && close(half(w, true), hi), "{what} l {l} column ({i}, {q})");
                }
            }
        }
    }

    #[test]
    fn fused_softmax_pairs_match_the_fp32_passes() {
        if !super::super::supported() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for l in [1usize, 2, 7, 16, 33, 64, 77] {
            let s = random(l * l, l as u64);
            let mut p = s.clone();
            let rows = softmax_with_row_pairs(&mut p, l, 0.7);
            let mut want = s.clone();
            crate::backend::cpu::attention::softmax_rows(&mut want, l, 0.7);
            for (i, (g, w)) in p.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-6 * w.abs().max(1e-30), "l {l} P[{i}]: {g} vs {w}");
            }
            check_pairs(&p, l, Some(&rows), None, "P");

            let dp = random(l * l, 100 + l as u64);
            for with_p in [true, false] {
                let got = softmax_backward_pairs(&dp, &p, l, with_p);
                let mut ds = dp.clone();
                crate::backend::cpu::attention::softmax_backward_rows(&mut ds, &p, l);
                check_pairs(&ds, l, Some(&got.ds_rows), Some(&got.ds_columns), "dS");
                assert_eq!(got.p_columns.is_some(), with_p);
                if let Some(pc) = &got.p_columns {
                    check_pairs(&p, l, None, Some(pc), "P columns");
                }
            }
        }
    }
}
