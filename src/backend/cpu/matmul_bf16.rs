//! bf16 products on the CPU (`--precision bf16`): the linear layer's three products
//! `y = x·Wᵀ + b`, `dx += dy·W` and `dW += dyᵀ·x`, with both operands rounded to bfloat16
//! (round to nearest even, as PyTorch's autocast does) and every product accumulated in
//! fp32, on AVX512-BF16's `vdpbf16ps`, which does two multiply-adds per 32-bit lane: twice
//! the f32 FMA rate on the same registers.
//!
//! Layout (BLIS-style, one level of K blocking), for `C[rows, cols] (+)= A·Bᵀ` over K:
//! - the right operand is packed into panels of [`NR`] output columns ([`PackedBf16`]);
//!   inside a panel, pair `q` of K holds `(B[j, 2q], B[j, 2q+1])` as one 32-bit word for
//!   each of the `NR` columns `j` (odd K is padded with a zero). The forward packs the
//!   weight (K contiguous, [`PackedBf16::pack`]; once for inference), the backward packs
//!   `W` for `dx` and `x` for `dW` from matrices whose K runs down the columns
//!   ([`PackedBf16::pack_columns`]);
//! - the left operand is bf16 pairs along K, read at a row stride and a pair stride:
//!   row-major for `x` and `dy` (each thread packs its own block of rows), pair-major for
//!   `dyᵀ` in `dW` (one 32-bit broadcast feeds a row's pair either way);
//! - the micro-kernel keeps an [`MR`]×[`NR`] tile of fp32 sums in 24 of the 32 zmm
//!   registers and walks [`KC_PAIRS`] pairs at a time (the panel slice, 32 KiB, stays near L1);
//!   a panel of at most 16 columns (a 16-wide attention head) takes `2·MR` rows of one
//!   register each, so no lane of the 24 sums is idle;
//! - a left operand that a caller already rounded and paired ([`PairedLeft`], the
//!   attention softmax's output) goes straight to the kernel ([`paired_product_at`]).
//!
//! [`reference`] is the scalar twin the tests compare against: the same bf16 roundings,
//! summed in f64.

use half::bf16;
use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Output features per panel (two zmm registers of fp32 sums).
const NR: usize = 32;
/// Activation rows per micro-tile (12 × 2 accumulators = 24 registers).
const MR: usize = 12;
/// Input-feature pairs per K block: a 32 KiB slice of a panel. 256 rather than 128: one K
/// block for 480-wide inputs, so the sums are not stored and reloaded (measured on Zen 4:
/// 73 % → 88 % of the `vdpbf16ps` peak at 512×480×1920 on one core).
const KC_PAIRS: usize = 256;

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

/// The right operand of a product, packed in panels: for [`linear`] a `[out, in]` weight
/// (PyTorch's layout), in general `cols` output columns over `k` summed features.
#[derive(Clone, Debug)]
pub struct PackedBf16 {
    /// Output columns (`W`'s rows for [`linear`]).
    pub out_features: usize,
    /// Summed features, K (`W`'s columns for [`linear`]).
    pub in_features: usize,
    pairs: usize,
    panels: usize,
    data: Vec<u32>,
}

impl PackedBf16 {
    /// Round `w: [out_features, in_features]` to bf16 and pack it into panels.
    pub fn pack(w: &[f32], out_features: usize, in_features: usize) -> PackedBf16 {
        assert_eq!(w.len(), out_features * in_features, "pack: weight is not [out, in]");
        PackedBf16::pack_strided(w, in_features, out_features, in_features)
    }

