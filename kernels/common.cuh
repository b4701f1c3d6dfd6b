// common.cuh — helpers shared by every kernel file in kernels/.
//
// Conventions used by all kernels (see each .cu header for the per-kernel ABI):
//   * Compute type T ∈ {float, __half, __nv_bfloat16}; the extern "C" entry
//     points are suffixed _f32, _f16, _bf16.  All arithmetic is done in fp32:
//     values are widened with to_f32() on load and narrowed with from_f32<T>()
//     (round-to-nearest-even) on store.
//   * Layouts are row-major and dense unless a row stride is passed.
//   * int arguments are int32; element counts that can exceed 2^31 are
//     `long long` (Rust i64; the ABI says `long long`, not `long`, so it is 64
//     bit on every platform).  Every offset computed from them is 64-bit.
//   * Backward kernels ACCUMULATE (+=) into input-gradient buffers unless the
//     file header says WRITES.  fp16/bf16 accumulation reads the old value,
//     adds in fp32 and rounds once.
//   * No kernel synchronises with the host; all are safe to launch on any stream.
//   * Grid-stride loops everywhere: any grid size is correct, the documented one
//     is the efficient one.  Block-size requirements (e.g. "multiple of 32") are
//     hard requirements and are stated per kernel.
#pragma once

// build.rs expands the kernel files with a plain C preprocessor and
// QF_SIGNATURES_ONLY defined, to read the `extern "C" __global__` signatures the
// typed Rust launchers are generated from; the CUDA headers are not needed for that.
#ifndef QF_SIGNATURES_ONLY
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#endif

