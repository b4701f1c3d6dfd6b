// cross_entropy.cu — fused weighted softmax cross-entropy, forward + backward
// in one kernel (the logits gradient is produced while the row is hot).
//
// Maths (PyTorch F.cross_entropy(x, y, weight=w, ignore_index=ι,
// reduction='mean')):
//   L = Σ_r w_{y_r}·(lse_r − x_{r,y_r}) / Σ_{r: y_r≠ι} w_{y_r},
//   lse_r = m_r + log Σ_j exp(x_rj − m_r),  m_r = max_j x_rj            (1)
//   ∂L/∂x_rj = w_{y_r}·(softmax_rj − [j = y_r]) / Σ w                    (2)
// The normaliser Σ_{r: y_r≠ι} w_{y_r} is computed on the device by label_weight_sum
// below and passed as a device scalar (weight_sum; 1/weight_sum is used, 0 when it is 0),
// so a training step needs no copy of the labels to the host. The upstream
// gradient dL is read from device memory by the backward.
// Per row: ONE pass over the logits with an online (max, sum) in fp32
// (Milakov & Gimelshein 2018), merged across the block; then a second sweep
// writes (2) with softmax_rj = exp(x_rj − lse_r) (the row is re-read from
// L1/L2).  Logits equal to −inf are allowed (probability 0).
//
// ABI (T = float/__half/__nv_bfloat16, suffix _f32/_f16/_bf16):
//   cross_entropy_forward_backward_T(float* loss_rows, T* dlogits /*nullable*/,
//       const T* logits, const int* labels, const float* class_weights /*nullable = all 1*/,
//       int rows, int n_classes, int ignore_index, const float* weight_sum)
//   logits, dlogits [rows, n_classes]; labels [rows]; class_weights [n_classes].
//   loss_rows [rows] WRITES w_y·(lse − x_y)·inv_weight_sum (the mean loss is
//   Σ loss_rows), 0 for ignored rows.  dlogits WRITES (2)·… (0 for ignored
//   rows); null dlogits = forward only.  dlogits may alias logits (in place).
//   A label outside [0, n_classes) other than ignore_index is a host bug: the
//   row's loss and gradient are NaN, so it cannot go unnoticed.
//
//   cross_entropy_backward_T(T* dlogits, const T* logits, const int* labels,
//       const float* class_weights /*nullable = all 1*/, int rows, int n_classes,
//       int ignore_index, const float* weight_sum, const float* dloss /*nullable = 1*/)
//   dlogits WRITES dL·(2), where dL = *dloss is the upstream gradient of the mean
//   loss read from device memory (no host sync).  The product dL·w_y·inv_weight_sum
//   is formed in fp32 BEFORE the single rounding to T: with fp16 loss scaling
//   (dL = 2^16) the small softmax gradients stay normal fp16 numbers instead of
//   being rounded unscaled (into fp16's subnormal range) and scaled afterwards.
//   Recomputes (1) from the logits (one extra pass over [rows, n_classes]); the
//   forward then needs no dlogits buffer.  dlogits may alias logits.
//
//   sum_f32(float* out, const float* x, long long n)
//   *out ACCUMULATES (+=) Σ_{i<n} x_i in fp32 (per-thread partials, a block tree sum,
//   one atomicAdd per block): the mean loss from loss_rows. The order of the sum
//   depends on the launch shape, so launch ONE block for a deterministic loss.
//   Launch: block (256, 1, 1) (any multiple of 32 ≤ 1024), grid (1, 1, 1).
//
// Launch (the two row kernels): one block per row, block (256, 1, 1) for n_classes ≤ 4096,
// (1024, 1, 1) above (any multiple of 32 ≤ 1024), grid (min(rows, 65535), 1, 1)
// (rows are grid-strided).  Static shared memory only (256 B).
#include "common.cuh"

