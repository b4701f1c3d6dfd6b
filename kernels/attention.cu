// attention.cu — the first correct attention path for packed (varlen)
// sequences: pack into padded per-sequence blocks, let cuBLAS do the two
// strided-batched GEMMs per direction, masked softmax here, unpack.
//
// Sequences are packed end to end: sequence s owns tokens
// [cu_seqlens[s], cu_seqlens[s+1]) of the packed [T, row_stride] activations;
// len_s = cu_seqlens[s+1] − cu_seqlens[s] must be ≤ max_len (the kernels clamp
// len_s to max_len; the host validates).  Padded layout: [n_seqs, n_heads,
// max_len, head_dim] ("P" below), so one GEMM batch = one (s, h) block.
//
// Forward, for one (s, h) block with Q, K, V ∈ R^{L×d} (rows ≥ len_s are 0):
//   S = Q·Kᵀ                       (cuBLAS, fp32 output)
//   P_ij = exp(c·S_ij − m_i) / Σ_{k<len} exp(c·S_ik − m_i),  m_i = max_k c·S_ik
//          for i, j < len_s;  P_ij = 0 otherwise            (attn_softmax_forward)
//   O = P·V                        (cuBLAS)
// Backward, with dP = dO·Vᵀ (cuBLAS):
//   dS_ij = c·P_ij·(dP_ij − Σ_k dP_ik·P_ik)  for i, j < len_s, 0 otherwise
//                                                          (attn_softmax_backward)
//   dQ = dS·K, dK = dSᵀ·Q, dV = Pᵀ·dO  (cuBLAS), then attn_unpack with accumulate.
// c is the softmax scale (1.0 for ESM-2, whose q is pre-scaled by d^-1/2
// before rotary; any c works).  Max, sum and the row dot are fp32.
//
// ABI (T = float/__half/__nv_bfloat16, suffix _f32/_f16/_bf16):
//
//   attn_pack_T(T* dst, const T* src, const int* cu_seqlens, int n_seqs,
//               int max_len, int n_heads, int head_dim, int src_row_stride)
//       dst[s, h, i, :] = src[(cu_seqlens[s] + i)·src_row_stride + h·head_dim + :]
//       for i < len_s, 0 for len_s ≤ i < max_len.  WRITES every element of dst
//       ([n_seqs, n_heads, max_len, head_dim]).  src may be a column slice of
//       the fused QKV buffer (src = qkv + k·H·d, src_row_stride = 3·H·d).
//
//   attn_unpack_T(T* dst, const T* src, const int* cu_seqlens, int n_seqs,
//                 int max_len, int n_heads, int head_dim, int dst_row_stride,
//                 int accumulate)
//       Inverse of pack: dst[(cu_seqlens[s] + i)·dst_row_stride + h·head_dim + :]
//       = src[s, h, i, :] for i < len_s; WRITES if accumulate == 0, += otherwise.
//       Padded rows of src are ignored; columns of dst outside the H·d heads
//       are not touched.
//
//   attn_softmax_forward_T(T* probs, const float* scores, const int* cu_seqlens,
//                          int n_seqs, int n_heads, int max_len, float scale)
//       scores, probs: [n_seqs, n_heads, max_len, max_len]; probs WRITES every
//       element (0 outside the valid len_s × len_s block).  probs must not
//       alias scores.
//
//   attn_softmax_backward_T(T* dscores, const T* probs, const T* dprobs,
//                           const int* cu_seqlens, int n_seqs, int n_heads,
//                           int max_len, float scale)
//       All [n_seqs, n_heads, max_len, max_len]; dscores WRITES every element
//       (0 outside the valid block).  dscores may alias dprobs (each element
//       is read before it is written by the same lane, after the row's dot
//       product is complete).
//       NOTE: dscores is T, not fp32 — it is the A operand of the dQ = dS·K and
//       dK = dSᵀ·Q GEMMs, which in fp16/bf16 need fp16/bf16 inputs (as in
//       FlashAttention, dS is rounded to the input type).
//
// Launch:
//   pack/unpack: block (256, 1, 1) (any size), grid (min(ceil(n_seqs·n_heads·
//     max_len·head_dim / 256), 32·num_SMs), 1, 1); flat grid-stride loop.
//   softmax fwd/bwd: one warp per row of max_len scores; block (256, 1, 1)
//     (any multiple of 32 ≤ 1024), grid (ceil(n_seqs·n_heads·max_len /
//     (blockDim.x/32)), 1, 1) capped at 2^31−1 (rows are grid-strided).
//     Rows of any length (each lane loops over max_len/32 entries).
#include "common.cuh"