namespace qf {

// ---------------------------------------------------------------------------
// dtype conversion
// ---------------------------------------------------------------------------

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

// dst += v, computed in fp32 and rounded once.
template <typename T> __device__ __forceinline__ void accumulate_into(T* dst, float v) {
    *dst = from_f32<T>(to_f32(*dst) + v);
}

// Store v into *dst, either overwriting (accumulate == 0) or adding (!= 0).
template <typename T> __device__ __forceinline__ void store_or_accumulate(T* dst, float v, int accumulate) {
    *dst = from_f32<T>(accumulate ? to_f32(*dst) + v : v);
}

// ---------------------------------------------------------------------------
// indexing
// ---------------------------------------------------------------------------

__device__ __forceinline__ long long global_thread_index() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ long long global_thread_count() { return (long long)gridDim.x * blockDim.x; }

__device__ __forceinline__ int lane_id() { return threadIdx.x & 31; }
__device__ __forceinline__ int warp_id() { return threadIdx.x >> 5; }
__device__ __forceinline__ int warps_per_block() { return blockDim.x >> 5; }

// ---------------------------------------------------------------------------
// Vectorised elementwise maps.
//
// The vector path is taken only when EVERY pointer is 16-byte aligned (a
// run-time test that is uniform over the grid, so no divergence); it moves
// N = 16 / sizeof(widest element type) elements per access (a 16-byte access
// for the widest operand, 8 bytes for the narrower one when types differ) and
// the last n % N elements go through the scalar tail.  Unaligned pointers
// (e.g. a column slice of a fused buffer) take the scalar path for all n.
// `op` receives fp32 values and returns fp32; results are rounded to the
// output type once.  out may alias an input (each element is read and
// written by the same thread).
// ---------------------------------------------------------------------------

template <typename T, int N> struct alignas(sizeof(T) * N) Vec {
    T v[N];
};

template <typename A, typename B> __host__ __device__ constexpr int vec_width() {
    return 16 / (sizeof(A) > sizeof(B) ? sizeof(A) : sizeof(B));
}

__device__ __forceinline__ bool is_aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// out[i] = op(in[i])
template <typename TOut, typename TIn, typename Op>
__device__ __forceinline__ void map_unary(TOut* out, const TIn* in, long long n, Op op) {
    constexpr int N = vec_width<TOut, TIn>();
    long long done = 0;
    if (is_aligned16(out) && is_aligned16(in)) {
        const long long n_vec = n / N;
        for (long long p = global_thread_index(); p < n_vec; p += global_thread_count()) {
            const Vec<TIn, N> a = reinterpret_cast<const Vec<TIn, N>*>(in)[p];
            Vec<TOut, N> o;
#pragma unroll
            for (int k = 0; k < N; ++k) o.v[k] = from_f32<TOut>(op(to_f32(a.v[k])));
            reinterpret_cast<Vec<TOut, N>*>(out)[p] = o;
        }
        done = n_vec * N;
    }
    for (long long i = done + global_thread_index(); i < n; i += global_thread_count())
        out[i] = from_f32<TOut>(op(to_f32(in[i])));
}

// out[i] = op(a[i], b[i])
template <typename T, typename Op>
__device__ __forceinline__ void map_binary(T* out, const T* a, const T* b, long long n, Op op) {
    constexpr int N = vec_width<T, T>();
    long long done = 0;
    if (is_aligned16(out) && is_aligned16(a) && is_aligned16(b)) {
        const long long n_vec = n / N;
        for (long long p = global_thread_index(); p < n_vec; p += global_thread_count()) {
            const Vec<T, N> va = reinterpret_cast<const Vec<T, N>*>(a)[p];
            const Vec<T, N> vb = reinterpret_cast<const Vec<T, N>*>(b)[p];
            Vec<T, N> o;
#pragma unroll
            for (int k = 0; k < N; ++k) o.v[k] = from_f32<T>(op(to_f32(va.v[k]), to_f32(vb.v[k])));
            reinterpret_cast<Vec<T, N>*>(out)[p] = o;
        }
        done = n_vec * N;
    }
    for (long long i = done + global_thread_index(); i < n; i += global_thread_count())
        out[i] = from_f32<T>(op(to_f32(a[i]), to_f32(b[i])));
}

// out[i] = op(a[i], b[i], c[i])
template <typename T, typename Op>
__device__ __forceinline__ void map_ternary(T* out, const T* a, const T* b, const T* c, long long n, Op op) {
    constexpr int N = vec_width<T, T>();
    long long done = 0;
    if (is_aligned16(out) && is_aligned16(a) && is_aligned16(b) && is_aligned16(c)) {
        const long long n_vec = n / N;
        for (long long p = global_thread_index(); p < n_vec; p += global_thread_count()) {
            const Vec<T, N> va = reinterpret_cast<const Vec<T, N>*>(a)[p];
            const Vec<T, N> vb = reinterpret_cast<const Vec<T, N>*>(b)[p];
            const Vec<T, N> vc = reinterpret_cast<const Vec<T, N>*>(c)[p];
            Vec<T, N> o;
#pragma unroll
            for (int k = 0; k < N; ++k)
                o.v[k] = from_f32<T>(op(to_f32(va.v[k]), to_f32(vb.v[k]), to_f32(vc.v[k])));
            reinterpret_cast<Vec<T, N>*>(out)[p] = o;
        }
        done = n_vec * N;
    }
    for (long long i = done + global_thread_index(); i < n; i += global_thread_count())
        out[i] = from_f32<T>(op(to_f32(a[i]), to_f32(b[i]), to_f32(c[i])));
}

// ---------------------------------------------------------------------------
// reductions (fp32)
// ---------------------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// Sum over a 1-D block; every thread gets the total.  blockDim.x must be a
// multiple of 32 (≤ 1024) and every thread of the block must call it.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[32];
    v = warp_sum(v);
    __syncthreads();  // a previous call may still be reading `partial`
    if (lane_id() == 0) partial[warp_id()] = v;
    __syncthreads();
    v = lane_id() < warps_per_block() ? partial[lane_id()] : 0.0f;
    return warp_sum(v);
}

// Online softmax state: running maximum m and Σ exp(x − m).
// Empty state: m = −inf, s = 0.
struct MaxSum {
    float m;
    float s;
};

__device__ __forceinline__ MaxSum maxsum_empty() { return MaxSum{-INFINITY, 0.0f}; }

