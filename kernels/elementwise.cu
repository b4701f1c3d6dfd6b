// elementwise.cu — small elementwise ops on flat buffers of n elements.
//
// Maths (all in fp32, rounded once to T on store):
//   add                      out = a + b                         WRITES
//   accumulate               dst += src                          ACCUMULATES
//   scale                    out = s·x                           WRITES (out may alias x)
//   scale_by_device_scalar   x  *= *s   (s: one fp32 in device memory, so a
//                            scale computed on the GPU — loss-scale / grad
//                            upstream — needs no host round trip)    IN PLACE
//   tanh_forward             y = tanh(x)     (full-precision tanhf)  WRITES
//   tanh_backward            dx += dy·(1 − y²)   (y = forward OUTPUT) ACCUMULATES
//   fill                     x = v (rounded to T)                    WRITES
// Outputs may alias inputs element-for-element (out == a, dst == src is not
// useful but harmless) — never partially overlapping buffers.
//
// ABI (T = float/__half/__nv_bfloat16, suffix _f32/_f16/_bf16; n is int64):
//   add_T(T* out, const T* a, const T* b, long long n)
//   accumulate_T(T* dst, const T* src, long long n)
//   scale_T(T* out, const T* x, float s, long long n)
//   scale_by_device_scalar_T(T* x, const float* s, long long n)
//   tanh_forward_T(T* y, const T* x, long long n)
//   tanh_backward_T(T* dx, const T* dy, const T* y, long long n)
//   fill_T(T* x, float v, long long n)
//
// Launch (all): block (256, 1, 1) (any size), grid (min(ceil(n / (256·N)),
// 32·num_SMs), 1, 1) where N = 16/sizeof(T) elements per vector access
// (grid-stride loops: any grid is correct).  16-byte vector accesses are used
// when every pointer is 16-byte aligned, scalar otherwise (see common.cuh).
#include "common.cuh"

namespace {

struct AddOp {
    __device__ float operator()(float a, float b) const { return a + b; }
};
struct ScaleOp {
    float s;
    __device__ float operator()(float x) const { return x * s; }
};
struct TanhOp {
    __device__ float operator()(float x) const { return tanhf(x); }
};
struct TanhBackwardOp {  // (dx, dy, y) -> dx + dy·(1 − y²)
    __device__ float operator()(float dx, float dy, float y) const { return dx + dy * (1.0f - y * y); }
};

template <typename T> __device__ void fill(T* x, float v, long long n) {
    constexpr int N = qf::vec_width<T, T>();
    const T tv = qf::from_f32<T>(v);
    long long done = 0;
    if (qf::is_aligned16(x)) {
        qf::Vec<T, N> pv;
#pragma unroll
        for (int k = 0; k < N; ++k) pv.v[k] = tv;
        const long long n_vec = n / N;
        for (long long p = qf::global_thread_index(); p < n_vec; p += qf::global_thread_count())
            reinterpret_cast<qf::Vec<T, N>*>(x)[p] = pv;
        done = n_vec * N;
    }
    for (long long i = done + qf::global_thread_index(); i < n; i += qf::global_thread_count()) x[i] = tv;
}

}  // namespace

#define QF_ELEMENTWISE_KERNELS(T, SUF)                                                                   \
    extern "C" __global__ void add_##SUF(T* out, const T* a, const T* b, long long n) {                  \
        qf::map_binary(out, a, b, n, AddOp{});                                                           \
    }                                                                                                    \
    extern "C" __global__ void accumulate_##SUF(T* dst, const T* src, long long n) {                     \
        qf::map_binary(dst, dst, src, n, AddOp{});                                                       \
    }                                                                                                    \
    extern "C" __global__ void scale_##SUF(T* out, const T* x, float s, long long n) {                   \
        qf::map_unary(out, x, n, ScaleOp{s});                                                            \
    }                                                                                                    \
    extern "C" __global__ void scale_by_device_scalar_##SUF(T* x, const float* s, long long n) {         \
        qf::map_unary(x, x, n, ScaleOp{*s});                                                             \
    }                                                                                                    \
    extern "C" __global__ void tanh_forward_##SUF(T* y, const T* x, long long n) {                       \
        qf::map_unary(y, x, n, TanhOp{});                                                                \
    }                                                                                                    \
    extern "C" __global__ void tanh_backward_##SUF(T* dx, const T* dy, const T* y, long long n) {        \
        qf::map_ternary(dx, dx, dy, y, n, TanhBackwardOp{});                                             \
    }                                                                                                    \
    extern "C" __global__ void fill_##SUF(T* x, float v, long long n) { fill<T>(x, v, n); }

QF_FOR_EACH_DTYPE(QF_ELEMENTWISE_KERNELS)