namespace {

__device__ __forceinline__ int seq_len(const int* cu_seqlens, int s, int max_len) {
    return min(cu_seqlens[s + 1] - cu_seqlens[s], max_len);
}

// Flat index e over [n_seqs, n_heads, max_len, head_dim] -> (s, h, i, dd).
struct PaddedIndex {
    int s, h, i, dd;
};

__device__ __forceinline__ PaddedIndex decompose(long long e, int n_heads, int max_len, int head_dim) {
    PaddedIndex p;
    const long long row = e / head_dim;
    p.dd = (int)(e - row * head_dim);
    const long long sh = row / max_len;
    p.i = (int)(row - sh * max_len);
    p.s = (int)(sh / n_heads);
    p.h = (int)(sh - (long long)p.s * n_heads);
    return p;
}

template <typename T>
__device__ void attn_pack(T* __restrict__ dst, const T* __restrict__ src, const int* __restrict__ cu_seqlens,
                          int n_seqs, int max_len, int n_heads, int head_dim, int src_row_stride) {
    const long long total = (long long)n_seqs * n_heads * max_len * head_dim;
    for (long long e = qf::global_thread_index(); e < total; e += qf::global_thread_count()) {
        const PaddedIndex p = decompose(e, n_heads, max_len, head_dim);
        T v = qf::from_f32<T>(0.0f);
        if (p.i < seq_len(cu_seqlens, p.s, max_len)) {
            const long long token = (long long)cu_seqlens[p.s] + p.i;
            v = src[token * src_row_stride + p.h * head_dim + p.dd];
        }
        dst[e] = v;
    }
}

template <typename T>
__device__ void attn_unpack(T* __restrict__ dst, const T* __restrict__ src, const int* __restrict__ cu_seqlens,
                            int n_seqs, int max_len, int n_heads, int head_dim, int dst_row_stride,
                            int accumulate) {
    const long long total = (long long)n_seqs * n_heads * max_len * head_dim;
    for (long long e = qf::global_thread_index(); e < total; e += qf::global_thread_count()) {
        const PaddedIndex p = decompose(e, n_heads, max_len, head_dim);
        if (p.i >= seq_len(cu_seqlens, p.s, max_len)) continue;
        const long long token = (long long)cu_seqlens[p.s] + p.i;
        qf::store_or_accumulate(dst + token * dst_row_stride + p.h * head_dim + p.dd, qf::to_f32(src[e]),
                                accumulate);
    }
}

// Row r of the [n_seqs, n_heads, max_len] row space: its query index i and
// the valid length of its sequence.
__device__ __forceinline__ void score_row(long long r, const int* cu_seqlens, int n_heads, int max_len, int& i,
                                          int& len) {
    const long long sh = r / max_len;
    i = (int)(r - sh * max_len);
    const int s = (int)(sh / n_heads);
    len = seq_len(cu_seqlens, s, max_len);
}

template <typename T>
__device__ void attn_softmax_forward(T* __restrict__ probs, const float* __restrict__ scores,
                                     const int* __restrict__ cu_seqlens, int n_seqs, int n_heads, int max_len,
                                     float scale) {
    const long long rows = (long long)n_seqs * n_heads * max_len;
    const int wpb = qf::warps_per_block();
    const int lane = qf::lane_id();
    for (long long r = (long long)blockIdx.x * wpb + qf::warp_id(); r < rows; r += (long long)gridDim.x * wpb) {
        int i, len;
        score_row(r, cu_seqlens, n_heads, max_len, i, len);
        const float* x = scores + r * max_len;
        T* p = probs + r * max_len;
        if (i >= len) {  // padded query row: all zero
            for (int j = lane; j < max_len; j += 32) p[j] = qf::from_f32<T>(0.0f);
            continue;
        }
        qf::MaxSum ms = qf::maxsum_empty();
        for (int j = lane; j < len; j += 32) ms = qf::maxsum_push(ms, scale * x[j]);
        ms = qf::warp_maxsum(ms);
        const float inv_sum = 1.0f / ms.s;
        for (int j = lane; j < max_len; j += 32) {
            const float v = j < len ? expf(scale * x[j] - ms.m) * inv_sum : 0.0f;
            p[j] = qf::from_f32<T>(v);
        }
    }
}

template <typename T>
__device__ void attn_softmax_backward(T* dscores, const T* __restrict__ probs, const T* dprobs,
                                      const int* __restrict__ cu_seqlens, int n_seqs, int n_heads, int max_len,
                                      float scale) {
    const long long rows = (long long)n_seqs * n_heads * max_len;
    const int wpb = qf::warps_per_block();
    const int lane = qf::lane_id();
    for (long long r = (long long)blockIdx.x * wpb + qf::warp_id(); r < rows; r += (long long)gridDim.x * wpb) {
        int i, len;
        score_row(r, cu_seqlens, n_heads, max_len, i, len);
        const T* p = probs + r * max_len;
        const T* dp = dprobs + r * max_len;
        T* ds = dscores + r * max_len;
        if (i >= len) len = 0;  // padded query row: all zero
        float dot = 0.0f;
        for (int j = lane; j < len; j += 32) dot += qf::to_f32(p[j]) * qf::to_f32(dp[j]);
        dot = qf::warp_sum(dot);  // complete before any lane overwrites dp (aliasing allowed)
        for (int j = lane; j < max_len; j += 32) {
            const float v = j < len ? scale * qf::to_f32(p[j]) * (qf::to_f32(dp[j]) - dot) : 0.0f;
            ds[j] = qf::from_f32<T>(v);
        }
    }
}

}  // namespace

