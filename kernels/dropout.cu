// dropout.cu — inverted dropout with a counter-based RNG, so the mask needs no
// storage (backward regenerates it) and the CPU twin reproduces it bit for
// bit (src/backend/cpu/philox.rs).
//
// RNG: Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers:
// as easy as 1, 2, 3", SC 2011), identical to Random123's philox4x32_10 and
// cuRAND's Philox4_32_10 block function.
//   constants  M0 = 0xD2511F53, M1 = 0xCD9E8D57   (multipliers)
//              W0 = 0x9E3779B9, W1 = 0xBB67AE85   (Weyl key increments)
//   one round, counter c = (c0, c1, c2, c3), key k = (k0, k1), all uint32:
//     (hi0, lo0) = 64-bit product M0·c0 split into high / low 32 bits
//     (hi1, lo1) = 64-bit product M1·c2
//     c' = (hi1 ^ c1 ^ k0,  lo1,  hi0 ^ c3 ^ k1,  lo0)
//   philox4x32_10(c, k):  repeat 10 times { c = round(c, k); k0 += W0; k1 += W1 }
//   (key bumped between rounds, wrapping mod 2^32; the bump after the 10th
//   round is unused).  Known answers (Random123 kat_vectors), checked in
//   philox.rs:  ctr 0, key 0 → (6627e8d5, e169c58d, bc57ac4c, 9b00dbd8).
//
// Per element i (0 ≤ i < n) of a dropout call with (p, seed, offset):
//   key     = (seed & 0xffffffff, seed >> 32)
//   counter = ((i>>2) & 0xffffffff, (i>>2) >> 32, offset & 0xffffffff, offset >> 32)
//   r       = philox4x32_10(counter, key)[i & 3]
//   u       = (float)(r >> 8) · 2^-24          (exact; u ∈ [0, 1), 24-bit grid)
//   keep    = u ≥ p
//   y_i     = keep ? x_i · s : 0,   s = 1.0f / (1.0f − p) computed once in fp32
//             (multiply by the fp32 reciprocal, as PyTorch does; p ≥ 1 drops all)
// Backward:  dx_i += keep ? dy_i · s : 0.
// One Philox call serves 4 consecutive elements.  The caller advances
// `offset` per dropout call site (per layer and step), never reusing
// (seed, offset) for independent masks; n may be anything (the last group of
// 4 is partial).
//
// ABI (T = float/__half/__nv_bfloat16, suffix _f32/_f16/_bf16):
//   dropout_forward_T (T* y,  const T* x,  float p, unsigned long long seed,
//                      unsigned long long offset, long long n)   y WRITES (may alias x)
//   dropout_backward_T(T* dx, const T* dy, float p, unsigned long long seed,
//                      unsigned long long offset, long long n)   dx ACCUMULATES (+=)
// Launch: block (256, 1, 1) (any size), grid (min(ceil(n / 1024), 32·num_SMs),
// 1, 1) — each thread handles groups of 4 elements, grid-strided.
#include "common.cuh"

namespace {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

__device__ __forceinline__ uint4 philox_round(uint4 c, uint2 k) {
    const uint32_t lo0 = kPhiloxM0 * c.x;
    const uint32_t hi0 = __umulhi(kPhiloxM0, c.x);
    const uint32_t lo1 = kPhiloxM1 * c.z;
    const uint32_t hi1 = __umulhi(kPhiloxM1, c.z);
    return make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
}

__device__ __forceinline__ uint4 philox4x32_10(uint4 c, uint2 k) {
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        c = philox_round(c, k);
        k.x += kPhiloxW0;
        k.y += kPhiloxW1;
    }
    return c;
}

// The 4 random words for elements 4g .. 4g+3.
__device__ __forceinline__ uint4 dropout_bits(unsigned long long group, unsigned long long seed,
                                              unsigned long long offset) {
    const uint4 counter = make_uint4((uint32_t)group, (uint32_t)(group >> 32), (uint32_t)offset,
                                     (uint32_t)(offset >> 32));
    const uint2 key = make_uint2((uint32_t)seed, (uint32_t)(seed >> 32));
    return philox4x32_10(counter, key);
}

__device__ __forceinline__ bool dropout_keep(uint32_t r, float p) {
    return (float)(r >> 8) * 5.9604644775390625e-8f >= p;  // 2^-24
}

__device__ __forceinline__ uint32_t word(const uint4& r, int k) {
    return k == 0 ? r.x : k == 1 ? r.y : k == 2 ? r.z : r.w;
}

// kBackward: out += keep·in·s; else out = keep·in·s.  out may alias in.
template <bool kBackward, typename T>
__device__ void dropout_apply(T* out, const T* in, float p, unsigned long long seed, unsigned long long offset,
                              long long n) {
    const float s = 1.0f / (1.0f - p);
    const long long n_groups = (n + 3) / 4;
    for (long long g = qf::global_thread_index(); g < n_groups; g += qf::global_thread_count()) {
        const uint4 r = dropout_bits((unsigned long long)g, seed, offset);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const long long i = 4 * g + k;
            if (i >= n) break;
            const float v = dropout_keep(word(r, k), p) ? qf::to_f32(in[i]) * s : 0.0f;
            if (kBackward)
                qf::accumulate_into(out + i, v);
            else
                out[i] = qf::from_f32<T>(v);
        }
    }
}

}  // namespace

#define QF_DROPOUT_KERNELS(T, SUF)                                                                            \
    extern "C" __global__ void dropout_forward_##SUF(T* y, const T* x, float p, unsigned long long seed,      \
                                                     unsigned long long offset, long long n) {                \
        dropout_apply<false, T>(y, x, p, seed, offset, n);                                                    \
    }                                                                                                         \
    extern "C" __global__ void dropout_backward_##SUF(T* dx, const T* dy, float p, unsigned long long seed,   \
                                                      unsigned long long offset, long long n) {               \
        dropout_apply<true, T>(dx, dy, p, seed, offset, n);                                                   \
    }

QF_FOR_EACH_DTYPE(QF_DROPOUT_KERNELS)
