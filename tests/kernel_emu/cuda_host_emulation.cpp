// cuda_host_emulation.cpp — the launch runtime of the CPU emulation of the CUDA
// kernels (see cuda_host_emulation.h). Built into a shared library by
// tests/kernel_emu/mod.rs together with every kernels/*.cu file, and called from Rust
// through `qf_emu_launch`.
#include "cuda_host_emulation.h"

#include <pthread.h>
#include <time.h>

#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace qf_emu {
namespace {

struct Warp {
    std::barrier<> bar;
    float slots[32];
    explicit Warp(int lanes) : bar(lanes) {}
};

struct Block {
    std::barrier<> bar;
    std::vector<std::unique_ptr<Warp>> warps;
    std::vector<unsigned char> smem;
    explicit Block(int threads) : bar(threads) {}
};

struct Kernel {
    std::string module;
    std::string kinds;
    Thunk thunk;
};

std::map<std::string, Kernel>& registry() {
    static std::map<std::string, Kernel> r;
    return r;
}

thread_local ThreadState t_state;
thread_local Block* t_block = nullptr;
thread_local Warp* t_warp = nullptr;
thread_local int t_lane = 0;

struct ThreadStart {
    ThreadState state;
    Block* block;
    Warp* warp;
    int lane;
    const Thunk* thunk;
    const uint64_t* slots;
};

void* run_thread(void* p) {
    const ThreadStart* s = static_cast<const ThreadStart*>(p);
    t_state = s->state;
    t_block = s->block;
    t_warp = s->warp;
    t_lane = s->lane;
    (*s->thunk)(s->slots);
    // An exited thread no longer takes part in __syncthreads or in warp exchanges.
    t_warp->bar.arrive_and_drop();
    t_block->bar.arrive_and_drop();
    return nullptr;
}

// Seconds one block may take before the launch is declared hung (a __syncthreads that
// not every thread reaches deadlocks here; on the GPU it is undefined behaviour).
constexpr int kBlockTimeoutSeconds = 120;

bool run_block(const Kernel& k, const uint64_t* slots, uint3 block_idx, dim3 grid, dim3 block, unsigned smem_bytes,
               std::string& err) {
    const int n = static_cast<int>(block.x * block.y * block.z);
    Block b(n);
    const int n_warps = (n + 31) / 32;
    for (int w = 0; w < n_warps; ++w) b.warps.push_back(std::make_unique<Warp>(std::min(32, n - 32 * w)));
    // Dynamic shared memory is uninitialised on the GPU: NaN bytes make a read before
    // write visible.
    b.smem.assign(smem_bytes, 0xFF);

    std::vector<ThreadStart> starts(n);
    std::vector<pthread_t> threads(n);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    int started = 0;
    for (int t = 0; t < n; ++t) {
        ThreadState st;
        st.thread_idx = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
        st.block_idx = block_idx;
        st.block_dim = block;
        st.grid_dim = grid;
        starts[t] = ThreadStart{st, &b, b.warps[t / 32].get(), t % 32, &k.thunk, slots};
        if (pthread_create(&threads[t], &attr, run_thread, &starts[t]) != 0) {
            err = "could not start thread " + std::to_string(t) + " of a block";
            break;
        }
        ++started;
    }
    pthread_attr_destroy(&attr);
    if (started < n) {
        // The started threads wait at barriers sized for n threads: nothing can be
        // cleaned up safely.
        std::fprintf(stderr, "kernel emulator: %s\n", err.c_str());
        std::_Exit(101);
    }
    timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += kBlockTimeoutSeconds;
    for (int t = 0; t < n; ++t) {
        if (pthread_timedjoin_np(threads[t], nullptr, &deadline) != 0) {
            std::fprintf(stderr,
                         "kernel emulator: a block did not finish in %d s — a __syncthreads() or warp shuffle "
                         "that not every thread reaches (deadlock)\n",
                         kBlockTimeoutSeconds);
            std::_Exit(101);
        }
    }
    return true;
}

}  // namespace

ThreadState& state() { return t_state; }

void sync_block() { t_block->bar.arrive_and_wait(); }

float shfl_xor(float v, int lane_mask) {
    Warp& w = *t_warp;
    w.slots[t_lane] = v;
    w.bar.arrive_and_wait();
    const float r = w.slots[(t_lane ^ lane_mask) & 31];
    w.bar.arrive_and_wait();  // nobody overwrites a slot before every lane has read
    return r;
}

unsigned char* dynamic_smem() { return t_block->smem.data(); }

unsigned dynamic_smem_bytes() { return static_cast<unsigned>(t_block->smem.size()); }

void register_kernel(const char* name, const char* module, std::string kinds, Thunk thunk) {
    registry()[name] = Kernel{module, std::move(kinds), std::move(thunk)};
}

}  // namespace qf_emu

namespace {
void write_error(char* err, size_t cap, const std::string& msg) {
    if (cap == 0) return;
    const size_t n = std::min(cap - 1, msg.size());
    std::memcpy(err, msg.data(), n);
    err[n] = '\0';
}
}  // namespace

// The argument kinds of kernel `name` ("" when there is no such kernel), copied into
// `out` (NUL-terminated). Returns the length.
extern "C" size_t qf_emu_kernel_kinds(const char* name, char* out, size_t cap) {
    auto& r = qf_emu::registry();
    auto it = r.find(name);
    write_error(out, cap, it == r.end() ? std::string() : it->second.kinds);
    return it == r.end() ? 0 : it->second.kinds.size();
}

// Every registered kernel as `module/name`, separated by '\n'.
extern "C" size_t qf_emu_kernel_names(char* out, size_t cap) {
    std::string all;
    for (auto& [name, k] : qf_emu::registry()) all += k.module + "/" + name + "\n";
    write_error(out, cap, all);
    return all.size();
}

// Run kernel `name` over grid × block with `smem_bytes` of dynamic shared memory.
// `slots` holds one 64-bit slot per argument, `kinds` their kinds (see
// qf_emu::kind_of). Returns 0, or 1 with a message in `err`.
extern "C" int qf_emu_launch(const char* name, const unsigned* grid3, const unsigned* block3, unsigned smem_bytes,
                             const uint64_t* slots, const char* kinds, char* err, size_t err_cap) {
    auto& r = qf_emu::registry();
    auto it = r.find(name);
    if (it == r.end()) {
        write_error(err, err_cap, std::string("no kernel named `") + name + "`");
        return 1;
    }
    const qf_emu::Kernel& k = it->second;
    if (k.kinds != kinds) {
        write_error(err, err_cap,
                    std::string("kernel `") + name + "` takes arguments (" + k.kinds + ") but the launch passes (" +
                        kinds + ")");
        return 1;
    }
    const dim3 grid(grid3[0], grid3[1], grid3[2]);
    const dim3 block(block3[0], block3[1], block3[2]);
    const unsigned long long threads = 1ull * block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0) {
        write_error(err, err_cap, "invalid launch shape (a block has 1..=1024 threads, every grid dimension ≥ 1)");
        return 1;
    }
    // One launch at a time in the whole process: `__shared__` variables are statics (one
    // copy per function, e.g. the partials of common.cuh's block_sum), so two launches
    // from tests running in parallel would share them.
    static std::mutex one_launch_at_a_time;
    std::lock_guard<std::mutex> lock(one_launch_at_a_time);
    std::string msg;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x)
                if (!qf_emu::run_block(k, slots, uint3{x, y, z}, grid, block, smem_bytes, msg)) {
                    write_error(err, err_cap, msg);
                    return 1;
                }
    return 0;
}
