// bce.cu — fused binary cross-entropy with logits (contact prediction loss),
// forward + backward in one pass.
//
// Maths (PyTorch F.binary_cross_entropy_with_logits, numerically stable form):
//   ℓ_i  = max(x_i, 0) − x_i·t_i + log1p(exp(−|x_i|))                     (1)
//   L    = Σ_i m_i·ℓ_i · inv_count          (inv_count = 1/Σ m_i, by the host)
//   ∂L/∂x_i = m_i·(σ(x_i) − t_i)·inv_count                                  (2)
//   σ(x) = 1/(1 + e^{−x}) for x ≥ 0, e^{x}/(1 + e^{x}) otherwise (no overflow)
// Entries with m_i == 0 contribute EXACTLY 0 to L and get gradient 0, even
// when x_i or t_i is NaN/inf (unlabelled pairs may carry any placeholder);
// the CPU reference must do the same.  mask == nullptr means m_i = 1.
//
// ABI (T = float/__half/__nv_bfloat16, suffix _f32/_f16/_bf16):
//   bce_with_logits_forward_backward_T(float* loss_sum, T* dlogits /*nullable*/,
//       const T* logits, const float* targets, const float* mask /*nullable*/,
//       long long n, float inv_count)
//   loss_sum: ONE fp32 in device memory, ACCUMULATES (+=, one atomicAdd per
//   block; zero it first).  dlogits [n] WRITES (2); may alias logits.
//   targets, mask [n] fp32.
//
//   bce_with_logits_backward_T(T* dlogits, const T* logits, const float* targets,
//       const float* mask /*nullable*/, long long n, float inv_count,
//       const float* dloss /*device scalar, nullable = 1*/)
//   dlogits [n] WRITES dL·(2) with dL = *dloss (the upstream gradient of L, read on
//   the device), multiplied in fp32 before the one rounding to T, so fp16 loss
//   scaling keeps the small per-entry gradients out of fp16's subnormal range.
//   May alias logits.  Same launch as the forward.
// Launch: block (256, 1, 1) (any multiple of 32 ≤ 1024), grid (min(ceil(n/256),
// 8·num_SMs), 1, 1) (grid-stride; fewer blocks = fewer atomics).
#include "common.cuh"

namespace {

__device__ __forceinline__ float stable_sigmoid(float x) {
    const float e = expf(-fabsf(x));
    return x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

// loss_sum and dlogits are each nullable (the block reduction runs only with
// loss_sum); grad_mult (nullable = 1) multiplies the gradient only.
template <typename T>
__device__ void bce_with_logits(float* loss_sum, T* dlogits, const T* logits, const float* __restrict__ targets,
                                const float* __restrict__ mask, long long n, float inv_count,
                                const float* __restrict__ grad_mult) {
    const float gscale = inv_count * (grad_mult ? *grad_mult : 1.0f);
    float partial = 0.0f;
    for (long long i = qf::global_thread_index(); i < n; i += qf::global_thread_count()) {
        const float m = mask ? mask[i] : 1.0f;
        float grad = 0.0f;
        if (m != 0.0f) {
            const float x = qf::to_f32(logits[i]);
            const float t = targets[i];
            partial += m * (fmaxf(x, 0.0f) - x * t + log1pf(expf(-fabsf(x))));
            grad = m * (stable_sigmoid(x) - t) * gscale;
        }
        if (dlogits) dlogits[i] = qf::from_f32<T>(grad);
    }
    if (loss_sum) {  // uniform over the grid
        const float total = qf::block_sum(partial);
        if (threadIdx.x == 0) atomicAdd(loss_sum, total * inv_count);
    }
}

}  // namespace

#define QF_BCE_KERNELS(T, SUF)                                                                                 \
    extern "C" __global__ void bce_with_logits_forward_backward_##SUF(float* loss_sum, T* dlogits,             \
                                                                      const T* logits, const float* targets,   \
                                                                      const float* mask, long long n,          \
                                                                      float inv_count) {                       \
        bce_with_logits<T>(loss_sum, dlogits, logits, targets, mask, n, inv_count, nullptr);                   \
    }                                                                                                          \
    extern "C" __global__ void bce_with_logits_backward_##SUF(T* dlogits, const T* logits, const float* targets, \
                                                              const float* mask, long long n, float inv_count,  \
                                                              const float* dloss) {                            \
        bce_with_logits<T>(nullptr, dlogits, logits, targets, mask, n, inv_count, dloss);                      \
    }

QF_FOR_EACH_DTYPE(QF_BCE_KERNELS)
