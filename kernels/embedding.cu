// embedding.cu — token embedding lookup with ESM-2 token-dropout row scaling.
//
// Maths (ESM-2 token dropout, as transformers' EsmEmbeddings and fair-esm apply it):
//   forward   out[t, d]           = W[ids[t], d] · s[t]
//   backward  dW[ids[t], d]      += dout[t, d] · s[t]        (for every t)
// where s[t] is the per-token scale chosen by the host: 0 for <mask> and
// padding tokens, (1 − 0.15·0.8) / (1 − observed mask ratio of t's sequence)
// otherwise.  row_scale == nullptr means s[t] = 1.
//
// The weight W is the fp32 master table [vocab, dim]; the activations are in
// the compute type T.  ids must lie in [0, vocab): the host validates them
// (the kernel does not know vocab).
//
// ABI (T = float/__half/__nv_bfloat16, suffix _f32/_f16/_bf16):
//
//   embedding_forward_T(T* out, const float* weight, const int* ids,
//                       const float* row_scale /*nullable*/, int n_tokens, int dim)
//       out [n_tokens, dim] WRITES; weight [vocab, dim]; ids [n_tokens].
//
//   embedding_backward_T(float* dweight, const T* dout, const int* ids,
//                        const float* row_scale /*nullable*/, int n_tokens, int dim)
//       dweight [vocab, dim] ACCUMULATES with atomicAdd (repeated ids are
//       fine; the summation order, hence the last bits, is not deterministic).
//
// Launch (both): block (256, 1, 1) (any multiple of 32 ≤ 1024 works),
// grid (min(n_tokens, 65535), 1, 1) — one block per token row, grid-stride
// over rows, threads stride over dim.  No shared memory.
#include "common.cuh"

namespace {

template <typename T>
__device__ void embedding_forward(T* __restrict__ out, const float* __restrict__ weight,
                                  const int* __restrict__ ids, const float* __restrict__ row_scale,
                                  int n_tokens, int dim) {
    for (int t = blockIdx.x; t < n_tokens; t += gridDim.x) {
        const float s = row_scale ? row_scale[t] : 1.0f;
        const float* w_row = weight + (long long)ids[t] * dim;
        T* out_row = out + (long long)t * dim;
        for (int d = threadIdx.x; d < dim; d += blockDim.x) out_row[d] = qf::from_f32<T>(w_row[d] * s);
    }
}

template <typename T>
__device__ void embedding_backward(float* __restrict__ dweight, const T* __restrict__ dout,
                                   const int* __restrict__ ids, const float* __restrict__ row_scale,
                                   int n_tokens, int dim) {
    for (int t = blockIdx.x; t < n_tokens; t += gridDim.x) {
        const float s = row_scale ? row_scale[t] : 1.0f;
        float* dw_row = dweight + (long long)ids[t] * dim;
        const T* dout_row = dout + (long long)t * dim;
        for (int d = threadIdx.x; d < dim; d += blockDim.x) atomicAdd(dw_row + d, qf::to_f32(dout_row[d]) * s);
    }
}

}  // namespace

#define QF_EMBEDDING_KERNELS(T, SUF)                                                                       \
    extern "C" __global__ void embedding_forward_##SUF(T* out, const float* weight, const int* ids,        \
                                                       const float* row_scale, int n_tokens, int dim) {    \
        embedding_forward<T>(out, weight, ids, row_scale, n_tokens, dim);                                  \
    }                                                                                                      \
    extern "C" __global__ void embedding_backward_##SUF(float* dweight, const T* dout, const int* ids,     \
                                                        const float* row_scale, int n_tokens, int dim) {   \
        embedding_backward<T>(dweight, dout, ids, row_scale, n_tokens, dim);                               \
    }

QF_FOR_EACH_DTYPE(QF_EMBEDDING_KERNELS)
