//! The CPU twin of `kernels/flash_attention.cu`: multi-head attention over packed
//! sequences with the rotary embedding applied to q and k inside the op, the
//! log-sum-exp of every row saved, and a backward pass that recomputes the
//! probabilities from it (FlashAttention-2, Dao 2023, Algorithms 1 and 2; the CUDA kernel
//! tiles the same sums, this twin computes each row whole).
//!
//! For sequence `s`, head `h`, rows `i` (queries) and `j` (keys) of the sequence, with
//! `R(p)` the rotary rotation of `rotary.rs` and `c_q` the query scale (ESM-2:
//! `head_dim^-½`, applied before the rotation; the softmax scale is 1):
//! ```text
//! q̃_i = R(p_i)·q_i·c_q,   k̃_j = R(p_j)·k_j,   S_ij = q̃_i·k̃_j
//! LSE_i = m_i + ln Σ_j exp(S_ij − m_i)  (m_i = max_j S_ij),   P_ij = exp(S_ij − LSE_i)
//! O_i = Σ_j P_ij·v_j
//! backward, with G the gradient on P (contact head) when there is one:
//! Δ_i = dO_i·O_i + Σ_j G_ij·P_ij,   dP_ij = dO_i·v_j + G_ij,   dS_ij = P_ij·(dP_ij − Δ_i)
//! dv_j += Σ_i P_ij·dO_i,   dk_j += R(p_j)ᵀ·Σ_i dS_ij·q̃_i,   dq_i += c_q·R(p_i)ᵀ·Σ_j dS_ij·k̃_j
//! ```
//! `Δ_i = Σ_j dP_ij·P_ij` because `O_i = Σ_j P_ij·v_j`; the kernel and this twin use the
//! cheaper `dO_i·O_i` form, as FlashAttention does.
//!
//! Layouts: q, k, v, out `[tokens, heads·d]`; lse `[heads, tokens]`; probabilities
//! packed as the CPU attention keeps them (`attention::prob_offsets`).

use rayon::prelude::*;

use super::attention::prob_offsets;
use super::matmul::{gemm_into_ptr, MatRef};
use super::rotary::{self, RotaryDims};
use super::{Real, SharedMut};

/// Shape of one call.
#[derive(Clone, Copy, Debug)]
pub struct FlashDims {
    pub n_heads: usize,
    pub head_dim: usize,
}

impl FlashDims {
    fn width(&self) -> usize {
        self.n_heads * self.head_dim
    }
    fn rotary(&self) -> RotaryDims {
        RotaryDims { n_heads: self.n_heads, head_dim: self.head_dim, in_stride: self.width(), out_stride: self.width() }
    }
}

/// One (sequence, head) block of work.
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
fn head_block<'a, T>(m: &'a [T], t: &Task, dims: FlashDims) -> MatRef<'a, T> {
    MatRef::strided(m, t.start * dims.width() + t.head * dims.head_dim, t.len, dims.head_dim, dims.width())
}

/// q and k rotated by their positions (q also scaled), as the kernel loads them.
fn rotated<T: Real>(q: &[T], k: &[T], positions: &[i32], dims: FlashDims, q_scale: T) -> (Vec<T>, Vec<T>) {
    let (mut qr, mut kr) = (vec![T::zero(); q.len()], vec![T::zero(); k.len()]);
    rotary::forward(&mut qr, q, positions, dims.rotary(), q_scale);
    rotary::forward(&mut kr, k, positions, dims.rotary(), T::one());
    (qr, kr)
}

/// `S = q̃·k̃ᵀ` of one task (`len × len`, row-major).
fn scores<T: Real>(qr: &[T], kr: &[T], t: &Task, dims: FlashDims) -> Vec<T> {
    let mut s = vec![T::zero(); t.len * t.len];
    // Safety: `s` holds len × len elements.
    unsafe {
        gemm_into_ptr(s.as_mut_ptr(), t.len, head_block(qr, t, dims), head_block(kr, t, dims).t(), T::one(), T::zero())
    };
    s
}

/// Row `i`'s log-sum-exp.
fn log_sum_exp<T: Real>(row: &[T]) -> T {
    let m = row.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
    m + row.iter().map(|&x| (x - m).exp()).sum::<T>().ln()
}

/// Writes `out` (`[tokens, width]`), `lse` (`[heads, tokens]`) and, when `probs` is not
/// empty, the packed probabilities.
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Real>(
    out: &mut [T],
    lse: &mut [T],
    probs: &mut [T],
    q: &[T],
    k: &[T],
    v: &[T],
    positions: &[i32],
    cu: &[usize],
    dims: FlashDims,
    q_scale: T,
) {
    let n_tokens = *cu.last().unwrap_or(&0);
    let (qr, kr) = rotated(q, k, positions, dims, q_scale);
    let (out_ptr, lse_ptr, prob_ptr) =
        (SharedMut(out.as_mut_ptr()), SharedMut(lse.as_mut_ptr()), SharedMut(probs.as_mut_ptr()));
    let want_probs = !probs.is_empty();
    let width = dims.width();
    tasks(cu, dims.n_heads).par_iter().for_each(|t| {
        let l = t.len;
        let mut p = scores(&qr, &kr, t, dims);
        for (i, row) in p.chunks_mut(l).enumerate() {
            let row_lse = log_sum_exp(row);
            row.iter_mut().for_each(|x| *x = (*x - row_lse).exp());
            // Safety: each task owns its head's lse entries, columns of out and probability block.
            unsafe { *lse_ptr.at(t.head * n_tokens + t.start + i) = row_lse };
        }
        unsafe {
            gemm_into_ptr(
                out_ptr.at(t.start * width + t.head * dims.head_dim),
                width,
                MatRef::new(&p, l, l),
                head_block(v, t, dims),
                T::one(),
                T::zero(),
            );
            if want_probs {
                std::slice::from_raw_parts_mut(prob_ptr.at(t.prob), l * l).copy_from_slice(&p);
            }
        }
    });
}