namespace {

// loss_rows and dlogits are each nullable; grad_mult (nullable = 1) multiplies the
// gradient only.
template <typename T>
__device__ void cross_entropy_rows(float* __restrict__ loss_rows, T* dlogits, const T* logits,
                                   const int* __restrict__ labels, const float* __restrict__ class_weights,
                                   int rows, int n_classes, int ignore_index, const float* __restrict__ weight_sum,
                                   const float* __restrict__ grad_mult) {
    const float dl = grad_mult ? *grad_mult : 1.0f;
    const float ws = *weight_sum;
    const float inv_weight_sum = ws > 0.0f ? 1.0f / ws : 0.0f;
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const long long off = (long long)r * n_classes;
        const int y = labels[r];
        T* d_row = dlogits ? dlogits + off : nullptr;

        if (y == ignore_index) {
            if (loss_rows && threadIdx.x == 0) loss_rows[r] = 0.0f;
            if (d_row)
                for (int j = threadIdx.x; j < n_classes; j += blockDim.x) d_row[j] = qf::from_f32<T>(0.0f);
            continue;
        }
        const bool valid = y >= 0 && y < n_classes;
        // Read x_y before the block reduction's barrier: dlogits may alias logits.
        const float x_y = valid ? qf::to_f32(logits[off + y]) : NAN;
        const float w_y = valid ? (class_weights ? class_weights[y] : 1.0f) : NAN;

        // pass 1: online max / sum of exp over the row
        qf::MaxSum ms = qf::maxsum_empty();
        for (int j = threadIdx.x; j < n_classes; j += blockDim.x) ms = qf::maxsum_push(ms, qf::to_f32(logits[off + j]));
        ms = qf::block_maxsum(ms);
        const float lse = ms.m + logf(ms.s);
        const float coef = w_y * inv_weight_sum;
        if (loss_rows && threadIdx.x == 0) loss_rows[r] = coef * (lse - x_y);

        // pass 2: gradient, scaled by the upstream gradient before rounding to T
        if (d_row) {
            const float gcoef = coef * dl;
            for (int j = threadIdx.x; j < n_classes; j += blockDim.x) {
                const float softmax = expf(qf::to_f32(logits[off + j]) - lse);
                d_row[j] = qf::from_f32<T>(gcoef * (softmax - (j == y ? 1.0f : 0.0f)));
            }
        }
    }
}

}  // namespace

#define QF_CROSS_ENTROPY_KERNELS(T, SUF)                                                                        \
    extern "C" __global__ void cross_entropy_forward_backward_##SUF(                                            \
        float* loss_rows, T* dlogits, const T* logits, const int* labels, const float* class_weights, int rows, \
        int n_classes, int ignore_index, const float* weight_sum) {                                             \
        cross_entropy_rows<T>(loss_rows, dlogits, logits, labels, class_weights, rows, n_classes, ignore_index,  \
                              weight_sum, nullptr);                                                             \
    }                                                                                                           \
    extern "C" __global__ void cross_entropy_backward_##SUF(                                                    \
        T* dlogits, const T* logits, const int* labels, const float* class_weights, int rows, int n_classes,    \
        int ignore_index, const float* weight_sum, const float* dloss) {                                        \
        cross_entropy_rows<T>(nullptr, dlogits, logits, labels, class_weights, rows, n_classes, ignore_index,    \
                              weight_sum, dloss);                                                               \
    }

QF_FOR_EACH_DTYPE(QF_CROSS_ENTROPY_KERNELS)

// label_weight_sum(float* out, const int* labels, const float* class_weights /*nullable = 1*/,
//                  int rows, int n_classes, int ignore_index)
//   *out WRITES Σ_{r: labels[r] ≠ ignore_index} w[labels[r]] — the normaliser of the mean,
//   computed on the device so that a step needs no copy of the labels to the host. A label
//   outside [0, n_classes) makes it NaN (and so the loss), never an out-of-bounds read.
//   Launch: ONE block of 256 threads.
extern "C" __global__ void label_weight_sum(float* out, const int* labels, const float* class_weights, int rows,
                                            int n_classes, int ignore_index) {
    __shared__ float partial[256];
    float acc = 0.0f;
    for (int r = threadIdx.x; r < rows; r += blockDim.x) {
        const int y = labels[r];
        if (y == ignore_index) continue;
        if (y < 0 || y >= n_classes) acc += NAN;
        else acc += class_weights ? class_weights[y] : 1.0f;
    }
    partial[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) *out = partial[0];
}

extern "C" __global__ void sum_f32(float* out, const float* x, long long n) {
    float partial = 0.0f;
    for (long long i = qf::global_thread_index(); i < n; i += qf::global_thread_count()) partial += x[i];
    const float total = qf::block_sum(partial);
    if (threadIdx.x == 0) atomicAdd(out, total);
}
