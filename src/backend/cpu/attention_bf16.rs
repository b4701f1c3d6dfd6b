//! Attention with bf16 products (`--precision bf16` on a CPU with AVX512-BF16), as
//! PyTorch's CPU autocast runs `scaled_dot_product_attention`.
//!
//! Training ([`forward_training`], [`backward_training`]) keeps the fp32 probabilities and
//! runs each (sequence, head)'s products, two forward and four backward, through the linear
//! layers' bf16 kernels (`matmul_bf16`); the softmax passes write the `l × l` operands of
//! the next products as bf16 pairs directly (`softmax_pairs`). Inference
//! ([`forward_inference`]) has its own kernel, which keeps no probabilities: both
//! products `S = scale·Q Kᵀ` and `O = P V` multiply bf16-rounded operands with fp32 sums
//! on `vdpbf16ps`; the softmax runs in fp32 and its unnormalised weights `exp(S − max)`
//! are rounded to bf16 for the second product, the row sum is taken over the fp32 weights
//! and divides the fp32 output (PyTorch's CPU flash attention does the same).
//!
//! One rayon task per (sequence, head); the kernel (`inference`) puts 32 query rows in
//! the vector lanes, broadcasts each key's and each value's bf16 pair straight from the
//! rounded operands, and takes the softmax down the keys lane by lane (see its notes).
//!
//! [`reference_inference`] is the scalar twin the tests compare against: the same bf16
//! roundings, sums and exponentials in f64.

use half::bf16;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod inference;
mod softmax_pairs;

use super::attention::{self, AttnDims};
use super::matmul_bf16::{self, PackedBf16, PairedLeft};
use super::SharedMut;

/// Lanes of a zmm register of fp32.
const LANES: usize = 16;

