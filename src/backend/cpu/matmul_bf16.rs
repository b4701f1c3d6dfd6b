//! bf16 products for CPU inference (`--precision bf16` on the CPU): `y = x·Wᵀ + b` with
//! both operands rounded to bfloat16 (round to nearest even, as PyTorch's autocast does)
//! and every product accumulated in fp32, on AVX512-BF16's `vdpbf16ps`, which does two
//! multiply-adds per 32-bit lane: twice the f32 FMA rate on the same registers.
//!
//! Layout (BLIS-style, one level of K blocking):
//! - the weight is packed once, at load, into panels of [`NR`] output features; inside a
//!   panel, pair `q` of the input features holds `(W[j, 2q], W[j, 2q+1])` as one 32-bit
//!   word for each of the `NR` features `j` (odd `k` is padded with a zero);
//! - each thread converts its block of activation rows to bf16 pairs (row-major, so one
//!   32-bit broadcast feeds a row's pair);
//! - the micro-kernel keeps an [`MR`]×[`NR`] tile of fp32 sums in 24 of the 32 zmm
//!   registers and walks [`KC_PAIRS`] pairs at a time (the panel slice, 16 KiB, stays in L1).
//!
//! [`reference`] is the scalar twin the tests compare against: the same bf16 roundings,
//! summed in f64.

use half::bf16;
use rayon::prelude::*;

/// Output features per panel (two zmm registers of fp32 sums).
const NR: usize = 32;
/// Activation rows per micro-tile (12 × 2 accumulators = 24 registers).
const MR: usize = 12;
/// Input-feature pairs per K block: a 16 KiB slice of a panel.
const KC_PAIRS: usize = 128;

/// Whether this CPU runs the bf16 kernels (AVX-512F and AVX512-BF16).
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One bf16 value as its 16 bits (round to nearest even; NaN stays NaN).
fn to_bf16_bits(x: f32) -> u32 {
    bf16::from_f32(x).to_bits() as u32
}

/// Two bf16 values in one word: `lo` in the low half, as `vdpbf16ps` pairs them.
fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16_bits(lo) | (to_bf16_bits(hi) << 16)
}

/// A `[out, in]` weight (PyTorch's layout) packed for [`linear`].
#[derive(Clone, Debug)]
pub struct PackedBf16 {
    /// Output features (`W`'s rows).
    pub out_features: usize,
    /// Input features (`W`'s columns).
    pub in_features: usize,
    pairs: usize,
    panels: usize,
    data: Vec<u32>,
}

impl PackedBf16 {
    /// Round `w: [out_features, in_features]` to bf16 and pack it into panels.
    pub fn pack(w: &[f32], out_features: usize, in_features: usize) -> PackedBf16 {
        assert_eq!(w.len(), out_features * in_features, "pack: weight is not [out, in]");
        let pairs = in_features.div_ceil(2);
        let panels = out_features.div_ceil(NR);
        let mut data = vec![0u32; panels * pairs * NR];
        let at = |j: usize, c: usize| if j < out_features && c < in_features { w[j * in_features + c] } else { 0.0 };
        for p in 0..panels {
            for q in 0..pairs {
                for l in 0..NR {
                    let j = p * NR + l;
                    data[(p * pairs + q) * NR + l] = pair(at(j, 2 * q), at(j, 2 * q + 1));
                }
            }
        }
        PackedBf16 { out_features, in_features, pairs, panels, data }
    }

    /// Bytes held (the packed bf16 copy).
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }
}