/// Δ of every row (`[heads, tokens]`): `dO·O`, plus `Σ_j G_ij·P_ij` when the gradient on
/// the probabilities is given.
fn deltas<T: Real>(out: &[T], dout: &[T], dprobs: Option<(&[T], &[T])>, cu: &[usize], dims: FlashDims) -> Vec<T> {
    let n_tokens = *cu.last().unwrap_or(&0);
    let (d, w) = (dims.head_dim, dims.width());
    let mut delta = vec![T::zero(); dims.n_heads * n_tokens];
    for t in tasks(cu, dims.n_heads) {
        for i in 0..t.len {
            let at = (t.start + i) * w + t.head * d;
            let mut sum: T = (0..d).map(|c| out[at + c] * dout[at + c]).sum();
            if let Some((probs, g)) = dprobs {
                let row = t.prob + i * t.len;
                sum += (0..t.len).map(|j| probs[row + j] * g[row + j]).sum::<T>();
            }
            delta[t.head * n_tokens + t.start + i] = sum;
        }
    }
    delta
}

/// Accumulates into `dq`, `dk`, `dv` (an empty one is skipped). `out` and `lse` are the
/// forward's; `dprobs` is the gradient on the probabilities (then `probs` holds them).
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    dout: Option<&[T]>,
    dprobs: Option<&[T]>,
    probs: &[T],
    out: &[T],
    lse: &[T],
    q: &[T],
    k: &[T],
    v: &[T],
    positions: &[i32],
    cu: &[usize],
    dims: FlashDims,
    q_scale: T,
) {
    let n_tokens = *cu.last().unwrap_or(&0);
    let width = dims.width();
    let zeros = vec![T::zero(); out.len()];
    let dout = dout.unwrap_or(&zeros);
    let delta = deltas(out, dout, dprobs.map(|g| (probs, g)), cu, dims);
    let (qr, kr) = rotated(q, k, positions, dims, q_scale);
    // Gradients of the rotated q̃ and k̃, rotated back at the end.
    let (mut dqr, mut dkr) = (vec![T::zero(); q.len()], vec![T::zero(); k.len()]);
    let (dqr_ptr, dkr_ptr, dv_ptr) =
        (SharedMut(dqr.as_mut_ptr()), SharedMut(dkr.as_mut_ptr()), SharedMut(dv.as_mut_ptr()));
    let want_dv = !dv.is_empty();
    tasks(cu, dims.n_heads).par_iter().for_each(|t| {
        let l = t.len;
        let col = t.start * width + t.head * dims.head_dim;
        let mut p = scores(&qr, &kr, t, dims);
        for (i, row) in p.chunks_mut(l).enumerate() {
            let row_lse = lse[t.head * n_tokens + t.start + i];
            row.iter_mut().for_each(|x| *x = (*x - row_lse).exp());
        }
        let mut ds = match dprobs {
            Some(g) => g[t.prob..][..l * l].to_vec(),
            None => vec![T::zero(); l * l],
        };
        let doh = head_block(dout, t, dims);
        // Safety: each task owns its head's columns of its rows in dqr, dkr and dv.
        unsafe {
            gemm_into_ptr(ds.as_mut_ptr(), l, doh, head_block(v, t, dims).t(), T::one(), T::one());
            if want_dv {
                gemm_into_ptr(dv_ptr.at(col), width, MatRef::new(&p, l, l).t(), doh, T::one(), T::one());
            }
        }
        for (i, (dsr, pr)) in ds.chunks_mut(l).zip(p.chunks(l)).enumerate() {
            let d = delta[t.head * n_tokens + t.start + i];
            for (x, &pv) in dsr.iter_mut().zip(pr) {
                *x = pv * (*x - d);
            }
        }
        let ds = MatRef::new(&ds, l, l);
        unsafe {
            gemm_into_ptr(dqr_ptr.at(col), width, ds, head_block(&kr, t, dims), T::one(), T::zero());
            gemm_into_ptr(dkr_ptr.at(col), width, ds.t(), head_block(&qr, t, dims), T::one(), T::zero());
        }
    });
    if !dq.is_empty() {
        rotary::backward(dq, &dqr, positions, dims.rotary(), q_scale);
    }
    if !dk.is_empty() {
        rotary::backward(dk, &dkr, positions, dims.rotary(), T::one());
    }
}
