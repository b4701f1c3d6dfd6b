// rotary.cuh — the rotary embedding's per-element maths, shared by rotary.cu (the
// separate rotary kernels) and flash_attention.cu (rotary applied as q and k tiles are
// loaded), so that both rotate bit for bit alike. Equations and precision notes: the
// header of rotary.cu.
#pragma once

namespace qf {

// (1) of rotary.cu: inv_freq_i = fl32(1 / fl32(10000^fl32(2i / d))), the power evaluated
// in double and rounded (the correctly rounded fp32 power, as the CPU twin gets it).
__device__ __forceinline__ float rotary_inv_freq(int i, int head_dim) {
    const float e = (float)(2 * i) / (float)head_dim;
    return 1.0f / (float)pow(10000.0, (double)e);
}

// (3): the pair (x1, x2) = (x[i], x[i + d/2]) rotated by θ (c = cos θ, s = sin θ), times scale.
__device__ __forceinline__ void rotate_pair(float x1, float x2, float c, float s, float scale, float& y1, float& y2) {
    y1 = (x1 * c - x2 * s) * scale;
    y2 = (x2 * c + x1 * s) * scale;
}

// (4): the transposed rotation (by −θ), times scale: the gradient of (3) with respect to
// (x1, x2) given the gradient (g1, g2) of (y1, y2).
__device__ __forceinline__ void rotate_pair_inverse(float g1, float g2, float c, float s, float scale, float& d1,
                                                    float& d2) {
    d1 = (g1 * c + g2 * s) * scale;
    d2 = (g2 * c - g1 * s) * scale;
}

}  // namespace qf
