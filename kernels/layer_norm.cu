// layer_norm.cu — LayerNorm over the last dimension (PyTorch semantics).
//
// Maths, per row x ∈ R^D (D = dim), fp32 statistics:
//   μ = (1/D) Σ_d x_d                                   (pass 1)
//   σ² = (1/D) Σ_d (x_d − μ)²   (biased, like PyTorch)  (pass 2: two-pass, no
//                                                        cancellation)
//   r = 1 / sqrtf(σ² + eps)      (IEEE sqrt and divide, not rsqrtf)
//   x̂_d = (x_d − μ)·r,   y_d = x̂_d·w_d + b_d
// Backward (g_d = dy_d·w_d):
//   dx_d += r · ( g_d − (1/D)Σ_k g_k − x̂_d·(1/D)Σ_k g_k x̂_k )
//   dw_d += Σ_rows dy_d·x̂_d,      db_d += Σ_rows dy_d
// x̂ is recomputed from the saved μ and r, so only [rows] mean/rstd are kept.
//
// ABI (T = float/__half/__nv_bfloat16, suffix _f32/_f16/_bf16):
//
//   layer_norm_forward_T(T* y, float* mean /*nullable*/, float* rstd /*nullable*/,
//                        const T* x, const float* w /*nullable = 1*/,
//                        const float* b /*nullable = 0*/, int rows, int dim, float eps)
//       x, y [rows, dim]; y WRITES (y may alias x: in-place is fine);
//       mean, rstd [rows] WRITE (fp32).
//       Launch: one warp per row.  block (256, 1, 1) (any multiple of 32 ≤ 1024),
//       grid (ceil(rows / (blockDim.x/32)), 1, 1) (any grid is correct: rows are
//       grid-strided).  No shared memory.
//
//   layer_norm_backward_T(T* dx, float* dw /*nullable*/, float* db /*nullable*/,
//                         const T* dy, const T* x, const float* w /*nullable = 1*/,
//                         const float* mean, const float* rstd, int rows, int dim)
//       dx [rows, dim] ACCUMULATES (+=); dw, db [dim] ACCUMULATE (fp32).
//       dx must not alias dy or x.  Null dw/db (frozen LayerNorm) skip them.
//       Launch: one warp per row, block (256, 1, 1) (any multiple of 32 ≤ 1024),
//       grid (min(ceil(rows / (blockDim.x/32)), 2·num_SMs), 1, 1) — few blocks
//       so the per-block partial column sums cost few global atomics.
//       Dynamic shared memory: 2·dim·sizeof(float) bytes (dw and db partials,
//       summed with shared-memory atomics, then ONE global atomicAdd per column
//       per block).  Over 48 KiB (dim > 6144) the host must first raise
//       CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES.  With less dynamic
//       shared memory than that (e.g. 0) the kernel is still correct: it reads
//       %dynamic_smem_size and falls back to one global atomicAdd per element
//       and row (slow under contention — give it the shared memory).
#include "common.cuh"

