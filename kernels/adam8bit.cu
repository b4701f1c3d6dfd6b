// adam8bit.cu — one fused block-wise 8-bit AdamW step (Dettmers et al. 2021,
// "8-bit Optimizers via Block-wise Quantization", arXiv:2110.02861, as
// bitsandbytes' kOptimizerStatic8bit2StateBlockwise does it), exactly the CPU
// reference src/backend/cpu/adam8bit.rs::update_block.
//
// One CUDA block of 256 threads handles one quantisation block of 256
// elements at a time (thread t owns element t of the block) and walks the
// quantisation blocks with a block-stride loop.  Per quantisation block b,
// per element i, in this order:
//   m  = smap[m_code[i]] · m_absmax[b]                 dequantise (signed map)
//   v  = umap[v_code[i]] · v_absmax[b]                 dequantise (unsigned map)
//   if g[i] is finite:  (p, m, v) = adamw_update(p, g, m, v)     see adamw.cu:
//        g = grad·gs; p = p·decay; m = m + (1−β1)(g − m);
//        v = v·β2 + ((1−β2)·g)·g; denom = sqrt(v)/sqrt(1−β2^t) + eps;
//        p = p + (neg_step_size·m)/denom
//   else:              m = v = 0, p unchanged           (one bad element cannot
//                                                         poison its block's absmax)
//   m_absmax[b] = max_i |m|,  v_absmax[b] = max_i |v|   the NEW absmax (0 for an empty block)
//   m_code[i] = nearest(smap, m / m_absmax[b]), then the sign rule:
//        m < 0 and smap[code] ≥ 0 and code > 0   → code − 1
//        m > 0 and smap[code] < 0 and code < 255 → code + 1
//   v_code[i] = nearest(umap, v / v_absmax[b])
//   (an all-zero block, absmax = 0, gets the maps' zero codes)
//   nearest(map, u): hi = #{entries < u} (binary search over the sorted map in
//   shared memory); hi = 0 → 0, hi = 256 → 255; else lo = hi − 1,
//   mid = (map[lo] + map[hi])·0.5, code = u < mid ? lo : u > mid ? hi :
//   (lo even ? lo : hi)   — ties to the even code, as backend/cpu/quant8.rs::nearest_code.
// Every floating-point operation is an explicitly rounded __fmul_rn/__fadd_rn/
// __fsub_rn/__fdiv_rn/__fsqrt_rn in the CPU's order (no FMA contraction), and
// max is exact, so p, both absmax and both code arrays are BIT-IDENTICAL to the
// CPU reference on the same inputs.  (Documented tolerance: identical up to
// requantisation rounding ties — a tie is decided by the same comparison on
// the same fp32 values on both sides, so none is expected.)
// When *skip != 0 NOTHING is written (the whole step is skipped, as adamw.cu).
// The fp16/bf16 compute copy p_half is refreshed from the new p when given.
// Tensors under 4,096 elements keep fp32 moments and use adamw.cu instead.
//
// ABI:
//   adam8bit_step(float* p, const float* g,
//                 unsigned char* m_code, float* m_absmax,
//                 unsigned char* v_code, float* v_absmax,
//                 const float* maps   /* [512]: signed map (256) then unsigned map (256) */,
//                 void* p_half /*nullable*/, int half_kind /*0 none, 1 f16, 2 bf16*/,
//                 long long n,
//                 float decay, float one_minus_beta1, float beta2, float one_minus_beta2,
//                 float bias_c2_sqrt, float eps, float neg_step_size
//                                      /* AdamConsts' fields in declaration order, as adamw.cu */,
//                 const float* grad_scale /*device scalar, nullable = 1*/,
//                 const int* skip         /*device flag, nullable = 0*/)
//   p, m_code, v_code [n] and m_absmax, v_absmax [ceil(n/256)] updated in
//   place; g [n] read; p_half [n] WRITES.
// Launch: block (256, 1, 1) EXACTLY (one thread per element of a 256-element
// quantisation block; a hard requirement), grid (min(ceil(n/256), 8·num_SMs),
// 1, 1) (block-stride over quantisation blocks), no dynamic shared memory.
#include "common.cuh"

namespace {

constexpr int kBlock = 256;     // elements per quantisation block = threads per CUDA block
constexpr int kMapSize = 256;   // entries of a dynamic map
constexpr int kWarps = kBlock / 32;

struct AdamScalars {
    float decay, one_minus_beta1, beta2, one_minus_beta2, bias_c2_sqrt, eps, neg_step_size, grad_scale;
};

// adamw_update of src/backend/cpu/adamw.rs, every operation rounded on its own.
__device__ __forceinline__ void adamw_element(float& p, float grad, float& m, float& v, const AdamScalars& c) {
    const float g = __fmul_rn(grad, c.grad_scale);
    p = __fmul_rn(p, c.decay);
    m = __fadd_rn(m, __fmul_rn(c.one_minus_beta1, __fsub_rn(g, m)));
    v = __fadd_rn(__fmul_rn(v, c.beta2), __fmul_rn(__fmul_rn(c.one_minus_beta2, g), g));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), c.bias_c2_sqrt), c.eps);
    p = __fadd_rn(p, __fdiv_rn(__fmul_rn(c.neg_step_size, m), denom));
}

