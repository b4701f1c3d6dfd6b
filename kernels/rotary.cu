// rotary.cu — rotary position embedding, GPT-NeoX "rotate half" form (as in
// Hugging Face EsmRotaryEmbedding / fair-esm RotaryEmbedding).
//
// Maths.  d = head_dim (even), h = head, i ∈ [0, d/2), p = positions[t]:
//   e_i        = fl32( (float)(2i) / (float)d )
//   inv_freq_i = fl32( 1.0f / fl32( 10000^e_i ) )                          (1)
//   θ_i        = fl32( (float)p · inv_freq_i )                             (2)
//   x1 = x[t, h·d + i],  x2 = x[t, h·d + i + d/2]
//   y1 = (x1·cosθ − x2·sinθ)·scale,   y2 = (x2·cosθ + x1·sinθ)·scale        (3)
// Backward, with R the rotation of (3):  dx += Rᵀ·dout·scale  (rotation by −θ):
//   dx1 += (g1·cosθ + g2·sinθ)·scale,  dx2 += (g2·cosθ − g1·sinθ)·scale     (4)
//
// Precision, so the CPU twin can reproduce it:
//  * 10000^e in (1) is evaluated as the double-precision pow(10000.0, (double)e)
//    rounded to float — the correctly rounded fp32 power.  The device's fp32 powf
//    is off by up to a few ulp; θ reaches 10^3 rad for positions ≥ 1024, where
//    one ulp of inv_freq moves θ by ~1e-4 rad — larger than the fp32 test
//    tolerance.  The CPU twin (src/backend/cpu/rotary.rs, HF's formula) uses the
//    host's f32 powf: for every ESM-2 head size (16, 24, 32, 64, 128) the two give
//    identical inv_freq; for a few other head sizes (e.g. 150, 228) one value is
//    1 ulp apart (measured in tests/emulated_attention.rs: ≤ 4e-6 relative).
//        e = (2*i) as f32 / d as f32;   theta = p as f32 * inv_freq;
//  * sinθ, cosθ come from full-precision sincosf (argument reduction valid for
//    any |θ|; never __sinf/__cosf).  This file is compiled without
//    --use_fast_math.
// Positions carry the rotary offset (crops keep their true positions; q and k
// windows may differ) — they are plain per-token ints.
//
// ABI (T = float/__half/__nv_bfloat16, suffix _f32/_f16/_bf16):
//
//   rotary_forward_T(T* out, const T* x, const int* positions, int n_tokens,
//                    int n_heads, int head_dim, int x_row_stride,
//                    int out_row_stride, float scale)
//       x: token t's heads start at x + t·x_row_stride (elements) — x may be
//       the q or k column slice of a fused [T, 3·H·d] QKV buffer.
//       out: same for out_row_stride.  out WRITES; out may alias x exactly
//       (same pointer and stride: in-place rotation).
//
//   rotary_backward_T(T* dx, const T* dout, const int* positions, int n_tokens,
//                     int n_heads, int head_dim, int dx_row_stride,
//                     int dout_row_stride, float scale)
//       dx ACCUMULATES (+=) per (4); dx must not overlap dout.
//
// Requirements (checked by the host; the kernel silently does nothing
// otherwise): head_dim even and 2 ≤ head_dim ≤ 512 (= 2·kMaxHalf).
// Launch (both): block (128, 1, 1) (any size ≤ 1024), grid (min(n_tokens,
// 65535), 1, 1): one block per token (grid-strided); the block computes the
// d/2 (sin, cos) pairs of its token once into shared memory (static, 3 KiB)
// and applies them to all heads.
#include "common.cuh"
#include "rotary.cuh"

namespace {

constexpr int kMaxHalf = 256;

struct RotaryTables {
    float inv_freq[kMaxHalf];
    float cos_t[kMaxHalf];
    float sin_t[kMaxHalf];
};

// Fill inv_freq once per block.
__device__ __forceinline__ void init_inv_freq(RotaryTables& tab, int half, int head_dim) {
    for (int i = threadIdx.x; i < half; i += blockDim.x) tab.inv_freq[i] = qf::rotary_inv_freq(i, head_dim);
}

// (2): per-token angle table.  Caller synchronises before and after.
__device__ __forceinline__ void fill_sincos(RotaryTables& tab, int half, int pos) {
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float s, c;
        sincosf((float)pos * tab.inv_freq[i], &s, &c);
        tab.sin_t[i] = s;
        tab.cos_t[i] = c;
    }
}

template <bool kBackward, typename T>
__device__ void rotary_apply(T* out, const T* in, const int* __restrict__ positions, int n_tokens, int n_heads,
                             int head_dim, int in_row_stride, int out_row_stride, float scale) {
    const int half = head_dim / 2;
    if ((head_dim & 1) != 0 || half < 1 || half > kMaxHalf) return;
    __shared__ RotaryTables tab;
    init_inv_freq(tab, half, head_dim);

    for (int t = blockIdx.x; t < n_tokens; t += gridDim.x) {
        __syncthreads();  // inv_freq ready / previous token's tables no longer read
        fill_sincos(tab, half, positions[t]);
        __syncthreads();
        const T* in_row = in + (long long)t * in_row_stride;
        T* out_row = out + (long long)t * out_row_stride;
        for (int k = threadIdx.x; k < n_heads * half; k += blockDim.x) {
            const int h = k / half;
            const int i = k - h * half;
            const int j1 = h * head_dim + i;
            const int j2 = j1 + half;
            const float a1 = qf::to_f32(in_row[j1]);
            const float a2 = qf::to_f32(in_row[j2]);
            const float c = tab.cos_t[i];
            const float s = tab.sin_t[i];
            float y1, y2;
            if (kBackward) {  // (4): rotation by −θ, accumulated
                qf::rotate_pair_inverse(a1, a2, c, s, scale, y1, y2);
                qf::accumulate_into(out_row + j1, y1);
                qf::accumulate_into(out_row + j2, y2);
            } else {  // (3)
                qf::rotate_pair(a1, a2, c, s, scale, y1, y2);
                out_row[j1] = qf::from_f32<T>(y1);
                out_row[j2] = qf::from_f32<T>(y2);
            }
        }
    }
}

}  // namespace

#define QF_ROTARY_KERNELS(T, SUF)                                                                              \
    extern "C" __global__ void rotary_forward_##SUF(T* out, const T* x, const int* positions, int n_tokens,     \
                                                    int n_heads, int head_dim, int x_row_stride,               \
                                                    int out_row_stride, float scale) {                         \
        rotary_apply<false, T>(out, x, positions, n_tokens, n_heads, head_dim, x_row_stride, out_row_stride,  \
                               scale);                                                                         \
    }                                                                                                          \
    extern "C" __global__ void rotary_backward_##SUF(T* dx, const T* dout, const int* positions, int n_tokens,  \
                                                     int n_heads, int head_dim, int dx_row_stride,             \
                                                     int dout_row_stride, float scale) {                       \
        rotary_apply<true, T>(dx, dout, positions, n_tokens, n_heads, head_dim, dout_row_stride,               \
                              dx_row_stride, scale);                                                           \
    }

QF_FOR_EACH_DTYPE(QF_ROTARY_KERNELS)