    /// [`PackedBf16::pack`] for a weight whose rows lie `ld` floats apart (a head's columns
    /// of a wider matrix).
    pub fn pack_strided(w: &[f32], ld: usize, out_features: usize, in_features: usize) -> PackedBf16 {
        assert_view(w.len(), ld, out_features, in_features, "pack");
        let pairs = in_features.div_ceil(2);
        let panels = out_features.div_ceil(NR);
        let len = panels * pairs * NR;
        let mut data: Vec<u32> = Vec::with_capacity(len);
        // Each panel's rows are rounded as whole rows (vectorised), then their words are
        // interleaved into the panel, zero pairs in the columns past `out_features`; every
        // word is written (no zero fill first).
        data.spare_capacity_mut()[..len].par_chunks_mut((pairs * NR).max(1)).enumerate().for_each(|(p, panel)| {
            let (j0, width) = (p * NR, NR.min(out_features - p * NR));
            let rows = pack_rows(&w[j0 * ld..], ld, width, in_features, pairs);
            for q in 0..pairs {
                for l in 0..NR {
                    panel[q * NR + l].write(if l < width { rows[l * pairs + q] } else { 0 });
                }
            }
        });
        // Safety: the loop above wrote all `len` words.
        unsafe { data.set_len(len) };
        PackedBf16 { out_features, in_features, pairs, panels, data }
    }

    /// Round `src: [k, cols]` (row-major: K runs down the columns) to bf16 and pack it as
    /// the right operand of `C = A·src`: `W` for `dx = dy·W`, `x` for `dW = dyᵀ·x`. Panels
    /// are packed in parallel, 16 words at a time on AVX512-BF16.
    pub fn pack_columns(src: &[f32], k: usize, cols: usize) -> PackedBf16 {
        assert_eq!(src.len(), k * cols, "pack_columns: source is not [k, cols]");
        PackedBf16::pack_columns_strided(src, cols, k, cols)
    }

    /// [`PackedBf16::pack_columns`] for a source whose rows lie `ld` floats apart.
    pub fn pack_columns_strided(src: &[f32], ld: usize, k: usize, cols: usize) -> PackedBf16 {
        PackedBf16::pack_scaled_columns(src, ld, k, cols, 1.0)
    }