/// `y[n, out] = bf16(x)[n, in] · bf16(W)ᵀ + b` (fp32 sums; `b` empty: no bias), rows split
/// over the rayon pool. The output is written once, never zero-filled first. Panics
/// unless [`supported`].
pub fn linear(x: &[f32], w: &PackedBf16, b: &[f32], n: usize) -> Vec<f32> {
    let (k, m) = (w.in_features, w.out_features);
    assert!(supported(), "bf16 linear needs AVX512-BF16");
    assert_eq!(x.len(), n * k, "bf16 linear: x is not [n, in]");
    assert!(b.is_empty() || b.len() == m, "bf16 linear: bias is not [out]");
    let mut y: Vec<f32> = Vec::with_capacity(n * m);
    if n == 0 || m == 0 {
        return y;
    }
    let rows = rows_per_task(n, m, k);
    y.spare_capacity_mut()[..n * m].par_chunks_mut(rows * m).zip(x.par_chunks(rows * k)).for_each(|(yc, xc)| {
        let nr = xc.len() / k.max(1);
        let a = pack_rows(xc, nr, k, w.pairs);
        // Safety: `supported()` was checked; the block writes every element of its `nr`
        // rows in its first K block before it reads any of them back.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            x86::block(yc.as_mut_ptr() as *mut f32, &a, nr, w, b)
        }
    });
    // Safety: every one of the n·m elements was written above.
    unsafe { y.set_len(n * m) };
    y
}

/// Rows per rayon task: about four tasks a thread, in whole micro-tiles.
fn rows_per_task(n: usize, m: usize, k: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let work_rows = ((1usize << 18) / (m * k).max(1)).max(1); // below this, threading costs more
    let rows = n.div_ceil(threads * 4).max(work_rows).max(MR);
    rows.div_ceil(MR) * MR
}

/// Activation rows as bf16 pairs, `pairs` words a row (odd `k` padded with a zero).
fn pack_rows(x: &[f32], n: usize, k: usize, pairs: usize) -> Vec<u32> {
    let mut a = vec![0u32; n * pairs];
    for (dst, src) in a.chunks_mut(pairs.max(1)).zip(x.chunks(k.max(1))).take(n) {
        // Safety: the bf16 kernels only run where `supported()` holds.
        #[cfg(target_arch = "x86_64")]
        let done = unsafe { x86::pack_row(dst, src) };
        #[cfg(not(target_arch = "x86_64"))]
        let done = 0;
        for q in done..pairs {
            let lo = src[2 * q];
            let hi = if 2 * q + 1 < k { src[2 * q + 1] } else { 0.0 };
            dst[q] = pair(lo, hi);
        }
    }
    a
}

