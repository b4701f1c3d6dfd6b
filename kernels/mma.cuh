// mma.cuh — warp-level tensor-core primitives for sm_80 and newer, as small device
// functions: mma.sync m16n8k16 and m16n8k8 (fp16 or bf16 operands, fp32 accumulators),
// ldmatrix (.x1/.x2/.x4, with or without .trans), cp.async of 16 bytes with its group
// commit and wait, and a half2/bf162 fused multiply-add.
//
// Under nvcc each is one inline-PTX instruction. Under the CPU emulation of
// tests/kernel_emu (QF_HOST_EMULATION) each runs as the PTX ISA defines the instruction:
// the lanes of the warp deposit their registers (qf_emu::warp_exchange), and every lane
// computes its own destination registers from the registers of the whole warp through the
// documented fragment layouts below. A kernel that puts a wrong element into a fragment
// register therefore computes a wrong product in CI, as it would on a GPU.
//
// Fragment layouts — PTX ISA, "Warp Level Matrix Multiply-Accumulate Instructions":
// section "Matrix Fragments for mma.m16n8k16 with floating point type" (figures
// mma-16816-A-f16, -B-f16, -C), "Matrix Fragments for mma.m16n8k8" (f16/bf16 tables) and
// "Warp-level matrix load instruction: ldmatrix" (figure mma-ldmatrix-fragments).
// With g = groupID = %laneid >> 2 and t = threadID_in_group = %laneid % 4:
//   m16n8k16 A (16×16, .row), elements a0..a7 in four .b32 registers, two elements per
//       register, the lower-numbered element in the low 16 bits:
//           row(a_i) = g + 8·((i >> 1) & 1)        col(a_i) = 2t + (i & 1) + 8·(i >> 2)
//   m16n8k16 B (16×8, .col), b0..b3 in two registers:
//           row(b_i) = 2t + (i & 1) + 8·(i >> 1)   col(b_i) = g
//   C and D (16×8, .f32), c0..c3 in four f32 registers (m16n8k16 and m16n8k8 alike):
//           row(c_i) = g + 8·(i >> 1)              col(c_i) = 2t + (i & 1)
//   m16n8k8 A (16×8): a0..a3 in two registers: row(a_i) = g + 8·(i >> 1), col(a_i) = 2t + (i & 1)
//   m16n8k8 B (8×8):  b0, b1 in one register:  row(b_i) = 2t + i,         col(b_i) = g
//   ldmatrix.m8n8.x{1,2,4}.b16: lanes 8m..8m+7 hold the addresses of rows 0..7 of matrix m
//       (16-byte aligned, in shared memory); lane l receives in register m the elements
//       (row l/4, cols 2(l%4) and 2(l%4)+1) of matrix m, low 16 bits first; with .trans the
//       matrix is read column-major: (rows 2(l%4) and 2(l%4)+1, col l/4).
//
// The emulated mma sums the 16 (or 8) exact products of a row and column in double and
// adds the accumulator with one rounding to fp32. fp16·fp16 and bf16·bf16 products are
// exact in fp32 on the tensor core too; its internal summation order and rounding are
// not documented, so the emulation may differ from a GPU in the last bit of fp32.
#pragma once

#include "common.cuh"

