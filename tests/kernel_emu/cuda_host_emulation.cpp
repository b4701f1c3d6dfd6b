// cuda_host_emulation.cpp — the launch runtime of the CPU emulation of the CUDA
// kernels (see cuda_host_emulation.h). Built into a shared library by
// tests/kernel_emu/mod.rs together with every kernels/*.cu file, and called from Rust
// through `qf_emu_launch`.
#include "cuda_host_emulation.h"


#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace qf_emu {
namespace {

// Every CUDA thread of a block is a fiber on the launching OS thread; the
// scheduler runs the fibers in turn, each until it waits at a barrier or returns. A
// block barrier opens when every live thread of the block waits at it, a warp barrier
// when every live lane of the warp does (a returned thread no longer counts, as an
// exited thread on the GPU). No fiber ready and no barrier able to open is a deadlock
// (a __syncthreads that not every thread reaches), reported as an error.
enum class Wait { None, Block, Warp, Done };

// Fiber switch (x86-64 System V): push the callee-saved registers on the current stack,
// save the stack pointer in *from, load `to` and pop the other fiber's registers; `ret`
// resumes it. No signal-mask system call, unlike swapcontext.
#if !defined(__x86_64__)
#error "the fiber switch of the kernel emulation is written for x86-64 (System V)"
#endif
extern "C" void qf_emu_switch(void** from, void* to);
asm(R"(
    .text
    .globl qf_emu_switch
    .type qf_emu_switch, @function
qf_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size qf_emu_switch, .-qf_emu_switch
)");

// One queued cp.async copy of a thread, in commit group `group`.
struct AsyncCopy {
    void* dst;
    const void* src;
    unsigned bytes;
    unsigned group;
};

struct Fiber {
    void* sp = nullptr;  // saved stack pointer while switched out
    ThreadState state;
    int warp = 0;
    int lane = 0;
    Wait wait = Wait::None;
    unsigned exchanges = 0;           // warp collectives this thread has entered
    std::vector<AsyncCopy> copies;    // queued cp.async copies
    unsigned open_group = 0;          // the group new copies join (committed: all below it)
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

constexpr size_t kStackBytes = 64 * 1024;

// The block being run (launches are serialised, so one at a time per process).
struct BlockRun {
    std::vector<Fiber> fibers;
    std::vector<std::vector<char>> stacks;
    std::vector<float> warp_slots;  // 32 per warp
    // Two exchange blocks per warp (alternating between consecutive collectives, so a
    // lane that runs ahead into the next collective never overwrites a block that a
    // slower lane is still reading), each 32 lanes × kExchangeBytes.
    std::vector<unsigned char> exchange;
    std::vector<unsigned char> scratch;  // same shape: results computed once per collective
    std::vector<unsigned> claimed;       // per exchange block: the collective whose results are computed
    std::string error;  // first report_error of the running block
    std::vector<unsigned char> smem;
    void* scheduler_sp = nullptr;
    Fiber* current = nullptr;
    const Thunk* thunk = nullptr;
    const uint64_t* slots = nullptr;
};

BlockRun& run() {
    static BlockRun r;
    return r;
}

// A fiber's first frame: run the kernel thread, then hand back for good.
[[noreturn]] void fiber_main() {
    BlockRun& r = run();
    (*r.thunk)(r.slots);
    r.current->wait = Wait::Done;
    qf_emu_switch(&r.current->sp, r.scheduler_sp);
    __builtin_unreachable();
}

// A fresh stack that the first switch "returns" into fiber_main with the alignment of a
// called function ((rsp + 8) % 16 == 0 at entry).
void* initial_stack(std::vector<char>& stack) {
    auto top = reinterpret_cast<uintptr_t>(stack.data() + stack.size()) & ~uintptr_t(15);
    auto* sp = reinterpret_cast<uintptr_t*>(top);
    *--sp = 0;                                             // fiber_main's (never used) return address
    *--sp = reinterpret_cast<uintptr_t>(&fiber_main);      // popped by `ret`
    for (int i = 0; i < 6; ++i) *--sp = 0;                 // rbp rbx r12 r13 r14 r15
    return sp;
}

void wait_at(Wait w) {
    BlockRun& r = run();
    r.current->wait = w;
    qf_emu_switch(&r.current->sp, r.scheduler_sp);
}

// Open the barriers every live member has reached; false when nothing could open.
bool open_barriers(BlockRun& r, int n_warps) {
    bool opened = false;
    size_t live = 0, at_block = 0;
    for (auto& f : r.fibers) {
        live += f.wait != Wait::Done;
        at_block += f.wait == Wait::Block;
    }
    if (live > 0 && at_block == live) {
        for (auto& f : r.fibers)
            if (f.wait == Wait::Block) f.wait = Wait::None;
        return true;
    }
    for (int w = 0; w < n_warps; ++w) {
        size_t lanes = 0, waiting = 0;
        for (size_t t = 32 * w; t < r.fibers.size() && t < size_t(32 * (w + 1)); ++t) {
            lanes += r.fibers[t].wait != Wait::Done;
            waiting += r.fibers[t].wait == Wait::Warp;
        }
        if (lanes > 0 && waiting == lanes) {
            for (size_t t = 32 * w; t < r.fibers.size() && t < size_t(32 * (w + 1)); ++t)
                if (r.fibers[t].wait == Wait::Warp) r.fibers[t].wait = Wait::None;
            opened = true;
        }
    }
    return opened;
}

bool run_block(const Kernel& k, const uint64_t* slots, uint3 block_idx, dim3 grid, dim3 block, unsigned smem_bytes,
               std::string& err) {
    BlockRun& r = run();
    const int n = static_cast<int>(block.x * block.y * block.z);
    const int n_warps = (n + 31) / 32;
    r.fibers.assign(n, Fiber{});
    if (r.stacks.size() < size_t(n)) r.stacks.resize(n);
    r.warp_slots.assign(32 * n_warps, 0.0f);
    r.exchange.assign(size_t(n_warps) * 2 * 32 * kExchangeBytes, 0);
    r.scratch.assign(r.exchange.size(), 0);
    r.claimed.assign(size_t(n_warps) * 2, 0);
    r.error.clear();
    // Dynamic shared memory is uninitialised on the GPU: NaN bytes make a read before
    // write visible.
    r.smem.assign(smem_bytes, 0xFF);
    r.thunk = &k.thunk;
    r.slots = slots;
    for (int t = 0; t < n; ++t) {
        Fiber& f = r.fibers[t];
        f.state.thread_idx = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
        f.state.block_idx = block_idx;
        f.state.block_dim = block;
        f.state.grid_dim = grid;
        f.warp = t / 32;
        f.lane = t % 32;
        if (r.stacks[t].empty()) r.stacks[t].resize(kStackBytes);
        f.sp = initial_stack(r.stacks[t]);
    }
    for (;;) {
        bool ran = false;
        for (auto& f : r.fibers) {
            if (f.wait != Wait::None) continue;
            r.current = &f;
            qf_emu_switch(&r.scheduler_sp, f.sp);
            ran = true;
        }
        bool all_done = true;
        for (auto& f : r.fibers) all_done &= f.wait == Wait::Done;
        if (all_done) {
            for (auto& f : r.fibers)
                if (!f.copies.empty() && r.error.empty())
                    r.error = "a thread exited with cp.async copies it never waited for";
            if (!r.error.empty()) {
                err = r.error;
                return false;
            }
            return true;
        }
        if (!open_barriers(r, n_warps) && !ran) {
            err = "deadlock: a __syncthreads() or warp shuffle that not every live thread of the block reaches";
            return false;
        }
    }
}

}  // namespace

ThreadState& state() { return run().current->state; }

void sync_block() { wait_at(Wait::Block); }

void sync_warp() { wait_at(Wait::Warp); }

float shfl_xor(float v, int lane_mask) {
    BlockRun& r = run();
    Fiber& f = *r.current;
    float* slots = &r.warp_slots[32 * f.warp];
    slots[f.lane] = v;
    wait_at(Wait::Warp);
    const float out = slots[(f.lane ^ lane_mask) & 31];
    wait_at(Wait::Warp);  // nobody overwrites a slot before every lane has read
    return out;
}

unsigned char* dynamic_smem() { return run().smem.data(); }

int lane_id() { return run().current->lane; }

void report_error(const char* msg) {
    BlockRun& r = run();
    if (r.error.empty()) r.error = msg;
}

const unsigned char* warp_exchange(const void* mine, unsigned bytes, bool* first) {
    BlockRun& r = run();
    Fiber& f = *r.current;
    if (bytes > kExchangeBytes) {
        report_error("warp_exchange: operand block larger than kExchangeBytes");
        bytes = kExchangeBytes;
    }
    unsigned char* block = &r.exchange[(size_t(f.warp) * 2 + (f.exchanges & 1)) * 32 * kExchangeBytes];
    std::memcpy(block + size_t(f.lane) * kExchangeBytes, mine, bytes);
    const unsigned entered = ++f.exchanges;
    wait_at(Wait::Warp);
    // The barrier opened: every live lane of the warp deposited. The instruction needs all
    // 32: each lane has entered this collective, and none has gone past the next one (a
    // lane that already ran on may have entered the next collective, or returned).
    const size_t lane0 = size_t(f.warp) * 32;
    bool full = lane0 + 32 <= r.fibers.size();
    for (size_t t = lane0; full && t < lane0 + 32; ++t) {
        const unsigned e = r.fibers[t].exchanges;
        full = e == entered || e == entered + 1;
    }
    if (!full) report_error("a warp-collective instruction (mma/ldmatrix) ran with fewer than 32 active lanes");
    if (first != nullptr) {
        unsigned& claim = r.claimed[size_t(f.warp) * 2 + ((entered - 1) & 1)];
        *first = claim != entered;
        claim = entered;
    }
    return block;
}

unsigned char* warp_scratch() {
    BlockRun& r = run();
    const Fiber& f = *r.current;
    return &r.scratch[(size_t(f.warp) * 2 + ((f.exchanges - 1) & 1)) * 32 * kExchangeBytes];
}

void async_copy(void* dst, const void* src, unsigned bytes) {
    BlockRun& r = run();
    Fiber& f = *r.current;
    const auto d = reinterpret_cast<uintptr_t>(dst), s = reinterpret_cast<uintptr_t>(src);
    const auto smem = reinterpret_cast<uintptr_t>(r.smem.data());
    if (d % bytes != 0 || s % bytes != 0) {
        report_error("cp.async: an address is not aligned to the copy size");
        return;
    }
    if (d < smem || d + bytes > smem + r.smem.size()) {
        report_error("cp.async: the destination is outside the dynamic shared memory");
        return;
    }
    f.copies.push_back(AsyncCopy{dst, src, bytes, f.open_group});
}

void async_commit() { ++run().current->open_group; }

void async_wait(int allowed_pending) {
    Fiber& f = *run().current;
    // Groups below `limit` must be complete; the newest `allowed_pending` committed
    // groups and the open (uncommitted) one may stay pending.
    const long long limit = (long long)f.open_group - (allowed_pending > 0 ? allowed_pending : 0);
    std::vector<AsyncCopy> still;
    for (const AsyncCopy& c : f.copies) {
        if ((long long)c.group < limit) std::memcpy(c.dst, c.src, c.bytes);
        else still.push_back(c);
    }
    f.copies.swap(still);
}

unsigned dynamic_smem_bytes() { return static_cast<unsigned>(run().smem.size()); }

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
