// gather.cu — gather rows (e.g. the <cls> vector of each packed sequence:
// rows[s] = cu_seqlens[s]) and the matching scatter-add backward.
//
// Maths:
//   gather       out[k, :] = x[rows[k], :]                  k < n
//   scatter_add  dx[rows[k], :] += dout[k, :]               k < n
// scatter_add_rows uses plain read-add-write, NO atomics: the host guarantees
// that rows[] holds DISTINCT indices (true for <cls>/<eos> positions of
// different sequences).  With repeated indices the result is undefined (a
// lost update) — use embedding_backward-style atomics for that case.
// Indices are not range-checked (the host validates them).
//
// ABI (T = float/__half/__nv_bfloat16, suffix _f32/_f16/_bf16):
//   gather_rows_T(T* out, const T* x, const int* rows, int n, int dim)
//       out [n, dim] WRITES; x [*, dim].
//   scatter_add_rows_T(T* dx, const T* dout, const int* rows, int n, int dim)
//       dx [*, dim] ACCUMULATES (+=) at the listed rows only; dout [n, dim].
// Launch (both): block (256, 1, 1) (any size), grid (min(n, 65535), 1, 1):
// one block per listed row (grid-strided), threads stride over dim.
#include "common.cuh"

namespace {

template <typename T>
__device__ void gather_rows(T* __restrict__ out, const T* __restrict__ x, const int* __restrict__ rows, int n,
                            int dim) {
    for (int k = blockIdx.x; k < n; k += gridDim.x) {
        const T* src = x + (long long)rows[k] * dim;
        T* dst = out + (long long)k * dim;
        for (int d = threadIdx.x; d < dim; d += blockDim.x) dst[d] = src[d];
    }
}

template <typename T>
__device__ void scatter_add_rows(T* __restrict__ dx, const T* __restrict__ dout, const int* __restrict__ rows,
                                 int n, int dim) {
    for (int k = blockIdx.x; k < n; k += gridDim.x) {
        T* dst = dx + (long long)rows[k] * dim;
        const T* src = dout + (long long)k * dim;
        for (int d = threadIdx.x; d < dim; d += blockDim.x) qf::accumulate_into(dst + d, qf::to_f32(src[d]));
    }
}

}  // namespace

#define QF_GATHER_KERNELS(T, SUF)                                                                             \
    extern "C" __global__ void gather_rows_##SUF(T* out, const T* x, const int* rows, int n, int dim) {       \
        gather_rows<T>(out, x, rows, n, dim);                                                                 \
    }                                                                                                         \
    extern "C" __global__ void scatter_add_rows_##SUF(T* dx, const T* dout, const int* rows, int n, int dim) { \
        scatter_add_rows<T>(dx, dout, rows, n, dim);                                                          \
    }

QF_FOR_EACH_DTYPE(QF_GATHER_KERNELS)
