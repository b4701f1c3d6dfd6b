// fake_cublas.cpp — the few cuBLAS calls the engine makes, on the CPU, for tests only.
//
// Built as its own library with the soname `libcublas.so` (see fake_driver.cpp for how
// cudarc picks it up). GemmEx and its strided-batched form follow cuBLAS's
// column-major definition exactly — C = alpha·op(A)·op(B) + beta·C with op = N or T,
// leading dimensions in elements, beta = 0 never reading C — with f32, f16 or bf16
// operands and fp32 accumulation, so the engine's row-major mapping (operands swapped,
// src/backend/cuda/gemm.rs) is what is tested. Arguments are checked when called; the
// products themselves run on the fake driver's stream worker, in order with the
// kernels (qf_emu_enqueue_host_work), as cuBLAS runs them on the handle's stream.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <library_types.h>

#include <dlfcn.h>

#include <cstdint>
#include <cstdio>

namespace {

enum Status { kSuccess = 0, kInvalidValue = 7, kNotSupported = 15 };

float load(const void* p, cudaDataType t, long long i) {
    switch (t) {
        case CUDA_R_32F: return static_cast<const float*>(p)[i];
        case CUDA_R_16F: return __half2float(static_cast<const __half*>(p)[i]);
        case CUDA_R_16BF: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
        default: return 0.0f;
    }
}

void store(void* p, cudaDataType t, long long i, float v) {
    switch (t) {
        case CUDA_R_32F: static_cast<float*>(p)[i] = v; break;
        case CUDA_R_16F: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
        case CUDA_R_16BF: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
        default: break;
    }
}

bool supported(cudaDataType t) { return t == CUDA_R_32F || t == CUDA_R_16F || t == CUDA_R_16BF; }

// Element (r, c) of op(X) for a column-major X with leading dimension ld.
long long at(int trans, long long r, long long c, long long ld) { return trans ? c + r * ld : r + c * ld; }

int gemm_one(int ta, int tb, int m, int n, int k, float alpha, const void* A, cudaDataType at_, int lda,
             const void* B, cudaDataType bt, int ldb, float beta, void* C, cudaDataType ct, int ldc,
             bool check_only = false) {
    if (ta > 1 || tb > 1) return kNotSupported;  // conjugate transposes: complex only
    if (!supported(at_) || !supported(bt) || !supported(ct)) return kNotSupported;
    if (m < 0 || n < 0 || k < 0 || ldc < m || lda < (ta ? k : m) || ldb < (tb ? n : k)) return kInvalidValue;
    if (check_only) return kSuccess;
    for (long long j = 0; j < n; ++j)
        for (long long i = 0; i < m; ++i) {
            float acc = 0.0f;
            for (long long p = 0; p < k; ++p) acc += load(A, at_, at(ta, i, p, lda)) * load(B, bt, at(tb, p, j, ldb));
            const long long ci = i + j * ldc;
            store(C, ct, ci, beta == 0.0f ? alpha * acc : alpha * acc + beta * load(C, ct, ci));
        }
    return kSuccess;
}

int g_handle;

// One (strided-batched) GEMM call, queued on the fake driver's stream.
struct Gemm {
    int ta, tb, m, n, k;
    float alpha, beta;
    const void* A;
    cudaDataType at;
    int lda;
    long long sa;
    const void* B;
    cudaDataType bt;
    int ldb;
    long long sb;
    void* C;
    cudaDataType ct;
    int ldc;
    long long sc;
    int count;
};

int run_gemm(void* ctx) {
    const Gemm& g = *static_cast<const Gemm*>(ctx);
    const int ea = g.at == CUDA_R_32F ? 4 : 2, eb = g.bt == CUDA_R_32F ? 4 : 2, ec = g.ct == CUDA_R_32F ? 4 : 2;
    for (int b = 0; b < g.count; ++b) {
        const int s = gemm_one(g.ta, g.tb, g.m, g.n, g.k, g.alpha, static_cast<const char*>(g.A) + b * g.sa * ea, g.at,
                               g.lda, static_cast<const char*>(g.B) + b * g.sb * eb, g.bt, g.ldb, g.beta,
                               static_cast<char*>(g.C) + b * g.sc * ec, g.ct, g.ldc);
        if (s != kSuccess) return s;
    }
    return kSuccess;
}

using EnqueueFn = int (*)(const char*, int (*)(void*), void*, void (*)(void*), const uint64_t*, size_t);

// The fake driver's stream (the kernel library, loaded first under the soname
// libcuda.so), or nullptr: then the products run at once.
EnqueueFn enqueue_fn() {
    static EnqueueFn f = [] {
        void* h = dlopen("libcuda.so", RTLD_NOW | RTLD_NOLOAD);
        return h ? reinterpret_cast<EnqueueFn>(dlsym(h, "qf_emu_enqueue_host_work")) : nullptr;
    }();
    return f;
}

int submit(const Gemm& g, const char* what) {
    const int s = gemm_one(g.ta, g.tb, g.m, g.n, g.k, g.alpha, g.A, g.at, g.lda, g.B, g.bt, g.ldb, g.beta, g.C, g.ct,
                           g.ldc, true);
    if (s != kSuccess) return s;
    EnqueueFn enqueue = enqueue_fn();
    Gemm* copy = new Gemm(g);
    if (!enqueue) {
        const int r = run_gemm(copy);
        delete copy;
        return r;
    }
    const uint64_t ptrs[3] = {reinterpret_cast<uint64_t>(g.A), reinterpret_cast<uint64_t>(g.B),
                              reinterpret_cast<uint64_t>(g.C)};
    return enqueue(what, run_gemm, copy, [](void* p) { delete static_cast<Gemm*>(p); }, ptrs, 3) == 0 ? kSuccess
                                                                                                  : kInvalidValue;
}

}  // namespace