namespace qf {
namespace tc {

// The two-element vector type of a 16-bit compute type.
template <typename T> struct Pair2;
template <> struct Pair2<__half> { using type = __half2; };
template <> struct Pair2<__nv_bfloat16> { using type = __nv_bfloat162; };

// Raw 16 bits of a half / bfloat16 value, and back.
__device__ __forceinline__ uint16_t bits_of(__half x) { return __half_as_ushort(x); }
__device__ __forceinline__ uint16_t bits_of(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }
template <typename T> __device__ __forceinline__ T from_bits(uint16_t b);
template <> __device__ __forceinline__ __half from_bits<__half>(uint16_t b) { return __ushort_as_half(b); }
template <> __device__ __forceinline__ __nv_bfloat16 from_bits<__nv_bfloat16>(uint16_t b) {
    return __ushort_as_bfloat16(b);
}

// One .b32 fragment register from two elements: `lo` in bits 0..15, `hi` in 16..31.
template <typename T> __device__ __forceinline__ uint32_t pack2(T lo, T hi) {
    return (uint32_t)bits_of(lo) | ((uint32_t)bits_of(hi) << 16);
}

// Two fp32 values rounded to T (nearest even) and packed as above.
template <typename T> __device__ __forceinline__ uint32_t pack2_rn(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2_rn<__half>(float lo, float hi) {
    return pack2(__float2half_rn(lo), __float2half_rn(hi));
}
template <> __device__ __forceinline__ uint32_t pack2_rn<__nv_bfloat16>(float lo, float hi) {
    return pack2(__float2bfloat16_rn(lo), __float2bfloat16_rn(hi));
}

// Element `half_index` (0: low, 1: high) of a fragment register, as fp32 (exact).
template <typename T> __device__ __forceinline__ float unpack(uint32_t r, int half_index) {
    return qf::to_f32(from_bits<T>((uint16_t)(half_index ? r >> 16 : r & 0xffffu)));
}

#ifdef QF_HOST_EMULATION
namespace emu {

// Where element `i` of lane `lane` sits in the operand matrices: the documented formulas
// of the header, the one definition the emulated instructions use.
struct Coord {
    int row, col;
};
__device__ __forceinline__ Coord a16_coord(int lane, int i) {
    return Coord{(lane >> 2) + 8 * ((i >> 1) & 1), 2 * (lane & 3) + (i & 1) + 8 * (i >> 2)};
}
__device__ __forceinline__ Coord b16_coord(int lane, int i) {
    return Coord{2 * (lane & 3) + (i & 1) + 8 * (i >> 1), lane >> 2};
}
__device__ __forceinline__ Coord a8_coord(int lane, int i) {
    return Coord{(lane >> 2) + 8 * (i >> 1), 2 * (lane & 3) + (i & 1)};
}
__device__ __forceinline__ Coord b8_coord(int lane, int i) { return Coord{2 * (lane & 3) + i, lane >> 2}; }
__device__ __forceinline__ Coord c_coord(int lane, int i) {
    return Coord{(lane >> 2) + 8 * (i >> 1), 2 * (lane & 3) + (i & 1)};
}

// The registers one lane contributes to an mma: A, B and its accumulators C.
template <int KA, int KB> struct MmaRegs {
    uint32_t a[KA];
    uint32_t b[KB];
    float c[4];
};

// D = A·B + C for every lane of the warp, with A (16×K) and B (K×8) assembled element by
// element from the whole warp's registers, and each lane's C and D at the coordinates of
// the accumulator layout. The first lane to resume computes the warp's 32×4 results once;
// each lane takes its own four.
template <typename T, int K>
__device__ __forceinline__ void mma(float d[4], const uint32_t* a, const uint32_t* b) {
    constexpr int KA = K / 4, KB = K / 8;  // registers per lane: 4 and 2 (k16), 2 and 1 (k8)
    MmaRegs<KA, KB> mine;
    for (int r = 0; r < KA; ++r) mine.a[r] = a[r];
    for (int r = 0; r < KB; ++r) mine.b[r] = b[r];
    for (int i = 0; i < 4; ++i) mine.c[i] = d[i];
    bool first = false;
    const unsigned char* all = qf_emu::warp_exchange(&mine, sizeof mine, &first);
    float* results = reinterpret_cast<float*>(qf_emu::warp_scratch());  // lane l's D at 4·l ... (stride below)
    constexpr int kStride = qf_emu::kExchangeBytes / sizeof(float);
    if (first) {
        auto regs_of = [&](int lane) -> const MmaRegs<KA, KB>& {
            return *reinterpret_cast<const MmaRegs<KA, KB>*>(all + (size_t)lane * qf_emu::kExchangeBytes);
        };
        float A[16][K], B[K][8], C[16][8];
        for (int lane = 0; lane < 32; ++lane) {
            for (int i = 0; i < 2 * KA; ++i) {
                const Coord c = K == 16 ? a16_coord(lane, i) : a8_coord(lane, i);
                A[c.row][c.col] = unpack<T>(regs_of(lane).a[i >> 1], i & 1);
            }
            for (int i = 0; i < 2 * KB; ++i) {
                const Coord c = K == 16 ? b16_coord(lane, i) : b8_coord(lane, i);
                B[c.row][c.col] = unpack<T>(regs_of(lane).b[i >> 1], i & 1);
            }
            for (int i = 0; i < 4; ++i) {
                const Coord c = c_coord(lane, i);
                C[c.row][c.col] = regs_of(lane).c[i];
            }
        }
        for (int lane = 0; lane < 32; ++lane)
            for (int i = 0; i < 4; ++i) {
                const Coord c = c_coord(lane, i);
                double sum = 0.0;
                for (int k = 0; k < K; ++k) sum += (double)A[c.row][k] * (double)B[k][c.col];
                results[lane * kStride + i] = (float)(sum + (double)C[c.row][c.col]);
            }
    }
    const int me = qf_emu::lane_id();
    for (int i = 0; i < 4; ++i) d[i] = results[me * kStride + i];
}

// ldmatrix.m8n8.xN{.trans}.b16: `row` is this lane's row address (used by lanes 0..8N-1).
template <int N, bool kTrans> __device__ __forceinline__ void ldmatrix(uint32_t* r, const void* row) {
    const uintptr_t mine = reinterpret_cast<uintptr_t>(row);
    const unsigned char* all = qf_emu::warp_exchange(&mine, sizeof mine);
    auto addr_of = [&](int lane) {
        return *reinterpret_cast<const uintptr_t*>(all + (size_t)lane * qf_emu::kExchangeBytes);
    };
    const uintptr_t smem = reinterpret_cast<uintptr_t>(qf_emu::dynamic_smem());
    const uintptr_t smem_end = smem + qf_emu::dynamic_smem_bytes();
    for (int lane = 0; lane < 8 * N; ++lane) {
        const uintptr_t a = addr_of(lane);
        if ((a & 15) != 0 || a < smem || a + 16 > smem_end) {
            qf_emu::report_error("ldmatrix: a row address is not 16-byte aligned inside the dynamic shared memory");
            for (int m = 0; m < N; ++m) r[m] = 0;
            return;
        }
    }
    const int l = qf_emu::lane_id();
    for (int m = 0; m < N; ++m) {
        uint16_t e[2];
        for (int j = 0; j < 2; ++j) {
            // (row, col) of the element within matrix m, as stored (row-major rows of 8).
            const int stored_row = kTrans ? 2 * (l & 3) + j : l >> 2;
            const int stored_col = kTrans ? l >> 2 : 2 * (l & 3) + j;
            std::memcpy(&e[j], reinterpret_cast<const void*>(addr_of(8 * m + stored_row) + 2 * stored_col), 2);
        }
        r[m] = (uint32_t)e[0] | ((uint32_t)e[1] << 16);
    }
}

}  // namespace emu
#endif  // QF_HOST_EMULATION

// d += A·B, m16n8k16, fp32 accumulators (row.col). a: 4 registers, b: 2 registers.
template <typename T> __device__ __forceinline__ void mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2]);
// d += A·B, m16n8k8. a: 2 registers, b: 1 register.
template <typename T> __device__ __forceinline__ void mma_1688(float d[4], const uint32_t a[2], uint32_t b);

#ifdef QF_HOST_EMULATION
template <typename T> __device__ __forceinline__ void mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    emu::mma<T, 16>(d, a, b);
}
template <typename T> __device__ __forceinline__ void mma_1688(float d[4], const uint32_t a[2], uint32_t b) {
    emu::mma<T, 8>(d, a, &b);
}
#else
// (bf16 mma needs sm_80; the project's targets are sm_80 and newer.)
#define QF_MMA_16816(ty)                                                                                      \
    template <> __device__ __forceinline__ void mma_16816<ty##_t>(float d[4], const uint32_t a[4],            \
                                                                  const uint32_t b[2]) {                     \
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." #ty "." #ty                                     \
                     ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"                         \
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                        \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));                    \
    }                                                                                                         \
    template <> __device__ __forceinline__ void mma_1688<ty##_t>(float d[4], const uint32_t a[2], uint32_t b) { \
        asm volatile("mma.sync.aligned.m16n8k8.row.col.f32." #ty "." #ty                                      \
                     ".f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"                                  \
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                        \
                     : "r"(a[0]), "r"(a[1]), "r"(b));                                                        \
    }