    /// [`PackedBf16::pack_columns_strided`] of `scale·src` (each product rounded to fp32,
    /// then to bf16).
    pub fn pack_scaled_columns(src: &[f32], ld: usize, k: usize, cols: usize, scale: f32) -> PackedBf16 {
        assert_view(src.len(), ld, k, cols, "pack_columns");
        let pairs = k.div_ceil(2);
        let panels = cols.div_ceil(NR);
        let len = panels * pairs * NR;
        // Written word by word below (no zero fill first): every word of every panel,
        // columns past `cols` as zero pairs.
        let mut data: Vec<u32> = Vec::with_capacity(len);
        data.spare_capacity_mut().par_chunks_mut((pairs * NR).max(1)).enumerate().for_each(|(p, panel)| {
            let (c0, width) = (p * NR, NR.min(cols - p * NR));
            let view = PanelSource { src: &src[c0..], ld, k, width, scale };
            #[cfg(target_arch = "x86_64")]
            if supported() {
                // Safety: AVX512-BF16 was just checked; `panel` holds pairs·NR words.
                return unsafe { x86::pack_panel(panel.as_mut_ptr() as *mut u32, &view) };
            }
            view.pack_scalar(panel);
        });
        // Safety: the loop above initialised all `len` words.
        unsafe { data.set_len(len) };
        PackedBf16 { out_features: cols, in_features: k, pairs, panels, data }
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
    let m = w.out_features;
    assert!(b.is_empty() || b.len() == m, "bf16 linear: bias is not [out]");
    let mut y: Vec<f32> = Vec::with_capacity(n * m);
    // Safety: with `accumulate` off every element is written before it is read.
    unsafe {
        rows_times_panels(y.spare_capacity_mut().as_mut_ptr() as *mut f32, x, n, w, b, false);
        y.set_len(n * m);
    }
    y
}

/// `bf16(dy)[n, out] · bf16(W)[out, in]` (fp32 sums) as a new buffer, written once: the
/// input gradient of [`linear`] where no other contribution to it exists yet. Panics
/// unless [`supported`].
pub fn linear_input_grad(dy: &[f32], w: &[f32], n: usize, out: usize, inp: usize) -> Vec<f32> {
    linear(dy, &PackedBf16::pack_columns(w, out, inp), &[], n)
}

/// `dx[n, in] += bf16(dy)[n, out] · bf16(W)[out, in]` (fp32 sums), the input gradient of
/// [`linear`]. Panics unless [`supported`].
pub fn linear_backward_input(dx: &mut [f32], dy: &[f32], w: &[f32], n: usize, out: usize, inp: usize) {
    assert_eq!(dx.len(), n * inp, "bf16 dx: not [n, in]");
    let w = PackedBf16::pack_columns(w, out, inp);
    // Safety: `dx` holds n·in initialised floats.
    unsafe { rows_times_panels(dx.as_mut_ptr(), dy, n, &w, &[], true) }
}

/// `dW[out, in] += bf16(dy)[n, out]ᵀ · bf16(x)[n, in]` (fp32 sums), the weight gradient of
/// [`linear`]. Panics unless [`supported`].
pub fn linear_backward_weight(dw: &mut [f32], dy: &[f32], x: &[f32], n: usize, out: usize, inp: usize) {
    assert_eq!(dw.len(), out * inp, "bf16 dW: not [out, in]");
    // Safety: `dw` holds out·in initialised floats.
    unsafe { weight_grad(dw.as_mut_ptr(), dy, x, n, out, inp, true) }
}

/// `bf16(dy)[n, out]ᵀ · bf16(x)[n, in]` (fp32 sums) as a new buffer, written once: the
/// weight gradient of [`linear`] where none exists yet. Panics unless [`supported`].
pub fn linear_weight_grad(dy: &[f32], x: &[f32], n: usize, out: usize, inp: usize) -> Vec<f32> {
    let mut dw: Vec<f32> = Vec::with_capacity(out * inp);
    if n == 0 {
        dw.resize(out * inp, 0.0); // an empty sum
        return dw;
    }
    // Safety: with `accumulate` off every element is written before it is read.
    unsafe {
        weight_grad(dw.spare_capacity_mut().as_mut_ptr() as *mut f32, dy, x, n, out, inp, false);
        dw.set_len(out * inp);
    }
    dw
}

/// `dW (+)= bf16(dy)ᵀ · bf16(x)`: K is the `n` rows, `dyᵀ` is packed pair-major and `x` as
/// panels; blocks of `dW` rows over the rayon pool.
///
/// # Safety
/// `dw` points to `out·in` floats, initialised when `accumulate` is on; when it is off,
/// `n > 0` (the block writes every element in its first K block).
unsafe fn weight_grad(dw: *mut f32, dy: &[f32], x: &[f32], n: usize, out: usize, inp: usize, accumulate: bool) {
    assert!(supported(), "bf16 products need AVX512-BF16");
    assert_eq!(dy.len(), n * out, "bf16 dW: dy is not [n, out]");
    assert_eq!(x.len(), n * inp, "bf16 dW: x is not [n, in]");
    if out == 0 || inp == 0 || n == 0 {
        return;
    }
    let xs = PackedBf16::pack_columns(x, n, inp);
    let a = pair_major(dy, n, out);
    let rows = rows_per_task(out, inp, n);
    let dw = std::slice::from_raw_parts_mut(dw as *mut std::mem::MaybeUninit<f32>, out * inp);
    dw.par_chunks_mut(rows * inp).enumerate().for_each(|(t, dc)| {
        let r0 = t * rows;
        let left = Left { words: a[r0..].as_ptr(), row_stride: 1, pair_stride: out };
        // Safety: `supported()` was checked; the chunk holds its rows of `dw`, and `left`
        // reads rows r0.. of `a` at pair stride `out`, all inside `a`.
        block(dc.as_mut_ptr() as *mut f32, inp, left, dc.len() / inp, &xs, &[], accumulate)
    });
}

/// One panel's source for [`PackedBf16::pack_scaled_columns`]: `width` (≤ [`NR`]) columns
/// of `k` rows `ld` floats apart, times `scale`.
struct PanelSource<'a> {
    src: &'a [f32],
    ld: usize,
    k: usize,
    width: usize,
    scale: f32,
}

