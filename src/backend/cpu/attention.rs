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
