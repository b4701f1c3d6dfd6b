// cuda_host_emulation.h — run the kernels of kernels/*.cu on the CPU, for tests only.
//
// Force-included (g++ -include) before a kernel file, this header turns CUDA C++ into
// host C++: `__global__`/`__device__` functions become ordinary functions, and the
// launch runtime (cuda_host_emulation.cpp) runs every block of a grid, one block after
// another, each CUDA thread a fiber (its own stack, switched in user space) that runs
// until it waits at a barrier, gives way, or returns. It is built to find what a GPU
// would, so each launch (qf_emu_launch_ex, with qf_emu::Options; every check on by
// default) has:
//   * a schedule: in index order, or a seeded random one (the default, seed from the
//     test or QF_EMU_SEED): blocks in a random order, runnable threads in a shuffled
//     order, and each thread giving way at random points between barriers — one in
//     eight of its reads of threadIdx/blockIdx/blockDim/gridDim (so inside loops and at
//     most shared-memory indexing) and of its atomics. A missing __syncthreads then
//     shows as a mismatch, where the index order (each thread running to its barrier
//     in turn) hides it whenever the writer's index is lower than the reader's.
//   * __syncthreads() a barrier over the block's threads (a thread that returns drops
//     out of it, as an exited thread does on the GPU); a barrier that can never open is
//     reported as a deadlock;
//   * __shfl_xor_sync / __shfl_sync / __shfl_up_sync / __shfl_down_sync (float) and
//     __syncwarp exchanging values through a per-warp slot array between two warp
//     barriers over the lanes of their mask. The mask is honoured: a calling lane
//     outside it, a lane it names that has exited, does not exist or is not at the same
//     call, and a source lane outside it are reported;
//   * warp-collective instructions (the tensor-core primitives of kernels/mma.cuh:
//     mma.sync, ldmatrix) gathering every lane's registers through warp_exchange(): each
//     lane deposits its operands, waits until all 32 lanes of its warp have, and then
//     computes its own result from the whole warp's registers exactly as the PTX ISA
//     defines the instruction. A collective reached by fewer than 32 live lanes (an
//     exited or diverged lane), or an ldmatrix row outside the dynamic shared memory or
//     not 16-byte aligned, fails the launch with a message (report_error);
//   * cp.async copies queued per thread that land when that thread waits for their
//     group (cp.async.wait_group / wait_all), so a read before the wait sees the NaN
//     bytes of fresh dynamic shared memory, not the data;
//   * __shared__ variables are function-local statics (one copy, shared by the threads
//     of the one block that runs at a time; launches are serialised over the process).
//     The kernel objects are built with -fdata-sections and tests/kernel_emu/mod.rs's
//     linker script gathers their statics between __qf_emu_shared_start/_end, which
//     every block start fills with 0xFF bytes (NaN as a float, -1 as an int), so a read
//     before a write of this block shows, as it would on a GPU, instead of finding the
//     previous block's values;
//   * dynamic shared memory (QF_DYNAMIC_SHARED) a per-block buffer filled with 0xFF
//     bytes, and %dynamic_smem_size reporting its size;
//   * atomicAdd() a read-modify-write on host memory (a point where a thread may give
//     way first);
//   * the preconditions kernels state but do not check on the GPU checked on the
//     launch's arguments: scatter_add_rows' rows must be distinct (it adds without
//     atomics; a duplicate is a lost update on a GPU).
// Device pointers are host pointers. Math comes from the host libm (expf, erff, …
// may differ from the device's by an ulp or two; __fadd_rn and friends are exact
// IEEE operations here as there, and the files are compiled with -ffp-contract=off).
// fake_driver.cpp and fake_cublas.cpp put the engine's whole CUDA backend on top of
// this (see tests/kernel_emu/mod.rs); the fake driver is asynchronous (a stream worker
// thread runs launches, copies and GEMMs) and reports a buffer freed while a queued
// operation uses it and hands a page-locked copy destination back poisoned until the
// stream is synchronised.
//
// What this cannot show: timing, occupancy, memory coalescing; blocks running truly at
// once (they interleave only through their order here, and a race between two blocks
// through global memory shows only where the order matters to the result); a thread
// giving way between two shared-memory accesses that have no index read or atomic in
// between; out-of-bounds accesses that stay inside host memory; and anything the real
// nvcc/ptxas would do differently. A GPU run of tests/cuda_*.rs (and compute-sanitizer's
// racecheck) remains the real test; this one makes every kernel run, against a
// reference, under several schedules, on every CI landing.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <utility>

#define QF_HOST_EMULATION 1

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