/// The scalar twin: the same bf16 roundings, products summed in f64.
pub fn reference(x: &[f32], w: &[f32], b: &[f32], n: usize, k: usize, m: usize) -> Vec<f32> {
    let r = |v: f32| bf16::from_f32(v).to_f64();
    let mut y = vec![0f32; n * m];
    for i in 0..n {
        for j in 0..m {
            let s: f64 = (0..k).map(|c| r(x[i * k + c]) * r(w[j * k + c])).sum();
            y[i * m + j] = (s + b.get(j).map_or(0.0, |&v| v as f64)) as f32;
        }
    }
    y
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{PackedBf16, KC_PAIRS, MR, NR};

    /// Round 32 floats at a time to bf16 pairs; returns how many pairs it wrote.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn pack_row(dst: &mut [u32], src: &[f32]) -> usize {
        let full = (src.len() / 32).min(dst.len() / 16);
        for i in 0..full {
            let lo = _mm512_loadu_ps(src.as_ptr().add(32 * i));
            let hi = _mm512_loadu_ps(src.as_ptr().add(32 * i + 16));
            // The second operand fills the low 16 bf16 lanes, in order.
            let v = _mm512_cvtne2ps_pbh(hi, lo);
            _mm512_storeu_si512(dst.as_mut_ptr().add(16 * i) as *mut _, std::mem::transmute::<__m512bh, __m512i>(v));
        }
        full * 16
    }

    /// All of one row block: K blocks outermost, then panels, then micro-tiles.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn block(y: *mut f32, a: &[u32], n: usize, w: &PackedBf16, b: &[f32]) {
        let m = w.out_features;
        let mut q0 = 0;
        while q0 < w.pairs {
            let qn = KC_PAIRS.min(w.pairs - q0);
            for p in 0..w.panels {
                let cols = NR.min(m - p * NR);
                let panel = w.data.as_ptr().add((p * w.pairs + q0) * NR);
                let bias = if q0 == 0 && !b.is_empty() { Some(b.as_ptr().add(p * NR)) } else { None };
                let mut r = 0;
                while r < n {
                    let rows = MR.min(n - r);
                    let tile = Tile {
                        a: a.as_ptr().add(r * w.pairs + q0),
                        a_stride: w.pairs,
                        b: panel,
                        pairs: qn,
                        c: y.add(r * m + p * NR),
                        ldc: m,
                        cols,
                        first: q0 == 0,
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
        a_stride: usize,
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
                let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(*t.a.add(i * t.a_stride + q) as i32));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(len: usize, seed: u64) -> Vec<f32> {
        super::super::test_values(len, seed).into_iter().map(|v| v as f32).collect()
    }

    /// Odd shapes: partial tiles, partial panels, an odd K and more than one K block.
    #[test]
    fn matches_the_scalar_twin_on_ragged_shapes() {
        if !supported() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for &(n, k, m) in &[(1, 1, 1), (13, 7, 33), (25, 320, 320), (37, 301, 95), (50, 1280, 64)] {
            let (x, w, b) = (random(n * k, 1), random(m * k, 2), random(m, 3));
            for bias in [&b[..], &[]] {
                let y = linear(&x, &PackedBf16::pack(&w, m, k), bias, n);
                let want = reference(&x, &w, bias, n, k, m);
                let scale = (k as f32).sqrt();
                for (i, (g, r)) in y.iter().zip(&want).enumerate() {
                    // fp32 sums of at most k terms against f64 ones.
                    assert!((g - r).abs() <= 1e-6 * scale * (1.0 + r.abs()), "{n}x{k}x{m} [{i}]: {g} vs {r}");
                }
            }
        }
    }

    /// `cargo test --release --lib matmul_bf16 -- --ignored --nocapture`: GFLOP/s at
    /// ESM-2 8M/35M layer shapes, beside the f32 product.
    #[test]
    #[ignore]
    fn print_rates() {
        use super::super::matmul::{matmul, MatRef};
        for &(n, k, m) in
            &[(4096, 320, 1280), (4096, 1280, 320), (4096, 320, 320), (4096, 480, 1920), (1024, 1024, 1024)]
        {
            let (x, w) = (random(n * k, 1), random(m * k, 2));
            let packed = PackedBf16::pack(&w, m, k);
            let mut y = vec![0f32; n * m];
            let rate = |f: &mut dyn FnMut()| {
                f();
                let t = std::time::Instant::now();
                let mut r = 0;
                while t.elapsed().as_secs_f64() < 1.0 {
                    f();
                    r += 1;
                }
                2.0 * (n * k * m * r) as f64 / t.elapsed().as_secs_f64() / 1e9
            };
            let bf = rate(&mut || drop(linear(&x, &packed, &[], n)));
            let f32r = rate(&mut || matmul(&mut y, MatRef::new(&x, n, k), MatRef::new(&w, m, k).t(), false));
            println!("{n}x{k}x{m}: bf16 {bf:.0} GFLOP/s, f32 {f32r:.0} GFLOP/s");
        }
    }

    /// Bits PyTorch gives (torch 2.15: `torch.tensor(xs).bfloat16().view(torch.int16)`),
    /// two of them ties (1 + 2⁻⁸ rounds down to even, 1 + 3·2⁻⁸ up), through the scalar
    /// rounding and through the AVX-512 packing of a 32-wide row.
    #[test]
    fn rounds_to_nearest_even_as_pytorch() {
        let xs = [1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -2.0, 0.1, 3.14159, 1e-30, 65504.0];
        let torch_bits = [0x3f80u32, 0x3f82, 0xc000, 0x3dcd, 0x4049, 0x0da2, 0x4780];
        for (x, want) in xs.iter().zip(torch_bits) {
            assert_eq!(to_bf16_bits(*x), want, "{x}");
        }
        if supported() {
            let row: Vec<f32> = (0..32).map(|i| xs[i % xs.len()]).collect();
            let packed = pack_rows(&row, 1, 32, 16);
            for (q, word) in packed.iter().enumerate() {
                let (lo, hi) = (torch_bits[(2 * q) % xs.len()], torch_bits[(2 * q + 1) % xs.len()]);
                assert_eq!(*word, lo | (hi << 16), "pair {q}");
            }
        }
    }
}
