// fake_driver.cpp — the CUDA driver API on the CPU, for tests only.
//
// Linked into the kernel-emulator library, whose soname is `libcuda.so`: a test that
// loads the library before cudarc looks for the driver makes cudarc's
// `dlopen("libcuda.so")` return it (glibc matches an already loaded object by its
// soname), so the engine's real CUDA backend — cudarc, the launchers, the memory
// pool calls — runs unchanged on this emulation. One device ("qf-engine CUDA
// emulation"), one context, the null stream; everything is synchronous.
//   * Device memory is host memory (64-byte aligned); a device pointer is a host
//     address. A pool tracks bytes in use and their high-water mark.
//   * Modules: every kernel of kernels/*.cu is registered in this library under its
//     name, so cuModuleLoadData accepts any image and cuModuleGetFunction looks the
//     name up; cuLaunchKernel reads each parameter by the kind the kernel declares.
//   * Only the calls the engine makes are here; any other symbol is absent, and cudarc
//     panics naming it.
#include "cuda_host_emulation.h"

#include <cuda.h>

#include <cstdio>
#include <cstdlib>
#include <vector>
#include <map>
#include <mutex>
#include <string>

extern "C" int qf_emu_launch(const char* name, const unsigned* grid3, const unsigned* block3, unsigned smem_bytes,
                             const uint64_t* slots, const char* kinds, char* err, size_t err_cap);
extern "C" size_t qf_emu_kernel_kinds(const char* name, char* out, size_t cap);

