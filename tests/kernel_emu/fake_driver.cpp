// fake_driver.cpp — the CUDA driver API on the CPU, for tests only.
//
// Linked into the kernel-emulator library, whose soname is `libcuda.so`: a test that
// loads the library before cudarc looks for the driver makes cudarc's
// `dlopen("libcuda.so")` return it (glibc matches an already loaded object by its
// soname), so the engine's real CUDA backend — cudarc, the launchers, the memory
// pool calls — runs unchanged on this emulation. One device ("qf-engine CUDA
// emulation"), one context, one stream.
//   * Asynchronous, as a GPU is: launches, async copies and memsets, stream-ordered frees,
//     event records and cuBLAS calls are queued, in order, for a stream worker thread,
//     which runs them when the host synchronises (stream, context or event synchronise,
//     event query, a synchronous copy), or on its own once more than a few are queued,
//     but never past a copy into page-locked memory before a synchronisation. Copies
//     follow CUDA's rules for host memory: from pageable memory staged at once, into
//     pageable memory done before the call returns (cudarc's copies to a Vec rely on
//     it); to and from page-locked memory (cuMemAllocHost) truly asynchronous. So:
//       - a host read of a page-locked cuMemcpyDtoHAsync destination without the
//         stream's synchronisation sees the 0xFF bytes (NaN) the copy poisoned it with;
//       - a buffer freed (cuMemFree, cuMemFreeHost) while a queued launch or copy still
//         uses it, and a
//         launch or copy of a buffer already freed in stream order, are reported; the
//         operation does not run;
//       - a kernel's launch error surfaces at the next synchronisation, as on a GPU.
//     Each report is printed and returned (CUDA_ERROR_LAUNCH_FAILED) by the next
//     synchronising call; qf_emu_driver_take_report() hands it to a test.
//     qf_emu_driver_set_synchronous(1), or QF_EMU_SYNC_DRIVER=1, gives the old
//     synchronous driver back.
//   * Device memory is host memory (64-byte aligned); a device pointer is a host
//     address. A pool tracks bytes in use and their high-water mark (a stream-ordered
//     free counts at once: later stream-ordered allocations may reuse it, as the pool
//     allows on a GPU).
//   * Modules: every kernel of kernels/*.cu is registered in this library under its
//     name, so cuModuleLoadData accepts any image and cuModuleGetFunction looks the
//     name up; cuLaunchKernel reads each parameter by the kind the kernel declares.
//   * Only the calls the engine makes are here; any other symbol is absent, and cudarc
//     panics naming it.
#include "cuda_host_emulation.h"

#include <cuda.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

extern "C" int qf_emu_launch_ex(const char* name, const unsigned* grid3, const unsigned* block3, unsigned smem_bytes,
                                const uint64_t* slots, const char* kinds, const qf_emu::Options* opt, char* err,
                                size_t err_cap);
extern "C" size_t qf_emu_kernel_kinds(const char* name, char* out, size_t cap);