using f16_t = __half;
using bf16_t = __nv_bfloat16;
QF_MMA_16816(f16)
QF_MMA_16816(bf16)
#undef QF_MMA_16816
#endif

// ldmatrix.sync.aligned.m8n8.xN{.trans}.shared.b16 into r[0..N): `row` is the address of
// this lane's row (lanes 8m..8m+7 address matrix m), 16-byte aligned, in shared memory.
template <int N> __device__ __forceinline__ void ldmatrix(uint32_t* r, const void* row);
template <int N> __device__ __forceinline__ void ldmatrix_trans(uint32_t* r, const void* row);

#ifdef QF_HOST_EMULATION
template <int N> __device__ __forceinline__ void ldmatrix(uint32_t* r, const void* row) {
    emu::ldmatrix<N, false>(r, row);
}
template <int N> __device__ __forceinline__ void ldmatrix_trans(uint32_t* r, const void* row) {
    emu::ldmatrix<N, true>(r, row);
}
#else
__device__ __forceinline__ uint32_t smem_address(const void* p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}
template <> __device__ __forceinline__ void ldmatrix<1>(uint32_t* r, const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(smem_address(row)));
}
template <> __device__ __forceinline__ void ldmatrix<2>(uint32_t* r, const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_address(row)));
}
template <> __device__ __forceinline__ void ldmatrix<4>(uint32_t* r, const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_address(row)));
}
template <> __device__ __forceinline__ void ldmatrix_trans<1>(uint32_t* r, const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0])
                 : "r"(smem_address(row)));
}
template <> __device__ __forceinline__ void ldmatrix_trans<2>(uint32_t* r, const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_address(row)));
}
template <> __device__ __forceinline__ void ldmatrix_trans<4>(uint32_t* r, const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_address(row)));
}
#endif