namespace {

// Multiprocessors the emulated device reports: few, so that the launchers' grids
// (capped at k·SMs) stay small and grid-stride loops take several passes.
constexpr int kSmCount = 2;
constexpr size_t kTotalMemory = size_t(16) << 30;

struct Pool {
    std::mutex mu;
    std::map<uintptr_t, size_t> live;
    uint64_t used = 0;
    uint64_t high = 0;
};

Pool& pool() {
    static Pool p;
    return p;
}

struct Function {
    std::string name;
    std::string kinds;
};

int g_ctx_dummy, g_pool_dummy, g_module_dummy;

CUresult alloc(CUdeviceptr* dptr, size_t bytes) {
    const size_t rounded = ((bytes ? bytes : 1) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
    Pool& pl = pool();
    std::lock_guard<std::mutex> lock(pl.mu);
    pl.live[reinterpret_cast<uintptr_t>(p)] = rounded;
    pl.used += rounded;
    if (pl.used > pl.high) pl.high = pl.used;
    *dptr = reinterpret_cast<CUdeviceptr>(p);
    return CUDA_SUCCESS;
}

CUresult release(CUdeviceptr dptr) {
    if (!dptr) return CUDA_SUCCESS;
    Pool& pl = pool();
    {
        std::lock_guard<std::mutex> lock(pl.mu);
        auto it = pl.live.find(static_cast<uintptr_t>(dptr));
        if (it == pl.live.end()) return CUDA_ERROR_INVALID_VALUE;
        pl.used -= it->second;
        pl.live.erase(it);
    }
    std::free(reinterpret_cast<void*>(dptr));
    return CUDA_SUCCESS;
}

template <typename T> void fill(CUdeviceptr dst, T value, size_t n) {
    T* p = reinterpret_cast<T*>(dst);
    for (size_t i = 0; i < n; ++i) p[i] = value;
}

}  // namespace

extern "C" {

CUresult cuInit(unsigned) { return CUDA_SUCCESS; }
CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetCount(int* n) {
    *n = 1;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *d = 0;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    std::snprintf(name, len, "qf-engine CUDA emulation (CPU)");
    return CUDA_SUCCESS;
}
CUresult cuDeviceTotalMem(size_t* bytes, CUdevice) {
    *bytes = kTotalMemory;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetAttribute(int* v, CUdevice_attribute attr, CUdevice) {
    switch (attr) {
        case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *v = kSmCount; break;
        case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *v = 9; break;
        case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *v = 0; break;
        case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: *v = 227 * 1024; break;
        case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: *v = 48 * 1024; break;
        case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *v = 1024; break;
        case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *v = 32; break;
        case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: *v = 1; break;
        default: *v = 0; break;
    }
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice) {
    *ctx = reinterpret_cast<CUcontext>(&g_ctx_dummy);
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease(CUdevice) { return CUDA_SUCCESS; }
CUresult cuCtxSetCurrent(CUcontext) { return CUDA_SUCCESS; }
CUresult cuCtxGetCurrent(CUcontext* ctx) {
    *ctx = reinterpret_cast<CUcontext>(&g_ctx_dummy);
    return CUDA_SUCCESS;
}
CUresult cuCtxSynchronize() { return CUDA_SUCCESS; }
CUresult cuStreamSynchronize(CUstream) { return CUDA_SUCCESS; }
CUresult cuMemGetInfo(size_t* free_bytes, size_t* total) {
    std::lock_guard<std::mutex> lock(pool().mu);
    *total = kTotalMemory;
    *free_bytes = kTotalMemory - std::min<size_t>(kTotalMemory, pool().used);
    return CUDA_SUCCESS;
}

CUresult cuGetErrorName(CUresult e, const char** s) {
    static std::map<int, std::string> names;
    static std::mutex mu;
    std::lock_guard<std::mutex> lock(mu);
    auto& n = names[e];
    if (n.empty()) n = "CUDA_EMULATION_ERROR_" + std::to_string(e);
    *s = n.c_str();
    return CUDA_SUCCESS;
}
CUresult cuGetErrorString(CUresult e, const char** s) { return cuGetErrorName(e, s); }

// memory
CUresult cuMemAlloc(CUdeviceptr* p, size_t bytes) { return alloc(p, bytes); }
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, CUstream) { return alloc(p, bytes); }
CUresult cuMemAllocFromPoolAsync(CUdeviceptr* p, size_t bytes, CUmemoryPool, CUstream) { return alloc(p, bytes); }
CUresult cuMemFree(CUdeviceptr p) { return release(p); }
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream) { return release(p); }
CUresult cuDeviceGetDefaultMemPool(CUmemoryPool* p, CUdevice) {
    *p = reinterpret_cast<CUmemoryPool>(&g_pool_dummy);
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetMemPool(CUmemoryPool* p, CUdevice d) { return cuDeviceGetDefaultMemPool(p, d); }
CUresult cuMemPoolSetAttribute(CUmemoryPool, CUmemPool_attribute attr, void* value) {
    if (attr == CU_MEMPOOL_ATTR_USED_MEM_HIGH || attr == CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH) {
        std::lock_guard<std::mutex> lock(pool().mu);
        pool().high = pool().used;  // the only value a reset may set is 0: "reset to current"
        (void)value;
    }
    return CUDA_SUCCESS;
}
CUresult cuMemPoolGetAttribute(CUmemoryPool, CUmemPool_attribute attr, void* value) {
    std::lock_guard<std::mutex> lock(pool().mu);
    uint64_t v = 0;
    switch (attr) {
        case CU_MEMPOOL_ATTR_USED_MEM_CURRENT:
        case CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT: v = pool().used; break;
        case CU_MEMPOOL_ATTR_USED_MEM_HIGH:
        case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH: v = pool().high; break;
        case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: v = UINT64_MAX; break;
        default: return CUDA_ERROR_NOT_SUPPORTED;
    }
    std::memcpy(value, &v, 8);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyHtoD(CUdeviceptr dst, const void* src, size_t n) {
    std::memcpy(reinterpret_cast<void*>(dst), src, n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyHtoDAsync(CUdeviceptr dst, const void* src, size_t n, CUstream) { return cuMemcpyHtoD(dst, src, n); }
CUresult cuMemcpyDtoH(void* dst, CUdeviceptr src, size_t n) {
    std::memcpy(dst, reinterpret_cast<const void*>(src), n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoHAsync(void* dst, CUdeviceptr src, size_t n, CUstream) { return cuMemcpyDtoH(dst, src, n); }
CUresult cuMemcpyDtoD(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoDAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream) { return cuMemcpyDtoD(dst, src, n); }
CUresult cuMemsetD8(CUdeviceptr dst, unsigned char v, size_t n) {
    fill<unsigned char>(dst, v, n);
    return CUDA_SUCCESS;
}
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream) { return cuMemsetD8(dst, v, n); }
CUresult cuMemsetD16Async(CUdeviceptr dst, unsigned short v, size_t n, CUstream) {
    fill<unsigned short>(dst, v, n);
    return CUDA_SUCCESS;
}
CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned v, size_t n, CUstream) {
    fill<unsigned>(dst, v, n);
    return CUDA_SUCCESS;
}

// modules and launches
CUresult cuModuleLoadData(CUmodule* m, const void*) {
    *m = reinterpret_cast<CUmodule>(&g_module_dummy);
    return CUDA_SUCCESS;
}
CUresult cuModuleUnload(CUmodule) { return CUDA_SUCCESS; }
CUresult cuModuleGetFunction(CUfunction* f, CUmodule, const char* name) {
    char kinds[256];
    if (qf_emu_kernel_kinds(name, kinds, sizeof kinds) == 0) return CUDA_ERROR_NOT_FOUND;
    // Functions live as long as the process (the engine caches them).
    *f = reinterpret_cast<CUfunction>(new Function{name, kinds});
    return CUDA_SUCCESS;
}
CUresult cuFuncSetAttribute(CUfunction, CUfunction_attribute, int) { return CUDA_SUCCESS; }
CUresult cuFuncGetAttribute(int* v, CUfunction_attribute, CUfunction) {
    *v = 0;
    return CUDA_SUCCESS;
}
CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, CUstream, void** params, void** extra) {
    if (extra) return CUDA_ERROR_NOT_SUPPORTED;
    const Function& fn = *reinterpret_cast<const Function*>(f);
    std::vector<uint64_t> slots(fn.kinds.size());
    for (size_t i = 0; i < fn.kinds.size(); ++i) {
        const char k = fn.kinds[i];
        const bool wide = k == 'P' || k == 'L' || k == 'U';
        uint64_t v = 0;
        std::memcpy(&v, params[i], wide ? 8 : 4);
        if (k == 'I') v = static_cast<uint64_t>(static_cast<int64_t>(static_cast<int32_t>(v)));
        slots[i] = v;
    }
    const unsigned grid[3] = {gx, gy, gz};
    const unsigned block[3] = {bx, by, bz};
    char err[512];
    if (qf_emu_launch(fn.name.c_str(), grid, block, smem, slots.data(), fn.kinds.c_str(), err, sizeof err) != 0) {
        std::fprintf(stderr, "emulated cuLaunchKernel(%s): %s\n", fn.name.c_str(), err);
        return CUDA_ERROR_LAUNCH_FAILED;
    }
    return CUDA_SUCCESS;
}

// events (timing in the benchmark; everything is synchronous here)
CUresult cuEventCreate(CUevent* e, unsigned) {
    *e = reinterpret_cast<CUevent>(new double(0.0));
    return CUDA_SUCCESS;
}
CUresult cuEventDestroy(CUevent e) {
    delete reinterpret_cast<double*>(e);
    return CUDA_SUCCESS;
}
CUresult cuEventRecord(CUevent, CUstream) { return CUDA_SUCCESS; }
CUresult cuEventSynchronize(CUevent) { return CUDA_SUCCESS; }
CUresult cuEventQuery(CUevent) { return CUDA_SUCCESS; }
CUresult cuStreamWaitEvent(CUstream, CUevent, unsigned) { return CUDA_SUCCESS; }

}  // extern "C"