namespace {

// Multiprocessors the emulated device reports: few, so that the launchers' grids
// (capped at k·SMs) stay small and grid-stride loops take several passes.
constexpr int kSmCount = 2;
constexpr size_t kTotalMemory = size_t(16) << 30;

struct Allocation {
    size_t bytes;
    uint64_t id;          // unique over the process (an address may be reused)
    bool pinned = false;  // page-locked host memory (cuMemAllocHost), not device memory
};

// Device memory. `live`: allocations in use; `freed`: allocations freed in stream order
// whose free has not run yet (their memory is still there).
struct Pool {
    std::mutex mu;
    std::map<uintptr_t, Allocation> live;
    std::map<uintptr_t, Allocation> freed;
    uint64_t next_id = 1;
    uint64_t used = 0;
    uint64_t high = 0;
};

// Leaked on purpose: the stream worker may still hold it while the process exits.
Pool& pool() {
    static Pool* p = new Pool;
    return *p;
}

// The allocation holding `p` in `m` (under pool().mu), or m.end().
std::map<uintptr_t, Allocation>::iterator holding(std::map<uintptr_t, Allocation>& m, uintptr_t p) {
    auto it = m.upper_bound(p);
    if (it == m.begin()) return m.end();
    --it;
    return p < it->first + it->second.bytes ? it : m.end();
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
    pl.live[reinterpret_cast<uintptr_t>(p)] = Allocation{rounded, pl.next_id++, false};
    pl.used += rounded;
    if (pl.used > pl.high) pl.high = pl.used;
    *dptr = reinterpret_cast<CUdeviceptr>(p);
    return CUDA_SUCCESS;
}

// ---------------------------------------------------------------------------------
// The stream: a queue of operations and the worker thread that runs them.
// ---------------------------------------------------------------------------------

// A buffer an operation uses: the allocation's base and id when it was queued.
struct Use {
    uintptr_t base;
    uint64_t id;
};

struct Op {
    std::string what;                 // for reports: "launch of `name`", "cuMemcpyDtoHAsync", ...
    std::function<std::string()> run; // "" or an error
    std::vector<Use> uses;
    bool to_host = false;             // a device-to-host copy: runs only once the host synchronises
};

struct Stream {
    std::mutex mu;
    std::condition_variable work, done;
    std::deque<Op> ops;
    Op running;                  // the operation the worker runs (its uses), while it does
    bool busy = false;
    uint64_t queued = 0, completed = 0;
    uint64_t flush_to = 0;       // run everything queued up to here (a synchronisation asked)
    std::string report;          // the first report since the last synchronisation
    std::string last_report;     // the last one handed out (qf_emu_driver_take_report)
    bool synchronous = false;    // the old driver: run every operation at once on the caller
    bool started = false;
};

Stream& stream() {
    static Stream* s = [] {
        auto* st = new Stream;  // leaked, as the pool
        const char* v = std::getenv("QF_EMU_SYNC_DRIVER");
        st->synchronous = v && *v && std::string(v) != "0";
        return st;
    }();
    return *s;
}

// More queued than this and the worker runs ahead of a synchronisation (up to the first
// device-to-host copy), as a GPU does.
constexpr size_t kRunAhead = 64;

void note_report(Stream& st, const std::string& msg) {
    std::fprintf(stderr, "qf-engine CUDA emulation: %s\n", msg.c_str());
    if (st.report.empty()) st.report = msg;
}

// The buffers of `uses` that are no longer the allocations they were when queued: "" or
// a report.
std::string check_uses(const Op& op) {
    Pool& pl = pool();
    std::lock_guard<std::mutex> lock(pl.mu);
    for (const Use& u : op.uses) {
        // Still allocated, or freed in stream order by a free queued after this operation
        // (which has not run yet, since the stream runs in order).
        auto it = pl.live.find(u.base);
        auto ft = pl.freed.find(u.base);
        const bool ok = (it != pl.live.end() && it->second.id == u.id) || (ft != pl.freed.end() && ft->second.id == u.id);
        if (!ok)
            return op.what + " did not run: a buffer it uses (at 0x" + [&] {
                char b[32];
                std::snprintf(b, sizeof b, "%llx", (unsigned long long)u.base);
                return std::string(b);
            }() + ") was freed before it ran";
    }
    return {};
}

void worker_main() {
    Stream& st = stream();
    std::unique_lock<std::mutex> lock(st.mu);
    for (;;) {
        st.work.wait(lock, [&] {
            if (st.ops.empty()) return false;
            if (st.completed < st.flush_to) return true;
            return st.ops.size() > kRunAhead && !st.ops.front().to_host;
        });
        Op op = std::move(st.ops.front());
        st.ops.pop_front();
        st.running.what = op.what;
        st.running.uses = op.uses;
        st.busy = true;
        lock.unlock();
        std::string err = check_uses(op);
        if (err.empty()) err = op.run();
        lock.lock();
        st.busy = false;
        st.running.uses.clear();
        ++st.completed;
        if (!err.empty()) note_report(st, err);
        st.done.notify_all();
    }
}

// Queue `op` (or, for the synchronous driver, run it now).
void enqueue(Op op) {
    Stream& st = stream();
    std::unique_lock<std::mutex> lock(st.mu);
    if (st.synchronous) {
        lock.unlock();
        std::string err = check_uses(op);
        if (err.empty()) err = op.run();
        lock.lock();
        if (!err.empty()) note_report(st, err);
        return;
    }
    if (!st.started) {
        std::thread(worker_main).detach();
        st.started = true;
    }
    st.ops.push_back(std::move(op));
    ++st.queued;
    st.work.notify_all();
}

// Wait until everything queued so far has run; CUDA_ERROR_LAUNCH_FAILED when something
// was reported since the last synchronisation.
CUresult synchronize() {
    Stream& st = stream();
    std::unique_lock<std::mutex> lock(st.mu);
    st.flush_to = std::max(st.flush_to, st.queued);
    const uint64_t target = st.queued;
    st.work.notify_all();
    st.done.wait(lock, [&] { return st.completed >= target; });
    if (st.report.empty()) return CUDA_SUCCESS;
    st.last_report = std::move(st.report);
    st.report.clear();
    return CUDA_ERROR_LAUNCH_FAILED;
}

// The uses of a device pointer `p` (0: none): the live allocation holding it. A pointer
// into a buffer already freed in stream order is reported and the operation is refused
// (returns false).
bool use_of(uintptr_t p, const std::string& what, std::vector<Use>& uses) {
    if (p == 0) return true;
    bool freed = false;
    {
        Pool& pl = pool();
        std::lock_guard<std::mutex> lock(pl.mu);
        auto it = holding(pl.live, p);
        if (it != pl.live.end()) {
            uses.push_back(Use{it->first, it->second.id});
            return true;
        }
        freed = holding(pl.freed, p) != pl.freed.end();
    }
    if (freed) {  // (the stream's lock is never taken under the pool's)
        Stream& st = stream();
        std::lock_guard<std::mutex> slock(st.mu);
        note_report(st, what + " uses a buffer that was already freed (cuMemFreeAsync) earlier in stream order");
        return false;
    }
    return true;  // not device memory of this pool (e.g. a host address): not tracked
}

CUresult release(CUdeviceptr dptr) {
    if (!dptr) return CUDA_SUCCESS;
    const auto p = static_cast<uintptr_t>(dptr);
    Stream& st = stream();
    Pool& pl = pool();
    std::lock_guard<std::mutex> slock(st.mu);
    std::lock_guard<std::mutex> lock(pl.mu);
    auto it = pl.live.find(p);
    if (it == pl.live.end()) return CUDA_ERROR_INVALID_VALUE;
    // A synchronous free does not wait for the stream here: a queued operation that
    // still uses the buffer is a use after free on a GPU.
    const uint64_t id = it->second.id;
    const Op* user = nullptr;
    for (const Op& op : st.ops)
        for (const Use& u : op.uses)
            if (u.base == p && u.id == id && !user) user = &op;
    if (st.busy)
        for (const Use& u : st.running.uses)
            if (u.base == p && u.id == id) user = &st.running;
    if (!it->second.pinned) pl.used -= it->second.bytes;
    const bool pinned = it->second.pinned;
    pl.live.erase(it);
    if (user) {
        note_report(st, std::string(pinned ? "cuMemFreeHost" : "cuMemFree") + " of a buffer that " + user->what +
                            ", queued on the stream and not yet run, still uses (synchronise the stream first, "
                            "or free it in stream order with cuMemFreeAsync)");
        return CUDA_SUCCESS;  // the memory stays (leaked): the operation will not run
    }
    std::free(reinterpret_cast<void*>(dptr));
    return CUDA_SUCCESS;
}

// cuMemFreeAsync: the pool may reuse the bytes for later stream-ordered allocations at
// once; the memory itself goes when the free runs.
CUresult release_async(CUdeviceptr dptr) {
    if (!dptr) return CUDA_SUCCESS;
    const auto p = static_cast<uintptr_t>(dptr);
    {
        Pool& pl = pool();
        std::lock_guard<std::mutex> lock(pl.mu);
        auto it = pl.live.find(p);
        if (it == pl.live.end()) return CUDA_ERROR_INVALID_VALUE;
        pl.used -= it->second.bytes;
        pl.freed[p] = it->second;
        pl.live.erase(it);
    }
    Op op;
    op.what = "cuMemFreeAsync";
    op.run = [p] {
        {
            Pool& pl = pool();
            std::lock_guard<std::mutex> lock(pl.mu);
            pl.freed.erase(p);
        }
        std::free(reinterpret_cast<void*>(p));
        return std::string();
    };
    enqueue(std::move(op));
    return CUDA_SUCCESS;
}

template <typename T> CUresult fill_async(CUdeviceptr dst, T value, size_t n, const char* what) {
    Op op;
    op.what = what;
    if (!use_of(static_cast<uintptr_t>(dst), op.what, op.uses)) return CUDA_SUCCESS;
    op.run = [dst, value, n] {
        T* p = reinterpret_cast<T*>(dst);
        for (size_t i = 0; i < n; ++i) p[i] = value;
        return std::string();
    };
    enqueue(std::move(op));
    return CUDA_SUCCESS;
}

bool is_pinned(const void* p) {
    Pool& pl = pool();
    std::lock_guard<std::mutex> lock(pl.mu);
    auto it = holding(pl.live, reinterpret_cast<uintptr_t>(p));
    return it != pl.live.end() && it->second.pinned;
}

CUresult copy_async(void* dst, const void* src, size_t n, bool dst_device, bool src_device, const char* what) {
    Op op;
    op.what = what;
    if (!dst_device && is_pinned(dst) && !use_of(reinterpret_cast<uintptr_t>(dst), op.what, op.uses))
        return CUDA_SUCCESS;
    if (dst_device && !use_of(reinterpret_cast<uintptr_t>(dst), op.what, op.uses)) return CUDA_SUCCESS;
    if (src_device && !use_of(reinterpret_cast<uintptr_t>(src), op.what, op.uses)) return CUDA_SUCCESS;
    if (!src_device && is_pinned(src)) {
        // From page-locked memory: read when the copy runs (the host must not change or
        // free the buffer before then; freeing it is reported).
        if (!use_of(reinterpret_cast<uintptr_t>(src), op.what, op.uses)) return CUDA_SUCCESS;
        op.run = [dst, src, n] {
            std::memcpy(dst, src, n);
            return std::string();
        };
    } else if (!src_device) {
        // From pageable host memory: staged at once, so the caller may reuse its buffer.
        auto staged = std::make_shared<std::vector<unsigned char>>(static_cast<const unsigned char*>(src),
                                                                   static_cast<const unsigned char*>(src) + n);
        op.run = [dst, staged] {
            std::memcpy(dst, staged->data(), staged->size());
            return std::string();
        };
    } else {
        op.run = [dst, src, n] {
            std::memmove(dst, src, n);
            return std::string();
        };
    }
    if (!dst_device) {
        if (!is_pinned(dst)) {
            // To pageable host memory the copy returns only once it is done (as CUDA
            // documents), and reports an earlier failure of the stream.
            enqueue(std::move(op));
            return synchronize();
        }
        // To page-locked memory the copy is truly asynchronous: the destination is
        // undefined until it has run, here 0xFF bytes (NaN) until the host synchronises,
        // so a read without the synchronisation shows.
        op.to_host = true;
        if (!stream().synchronous) std::memset(dst, 0xFF, n);
    }
    enqueue(std::move(op));
    return CUDA_SUCCESS;
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
CUresult cuDevicePrimaryCtxRelease(CUdevice) { return synchronize(); }
CUresult cuCtxSetCurrent(CUcontext) { return CUDA_SUCCESS; }
CUresult cuCtxGetCurrent(CUcontext* ctx) {
    *ctx = reinterpret_cast<CUcontext>(&g_ctx_dummy);
    return CUDA_SUCCESS;
}
CUresult cuCtxSynchronize() { return synchronize(); }
CUresult cuStreamSynchronize(CUstream) { return synchronize(); }
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
// Page-locked host memory: host memory the driver knows (copies to and from it are
// asynchronous).
CUresult cuMemAllocHost(void** p, size_t bytes) {
    const size_t rounded = ((bytes ? bytes : 1) + 63) / 64 * 64;
    *p = std::aligned_alloc(64, rounded);
    if (!*p) return CUDA_ERROR_OUT_OF_MEMORY;
    Pool& pl = pool();
    std::lock_guard<std::mutex> lock(pl.mu);
    pl.live[reinterpret_cast<uintptr_t>(*p)] = Allocation{rounded, pl.next_id++, true};
    return CUDA_SUCCESS;
}
CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned) { return cuMemAllocHost(p, bytes); }
CUresult cuMemFreeHost(void* p) { return release(reinterpret_cast<CUdeviceptr>(p)); }
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream) { return release_async(p); }
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
// Synchronous copies and memsets: queued behind the stream's work, then waited for.
CUresult cuMemcpyHtoDAsync(CUdeviceptr dst, const void* src, size_t n, CUstream) {
    return copy_async(reinterpret_cast<void*>(dst), src, n, true, false, "cuMemcpyHtoDAsync");
}
CUresult cuMemcpyHtoD(CUdeviceptr dst, const void* src, size_t n) {
    const CUresult r = copy_async(reinterpret_cast<void*>(dst), src, n, true, false, "cuMemcpyHtoD");
    return r != CUDA_SUCCESS ? r : synchronize();
}
CUresult cuMemcpyDtoHAsync(void* dst, CUdeviceptr src, size_t n, CUstream) {
    return copy_async(dst, reinterpret_cast<const void*>(src), n, false, true, "cuMemcpyDtoHAsync");
}
CUresult cuMemcpyDtoH(void* dst, CUdeviceptr src, size_t n) {
    const CUresult r = copy_async(dst, reinterpret_cast<const void*>(src), n, false, true, "cuMemcpyDtoH");
    return r != CUDA_SUCCESS ? r : synchronize();
}
CUresult cuMemcpyDtoDAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream) {
    return copy_async(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n, true, true,
                      "cuMemcpyDtoDAsync");
}
CUresult cuMemcpyDtoD(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    const CUresult r = cuMemcpyDtoDAsync(dst, src, n, nullptr);
    return r != CUDA_SUCCESS ? r : synchronize();
}
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream) {
    return fill_async<unsigned char>(dst, v, n, "cuMemsetD8Async");
}
CUresult cuMemsetD8(CUdeviceptr dst, unsigned char v, size_t n) {
    const CUresult r = cuMemsetD8Async(dst, v, n, nullptr);
    return r != CUDA_SUCCESS ? r : synchronize();
}
CUresult cuMemsetD16Async(CUdeviceptr dst, unsigned short v, size_t n, CUstream) {
    return fill_async<unsigned short>(dst, v, n, "cuMemsetD16Async");
}
CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned v, size_t n, CUstream) {
    return fill_async<unsigned>(dst, v, n, "cuMemsetD32Async");
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
    const unsigned long long threads = 1ull * bx * by * bz;
    if (threads == 0 || threads > 1024 || gx == 0 || gy == 0 || gz == 0) return CUDA_ERROR_INVALID_VALUE;
    const Function& fn = *reinterpret_cast<const Function*>(f);
    std::vector<uint64_t> slots(fn.kinds.size());
    Op op;
    op.what = "the launch of `" + fn.name + "`";
    for (size_t i = 0; i < fn.kinds.size(); ++i) {
        const char k = fn.kinds[i];
        const bool wide = k == 'P' || k == 'L' || k == 'U';
        uint64_t v = 0;
        std::memcpy(&v, params[i], wide ? 8 : 4);
        if (k == 'I') v = static_cast<uint64_t>(static_cast<int64_t>(static_cast<int32_t>(v)));
        slots[i] = v;
        if (k == 'P' && !use_of(static_cast<uintptr_t>(v), op.what, op.uses)) return CUDA_SUCCESS;
    }
    // The schedule is drawn on the launching thread, so that a thread's launches get the
    // same seeds whatever other threads do.
    const qf_emu::Options opt = qf_emu::default_options();
    op.run = [name = fn.name, kinds = fn.kinds, slots = std::move(slots), opt, gx, gy, gz, bx, by, bz, smem] {
        const unsigned grid[3] = {gx, gy, gz};
        const unsigned block[3] = {bx, by, bz};
        char err[1024];
        if (qf_emu_launch_ex(name.c_str(), grid, block, smem, slots.data(), kinds.c_str(), &opt, err, sizeof err) != 0)
            return "emulated cuLaunchKernel(" + name + "): " + err;
        return std::string();
    };
    enqueue(std::move(op));
    return CUDA_SUCCESS;
}

