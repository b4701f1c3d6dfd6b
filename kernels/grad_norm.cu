// grad_norm.cu — global gradient norm, clipping coefficient and overflow
// detection, entirely on the device (no host sync inside a step).
//
// Maths (PyTorch clip_grad_norm_(max_norm, norm_type=2) applied to the
// unscaled gradients, as with GradScaler.unscale_ then clip):
//   S    = Σ over all gradient tensors Σ_i g_i²     (g: loss-scaled fp32 grads)
//   norm = sqrt(S) · inv_loss_scale
//   clip = max_norm > 0 ? min(max_norm / (norm + 1e-6), 1) : 1
//   coef = inv_loss_scale · clip     (→ adamw_step's grad_scale)
//   skip = any g_i non-finite  OR  S non-finite
//
// ABI:
//   sum_squares_f32(float* out, int* nonfinite /*nullable*/, const float* x, long long n)
//       *out ACCUMULATES Σ x_i² (fp32; one atomicAdd per block — zero it before
//       the first tensor, then call once per gradient tensor).
//       *nonfinite is SET to 1 if any x_i is inf/nan (never cleared here:
//       zero it with *out).
//       Launch: block (256, 1, 1) (any multiple of 32 ≤ 1024), grid
//       (min(ceil(n/256), 8·num_SMs), 1, 1) (grid-stride).
//   clip_and_scale(float* coef_out, const float* sumsq, const int* nonfinite /*nullable*/,
//                  int* skip_out, float max_norm /*<= 0: no clipping*/,
//                  float inv_loss_scale, float* norm_out /*nullable*/)
//       WRITES *coef_out, *skip_out (0/1) and, when non-null, *norm_out (the
//       unscaled global norm, for logging).
//       Launch: grid (1, 1, 1), block (1, 1, 1) (extra threads do nothing).
#include "common.cuh"

extern "C" __global__ void sum_squares_f32(float* out, int* nonfinite, const float* x, long long n) {
    float partial = 0.0f;
    bool bad = false;
    for (long long i = qf::global_thread_index(); i < n; i += qf::global_thread_count()) {
        const float v = x[i];
        bad |= !isfinite(v);
        partial += v * v;
    }
    if (bad && nonfinite) *nonfinite = 1;  // benign race: every writer stores 1
    const float total = qf::block_sum(partial);
    if (threadIdx.x == 0) atomicAdd(out, total);
}

extern "C" __global__ void clip_and_scale(float* coef_out, const float* sumsq, const int* nonfinite, int* skip_out,
                                          float max_norm, float inv_loss_scale, float* norm_out) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    const float s = *sumsq;
    const float norm = sqrtf(s) * inv_loss_scale;
    const float clip = max_norm > 0.0f ? fminf(max_norm / (norm + 1e-6f), 1.0f) : 1.0f;
    *coef_out = inv_loss_scale * clip;
    *skip_out = ((nonfinite && *nonfinite != 0) || !isfinite(s)) ? 1 : 0;
    if (norm_out) *norm_out = norm;
}