/// Whether this CPU runs [`forward_inference`] (AVX-512F, BW, VL and AVX512-BF16).
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::matmul_bf16::supported()
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[tokens, heads·d] = softmax(scale·Q Kᵀ) V` per sequence and head, with bf16
/// products (see the module notes). Sequences are `cu[s]..cu[s+1]`. Panics unless
/// [`supported`] and the head width is even (bf16 pairs never straddle two heads).
pub fn forward_inference(out: &mut [f32], q: &[f32], k: &[f32], v: &[f32], cu: &[usize], dims: AttnDims, scale: f32) {
    assert_eq!(out.len(), q.len(), "attention: out and q differ in size");
    // Safety: `out` holds q.len() floats.
    unsafe { forward_inference_into(out.as_mut_ptr(), q, k, v, cu, dims, scale) }
}

/// [`forward_inference`] into a new buffer, written once (not zero-filled first).
pub fn forward_inference_new(q: &[f32], k: &[f32], v: &[f32], cu: &[usize], dims: AttnDims, scale: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(q.len());
    // Safety: the heads write every column of every row of every sequence, and the
    // sequences cover every row (checked against `cu` below).
    unsafe {
        forward_inference_into(out.spare_capacity_mut().as_mut_ptr() as *mut f32, q, k, v, cu, dims, scale);
        out.set_len(q.len());
    }
    out
}

/// # Safety
/// `out` points to `q.len()` writable floats.
unsafe fn forward_inference_into(
    out: *mut f32,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cu: &[usize],
    dims: AttnDims,
    scale: f32,
) {
    assert!(supported(), "bf16 attention needs AVX512-BF16");
    assert!(dims.head_dim % 2 == 0, "bf16 attention needs an even head width, not {}", dims.head_dim);
    assert!(q.len() == k.len() && q.len() == v.len(), "attention: q, k and v differ in size");
    let width = dims.n_heads * dims.head_dim;
    assert_rows_covered(cu, q.len(), width);
    // Round each operand once (Q after scaling), for every head at once.
    let (qb, kb, vb) = (to_bf16(q, scale), to_bf16(k, 1.0), to_bf16(v, 1.0));
    let tasks: Vec<(usize, usize, usize)> = cu
        .windows(2)
        .flat_map(|w| (0..dims.n_heads).map(move |h| (w[0], w[1] - w[0], h)))
        .filter(|&(_, len, _)| len > 0)
        .collect();
    let out_ptr = SharedMut(out);
    tasks.par_iter().for_each(|&(start, len, head)| {
        let view = HeadView { q: &qb, k: &kb, v: &vb, start, len, col: head * dims.head_dim, width, d: dims.head_dim };
        // Safety: AVX512-BF16 was checked above; each task writes only its head's columns of
        // its sequence's rows, inside `out` (the same shape as `q`).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            inference::head(&view, out_ptr.at(0))
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (view, &out_ptr);
    });
}

/// Panics unless the sequences `cu[s]..cu[s+1]` cover the `len / width` rows of an operand
/// from row 0 (the kernels then write every row of a new output).
fn assert_rows_covered(cu: &[usize], len: usize, width: usize) {
    let (first, last) = (cu.first().copied().unwrap_or(0), cu.last().copied().unwrap_or(0));
    assert!(
        first == 0 && len == last * width,
        "attention: cu_seqlens {first}..{last} do not cover {len} / {width} rows"
    );
}

/// `bf16(scale·x)` as bits (round to nearest even), in parallel, into a new buffer written
/// once.
fn to_bf16(x: &[f32], scale: f32) -> Vec<u16> {
    const CHUNK: usize = 1 << 14;
    let write = |start: usize, o: &mut [std::mem::MaybeUninit<u16>]| {
        let x = &x[start..][..o.len()];
        #[cfg(target_arch = "x86_64")]
        // Safety: AVX512-BF16 was checked by the caller.
        let done = unsafe { x86::to_bf16(o, x, scale) };
        #[cfg(not(target_arch = "x86_64"))]
        let done = 0;
        for (o, &x) in o[done..].iter_mut().zip(&x[done..]) {
            o.write(bf16::from_f32(scale * x).to_bits());
        }
    };
    // Safety: each chunk's slots are written, by the vector loop and then the scalar one.
    unsafe { super::written(x.len(), CHUNK, write) }
}

/// One head of one sequence inside the packed `[tokens, width]` bf16 operands.
struct HeadView<'a> {
    q: &'a [u16],
    k: &'a [u16],
    v: &'a [u16],
    start: usize,
    len: usize,
    /// The head's first column (even).
    col: usize,
    width: usize,
    d: usize,
}

/// Training forward with bf16 products (`train --precision bf16`): what
/// [`super::attention::forward`] computes (`out` and the fp32 probabilities, same layout),
/// with `S = Q Kᵀ` and `O = P V` on bf16-rounded operands with fp32 sums (the linear
/// layers' kernels, `matmul_bf16`); the softmax and the kept probabilities stay fp32.
#[allow(clippy::too_many_arguments)]
pub fn forward_training(
    out: &mut [f32],
    probs: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cu: &[usize],
    dims: AttnDims,
    scale: f32,
) {
    assert_eq!(out.len(), q.len(), "attention: out and q differ in size");
    assert_eq!(probs.len(), attention::prob_offsets(cu, dims.n_heads).1, "attention: probs is not Σ heads·l²");
    // Safety: the sizes were just checked.
    unsafe { forward_training_into(out.as_mut_ptr(), probs.as_mut_ptr(), q, k, v, cu, dims, scale) }
}

/// [`forward_training`] into new buffers `(out, probs)`, written once (not zero-filled
/// first).
pub fn forward_training_new(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cu: &[usize],
    dims: AttnDims,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    let total = attention::prob_offsets(cu, dims.n_heads).1;
    let (mut out, mut probs) = (Vec::with_capacity(q.len()), Vec::with_capacity(total));
    // Safety: every (sequence, head) task writes its probability block and its head's
    // columns of its rows; the tasks cover every block and, the sequences covering every
    // row (checked inside), every element of `out`.
    unsafe {
        let (o, p) =
            (out.spare_capacity_mut().as_mut_ptr() as *mut f32, probs.spare_capacity_mut().as_mut_ptr() as *mut f32);
        forward_training_into(o, p, q, k, v, cu, dims, scale);
        out.set_len(q.len());
        probs.set_len(total);
    }
    (out, probs)
}

/// # Safety
/// `out` points to `q.len()` writable floats and `probs` to `Σ heads·l²`.
#[allow(clippy::too_many_arguments)]
unsafe fn forward_training_into(
    out: *mut f32,
    probs: *mut f32,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cu: &[usize],
    dims: AttnDims,
    scale: f32,
) {
    assert!(supported(), "bf16 attention needs AVX512-BF16");
    let (d, width) = (dims.head_dim, dims.n_heads * dims.head_dim);
    assert!(q.len() == k.len() && q.len() == v.len(), "attention: q, k and v differ in size");
    assert_rows_covered(cu, q.len(), width);
    let (out_ptr, prob_ptr) = (SharedMut(out), SharedMut(probs));
    attention::task_list(cu, dims.n_heads).par_iter().for_each(|&(start, l, head, prob)| {
        // This head's rows of Q, K and V, `width` floats apart.
        let at = start * width + head * d;
        let (qh, kh, vh) = (&q[at..], &k[at..], &v[at..]);
        // Safety (both products): each task owns its probability block and its head's
        // columns of its rows of `out`; neither is initialised before (no accumulate).
        unsafe {
            let keys = PackedBf16::pack_strided(kh, width, l, d);
            matmul_bf16::product_at(prob_ptr.at(prob), l, qh, width, l, &keys, false);
            let p = std::slice::from_raw_parts_mut(prob_ptr.at(prob), l * l);
            let p_rows = softmax_pairs::softmax_with_row_pairs(p, l, scale);
            let values = PackedBf16::pack_columns_strided(vh, width, l, d);
            let left = PairedLeft::row_major(&p_rows, l, l.div_ceil(2));
            matmul_bf16::paired_product_at(out_ptr.at(at), width, left, &values, false);
        }
    });
}

/// What the training backward reads: the gradients flowing into the output and into the
/// probabilities (either may be absent), the kept probabilities and the forward's operands.
#[derive(Clone, Copy)]
pub struct BackwardInputs<'a> {
    pub dout: Option<&'a [f32]>,
    pub dprobs: Option<&'a [f32]>,
    pub probs: &'a [f32],
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub cu: &'a [usize],
    pub dims: AttnDims,
    pub scale: f32,
}

/// Training backward with bf16 products: what [`super::attention::backward`] computes
/// (accumulating into `dq`, `dk`, `dv`; an empty one is skipped), with `dP = dO Vᵀ`,
/// `dV = Pᵀ dO`, `dQ = scale·dS K` and `dK = scale·dSᵀ Q` on bf16-rounded operands with
/// fp32 sums; the softmax backward runs in fp32 on the kept probabilities.
pub fn backward_training(dq: &mut [f32], dk: &mut [f32], dv: &mut [f32], inp: BackwardInputs) {
    for g in [&*dq, &*dk, &*dv] {
        assert!(g.is_empty() || g.len() == inp.q.len(), "attention: a gradient is not q's size");
    }
    let grads = [dq, dk, dv].map(|g| (!g.is_empty()).then_some(g.as_mut_ptr()));
    // Safety: each wanted gradient holds q.len() initialised floats (checked above).
    unsafe { backward_training_into(grads, true, inp) }
}

/// [`backward_training`] into new buffers `[dq, dk, dv]` (the wanted ones; empty for the
/// others), written once (not zero-filled first). Panics unless `inp.dout` is given.
pub fn backward_training_new(want: [bool; 3], inp: BackwardInputs) -> [Vec<f32>; 3] {
    assert!(inp.dout.is_some(), "attention: new gradient buffers need the output's gradient");
    assert_rows_covered(inp.cu, inp.q.len(), inp.dims.n_heads * inp.dims.head_dim);
    let n = inp.q.len();
    let mut new = want.map(|w| Vec::with_capacity(if w { n } else { 0 }));
    let grads = [0, 1, 2].map(|i| want[i].then(|| new[i].spare_capacity_mut().as_mut_ptr() as *mut f32));
    // Safety: with `dout` given, every (sequence, head) task writes its head's columns of
    // its rows in each wanted gradient, and the sequences cover every row (checked above).
    unsafe {
        backward_training_into(grads, false, inp);
        for (g, w) in new.iter_mut().zip(want) {
            if w {
                g.set_len(n);
            }
        }
    }
    new
}

/// # Safety
/// Each `Some` in `grads` points to `q.len()` writable floats, initialised when
/// `accumulate`; without `accumulate`, `dout` is given (so that `dv` is written).
unsafe fn backward_training_into(grads: [Option<*mut f32>; 3], accumulate: bool, inp: BackwardInputs) {
    let BackwardInputs { dout, dprobs, probs, q, k, v, cu, dims, scale } = inp;
    assert!(supported(), "bf16 attention needs AVX512-BF16");
    assert!(accumulate || dout.is_some() || grads[2].is_none(), "attention: a fresh dv needs dout");
    let (d, width) = (dims.head_dim, dims.n_heads * dims.head_dim);
    let [dq_ptr, dk_ptr, dv_ptr] = grads.map(|g| SharedMut(g.unwrap_or(std::ptr::null_mut())));
    let [want_dq, want_dk, want_dv] = grads.map(|g| g.is_some());
    attention::task_list(cu, dims.n_heads).par_iter().for_each(|&(start, l, head, prob)| {
        let p = &probs[prob..][..l * l];
        // This head's first element in dq, dk, dv (and dout, v: rows `width` apart).
        let at = head * d + start * width;
        // dP = dO Vᵀ (+ the probabilities' own gradient), then dV += Pᵀ dO.
        let mut dp = match dprobs {
            Some(g) => g[prob..][..l * l].to_vec(),
            None if dout.is_some() => Vec::with_capacity(l * l),
            None => vec![0f32; l * l],
        };
        if let Some(dout) = dout {
            let (doh, vh) = (&dout[at..], &v[at..]);
            // Safety: `dp` has room for l·l floats, initialised when `dprobs` filled it.
            unsafe {
                let values = PackedBf16::pack_strided(vh, width, l, d);
                matmul_bf16::product_at(dp.as_mut_ptr(), l, doh, width, l, &values, dprobs.is_some());
                dp.set_len(l * l);
            }
        }
        // dS (and Pᵀ for dV) as bf16 pairs in one pass over dP and P.
        let pairs = softmax_pairs::softmax_backward_pairs(&dp, p, l, dout.is_some() && want_dv);
        // Safety (the three products): each task owns its head's columns of its rows in
        // dq, dk and dv.
        if let (Some(dout), Some(pt)) = (dout, pairs.p_transposed(l)) {
            let dos = PackedBf16::pack_columns_strided(&dout[at..], width, l, d);
            unsafe { matmul_bf16::paired_product_at(dv_ptr.at(at), width, pt, &dos, accumulate) };
        }
        // dQ += scale·dS K and dK += scale·dSᵀ Q, the scale folded into K and Q.
        if want_dq {
            let ks = PackedBf16::pack_scaled_columns(&k[at..], width, l, d, scale);
            unsafe { matmul_bf16::paired_product_at(dq_ptr.at(at), width, pairs.ds(l), &ks, accumulate) };
        }
        if want_dk {
            let qs = PackedBf16::pack_scaled_columns(&q[at..], width, l, d, scale);
            unsafe { matmul_bf16::paired_product_at(dk_ptr.at(at), width, pairs.ds_transposed(l), &qs, accumulate) };
        }
    });
}

/// The scalar twin of [`forward_inference`]: bf16(scale·q)·bf16(k) summed in f64, the
/// softmax weights `exp(s − max)` in f64 rounded to bf16 for the product with bf16(v), the
/// row sum over the unrounded weights.
pub fn reference_inference(q: &[f32], k: &[f32], v: &[f32], cu: &[usize], dims: AttnDims, scale: f32) -> Vec<f32> {
    let r = |x: f32| bf16::from_f32(x).to_f64();
    let (d, width) = (dims.head_dim, dims.n_heads * dims.head_dim);
    let mut out = vec![0f32; q.len()];
    for w in cu.windows(2) {
        let (start, len) = (w[0], w[1] - w[0]);
        for h in 0..dims.n_heads {
            let at = |m: &[f32], j: usize, c: usize| m[(start + j) * width + h * d + c];
            for i in 0..len {
                let s: Vec<f64> =
                    (0..len).map(|j| (0..d).map(|c| r(scale * at(q, i, c)) * r(at(k, j, c))).sum()).collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|&x| (x - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                for c in 0..d {
                    let o: f64 = (0..len).map(|j| r(e[j] as f32) * r(at(v, j, c))).sum();
                    out[(start + i) * width + h * d + c] = (o / sum) as f32;
                }
            }
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::LANES;

    pub(super) use super::super::vector_exp::exp2;

    /// `o[i] = bf16(scale·x[i])` 16 at a time; returns how many it wrote.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn to_bf16(o: &mut [std::mem::MaybeUninit<u16>], x: &[f32], scale: f32) -> usize {
        let full = x.len().min(o.len()) / LANES;
        let s = _mm512_set1_ps(scale);
        for i in 0..full {
            let v = _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr().add(LANES * i)), s);
            let b: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
            _mm256_storeu_si256(o.as_mut_ptr().add(LANES * i) as *mut __m256i, b);
        }
        full * LANES
    }

    /// The lanes below `n` of 16.
    pub(super) fn first(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// 16 words `(bf16(a[j]), bf16(b[j]))`: two vectors' bf16 lanes interleaved (two rows of a
    /// column pair, or two keys' weights of one row).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[inline]
    pub(super) unsafe fn interleaved_pairs(a: __m512, b: __m512) -> __m512i {
        let both = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(b, a));
        // Lane 2j takes a[j] (lane j), lane 2j + 1 takes b[j] (lane 16 + j).
        let order = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17,
            1, 16, 0,
        );
        _mm512_permutexvar_epi16(order, both)
    }
}

#[cfg(test)]
mod tests;