// Number of map entries strictly below u (a lower bound over the sorted map);
// NaN compares false everywhere and gives 0, as Rust's partition_point.
__device__ __forceinline__ int count_below(const float* map, float u) {
    int first = 0, len = kMapSize;
    while (len > 0) {
        const int half = len >> 1;
        if (map[first + half] < u) {
            first += half + 1;
            len -= half + 1;
        } else {
            len = half;
        }
    }
    return first;
}

// backend/cpu/quant8.rs::nearest_code.
__device__ __forceinline__ int nearest_code(const float* map, float u) {
    const int hi = count_below(map, u);
    if (hi == 0) return 0;
    if (hi == kMapSize) return kMapSize - 1;
    const int lo = hi - 1;
    const float mid = __fmul_rn(__fadd_rn(map[lo], map[hi]), 0.5f);
    if (u < mid) return lo;
    if (u > mid) return hi;
    return (lo % 2 == 0) ? lo : hi;
}

// backend/cpu/quant8.rs::encode_block (absmax == 0 → the zero code).
__device__ __forceinline__ int encode(const float* map, float x, float absmax, int zero_code) {
    if (absmax == 0.0f) return zero_code;
    return nearest_code(map, __fdiv_rn(x, absmax));
}

// backend/cpu/quant8.rs::encode_block_sign_preserving for one element.
__device__ __forceinline__ int encode_signed(const float* map, float x, float absmax, int zero_code) {
    int code = encode(map, x, absmax, zero_code);
    const float q = map[code];
    if (x < 0.0f && q >= 0.0f && code > 0)
        code -= 1;
    else if (x > 0.0f && q < 0.0f && code < kMapSize - 1)
        code += 1;
    return code;
}

// Maxima of a and b over the block (exact; NaN-ignoring like f32::max).  All
// threads get both results.
__device__ __forceinline__ void block_max2(float& a, float& b, float (*part)[kWarps]) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, offset));
        b = fmaxf(b, __shfl_xor_sync(0xffffffffu, b, offset));
    }
    __syncthreads();  // the previous quantisation block may still read `part`
    if (qf::lane_id() == 0) {
        part[0][qf::warp_id()] = a;
        part[1][qf::warp_id()] = b;
    }
    __syncthreads();
    a = part[0][0];
    b = part[1][0];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) {
        a = fmaxf(a, part[0][w]);
        b = fmaxf(b, part[1][w]);
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kBlock)
    adam8bit_step(float* __restrict__ p, const float* __restrict__ g, unsigned char* __restrict__ m_code,
                  float* __restrict__ m_absmax, unsigned char* __restrict__ v_code, float* __restrict__ v_absmax,
                  const float* __restrict__ maps, void* p_half, int half_kind, long long n, float decay,
                  float one_minus_beta1, float beta2, float one_minus_beta2, float bias_c2_sqrt, float eps,
                  float neg_step_size, const float* grad_scale, const int* skip) {
    if (skip && *skip != 0) return;
    __shared__ float smap[kMapSize];
    __shared__ float umap[kMapSize];
    __shared__ float part[2][kWarps];
    const int t = threadIdx.x;
    smap[t] = maps[t];
    umap[t] = maps[kMapSize + t];
    __syncthreads();
    const int m_zero = nearest_code(smap, 0.0f);
    const int v_zero = nearest_code(umap, 0.0f);
    const AdamScalars c{decay,        one_minus_beta1, beta2,        one_minus_beta2,
                        bias_c2_sqrt, eps,             neg_step_size, grad_scale ? *grad_scale : 1.0f};
    const int kind = p_half ? half_kind : 0;
    const long long n_blocks = (n + kBlock - 1) / kBlock;
    for (long long b = blockIdx.x; b < n_blocks; b += gridDim.x) {
        const long long i = b * kBlock + t;
        const bool valid = i < n;
        float pi = 0.0f, m = 0.0f, v = 0.0f;
        if (valid) {
            const float gi = g[i];
            pi = p[i];
            m = __fmul_rn(smap[m_code[i]], m_absmax[b]);
            v = __fmul_rn(umap[v_code[i]], v_absmax[b]);
            if (isfinite(gi)) {
                adamw_element(pi, gi, m, v, c);
            } else {
                m = 0.0f;
                v = 0.0f;
            }
        }
        // As block_absmax: max(0, |x|, ...), so invalid threads and NaN contribute nothing.
        float am = fmaxf(0.0f, fabsf(m)), av = fmaxf(0.0f, fabsf(v));
        block_max2(am, av, part);
        if (valid) {
            m_code[i] = (unsigned char)encode_signed(smap, m, am, m_zero);
            v_code[i] = (unsigned char)encode(umap, v, av, v_zero);
            p[i] = pi;
            if (kind == 1)
                static_cast<__half*>(p_half)[i] = __float2half_rn(pi);
            else if (kind == 2)
                static_cast<__nv_bfloat16*>(p_half)[i] = __float2bfloat16_rn(pi);
        }
        if (t == 0) {
            m_absmax[b] = am;
            v_absmax[b] = av;
        }
    }
}