namespace qf_emu {

struct ThreadState {
    uint3 thread_idx;
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
};

ThreadState& state();
void sync_block();
// __syncwarp(mask): a barrier over the lanes of `mask`.
void sync_warp(unsigned mask);
// A warp shuffle: every lane of `mask` deposits `v`; returns lane `src_lane`'s value. A
// calling lane outside `mask`, a lane of `mask` that has exited, does not exist or is
// elsewhere, and a source lane outside `mask` are reported (report_error).
float shfl(float v, int src_lane, unsigned mask, const char* what);
float shfl_xor(float v, int lane_mask);
// Under a random schedule, give way to another thread of the block at random (one call
// in eight): called where a thread reads its indices (threadIdx, blockIdx, blockDim,
// gridDim, so inside every loop and at most shared-memory indexing) and at atomics.
void maybe_yield();
unsigned char* dynamic_smem();
unsigned dynamic_smem_bytes();

// The calling thread's lane in its warp (PTX %laneid).
int lane_id();
// Largest operand block one lane deposits in a warp_exchange.
constexpr unsigned kExchangeBytes = 64;
// Warp-collective gather: deposit `bytes` (≤ kExchangeBytes) from `mine`, wait for all 32
// lanes of the warp, and return the 32 deposits (lane l's at offset l·kExchangeBytes).
// The block stays valid until the warp's next collective. `*first` (when given) is set
// for exactly one lane of the warp, the first to resume: it may compute the results of
// every lane once into warp_scratch() (32 × kExchangeBytes, valid as long as the block),
// which the other lanes then read.
const unsigned char* warp_exchange(const void* mine, unsigned bytes, bool* first = nullptr);
unsigned char* warp_scratch();
// Fail the running launch with `msg` (the first report wins); the kernel runs on.
void report_error(const char* msg);
// cp.async: queue a copy of `bytes` from `src` to `dst`; close the open group; complete
// every group but the newest `allowed_pending` committed ones.
void async_copy(void* dst, const void* src, unsigned bytes);
void async_commit();
void async_wait(int allowed_pending);

// The checks of one launch (qf_emu_launch_ex). Off, each one gives the emulation's old
// behaviour, so that a test can show that the check catches what the old one did not.
struct Options {
    uint32_t poison_shared;        // fill static __shared__ memory with 0xFF bytes at every block start
    uint32_t check_shfl_mask;      // honour the masks of __shfl_*_sync / __syncwarp
    uint32_t random_schedule;      // blocks in a random order, threads interleaved at random points
    uint32_t check_preconditions;  // per-kernel preconditions (scatter_add_rows: distinct rows)
    uint64_t seed;                 // the schedule's seed (random_schedule)
};
// The options of a launch that names none (the fake driver's): every check on, and a
// random schedule seeded from QF_EMU_SEED (default 1) and the launch's number on the
// calling thread, unless QF_EMU_SCHEDULE=fixed.
Options default_options();

// Registration of an `extern "C"` kernel: its argument kinds and a thunk that calls it
// with the raw 64-bit argument slots of a launch.
//   P pointer, I int, u unsigned, L long long, U unsigned long long, F float.
using Thunk = std::function<void(const uint64_t*)>;
void register_kernel(const char* name, const char* module, std::string kinds, Thunk thunk);

template <typename P> constexpr char kind_of() {
    if constexpr (std::is_pointer_v<P>) return 'P';
    else if constexpr (std::is_same_v<P, int>) return 'I';
    else if constexpr (std::is_same_v<P, unsigned>) return 'u';
    else if constexpr (std::is_same_v<P, long long>) return 'L';
    else if constexpr (std::is_same_v<P, unsigned long long>) return 'U';
    else if constexpr (std::is_same_v<P, float>) return 'F';
    else static_assert(sizeof(P) == 0, "kernel argument type the emulator does not know");
}

template <typename P> P from_slot(uint64_t slot) {
    if constexpr (std::is_pointer_v<P>) return reinterpret_cast<P>(static_cast<uintptr_t>(slot));
    else if constexpr (std::is_same_v<P, float>) {
        const uint32_t bits = static_cast<uint32_t>(slot);
        float f;
        std::memcpy(&f, &bits, 4);
        return f;
    } else return static_cast<P>(slot);
}

template <typename... P, size_t... I>
void call_with_slots(void (*f)(P...), const uint64_t* slots, std::index_sequence<I...>) {
    f(from_slot<P>(slots[I])...);
}

struct Registrar {
    template <typename... P> Registrar(const char* name, const char* module, void (*f)(P...)) {
        register_kernel(name, module, std::string{kind_of<P>()...},
                        [f](const uint64_t* slots) { call_with_slots(f, slots, std::index_sequence_for<P...>{}); });
    }
};

}  // namespace qf_emu

// One line per kernel, appended to its file by tests/kernel_emu/mod.rs, which also
// defines QF_EMU_MODULE (the file's stem: the module name the Rust launchers use).
#define QF_EMU_KERNEL(name) static qf_emu::Registrar qf_emu_registrar_##name(#name, QF_EMU_MODULE, &name);

// --- CUDA built-ins --------------------------------------------------------------
#define threadIdx (qf_emu::state().thread_idx)
#define blockIdx (qf_emu::state().block_idx)
#define blockDim (qf_emu::state().block_dim)
#define gridDim (qf_emu::state().grid_dim)

// CUDA's global-namespace math overloads used by the kernels.
using std::isfinite;
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }

inline void __syncthreads() { qf_emu::sync_block(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { qf_emu::sync_warp(mask); }
inline float __shfl_xor_sync(unsigned mask, float v, int lane_mask) {
    return qf_emu::shfl(v, qf_emu::lane_id() ^ lane_mask, mask, "__shfl_xor_sync");
}
inline float __shfl_sync(unsigned mask, float v, int src_lane) {
    return qf_emu::shfl(v, src_lane & 31, mask, "__shfl_sync");
}
inline float __shfl_down_sync(unsigned mask, float v, unsigned delta) {
    const int src = qf_emu::lane_id() + int(delta);
    return qf_emu::shfl(v, src < 32 ? src : qf_emu::lane_id(), mask, "__shfl_down_sync");
}
inline float __shfl_up_sync(unsigned mask, float v, unsigned delta) {
    const int src = qf_emu::lane_id() - int(delta);
    return qf_emu::shfl(v, src >= 0 ? src : qf_emu::lane_id(), mask, "__shfl_up_sync");
}

inline float atomicAdd(float* p, float v) {
    qf_emu::maybe_yield();
    return std::atomic_ref<float>(*p).fetch_add(v);
}
inline int atomicAdd(int* p, int v) {
    qf_emu::maybe_yield();
    return std::atomic_ref<int>(*p).fetch_add(v);
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    qf_emu::maybe_yield();
    return std::atomic_ref<unsigned long long>(*p).fetch_add(v);
}

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline unsigned __umulhi(unsigned a, unsigned b) {
    return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
