// tensor_core_check.cu — test kernels for the tensor-core primitives of mma.cuh; the
// engine never launches them. tests/emulated_tensor_core.rs runs them on the CPU
// emulation (and the same tests run them on a GPU where there is one), so the fragment
// layouts that kernels/flash_attention.cu relies on are checked against an f64 GEMM,
// and deliberately wrong layouts are shown to fail.
//
// ABI (T = __half / __nv_bfloat16, suffix _f16 / _bf16):
//
//   tc_gemm_check_T(float* c, const T* a, const T* b, int k_dim, int n_dim, int variant)
//       c[16][n_dim] = a[16][k_dim] · b[k_dim][n_dim] (row-major, dense; c WRITES, fp32).
//       k_dim: a multiple of 8 in 8..64 (steps of m16n8k16, then one m16n8k8 when
//       k_dim % 16 == 8); n_dim: a multiple of 8 in 8..64; a and b 16-byte aligned.
//       a and b are staged in shared memory with cp.async. variant:
//         0  fragments loaded with ldmatrix (A .x4, or .x2 for the k8 step; B .x2.trans,
//            or .x1.trans)
//         1  fragments read element by element from shared memory at the documented
//            (row, col) of every register half (mma.cuh header)
//         2  as 1, with A's registers 1 and 2 swapped (rows 8..15 read where columns
//            8..15 belong): a deliberate layout error
//         3  as 0, with B loaded without .trans: a deliberate layout error
//         4  as 0, but lane 31 returns before the first mma (the instruction needs the
//            whole warp: the emulation fails the launch)
//       Launch: block (32, 1, 1), grid (1, 1, 1), dynamic shared memory
//       (16·(k_dim + 8) + k_dim·(n_dim + 8))·2 bytes. Other shapes do nothing.
//
//   tc_fma2_check_T(T* out, const T* a, const T* b, const T* c, int n)
//       out[i] = a[i]·b[i] + c[i] rounded once, two elements per fma2 (n even; out WRITES).
//       Any 1-D launch (grid-stride over the pairs).
#include "common.cuh"
#include "mma.cuh"