impl PanelSource<'_> {
    /// `scale·src[row, col]`, zero past the source.
    fn at(&self, row: usize, col: usize) -> f32 {
        if row < self.k && col < self.width {
            self.scale * self.src[row * self.ld + col]
        } else {
            0.0
        }
    }

    /// The scalar twin of [`x86::pack_panel`].
    fn pack_scalar(&self, panel: &mut [std::mem::MaybeUninit<u32>]) {
        for (i, word) in panel.iter_mut().enumerate() {
            let (q, col) = (i / NR, i % NR);
            word.write(pair(self.at(2 * q, col), self.at(2 * q + 1, col)));
        }
    }
}

/// `C (+)= bf16(a)[n, k] · B` on the calling thread, row `i` of `a` at `a[i·lda..]` and of
/// `C` at `c + i·ldc`: for callers that are already one task of a parallel loop (attention,
/// per head).
///
/// # Safety
/// For `i < n` and `j < w.out_features`, `c.add(i·ldc + j)` is valid, written by no one
/// else meanwhile, and initialised when `accumulate` is on.
pub unsafe fn product_at(c: *mut f32, ldc: usize, a: &[f32], lda: usize, n: usize, w: &PackedBf16, accumulate: bool) {
    assert_view(a.len(), lda, n, w.in_features, "bf16 product");
    let packed = pack_rows(a, lda, n, w.in_features, w.pairs);
    paired_product_at(c, ldc, PairedLeft::row_major(&packed, n, w.pairs), w, accumulate);
}

/// A left operand already rounded to bf16 pairs along K: word `(i, q)` at
/// `words[i·row_stride + q·pair_stride]`, for `rows` rows of `pairs` pairs.
#[derive(Clone, Copy)]
pub struct PairedLeft<'a> {
    words: &'a [u32],
    rows: usize,
    pairs: usize,
    row_stride: usize,
    pair_stride: usize,
}

