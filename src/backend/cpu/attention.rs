//! Multi-head attention over packed variable-length sequences (no padding).
//!
//! Sequence `s` owns tokens `cu[s]..cu[s+1]` of the `[tokens, heads·d]` inputs, and
//! attends only within itself. For each sequence and head (Vaswani et al. 2017, eq. 1):
//! `P = softmax(scale·Q Kᵀ)` row-wise, `O = P V`.
//!
//! The probabilities are kept (the backward needs them, and the contact head reads them):
//! sequence `s`, head `h` occupies the `L_s × L_s` block at `prob_offsets[s] + h·L_s²`.
//!
//! Backward, with `dP = dO Vᵀ (+ the gradient flowing into P from elsewhere)`:
//! `dV = Pᵀ dO`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, `dQ = scale·dS K`, `dK = scale·dSᵀ Q`.

use rayon::prelude::*;

use super::matmul::{gemm_into_ptr, MatRef};
use super::{simd, Real, SharedMut};

/// Shape of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub n_heads: usize,
    pub head_dim: usize,
}

impl AttnDims {
    fn width(&self) -> usize {
        self.n_heads * self.head_dim
    }
}

/// Start of each sequence's probability blocks, and the total size.
pub fn prob_offsets(cu: &[usize], n_heads: usize) -> (Vec<usize>, usize) {
    let mut offs = Vec::with_capacity(cu.len());
    let mut total = 0;
    for w in cu.windows(2) {
        offs.push(total);
        let l = w[1] - w[0];
        total += n_heads * l * l;
    }
    (offs, total)
}

/// One (sequence, head) task.
#[derive(Clone, Copy)]
struct Task {
    start: usize,
    len: usize,
    head: usize,
    prob: usize,
}

fn tasks(cu: &[usize], n_heads: usize) -> Vec<Task> {
    let (offs, _) = prob_offsets(cu, n_heads);
    let mut out = Vec::new();
    for (s, w) in cu.windows(2).enumerate() {
        let len = w[1] - w[0];
        for head in 0..n_heads {
            out.push(Task { start: w[0], len, head, prob: offs[s] + head * len * len });
        }
    }
    out
}

/// The `len × head_dim` block of one head of one sequence in a `[tokens, width]` matrix.
fn head_block<'a, T>(m: &'a [T], t: &Task, dims: AttnDims) -> MatRef<'a, T> {
    MatRef::strided(m, t.start * dims.width() + t.head * dims.head_dim, t.len, dims.head_dim, dims.width())
}

/// In-place row softmax of a `len × len` block after multiplying by `scale`.
struct SoftmaxRows<'a, T> {
    p: &'a mut [T],
    len: usize,
    scale: T,
}

impl<T: Real> simd::Kernel for SoftmaxRows<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let scale = self.scale;
        for row in self.p.chunks_mut(self.len) {
            // Lane-wise reductions (`simd`) so that every pass vectorises. ESM-2 pre-scales q,
            // so the scaling pass is usually skipped.
            if scale != T::one() {
                for x in row.iter_mut() {
                    *x *= scale;
                }
            }
            let m = simd::max(row);
            let inv = T::one() / simd::exp_shifted_sum(row, m);
            for x in row.iter_mut() {
                *x *= inv;
            }
        }
    }
}

/// Row softmax of a `len × len` block in place, after multiplying by `scale`.
#[cfg(test)]
pub(super) fn softmax_rows<T: Real>(p: &mut [T], len: usize, scale: T) {
    simd::dispatch(SoftmaxRows { p, len, scale });
}

/// `dS = P ⊙ (dP − rowsum(dP ⊙ P))` of a `len × len` block, in place over `dP`.
#[cfg(test)]
pub(super) fn softmax_backward_rows<T: Real>(dp: &mut [T], p: &[T], len: usize) {
    simd::dispatch(SoftmaxBackwardRows { dp, p, len });
}