// Add one value x to the state.  x = −inf contributes nothing; NaN propagates
// (into s), which is what the loss should report.
__device__ __forceinline__ MaxSum maxsum_push(MaxSum a, float x) {
    if (x == -INFINITY) return a;
    if (x > a.m) {
        a.s = a.s * expf(a.m - x) + 1.0f;  // expf(-inf) = 0 for the empty state
        a.m = x;
    } else {
        a.s += expf(x - a.m);
    }
    return a;
}

// Merge two states; exact for empty states (no inf − inf).
__device__ __forceinline__ MaxSum maxsum_merge(MaxSum a, MaxSum b) {
    const float m = fmaxf(a.m, b.m);
    if (m == -INFINITY) return maxsum_empty();
    return MaxSum{m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

__device__ __forceinline__ MaxSum warp_maxsum(MaxSum v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        MaxSum o;
        o.m = __shfl_xor_sync(0xffffffffu, v.m, offset);
        o.s = __shfl_xor_sync(0xffffffffu, v.s, offset);
        v = maxsum_merge(v, o);
    }
    return v;
}

// Block-wide merge; same requirements as block_sum.
__device__ __forceinline__ MaxSum block_maxsum(MaxSum v) {
    __shared__ float part_m[32];
    __shared__ float part_s[32];
    v = warp_maxsum(v);
    __syncthreads();
    if (lane_id() == 0) {
        part_m[warp_id()] = v.m;
        part_s[warp_id()] = v.s;
    }
    __syncthreads();
    v = lane_id() < warps_per_block() ? MaxSum{part_m[lane_id()], part_s[lane_id()]} : maxsum_empty();
    return warp_maxsum(v);
}

// ---------------------------------------------------------------------------
// Column sums of a [rows, cols] matrix (bias gradients).
//
// Any block shape (bx, by) with bx·by ≤ 1024: thread (x, y) owns column
// tile·bx + x and has summed some rows into `partial`.  This reduces the by
// partials of each column through shared memory and thread y == 0 does ONE
// atomicAdd per column per block into out[col].  Every thread of the block
// must call it (it synchronises).  The efficient shape is (32, 8): a warp
// reads 32 consecutive columns of one row and 8 warps split the rows.
// ---------------------------------------------------------------------------
__device__ __forceinline__ void column_partials_atomic_add(float* out, int col, int cols, float partial) {
    __shared__ float buf[1024];
    if (blockDim.y == 1) {  // nothing to combine inside the block
        if (col < cols) atomicAdd(out + col, partial);
        return;
    }
    const int bx = blockDim.x;
    __syncthreads();  // a previous call may still be reading `buf`
    buf[threadIdx.y * bx + threadIdx.x] = partial;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        float s = 0.0f;
        for (int y = 0; y < (int)blockDim.y; ++y) s += buf[y * bx + threadIdx.x];
        atomicAdd(out + col, s);
    }
}

// Bytes of dynamic shared memory this launch was given (PTX %dynamic_smem_size),
// so a kernel can use a shared-memory fast path only when the host provided it.
// (Under the CPU emulation of tests/kernel_emu the emulator answers.)
__device__ __forceinline__ unsigned dynamic_smem_bytes() {
#ifdef QF_HOST_EMULATION
    return qf_emu::dynamic_smem_bytes();
#else
    unsigned r;
    asm volatile("mov.u32 %0, %%dynamic_smem_size;" : "=r"(r));
    return r;
#endif
}

}  // namespace qf

// Declare `name` as the launch's dynamic shared memory, an array of `type`:
// `extern __shared__ type name[]` on the device, the emulator's per-block buffer
// under the CPU emulation of tests/kernel_emu.
#ifdef QF_HOST_EMULATION
#define QF_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(qf_emu::dynamic_smem())
#else
#define QF_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

// Instantiate a per-dtype macro for every compute type:  X(T, suffix).
#define QF_FOR_EACH_DTYPE(X) \
    X(float, f32)            \
    X(__half, f16)           \
    X(__nv_bfloat16, bf16)