// events (timing in the benchmark: the time the stream reached the record)
CUresult cuEventCreate(CUevent* e, unsigned) {
    *e = reinterpret_cast<CUevent>(new double(0.0));
    return CUDA_SUCCESS;
}
CUresult cuEventDestroy(CUevent e) {
    synchronize();  // a queued record may still write it
    delete reinterpret_cast<double*>(e);
    return CUDA_SUCCESS;
}
CUresult cuEventRecord(CUevent e, CUstream) {
    Op op;
    op.what = "cuEventRecord";
    op.run = [e] {
        *reinterpret_cast<double*>(e) =
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
        return std::string();
    };
    enqueue(std::move(op));
    return CUDA_SUCCESS;
}
CUresult cuEventSynchronize(CUevent) { return synchronize(); }
CUresult cuEventQuery(CUevent) { return synchronize(); }
CUresult cuStreamWaitEvent(CUstream, CUevent, unsigned) { return CUDA_SUCCESS; }  // one stream: in order already

// Hooks for the fake cuBLAS and the tests.

// Queue host work `fn(ctx)` on the stream (the fake cuBLAS's GEMMs), using the device
// buffers at `ptrs`; `fn` returns 0 or a status it reports.
int qf_emu_enqueue_host_work(const char* what, int (*fn)(void*), void* ctx, void (*drop)(void*), const uint64_t* ptrs,
                             size_t n_ptrs) {
    Op op;
    op.what = what;
    for (size_t i = 0; i < n_ptrs; ++i)
        if (!use_of(static_cast<uintptr_t>(ptrs[i]), op.what, op.uses)) {
            drop(ctx);
            return 1;
        }
    auto owned = std::shared_ptr<void>(ctx, drop);
    op.run = [fn, owned, w = std::string(what)] {
        const int s = fn(owned.get());
        return s == 0 ? std::string() : w + " failed with status " + std::to_string(s);
    };
    enqueue(std::move(op));
    return 0;
}

// 1: run every operation at once on the calling thread (the old synchronous driver);
// 0: the stream worker (the default). Synchronises first.
void qf_emu_driver_set_synchronous(int on) {
    synchronize();
    std::lock_guard<std::mutex> lock(stream().mu);
    stream().synchronous = on != 0;
}

// The report a synchronisation last returned CUDA_ERROR_LAUNCH_FAILED for (cleared), or
// the one pending; NUL-terminated into `out`. Returns its length.
size_t qf_emu_driver_take_report(char* out, size_t cap) {
    Stream& st = stream();
    std::lock_guard<std::mutex> lock(st.mu);
    std::string r = !st.last_report.empty() ? std::move(st.last_report) : std::move(st.report);
    st.last_report.clear();
    st.report.clear();
    if (cap > 0) {
        const size_t n = std::min(cap - 1, r.size());
        std::memcpy(out, r.data(), n);
        out[n] = '\0';
    }
    return r.size();
}

}  // extern "C"