extern "C" {

int cublasCreate_v2(void** handle) {
    *handle = &g_handle;
    return kSuccess;
}
int cublasDestroy_v2(void*) { return kSuccess; }
int cublasSetStream_v2(void*, void*) { return kSuccess; }
int cublasSetWorkspace_v2(void*, void*, size_t) { return kSuccess; }
int cublasSetMathMode(void*, int) { return kSuccess; }
int cublasSetPointerMode_v2(void*, int mode) { return mode == 0 ? kSuccess : kNotSupported; }
int cublasGetPointerMode_v2(void*, int* mode) {
    *mode = 0;  // host pointers for alpha and beta
    return kSuccess;
}

int cublasGemmEx(void*, int ta, int tb, int m, int n, int k, const void* alpha, const void* A, cudaDataType at_,
                 int lda, const void* B, cudaDataType bt, int ldb, const void* beta, void* C, cudaDataType ct, int ldc,
                 int /*compute*/, int /*algo*/) {
    const Gemm g{ta, tb, m, n, k, *static_cast<const float*>(alpha), *static_cast<const float*>(beta), A, at_, lda, 0,
                 B, bt, ldb, 0, C, ct, ldc, 0, 1};
    return submit(g, "cublasGemmEx");
}

int cublasGemmStridedBatchedEx(void*, int ta, int tb, int m, int n, int k, const void* alpha, const void* A,
                               cudaDataType at_, int lda, long long sa, const void* B, cudaDataType bt, int ldb,
                               long long sb, const void* beta, void* C, cudaDataType ct, int ldc, long long sc,
                               int count, int /*compute*/, int /*algo*/) {
    const Gemm g{ta, tb, m, n, k, *static_cast<const float*>(alpha), *static_cast<const float*>(beta), A, at_, lda, sa,
                 B, bt, ldb, sb, C, ct, ldc, sc, count};
    return submit(g, "cublasGemmStridedBatchedEx");
}

}  // extern "C"
