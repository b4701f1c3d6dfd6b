// bias_gelu.cu — fused bias add + exact (erf) GELU, forward and backward.
//
// Maths (Hendrycks & Gimpel 2016, the exact form used by ESM-2 / HF "gelu"):
//   u = x + b[c]
//   gelu(u)  = u·Φ(u),          Φ(u) = ½·(1 + erf(u/√2))           (1)
//   gelu'(u) = Φ(u) + u·φ(u),   φ(u) = exp(−u²/2) / √(2π)           (2)
//   forward   y = gelu(u)
//   backward  g = dy·gelu'(u);  dx += g;  db[c] += Σ_rows g
// Compiled WITHOUT --use_fast_math: erff/expf are the full-precision CUDA
// versions (≤ 2 ulp), so fp32 output matches the CPU reference to ~1e-7.
//
// ABI (T = float/__half/__nv_bfloat16, suffix _f32/_f16/_bf16):
//
//   bias_gelu_forward_T(T* y, const T* x, const float* bias /*nullable = 0*/,
//                       int rows, int cols)
//       y WRITES; y may alias x.
//       Launch: block (256, 1, 1) (any size), grid (min(rows, 65535), 1, 1):
//       one block per row (grid-strided), threads stride over columns.
//
//   bias_gelu_backward_T(T* dx, float* dbias /*nullable*/, const T* dy,
//                        const T* x, const float* bias /*nullable = 0*/,
//                        int rows, int cols)
//       x is the forward INPUT (pre-bias).  dx ACCUMULATES (+=); dx must not
//       alias dy or x.  dbias [cols] ACCUMULATES (fp32, one atomicAdd per
//       column per block).
//       Launch: block (32, 8, 1), grid (ceil(cols/32), gy, 1) with
//       gy = clamp(ceil(4·num_SMs / grid.x), 1, ceil(rows/8)): x indexes
//       column tiles of blockDim.x columns (grid-strided), y splits the rows.
//       Any block shape with ≤ 1024 threads and any grid is correct (see
//       bias_grad in linear.cu).
#include "common.cuh"

namespace {

constexpr float kInvSqrt2 = 0.70710678118654752440f;      // 1/√2
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;    // 1/√(2π)

__device__ __forceinline__ float gelu(float u) { return 0.5f * u * (1.0f + erff(u * kInvSqrt2)); }

__device__ __forceinline__ float gelu_grad(float u) {
    const float cdf = 0.5f * (1.0f + erff(u * kInvSqrt2));
    const float pdf = expf(-0.5f * u * u) * kInvSqrt2Pi;
    return cdf + u * pdf;
}

template <typename T>
__device__ void bias_gelu_forward(T* y, const T* x, const float* __restrict__ bias, int rows, int cols) {
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const long long off = (long long)r * cols;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            const float u = qf::to_f32(x[off + c]) + (bias ? bias[c] : 0.0f);
            y[off + c] = qf::from_f32<T>(gelu(u));
        }
    }
}

template <typename T>
__device__ void bias_gelu_backward(T* __restrict__ dx, float* dbias, const T* __restrict__ dy,
                                   const T* __restrict__ x, const float* __restrict__ bias, int rows, int cols) {
    for (int tile = blockIdx.x; tile * (int)blockDim.x < cols; tile += gridDim.x) {
        const int col = tile * blockDim.x + threadIdx.x;
        float partial = 0.0f;
        if (col < cols) {
            const float b = bias ? bias[col] : 0.0f;
            for (int r = blockIdx.y * blockDim.y + threadIdx.y; r < rows; r += gridDim.y * blockDim.y) {
                const long long i = (long long)r * cols + col;
                const float g = qf::to_f32(dy[i]) * gelu_grad(qf::to_f32(x[i]) + b);
                qf::accumulate_into(dx + i, g);
                partial += g;
            }
        }
        if (dbias) qf::column_partials_atomic_add(dbias, col, cols, partial);  // dbias: uniform branch
    }
}

}  // namespace

#define QF_BIAS_GELU_KERNELS(T, SUF)                                                                          \
    extern "C" __global__ void bias_gelu_forward_##SUF(T* y, const T* x, const float* bias, int rows,         \
                                                       int cols) {                                            \
        bias_gelu_forward<T>(y, x, bias, rows, cols);                                                         \
    }                                                                                                         \
    extern "C" __global__ void                                                                                \
        bias_gelu_backward_##SUF(T* dx, float* dbias, const T* dy, const T* x, const float* bias, int rows,   \
                                 int cols) {                                                                  \
        bias_gelu_backward<T>(dx, dbias, dy, x, bias, rows, cols);                                            \
    }

QF_FOR_EACH_DTYPE(QF_BIAS_GELU_KERNELS)
