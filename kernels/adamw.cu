// adamw.cu — one fused AdamW step over a flat fp32 parameter buffer, with the
// loss-scale / clipping factor and the overflow skip read from device memory
// (so a whole step needs no host synchronisation).
//
// Maths — PyTorch torch.optim.AdamW (Loshchilov & Hutter 2019, decoupled
// weight decay; PyTorch's single-tensor operation order), exactly the CPU
// reference src/backend/cpu/adamw.rs::adamw_update, all fp32:
//   g     = grad · gs                       gs = *grad_scale (1/loss_scale × clip coef)
//   p     = p · decay                       decay = 1 − lr·wd                      (1)
//   m     = m + (1−β1)·(g − m)              torch: exp_avg.lerp_(g, 1 − β1)        (2)
//   v     = v·β2 + ((1−β2)·g)·g             torch: exp_avg_sq.mul_(β2).addcmul_    (3)
//   denom = sqrt(v) / sqrt(1 − β2^t) + eps                                         (4)
//   p     = p + ((−lr/(1 − β1^t))·m) / denom                                      (5)
// The per-step scalars are formed by the host in f64 and rounded to fp32 once
// (AdamConsts in backend/cpu/adamw.rs) and passed in as they are.  Every operation
// here is an explicitly rounded __fmul_rn/__fadd_rn/__fsub_rn/__fdiv_rn/
// __fsqrt_rn (no FMA contraction), in the CPU's evaluation order, so the
// result is BIT-IDENTICAL to adamw_update on the same inputs.
// When *skip != 0 (inf/nan found in the gradients) NOTHING is written: p, m,
// v and the half copy keep their values (the loss scaler backs off).
// The fp16/bf16 compute copy of p (p_half) is refreshed from the new fp32 p
// (round to nearest even) when requested, saving a separate cast pass.
//
// ABI:
//   adamw_step(float* p, const float* g, float* m, float* v,
//              void* p_half /*nullable*/, int half_kind /*0 none, 1 f16, 2 bf16*/,
//              long long n,
//              float decay            /* 1 − lr·wd               */,
//              float one_minus_beta1  /* 1 − β1                  */,
//              float beta2,
//              float one_minus_beta2  /* 1 − β2                  */,
//              float bias_c2_sqrt     /* sqrt(1 − β2^t)          */,
//              float eps,
//              float neg_step_size    /* −lr / (1 − β1^t)        */,
//              const float* grad_scale /*device scalar, nullable = 1*/,
//              const int* skip         /*device flag, nullable = 0*/)
//   The float arguments are AdamConsts' fields in declaration order.
//   p, m, v [n] updated in place; g [n] read; p_half [n] WRITES.
// Launch: block (256, 1, 1) (any size), grid (min(ceil(n/256), 32·num_SMs),
// 1, 1) (grid-stride).
#include "common.cuh"

namespace {

struct AdamScalars {
    float decay, one_minus_beta1, beta2, one_minus_beta2, bias_c2_sqrt, eps, neg_step_size, grad_scale;
};

// One element, in adamw_update's order, every operation rounded on its own.
__device__ __forceinline__ void adamw_element(float& p, float grad, float& m, float& v, const AdamScalars& c) {
    const float g = __fmul_rn(grad, c.grad_scale);
    p = __fmul_rn(p, c.decay);                                                          // (1)
    m = __fadd_rn(m, __fmul_rn(c.one_minus_beta1, __fsub_rn(g, m)));                   // (2)
    v = __fadd_rn(__fmul_rn(v, c.beta2), __fmul_rn(__fmul_rn(c.one_minus_beta2, g), g));  // (3)
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), c.bias_c2_sqrt), c.eps);     // (4)
    p = __fadd_rn(p, __fdiv_rn(__fmul_rn(c.neg_step_size, m), denom));                 // (5)
}

__device__ void adamw(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                      float* __restrict__ v, void* p_half, int half_kind, long long n, AdamScalars c) {
    for (long long i = qf::global_thread_index(); i < n; i += qf::global_thread_count()) {
        float pi = p[i], mi = m[i], vi = v[i];
        adamw_element(pi, g[i], mi, vi, c);
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
        if (half_kind == 1)
            static_cast<__half*>(p_half)[i] = __float2half_rn(pi);
        else if (half_kind == 2)
            static_cast<__nv_bfloat16*>(p_half)[i] = __float2bfloat16_rn(pi);
    }
}

}  // namespace

extern "C" __global__ void adamw_step(float* p, const float* g, float* m, float* v, void* p_half, int half_kind,
                                      long long n, float decay, float one_minus_beta1, float beta2,
                                      float one_minus_beta2, float bias_c2_sqrt, float eps, float neg_step_size,
                                      const float* grad_scale, const int* skip) {
    if (skip && *skip != 0) return;
    const AdamScalars c{decay,        one_minus_beta1, beta2,        one_minus_beta2,
                        bias_c2_sqrt, eps,             neg_step_size, grad_scale ? *grad_scale : 1.0f};
    adamw(p, g, m, v, p_half, p_half ? half_kind : 0, n, c);
}