#define QF_ATTENTION_KERNELS(T, SUF)                                                                            \
    extern "C" __global__ void attn_pack_##SUF(T* dst, const T* src, const int* cu_seqlens, int n_seqs,         \
                                               int max_len, int n_heads, int head_dim, int src_row_stride) {    \
        attn_pack<T>(dst, src, cu_seqlens, n_seqs, max_len, n_heads, head_dim, src_row_stride);                \
    }                                                                                                           \
    extern "C" __global__ void attn_unpack_##SUF(T* dst, const T* src, const int* cu_seqlens, int n_seqs,       \
                                                 int max_len, int n_heads, int head_dim, int dst_row_stride,    \
                                                 int accumulate) {                                              \
        attn_unpack<T>(dst, src, cu_seqlens, n_seqs, max_len, n_heads, head_dim, dst_row_stride, accumulate);   \
    }                                                                                                           \
    extern "C" __global__ void attn_softmax_forward_##SUF(T* probs, const float* scores, const int* cu_seqlens, \
                                                          int n_seqs, int n_heads, int max_len, float scale) {  \
        attn_softmax_forward<T>(probs, scores, cu_seqlens, n_seqs, n_heads, max_len, scale);                    \
    }                                                                                                           \
    extern "C" __global__ void attn_softmax_backward_##SUF(T* dscores, const T* probs, const T* dprobs,         \
                                                           const int* cu_seqlens, int n_seqs, int n_heads,      \
                                                           int max_len, float scale) {                          \
        attn_softmax_backward<T>(dscores, probs, dprobs, cu_seqlens, n_seqs, n_heads, max_len, scale);          \
    }

QF_FOR_EACH_DTYPE(QF_ATTENTION_KERNELS)