// cp.async.cg.shared.global of 16 bytes (both addresses 16-byte aligned); the copy is
// visible to this thread after cp_async_wait covers its group, to the block after that
// and a __syncthreads().
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* global_src) {
#ifdef QF_HOST_EMULATION
    qf_emu::async_copy(smem_dst, global_src, 16);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_address(smem_dst)), "l"(global_src));
#endif
}

// cp.async.commit_group: close the group of the copies issued since the last commit.
__device__ __forceinline__ void cp_async_commit() {
#ifdef QF_HOST_EMULATION
    qf_emu::async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// cp.async.wait_group N: wait until at most the N newest committed groups are pending.
template <int N> __device__ __forceinline__ void cp_async_wait() {
#ifdef QF_HOST_EMULATION
    qf_emu::async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// a·b + c on each of two lanes of 16-bit values, rounded once (HFMA2).
#ifdef QF_HOST_EMULATION
// The product of two 16-bit values is exact in double, the sum rounds to double and then
// to 16 bits (identical to one rounding unless the operands span more than 53 bits).
__device__ __forceinline__ __half2 fma2(__half2 a, __half2 b, __half2 c) {
    const float2 fa = __half22float2(a), fb = __half22float2(b), fc = __half22float2(c);
    return __halves2half2(__double2half((double)fa.x * fb.x + fc.x), __double2half((double)fa.y * fb.y + fc.y));
}
__device__ __forceinline__ __nv_bfloat162 fma2(__nv_bfloat162 a, __nv_bfloat162 b, __nv_bfloat162 c) {
    const float2 fa = __bfloat1622float2(a), fb = __bfloat1622float2(b), fc = __bfloat1622float2(c);
    return __halves2bfloat162(__double2bfloat16((double)fa.x * fb.x + fc.x),
                              __double2bfloat16((double)fa.y * fb.y + fc.y));
}
#else
__device__ __forceinline__ __half2 fma2(__half2 a, __half2 b, __half2 c) { return __hfma2(a, b, c); }
__device__ __forceinline__ __nv_bfloat162 fma2(__nv_bfloat162 a, __nv_bfloat162 b, __nv_bfloat162 c) {
    return __hfma2(a, b, c);
}
#endif

}  // namespace tc
}  // namespace qf