namespace {

constexpr int kPad = 8;  // elements of padding per shared-memory row (rows stay 16-byte aligned)

// Copy a rows × cols row-major matrix (cols a multiple of 8) into shared memory rows of
// stride cols + kPad, 16 bytes per cp.async.
template <typename T> __device__ void stage(T* dst, const T* src, int rows, int cols) {
    const int chunks_per_row = cols / 8;
    for (int c = threadIdx.x; c < rows * chunks_per_row; c += blockDim.x) {
        const int r = c / chunks_per_row, k = (c % chunks_per_row) * 8;
        qf::tc::cp_async_16(dst + r * (cols + kPad) + k, src + r * cols + k);
    }
    qf::tc::cp_async_commit();
}

// Element (row, col) of a shared-memory matrix as one 16-bit pattern.
template <typename T> __device__ uint16_t at(const T* s, int stride, int row, int col) {
    return qf::tc::bits_of(s[row * stride + col]);
}

// The A registers of a k16 step read by the documented layout: element i of lane l is
// A[g + 8·((i >> 1) & 1)][2t + (i & 1) + 8·(i >> 2)]; register r holds elements 2r, 2r+1.
template <typename T> __device__ void a16_by_formula(uint32_t a[4], const T* sa, int stride, int k0) {
    const int g = qf::lane_id() >> 2, t = qf::lane_id() & 3;
    for (int r = 0; r < 4; ++r) {
        uint16_t e[2];
        for (int j = 0; j < 2; ++j) {
            const int i = 2 * r + j;
            e[j] = at(sa, stride, g + 8 * ((i >> 1) & 1), k0 + 2 * t + (i & 1) + 8 * (i >> 2));
        }
        a[r] = (uint32_t)e[0] | ((uint32_t)e[1] << 16);
    }
}

// B registers of a k16 step: element i is B[2t + (i & 1) + 8·(i >> 1)][g].
template <typename T> __device__ void b16_by_formula(uint32_t b[2], const T* sb, int stride, int k0, int n0) {
    const int g = qf::lane_id() >> 2, t = qf::lane_id() & 3;
    for (int r = 0; r < 2; ++r) {
        uint16_t e[2];
        for (int j = 0; j < 2; ++j) {
            const int i = 2 * r + j;
            e[j] = at(sb, stride, k0 + 2 * t + (i & 1) + 8 * (i >> 1), n0 + g);
        }
        b[r] = (uint32_t)e[0] | ((uint32_t)e[1] << 16);
    }
}

// m16n8k8: A element i is A[g + 8·(i >> 1)][2t + (i & 1)]; B element i is B[2t + i][g].
template <typename T> __device__ void a8_by_formula(uint32_t a[2], const T* sa, int stride, int k0) {
    const int g = qf::lane_id() >> 2, t = qf::lane_id() & 3;
    for (int r = 0; r < 2; ++r)
        a[r] = (uint32_t)at(sa, stride, g + 8 * r, k0 + 2 * t) | ((uint32_t)at(sa, stride, g + 8 * r, k0 + 2 * t + 1) << 16);
}
template <typename T> __device__ uint32_t b8_by_formula(const T* sb, int stride, int k0, int n0) {
    const int g = qf::lane_id() >> 2, t = qf::lane_id() & 3;
    return (uint32_t)at(sb, stride, k0 + 2 * t, n0 + g) | ((uint32_t)at(sb, stride, k0 + 2 * t + 1, n0 + g) << 16);
}

template <typename T>
__device__ void tc_gemm_check(float* c, const T* a, const T* b, int k_dim, int n_dim, int variant) {
    if (k_dim < 8 || k_dim > 64 || k_dim % 8 != 0 || n_dim < 8 || n_dim > 64 || n_dim % 8 != 0) return;
    if (blockDim.x != 32 || variant < 0 || variant > 4) return;
    QF_DYNAMIC_SHARED(unsigned char, smem);
    T* sa = reinterpret_cast<T*>(smem);
    T* sb = sa + 16 * (k_dim + kPad);
    const int sa_stride = k_dim + kPad, sb_stride = n_dim + kPad;
    stage(sa, a, 16, k_dim);
    stage(sb, b, k_dim, n_dim);
    qf::tc::cp_async_wait<0>();
    __syncwarp();
    if (variant == 4 && qf::lane_id() == 31) return;

    const int lane = qf::lane_id();
    const bool by_formula = variant == 1 || variant == 2;
    for (int n0 = 0; n0 < n_dim; n0 += 8) {
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        int k0 = 0;
        for (; k0 + 16 <= k_dim; k0 += 16) {
            uint32_t af[4], bf[2];
            if (by_formula) {
                a16_by_formula(af, sa, sa_stride, k0);
                b16_by_formula(bf, sb, sb_stride, k0, n0);
                if (variant == 2) {
                    const uint32_t r1 = af[1];
                    af[1] = af[2];
                    af[2] = r1;
                }
            } else {
                // A: matrices (rows 0-7 | 8-15) × (cols k0.. | k0+8..) in register order
                // a0a1, a2a3, a4a5, a6a7 — lane l addresses row l%16 of column block l/16.
                qf::tc::ldmatrix<4>(af, sa + (lane & 15) * sa_stride + k0 + (lane >> 4) * 8);
                // B[k][n] rows k0..k0+15 stored row-major: .trans gives the column pairs.
                const T* brow = sb + (k0 + (lane & 15)) * sb_stride + n0;
                if (variant == 3) {
                    qf::tc::ldmatrix<2>(bf, brow);
                } else {
                    qf::tc::ldmatrix_trans<2>(bf, brow);
                }
            }
            qf::tc::mma_16816<T>(acc, af, bf);
        }
        if (k0 < k_dim) {  // one k8 step
            uint32_t af[2], bf;
            if (by_formula) {
                a8_by_formula(af, sa, sa_stride, k0);
                bf = b8_by_formula(sb, sb_stride, k0, n0);
            } else {
                qf::tc::ldmatrix<2>(af, sa + (lane & 15) * sa_stride + k0);
                const T* brow = sb + (k0 + (lane & 7)) * sb_stride + n0;
                if (variant == 3) {
                    qf::tc::ldmatrix<1>(&bf, brow);
                } else {
                    qf::tc::ldmatrix_trans<1>(&bf, brow);
                }
            }
            qf::tc::mma_1688<T>(acc, af, bf);
        }
        // C element i of lane l: row g + 8·(i >> 1), col 2t + (i & 1).
        const int g = lane >> 2, t = lane & 3;
        for (int i = 0; i < 4; ++i) c[(g + 8 * (i >> 1)) * n_dim + n0 + 2 * t + (i & 1)] = acc[i];
    }
}

template <typename T>
__device__ void tc_fma2_check(T* out, const T* a, const T* b, const T* c, int n) {
    using T2 = typename qf::tc::Pair2<T>::type;
    for (long long p = qf::global_thread_index(); 2 * p + 1 < n; p += qf::global_thread_count()) {
        const T2 r = qf::tc::fma2(reinterpret_cast<const T2*>(a)[p], reinterpret_cast<const T2*>(b)[p],
                                  reinterpret_cast<const T2*>(c)[p]);
        reinterpret_cast<T2*>(out)[p] = r;
    }
}

}  // namespace

#define QF_TC_CHECK_KERNELS(T, SUF)                                                                           \
    extern "C" __global__ void tc_gemm_check_##SUF(float* c, const T* a, const T* b, int k_dim, int n_dim,    \
                                                   int variant) {                                            \
        tc_gemm_check<T>(c, a, b, k_dim, n_dim, variant);                                                    \
    }                                                                                                         \
    extern "C" __global__ void tc_fma2_check_##SUF(T* out, const T* a, const T* b, const T* c, int n) {       \
        tc_fma2_check<T>(out, a, b, c, n);                                                                   \
    }

QF_TC_CHECK_KERNELS(__half, f16)
QF_TC_CHECK_KERNELS(__nv_bfloat16, bf16)
