// mean_pool.cu — per-sequence mean of the residue rows of packed hidden states (the
// `--pool mean` sequence vector: fair-esm's `mean` representation, `<cls>` and `<eos>`
// left out) and its backward.
//
// Maths, sequence s spanning rows cu[s] .. cu[s+1]-1 (first <cls>, last <eos>),
// residues r in R_s = cu[s]+1 .. cu[s+1]-2, n_s = |R_s| = cu[s+1] - cu[s] - 2:
//   forward   out[s, :] = (1/n_s) · Σ_{r∈R_s} x[r, :]          (fp32 sum; 0 when n_s ≤ 0)
//   backward  dx[r, :] += dout[s, :] / n_s      for r ∈ R_s     (the <cls>/<eos> rows untouched)
// Every row belongs to one sequence, so the backward writes each row once: no atomics.
//
// ABI (T = float/__half/__nv_bfloat16, suffix _f32/_f16/_bf16):
//   mean_pool_forward_T(T* out, const T* x, const int* cu_seqlens, int n_seqs, int dim)
//       out [n_seqs, dim] WRITES; x [tokens, dim]; cu_seqlens [n_seqs + 1].
//   mean_pool_backward_T(T* dx, const T* dout, const int* cu_seqlens, int n_seqs, int dim)
//       dx [tokens, dim] ACCUMULATES (+=) on residue rows; dout [n_seqs, dim].
// Launch (both): block (256, 1, 1) (any size), grid (min(n_seqs, 65535), 1, 1): one block
// per sequence (grid-strided), threads stride over dim.
#include "common.cuh"

namespace {

template <typename T>
__device__ void mean_pool_forward(T* __restrict__ out, const T* __restrict__ x, const int* __restrict__ cu, int n_seqs,
                                  int dim) {
    for (int s = blockIdx.x; s < n_seqs; s += gridDim.x) {
        const int first = cu[s] + 1, end = cu[s + 1] - 1;
        const int n = end - first;
        const float inv = n > 0 ? 1.0f / (float)n : 0.0f;
        for (int d = threadIdx.x; d < dim; d += blockDim.x) {
            float acc = 0.0f;
            for (int r = first; r < end; ++r) acc += qf::to_f32(x[(long long)r * dim + d]);
            out[(long long)s * dim + d] = qf::from_f32<T>(acc * inv);
        }
    }
}

template <typename T>
__device__ void mean_pool_backward(T* __restrict__ dx, const T* __restrict__ dout, const int* __restrict__ cu,
                                   int n_seqs, int dim) {
    for (int s = blockIdx.x; s < n_seqs; s += gridDim.x) {
        const int first = cu[s] + 1, end = cu[s + 1] - 1;
        const int n = end - first;
        if (n <= 0) continue;
        const float inv = 1.0f / (float)n;
        for (int d = threadIdx.x; d < dim; d += blockDim.x) {
            const float g = qf::to_f32(dout[(long long)s * dim + d]) * inv;
            for (int r = first; r < end; ++r) qf::accumulate_into(dx + (long long)r * dim + d, g);
        }
    }
}

}  // namespace

#define QF_MEAN_POOL_KERNELS(T, SUF)                                                                            \
    extern "C" __global__ void mean_pool_forward_##SUF(T* out, const T* x, const int* cu_seqlens, int n_seqs,   \
                                                       int dim) {                                               \
        mean_pool_forward<T>(out, x, cu_seqlens, n_seqs, dim);                                                  \
    }                                                                                                           \
    extern "C" __global__ void mean_pool_backward_##SUF(T* dx, const T* dout, const int* cu_seqlens, int n_seqs, \
                                                        int dim) {                                              \
        mean_pool_backward<T>(dx, dout, cu_seqlens, n_seqs, dim);                                               \
    }

QF_FOR_EACH_DTYPE(QF_MEAN_POOL_KERNELS)