namespace {

// Mean and reciprocal standard deviation of one row, computed by one warp;
// every lane gets both.
template <typename T>
__device__ __forceinline__ void warp_row_stats(const T* x_row, int dim, float eps, float& mean, float& rstd) {
    float sum = 0.0f;
    for (int d = qf::lane_id(); d < dim; d += 32) sum += qf::to_f32(x_row[d]);
    mean = qf::warp_sum(sum) / (float)dim;
    float sq = 0.0f;
    for (int d = qf::lane_id(); d < dim; d += 32) {
        const float c = qf::to_f32(x_row[d]) - mean;
        sq += c * c;
    }
    const float var = qf::warp_sum(sq) / (float)dim;
    rstd = 1.0f / sqrtf(var + eps);
}

template <typename T>
__device__ void layer_norm_forward(T* y, float* mean_out, float* rstd_out, const T* x, const float* w,
                                   const float* b, int rows, int dim, float eps) {
    const int wpb = qf::warps_per_block();
    for (int row = blockIdx.x * wpb + qf::warp_id(); row < rows; row += gridDim.x * wpb) {
        const T* x_row = x + (long long)row * dim;
        T* y_row = y + (long long)row * dim;
        float mean, rstd;
        warp_row_stats(x_row, dim, eps, mean, rstd);
        for (int d = qf::lane_id(); d < dim; d += 32) {
            const float xhat = (qf::to_f32(x_row[d]) - mean) * rstd;
            const float wd = w ? w[d] : 1.0f;
            const float bd = b ? b[d] : 0.0f;
            y_row[d] = qf::from_f32<T>(xhat * wd + bd);
        }
        if (qf::lane_id() == 0) {
            if (mean_out) mean_out[row] = mean;
            if (rstd_out) rstd_out[row] = rstd;
        }
    }
}

template <typename T>
__device__ void layer_norm_backward(T* __restrict__ dx, float* dw, float* db, const T* __restrict__ dy,
                                    const T* __restrict__ x, const float* __restrict__ w,
                                    const float* __restrict__ mean, const float* __restrict__ rstd, int rows,
                                    int dim) {
    QF_DYNAMIC_SHARED(float, smem);  // [dim] dw partials, then [dim] db partials
    const bool want_params = dw != nullptr || db != nullptr;
    // Shared-memory partials only when the launch provided room for them;
    // otherwise accumulate straight into global memory (same result).
    const bool in_smem = want_params && qf::dynamic_smem_bytes() >= 2u * (unsigned)dim * sizeof(float);
    float* dw_part = in_smem ? smem : dw;
    float* db_part = in_smem ? smem + dim : db;
    if (in_smem) {
        for (int d = threadIdx.x; d < 2 * dim; d += blockDim.x) smem[d] = 0.0f;
        __syncthreads();
    }

    const int wpb = qf::warps_per_block();
    for (int row = blockIdx.x * wpb + qf::warp_id(); row < rows; row += gridDim.x * wpb) {
        const long long off = (long long)row * dim;
        const float mu = mean[row];
        const float r = rstd[row];

        // pass 1: Σ g and Σ g·x̂ over the row; per-column dw/db partials
        float sum_g = 0.0f, sum_gx = 0.0f;
        for (int d = qf::lane_id(); d < dim; d += 32) {
            const float dyd = qf::to_f32(dy[off + d]);
            const float xhat = (qf::to_f32(x[off + d]) - mu) * r;
            const float g = dyd * (w ? w[d] : 1.0f);
            sum_g += g;
            sum_gx += g * xhat;
            if (dw_part) atomicAdd(dw_part + d, dyd * xhat);
            if (db_part) atomicAdd(db_part + d, dyd);
        }
        const float mean_g = qf::warp_sum(sum_g) / (float)dim;
        const float mean_gx = qf::warp_sum(sum_gx) / (float)dim;

        // pass 2: dx += r·(g − mean(g) − x̂·mean(g·x̂))
        for (int d = qf::lane_id(); d < dim; d += 32) {
            const float dyd = qf::to_f32(dy[off + d]);
            const float xhat = (qf::to_f32(x[off + d]) - mu) * r;
            const float g = dyd * (w ? w[d] : 1.0f);
            qf::accumulate_into(dx + off + d, r * (g - mean_g - xhat * mean_gx));
        }
    }

    if (in_smem) {
        __syncthreads();
        for (int d = threadIdx.x; d < dim; d += blockDim.x) {
            if (dw) atomicAdd(dw + d, dw_part[d]);
            if (db) atomicAdd(db + d, db_part[d]);
        }
    }
}

}  // namespace

#define QF_LAYER_NORM_KERNELS(T, SUF)                                                                          \
    extern "C" __global__ void layer_norm_forward_##SUF(T* y, float* mean, float* rstd, const T* x,            \
                                                        const float* w, const float* b, int rows, int dim,     \
                                                        float eps) {                                           \
        layer_norm_forward<T>(y, mean, rstd, x, w, b, rows, dim, eps);                                         \
    }                                                                                                          \
    extern "C" __global__ void layer_norm_backward_##SUF(T* dx, float* dw, float* db, const T* dy, const T* x, \
                                                         const float* w, const float* mean, const float* rstd, \
                                                         int rows, int dim) {                                  \
        layer_norm_backward<T>(dx, dw, db, dy, x, w, mean, rstd, rows, dim);                                   \
    }

QF_FOR_EACH_DTYPE(QF_LAYER_NORM_KERNELS)