/// The (sequence start, length, head, probability offset) of every task, as [`forward`]
/// and [`backward`] split the work.
pub(super) fn task_list(cu: &[usize], n_heads: usize) -> Vec<(usize, usize, usize, usize)> {
    tasks(cu, n_heads).into_iter().map(|t| (t.start, t.len, t.head, t.prob)).collect()
}

/// `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, in place over `dP`.
struct SoftmaxBackwardRows<'a, T> {
    dp: &'a mut [T],
    p: &'a [T],
    len: usize,
}

impl<T: Real> simd::Kernel for SoftmaxBackwardRows<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        for (dpr, pr) in self.dp.chunks_mut(self.len).zip(self.p.chunks(self.len)) {
            let dot = simd::dot(dpr, pr);
            for (d, &pv) in dpr.iter_mut().zip(pr) {
                *d = pv * (*d - dot);
            }
        }
    }
}

/// Writes `out` (`[tokens, width]`) and `probs` (see the module doc).
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Real>(
    out: &mut [T],
    probs: &mut [T],
    q: &[T],
    k: &[T],
    v: &[T],
    cu: &[usize],
    dims: AttnDims,
    scale: T,
) {
    let out_ptr = SharedMut(out.as_mut_ptr());
    let prob_ptr = SharedMut(probs.as_mut_ptr());
    let width = dims.width();
    tasks(cu, dims.n_heads).par_iter().for_each(|t| {
        let l = t.len;
        // Safety: each task owns its probability block and its head's columns of its rows.
        let p = unsafe { std::slice::from_raw_parts_mut(prob_ptr.at(t.prob), l * l) };
        let (qh, kh, vh) = (head_block(q, t, dims), head_block(k, t, dims), head_block(v, t, dims));
        unsafe {
            gemm_into_ptr(p.as_mut_ptr(), l, qh, kh.t(), T::one(), T::zero());
        }
        simd::dispatch(SoftmaxRows { p: &mut *p, len: l, scale });
        let o = unsafe { out_ptr.at(t.start * width + t.head * dims.head_dim) };
        unsafe {
            gemm_into_ptr(o, width, MatRef::new(p, l, l), vh, T::one(), T::zero());
        }
    });
}

/// Query rows per register block of [`forward_inference`], and columns per vector chunk.
const QR: usize = 8;
const VC: usize = 16;

/// The output only, for inference (nothing keeps the probabilities): the same maths as
/// [`forward`] without the `heads·L²` probability buffer or the general GEMM's packing,
/// which cost more than the products at ESM-2's head widths (16 to 64). Each (sequence,
/// head) task scores [`QR`] queries at a time against every key (an 8×16 register tile over
/// a transposed copy of K), takes each row's softmax in place, and sums the value rows into
/// 8×16 accumulators, dividing by the row sum at the end. Sums run in another order than
/// in [`forward`] (about 1e-7 relative).
#[allow(clippy::too_many_arguments)]
pub fn forward_inference<T: Real>(out: &mut [T], q: &[T], k: &[T], v: &[T], cu: &[usize], dims: AttnDims, scale: T) {
    assert_eq!(out.len(), q.len(), "attention: out and q differ in size");
    let out_ptr = SharedMut(out.as_mut_ptr());
    tasks(cu, dims.n_heads).par_iter().for_each(|t| {
        // Safety: each task writes only its head's columns of its sequence's rows.
        simd::dispatch(HeadInference { t: *t, q, k, v, dims, scale, out: unsafe { out_ptr.at(0) } });
    });
}