impl<'a> PairedLeft<'a> {
    /// Row `i`'s pairs contiguous (`words[i·pairs + q]`), as [`product_at`] packs them.
    pub fn row_major(words: &'a [u32], rows: usize, pairs: usize) -> PairedLeft<'a> {
        PairedLeft { words, rows, pairs, row_stride: pairs, pair_stride: 1 }
    }

    /// Pair `q` of every row contiguous (`words[q·rows + i]`): `aᵀ` for `a: [k, rows]`
    /// paired down its columns, as `dW = dyᵀ·x` reads `dyᵀ`.
    pub fn pair_major(words: &'a [u32], rows: usize, pairs: usize) -> PairedLeft<'a> {
        PairedLeft { words, rows, pairs, row_stride: 1, pair_stride: rows }
    }
}

/// [`product_at`] for a left operand its caller already paired (a softmax pass that
/// writes its result as bf16 pairs).
///
/// # Safety
/// As [`product_at`], for `a.rows` rows.
pub unsafe fn paired_product_at(c: *mut f32, ldc: usize, a: PairedLeft, w: &PackedBf16, accumulate: bool) {
    assert!(supported(), "bf16 products need AVX512-BF16");
    assert_eq!(a.pairs, w.pairs, "bf16 product: the left operand's K is not the right operand's");
    if a.rows == 0 || a.pairs == 0 {
        return;
    }
    let last = (a.rows - 1) * a.row_stride + (a.pairs - 1) * a.pair_stride;
    assert!(last < a.words.len(), "bf16 product: {} words hold no {}x{} pairs", a.words.len(), a.rows, a.pairs);
    let left = Left { words: a.words.as_ptr(), row_stride: a.row_stride, pair_stride: a.pair_stride };
    block(c, ldc, left, a.rows, w, &[], accumulate);
}

/// The AVX512-BF16 block kernel ([`x86::block`]); every caller has checked [`supported`],
/// which is false on other architectures.
///
/// # Safety
/// As [`x86::block`]: `c` holds `n` rows of `w.out_features` floats `ldc` apart (read
/// first when `accumulate`), and `a` addresses `n` rows of `w.pairs` words.
unsafe fn block(c: *mut f32, ldc: usize, a: Left, n: usize, w: &PackedBf16, b: &[f32], accumulate: bool) {
    #[cfg(target_arch = "x86_64")]
    x86::block(c, ldc, a, n, w, b, accumulate);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (c, ldc, a, n, w, b, accumulate);
}

/// `aᵀ` for `a: [k, n]` as bf16 pairs along K, pair-major: word `(i, q)` at `q·n + i` is
/// `(a[2q, i], a[2q + 1, i])` (odd `k`: a zero high half), over the rayon pool.
fn pair_major(a: &[f32], k: usize, n: usize) -> Vec<u32> {
    // Safety: `pair_rows` writes every word of its row.
    unsafe {
        super::written(k.div_ceil(2) * n, n, |start, dst| {
            let q = start / n;
            let hi = (2 * q + 1 < k).then(|| &a[(2 * q + 1) * n..][..n]);
            pair_rows(&a[2 * q * n..][..n], hi, dst);
        })
    }
}

/// Where the kernel reads the left operand: word `(i, q)` at `words[i·row_stride +
/// q·pair_stride]`.
#[derive(Clone, Copy)]
struct Left {
    words: *const u32,
    row_stride: usize,
    pair_stride: usize,
}

/// `c[n, cols] = (or += with accumulate) bf16(a)[n, k] · B + b` for row-major `a`, rows
/// split over the rayon pool, each task packing its own rows.
///
/// Safety: `c` points to `n·cols` floats, initialised when `accumulate` is on.
unsafe fn rows_times_panels(c: *mut f32, a: &[f32], n: usize, w: &PackedBf16, b: &[f32], accumulate: bool) {
    let (k, m) = (w.in_features, w.out_features);
    assert!(supported(), "bf16 products need AVX512-BF16");
    assert_eq!(a.len(), n * k, "bf16 product: the left operand is not [n, k]");
    assert!(k > 0, "bf16 product: nothing to sum over (k = 0)");
    if n == 0 || m == 0 {
        return;
    }
    let rows = rows_per_task(n, m, k);
    let c = std::slice::from_raw_parts_mut(c as *mut std::mem::MaybeUninit<f32>, n * m);
    c.par_chunks_mut(rows * m).zip(a.par_chunks(rows * k.max(1))).for_each(|(cc, ac)| {
        let nr = cc.len() / m;
        let packed = pack_rows(ac, k, nr, k, w.pairs);
        let left = Left { words: packed.as_ptr(), row_stride: w.pairs, pair_stride: 1 };
        // Safety: `supported()` was checked; without `accumulate` the block writes every
        // element of its `nr` rows in its first K block before it reads any of them back.
        block(cc.as_mut_ptr() as *mut f32, m, left, nr, w, b, accumulate)
    });
}

/// `dst[l] = (bf16(lo[l]), bf16(hi[l]))` as one word (`hi` absent: zero).
fn pair_rows(lo: &[f32], hi: Option<&[f32]>, dst: &mut [MaybeUninit<u32>]) {
    #[cfg(target_arch = "x86_64")]
    if supported() {
        // Safety: AVX512-BF16 was just checked.
        return unsafe { x86::pair_rows(lo, hi, dst) };
    }
    for l in 0..dst.len() {
        dst[l].write(pair(lo[l], hi.map_or(0.0, |h| h[l])));
    }
}

/// Rows per rayon task: about four tasks a thread, in whole micro-tiles, and few enough
/// that the task's `rows × m` sums stay within about 1 MiB (a Zen 4 L2): a block walks
/// every panel over all its rows, and with 512 rows of 1,920 sums it ran at 92 % of the
/// `vdpbf16ps` peak against 97 % with 264 (one core, the micro-kernel alone).
fn rows_per_task(n: usize, m: usize, k: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let work_rows = ((1usize << 18) / (m * k).max(1)).max(1); // below this, threading costs more
    let cache_rows = (1usize << 18) / m.max(1);
    let rows = n.div_ceil(threads * 4).max(work_rows).min(cache_rows).max(MR);
    rows.div_ceil(MR) * MR
}

/// Panics unless a `len`-float slice holds `rows` rows of `cols` floats, `ld` apart.
fn assert_view(len: usize, ld: usize, rows: usize, cols: usize, what: &str) {
    let need = if rows == 0 { 0 } else { (rows - 1) * ld + cols };
    assert!(
        len >= need && (rows <= 1 || ld >= cols),
        "{what}: {rows} rows of {cols} floats {ld} apart do not fit in {len}"
    );
}

/// Activation rows (row `i` at `x[i·ld..]`) as bf16 pairs, `pairs` words a row (odd `k`
/// padded with a zero).
fn pack_rows(x: &[f32], ld: usize, n: usize, k: usize, pairs: usize) -> Vec<u32> {
    let mut a: Vec<u32> = Vec::with_capacity(n * pairs);
    let dst = &mut a.spare_capacity_mut()[..n * pairs];
    #[cfg(target_arch = "x86_64")]
    // Safety: the bf16 kernels only run where `supported()` holds.
    unsafe {
        x86::pack_rows(dst, x, ld, n, k, pairs)
    };
    #[cfg(not(target_arch = "x86_64"))]
    for (i, dst) in dst.chunks_mut(pairs.max(1)).enumerate() {
        let src = &x[i * ld..][..k];
        for q in 0..pairs {
            let lo = src.get(2 * q).copied().unwrap_or(0.0);
            let hi = src.get(2 * q + 1).copied().unwrap_or(0.0);
            dst[q].write(pair(lo, hi));
        }
    }
    // Safety: every row's `pairs` words were written above.
    unsafe { a.set_len(n * pairs) };
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

/// The scalar twin of [`linear_backward_input`]: `dx + bf16(dy)·bf16(W)`, sums in f64.
pub fn reference_backward_input(dx: &[f32], dy: &[f32], w: &[f32], n: usize, out: usize, inp: usize) -> Vec<f32> {
    let r = |v: f32| bf16::from_f32(v).to_f64();
    let mut g = dx.to_vec();
    for i in 0..n {
        for j in 0..inp {
            let s: f64 = (0..out).map(|c| r(dy[i * out + c]) * r(w[c * inp + j])).sum();
            g[i * inp + j] = (dx[i * inp + j] as f64 + s) as f32;
        }
    }
    g
}

/// The scalar twin of [`linear_backward_weight`]: `dW + bf16(dy)ᵀ·bf16(x)`, sums in f64.
pub fn reference_backward_weight(dw: &[f32], dy: &[f32], x: &[f32], n: usize, out: usize, inp: usize) -> Vec<f32> {
    let r = |v: f32| bf16::from_f32(v).to_f64();
    let mut g = dw.to_vec();
    for o in 0..out {
        for j in 0..inp {
            let s: f64 = (0..n).map(|c| r(dy[c * out + o]) * r(x[c * inp + j])).sum();
            g[o * inp + j] = (dw[o * inp + j] as f64 + s) as f32;
        }
    }
    g
}

#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(test)]
mod tests;
