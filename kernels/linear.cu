// linear.cu — the bias half of a linear layer (the product is cuBLAS, `backend/cuda/gemm.rs`):
// add a per-column bias and its gradient (column sums).
//
// Maths, for a row-major [rows, cols] activation:
//   forward   y[r, c] = x[r, c] + b[c]
//   backward  db[c]  += Σ_r dy[r, c]          (dx = dy is the caller's business)
// The bias is the fp32 master parameter; activations are in the compute type T.
//
// ABI (T = float/__half/__nv_bfloat16, suffix _f32/_f16/_bf16):
//
//   bias_add_T(T* y, const T* x, const float* bias, int rows, int cols)
//       y WRITES; y may alias x (in place).
//       Launch: block (256, 1, 1) (any size), grid (min(rows, 65535), 1, 1):
//       one block per row, grid-strided; threads stride over columns.
//
//   bias_grad_T(float* dbias, const T* dy, int rows, int cols)
//       dbias [cols] ACCUMULATES (+=, fp32 atomics: one atomicAdd per column
//       per block).
//       Launch: block (32, 8, 1), grid (ceil(cols/32), gy, 1) with
//       gy = clamp(ceil(4·num_SMs / grid.x), 1, ceil(rows/8)): x indexes
//       column tiles of blockDim.x columns (grid-strided), y splits the rows;
//       each warp reads 32 consecutive columns of one row.  Any block shape
//       with ≤ 1024 threads and any grid is correct (a 1-D (256,1,1) block
//       makes 256-column tiles with every thread walking all rows: correct
//       but slow for few columns).
#include "common.cuh"

namespace {

template <typename T>
__device__ void bias_add(T* y, const T* x, const float* __restrict__ bias, int rows, int cols) {
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const long long off = (long long)r * cols;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) y[off + c] = qf::from_f32<T>(qf::to_f32(x[off + c]) + bias[c]);
    }
}

template <typename T>
__device__ void bias_grad(float* dbias, const T* __restrict__ dy, int rows, int cols) {
    for (int tile = blockIdx.x; tile * (int)blockDim.x < cols; tile += gridDim.x) {
        const int col = tile * blockDim.x + threadIdx.x;
        float partial = 0.0f;
        if (col < cols) {
            for (int r = blockIdx.y * blockDim.y + threadIdx.y; r < rows; r += gridDim.y * blockDim.y)
                partial += qf::to_f32(dy[(long long)r * cols + col]);
        }
        qf::column_partials_atomic_add(dbias, col, cols, partial);
    }
}

}  // namespace

#define QF_BIAS_KERNELS(T, SUF)                                                                           \
    extern "C" __global__ void bias_add_##SUF(T* y, const T* x, const float* bias, int rows, int cols) {   \
        bias_add<T>(y, x, bias, rows, cols);                                                              \
    }                                                                                                     \
    extern "C" __global__ void bias_grad_##SUF(float* dbias, const T* dy, int rows, \
                                                                       int cols) {                        \
        bias_grad<T>(dbias, dy, rows, cols);                                                              \
    }

QF_FOR_EACH_DTYPE(QF_BIAS_KERNELS)