/// Attention output of each sequence's first token only (`<cls>`), for a classifier whose
/// last layer needs nothing else: `out[s] = softmax(scale·q[s]·Kₛᵀ) Vₛ` per head, where
/// `q: [n_seqs, heads·d]` holds the first-token queries and `k`, `v: [tokens, heads·d]`
/// every key and value. Operands pass through `round` (identity in fp32; bf16 rounding for
/// `--precision bf16`, whose softmax weights are rounded too, as in the full kernel); sums
/// run in `T`, in key order.
#[allow(clippy::too_many_arguments)]
pub fn forward_first_query<T: Real>(
    out: &mut [T],
    q: &[T],
    k: &[T],
    v: &[T],
    cu: &[usize],
    dims: AttnDims,
    scale: T,
    round: impl Fn(T) -> T + Sync,
) {
    let (d, w) = (dims.head_dim, dims.width());
    let n_seqs = cu.len().saturating_sub(1);
    assert_eq!(q.len(), n_seqs * w, "first-query attention: q is not [n_seqs, width]");
    assert_eq!(out.len(), q.len(), "first-query attention: out and q differ in size");
    out.par_chunks_mut(w).zip(q.par_chunks(w)).zip(cu.par_windows(2)).for_each(|((o, qs), span)| {
        let keys = span[0]..span[1];
        for h in 0..dims.n_heads {
            let qh: Vec<T> = qs[h * d..][..d].iter().map(|&x| round(scale * x)).collect();
            let mut e: Vec<T> = keys
                .clone()
                .map(|j| qh.iter().zip(&k[j * w + h * d..][..d]).fold(T::zero(), |a, (&x, &y)| a + x * round(y)))
                .collect();
            let m = e.iter().copied().fold(T::neg_infinity(), T::max);
            let mut sum = T::zero();
            for x in e.iter_mut() {
                *x = (*x - m).exp();
                sum += *x;
            }
            let oh = &mut o[h * d..][..d];
            oh.iter_mut().for_each(|x| *x = T::zero());
            for (j, &ej) in keys.clone().zip(&e) {
                let pj = round(ej);
                for (x, &vj) in oh.iter_mut().zip(&v[j * w + h * d..][..d]) {
                    *x += pj * round(vj);
                }
            }
            oh.iter_mut().for_each(|x| *x = *x / sum);
        }
    });
}

/// One (sequence, head) of [`forward_inference`].
struct HeadInference<'a, T> {
    t: Task,
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    dims: AttnDims,
    scale: T,
    out: *mut T,
}

impl<T: Real> simd::Kernel for HeadInference<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let (t, d, w) = (self.t, self.dims.head_dim, self.dims.width());
        let (l, col) = (t.len, t.head * d);
        let (lp, dp) = (l.div_ceil(VC) * VC, d.div_ceil(VC) * VC);
        // Kᵀ (d × lp) and V (l × dp), zero-padded to whole vectors.
        let mut kt = vec![T::zero(); d * lp];
        let mut vp = vec![T::zero(); l * dp];
        for j in 0..l {
            let row = (t.start + j) * w + col;
            for c in 0..d {
                kt[c * lp + j] = self.k[row + c];
            }
            vp[j * dp..j * dp + d].copy_from_slice(&self.v[row..row + d]);
        }
        let mut s = vec![T::zero(); QR * lp];
        let mut qb = vec![T::zero(); QR * d];
        for i0 in (0..l).step_by(QR) {
            let rows = QR.min(l - i0);
            qb.fill(T::zero());
            for r in 0..rows {
                let row = (t.start + i0 + r) * w + col;
                for c in 0..d {
                    qb[r * d + c] = self.q[row + c] * self.scale;
                }
            }
            scores_tile(&mut s, &qb, &kt, d, lp);
            let mut inv = [T::zero(); QR];
            for (r, inv) in inv.iter_mut().enumerate().take(rows) {
                let row = &mut s[r * lp..r * lp + l];
                let m = simd::max(row);
                *inv = T::one() / simd::exp_shifted_sum(row, m);
            }
            for c0 in (0..dp).step_by(VC) {
                let acc = weighted_values_tile(&s, &vp, l, lp, dp, c0);
                for r in 0..rows {
                    // Safety: row `i0 + r` of this task's sequence, this head's columns.
                    let o = unsafe { self.out.add((t.start + i0 + r) * w + col + c0) };
                    for c in 0..VC.min(d - c0) {
                        unsafe { *o.add(c) = acc[r][c] * inv[r] };
                    }
                }
            }
        }
    }
}

/// `s[r, j] = Σ_c qb[r, c]·kt[c, j]` for the [`QR`] rows of `qb` and every key column.
#[inline(always)]
fn scores_tile<T: Real>(s: &mut [T], qb: &[T], kt: &[T], d: usize, lp: usize) {
    for j0 in (0..lp).step_by(VC) {
        let mut acc = [[T::zero(); VC]; QR];
        for c in 0..d {
            let kr: &[T; VC] = kt[c * lp + j0..][..VC].try_into().unwrap();
            for (r, acc) in acc.iter_mut().enumerate() {
                let qv = qb[r * d + c];
                for x in 0..VC {
                    acc[x] = qv.mul_add(kr[x], acc[x]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            s[r * lp + j0..][..VC].copy_from_slice(acc);
        }
    }
}

/// `Σ_j s[r, j]·vp[j, c0..c0+VC]` for the [`QR`] rows of `s` (unnormalised weights).
#[inline(always)]
fn weighted_values_tile<T: Real>(s: &[T], vp: &[T], l: usize, lp: usize, dp: usize, c0: usize) -> [[T; VC]; QR] {
    let mut acc = [[T::zero(); VC]; QR];
    for j in 0..l {
        let vr: &[T; VC] = vp[j * dp + c0..][..VC].try_into().unwrap();
        for (r, acc) in acc.iter_mut().enumerate() {
            let p = s[r * lp + j];
            for x in 0..VC {
                acc[x] = p.mul_add(vr[x], acc[x]);
            }
        }
    }
    acc
}

/// Accumulates into `dq`, `dk`, `dv` (an empty one is skipped). `dprobs`, when given, is the gradient flowing into
/// the probabilities from outside the attention (e.g. the contact head), same layout.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    dout: Option<&[T]>,
    dprobs: Option<&[T]>,
    probs: &[T],
    q: &[T],
    k: &[T],
    v: &[T],
    cu: &[usize],
    dims: AttnDims,
    scale: T,
) {
    let (dq_ptr, dk_ptr, dv_ptr) = (SharedMut(dq.as_mut_ptr()), SharedMut(dk.as_mut_ptr()), SharedMut(dv.as_mut_ptr()));
    let width = dims.width();
    let (want_dq, want_dk, want_dv) = (!dq.is_empty(), !dk.is_empty(), !dv.is_empty());
    tasks(cu, dims.n_heads).par_iter().for_each(|t| {
        let l = t.len;
        let p = &probs[t.prob..][..l * l];
        let col = t.start * width + t.head * dims.head_dim;
        let mut dp = match dprobs {
            Some(g) => g[t.prob..][..l * l].to_vec(),
            None => vec![T::zero(); l * l],
        };
        if let Some(dout) = dout {
            let (doh, vh) = (head_block(dout, t, dims), head_block(v, t, dims));
            // Safety: each task owns its head's columns of its rows in dq, dk, dv.
            unsafe {
                gemm_into_ptr(dp.as_mut_ptr(), l, doh, vh.t(), T::one(), T::one());
                if want_dv {
                    gemm_into_ptr(dv_ptr.at(col), width, MatRef::new(p, l, l).t(), doh, T::one(), T::one());
                }
            }
        }
        simd::dispatch(SoftmaxBackwardRows { dp: &mut dp, p, len: l });
        let ds = MatRef::new(&dp, l, l);
        let (qh, kh) = (head_block(q, t, dims), head_block(k, t, dims));
        unsafe {
            if want_dq {
                gemm_into_ptr(dq_ptr.at(col), width, ds, kh, scale, T::one());
            }
            if want_dk {
                gemm_into_ptr(dk_ptr.at(col), width, ds.t(), qh, scale, T::one());
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values in [-2, 2).
    fn random(len: usize, seed: u64) -> Vec<f64> {
        super::super::test_values(len, seed).into_iter().map(|v| 2.0 * v).collect()
    }

    /// The inference kernel against [`forward`] on ragged sequences (lengths that are not
    /// whole tiles, one of length 1) at ESM-2's head widths and one odd width.
    #[test]
    fn the_inference_kernel_equals_the_probability_keeping_forward() {
        let cu = [0usize, 1, 18, 57, 90];
        let n = cu[4];
        for &(heads, d) in &[(2usize, 16usize), (3, 24), (2, 20), (1, 64), (2, 5)] {
            let dims = AttnDims { n_heads: heads, head_dim: d };
            let w = heads * d;
            let (q, k, v) = (random(n * w, 1), random(n * w, 2), random(n * w, 3));
            let (_, total) = prob_offsets(&cu, heads);
            let (mut want, mut probs) = (vec![0.0; n * w], vec![0.0; total]);
            forward(&mut want, &mut probs, &q, &k, &v, &cu, dims, 0.7);
            let mut got = vec![f64::NAN; n * w];
            forward_inference(&mut got, &q, &k, &v, &cu, dims, 0.7);
            for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                assert!((g - r).abs() < 1e-12, "heads {heads} d {d} [{i}]: {g} vs {r}");
            }
            // f32 too (the path inference runs).
            let f = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
            let mut got32 = vec![0f32; n * w];
            forward_inference(&mut got32, &f(&q), &f(&k), &f(&v), &cu, dims, 0.7);
            for (g, r) in got32.iter().zip(&want) {
                assert!((*g as f64 - r).abs() < 1e-5 * (1.0 + r.abs()), "f32 heads {heads} d {d}: {g} vs {r}");
            }
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// `cargo test --release --lib attention::speed -- --ignored --nocapture`: the fp32
    /// inference kernel, the probability-keeping forward and, on AVX512-BF16, the bf16
    /// inference kernel (`attention_bf16`), with their rates over `4·L²·d` FLOPs a head.
    #[test]
    #[ignore]
    fn print_inference_attention_rate() {
        for &(heads, d, l) in &[(20usize, 16usize, 160usize), (20, 24, 160), (20, 16, 500), (20, 24, 500)] {
            let n_seq = 4096 / l;
            let cu: Vec<usize> = (0..=n_seq).map(|s| s * l).collect();
            let n = cu[n_seq];
            let w = heads * d;
            let x: Vec<f32> = (0..n * w).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect();
            let dims = AttnDims { n_heads: heads, head_dim: d };
            let mut out = vec![0f32; n * w];
            let time = |f: &mut dyn FnMut()| {
                f();
                let t = std::time::Instant::now();
                for _ in 0..5 {
                    f();
                }
                t.elapsed().as_secs_f64() / 5.0 * 1e3
            };
            let rate = |ms: f64| 4.0 * (n_seq * heads * l * l * d) as f64 / ms / 1e6;
            let (_, total) = prob_offsets(&cu, heads);
            let fused = time(&mut || forward_inference(&mut out, &x, &x, &x, &cu, dims, 0.25));
            let general = time(&mut || {
                let mut probs = vec![0f32; total];
                forward(&mut out, &mut probs, &x, &x, &x, &cu, dims, 0.25)
            });
            let bf16 = if super::super::attention_bf16::supported() {
                let ms = time(&mut || {
                    super::super::attention_bf16::forward_inference(&mut out, &x, &x, &x, &cu, dims, 0.25)
                });
                format!(", bf16 inference kernel {ms:.1} ms ({:.0} GFLOP/s)", rate(ms))
            } else {
                String::new()
            };
            println!(
                "heads {heads} d {d} L {l}: inference kernel {fused:.1} ms ({:.0} GFLOP/s), forward with probabilities \
                 {general:.1} ms{bf16}",
                rate(fused)
            );
        }
    }
}
