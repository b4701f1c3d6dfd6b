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

// The bounds of the static `__shared__` variables of every kernel file: the kernel
// objects are compiled with -fdata-sections and the link's script (tests/kernel_emu/mod.rs)
// gathers their function-local statics (`.bss._ZZ*`) into one output section between
// these two symbols, which every block start fills with 0xFF bytes (NaN as a float).
extern "C" char __qf_emu_shared_start[] __attribute__((weak, visibility("hidden")));
extern "C" char __qf_emu_shared_end[] __attribute__((weak, visibility("hidden")));

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
    unsigned shuffles = 0;            // warp shuffles / __syncwarp this thread has entered
    unsigned warp_mask = 0xffffffffu; // the lanes the warp barrier it waits at names
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
    Options opt{1, 1, 0, 1, 0};
    uint64_t rng = 0;  // xorshift state of the random schedule
};

uint64_t next_random(uint64_t& x) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
}

uint64_t mix(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

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
    // A warp barrier (shuffle, __syncwarp, mma, ldmatrix) names its lanes in a mask: it
    // opens for the lanes waiting with that mask once every live lane the mask names
    // waits with it (a named lane that has exited or does not exist is reported by the
    // shuffle itself, and does not hold the others forever).
    const size_t n = r.fibers.size();
    for (int w = 0; w < n_warps; ++w) {
        const size_t lane0 = size_t(32) * w;
        for (size_t t = lane0; t < n && t < lane0 + 32; ++t) {
            if (r.fibers[t].wait != Wait::Warp) continue;
            const unsigned mask = r.fibers[t].warp_mask;
            bool all = true;
            for (size_t u = lane0; all && u < n && u < lane0 + 32; ++u) {
                if (!(mask >> (u - lane0) & 1u) || r.fibers[u].wait == Wait::Done) continue;
                all = r.fibers[u].wait == Wait::Warp && r.fibers[u].warp_mask == mask;
            }
            if (!all) continue;
            for (size_t u = lane0; u < n && u < lane0 + 32; ++u)
                if (r.fibers[u].wait == Wait::Warp && r.fibers[u].warp_mask == mask) r.fibers[u].wait = Wait::None;
            opened = true;
        }
    }
    return opened;
}

bool run_block(const Kernel& k, const uint64_t* slots, uint3 block_idx, dim3 grid, dim3 block, unsigned smem_bytes,
               std::string& err) {
    BlockRun& r = run();
    // Static __shared__ variables are function-local statics here: without this they
    // would keep the previous block's (or launch's) values, where the GPU gives a block
    // whatever the shared memory held.
    if (r.opt.poison_shared && __qf_emu_shared_start != nullptr)
        std::memset(__qf_emu_shared_start, 0xFF, size_t(__qf_emu_shared_end - __qf_emu_shared_start));
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
    std::vector<int> order;
    order.reserve(n);
    for (;;) {
        bool ran = false;
        // The threads that can run, in index order, or shuffled under a random schedule
        // (where a thread also gives way at random points: see maybe_yield).
        order.clear();
        for (int t = 0; t < n; ++t)
            if (r.fibers[t].wait == Wait::None) order.push_back(t);
        if (r.opt.random_schedule)
            for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[next_random(r.rng) % i]);
        for (int t : order) {
            Fiber& f = r.fibers[t];
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

void maybe_yield() {
    BlockRun& r = run();
    if (!r.opt.random_schedule || r.current == nullptr) return;
    if ((next_random(r.rng) & 7) != 0) return;  // one point in eight
    wait_at(Wait::None);
}

ThreadState& state() {
    maybe_yield();
    return run().current->state;
}

void sync_block() { wait_at(Wait::Block); }

namespace {

// Wait at a warp barrier naming the lanes of `mask` (all 32 when the masks are not checked).
void warp_wait(unsigned mask) {
    BlockRun& r = run();
    r.current->warp_mask = r.opt.check_shfl_mask ? mask : 0xffffffffu;
    wait_at(Wait::Warp);
    r.current->warp_mask = 0xffffffffu;
}

// The mask checks of a warp-synchronous call by the current lane, made once every lane
// of the mask has reached it (`entered`: the lane's count of such calls, this one
// included): the caller is in the mask, and every lane the mask names exists and
// reached the same call (has not exited, or gone elsewhere).
void check_mask(const char* what, unsigned mask, unsigned entered) {
    BlockRun& r = run();
    if (!r.opt.check_shfl_mask) return;
    const Fiber& f = *r.current;
    const size_t lane0 = size_t(32) * f.warp;
    if (!(mask >> f.lane & 1u)) {
        char buf[300];
        std::snprintf(buf, sizeof buf, "%s: lane %d of warp %d calls it with mask 0x%08x, which does not include it", what,
                      f.lane, f.warp, mask);
        report_error(buf);
        return;
    }
    for (unsigned l = 0; l < 32; ++l) {
        if (!(mask >> l & 1u)) continue;
        const size_t t = lane0 + l;
        const char* why = nullptr;
        if (t >= r.fibers.size()) why = "does not exist (the block ends before it)";
        else if (r.fibers[t].wait == Wait::Done) why = "has exited";
        else if (r.fibers[t].shuffles != entered) why = "is not at this call (diverged)";
        if (why) {
            char buf[300];
            std::snprintf(buf, sizeof buf, "%s: mask 0x%08x of warp %d names lane %u, which is inactive: it %s", what,
                          mask, f.warp, l, why);
            report_error(buf);
            return;
        }
    }
}

}  // namespace

void sync_warp(unsigned mask) {
    BlockRun& r = run();
    const unsigned entered = ++r.current->shuffles;
    warp_wait(mask);
    check_mask("__syncwarp", mask, entered);
}

float shfl(float v, int src_lane, unsigned mask, const char* what) {
    BlockRun& r = run();
    Fiber& f = *r.current;
    float* slots = &r.warp_slots[32 * f.warp];
    slots[f.lane] = v;
    const unsigned entered = ++f.shuffles;
    warp_wait(mask);
    check_mask(what, mask, entered);
    src_lane &= 31;
    if (r.opt.check_shfl_mask && !(mask >> src_lane & 1u)) {
        char buf[300];
        std::snprintf(buf, sizeof buf, "%s: lane %d of warp %d reads lane %d, outside its mask 0x%08x", what, f.lane,
                      f.warp, src_lane, mask);
        report_error(buf);
    }
    const float out = slots[src_lane];
    warp_wait(mask);  // nobody overwrites a slot before every lane has read
    return out;
}

float shfl_xor(float v, int lane_mask) { return shfl(v, run().current->lane ^ lane_mask, 0xffffffffu, "__shfl_xor_sync"); }

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
    warp_wait(0xffffffffu);
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

// The checks and schedule of a launch that names none (the fake driver's): every check
// on, and a random schedule whose seed comes from QF_EMU_SEED (default 1) and the
// launch's number on its host thread, unless QF_EMU_SCHEDULE=fixed.
Options default_options() {
    static const uint64_t base = [] {
        const char* s = std::getenv("QF_EMU_SEED");
        return s && *s ? std::strtoull(s, nullptr, 0) : 1ull;
    }();
    static const bool random = [] {
        const char* s = std::getenv("QF_EMU_SCHEDULE");
        return !(s && std::string(s) == "fixed");
    }();
    thread_local uint64_t launches = 0;
    return Options{1, 1, random ? 1u : 0u, 1, mix(base * 0x100000001b3ull + ++launches)};
}

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

namespace {

// Preconditions the kernels state but cannot check cheaply on the GPU, checked here on
// the launch's arguments before it runs ("" when they hold).
std::string check_preconditions(const std::string& name, const uint64_t* slots) {
    // scatter_add_rows_T(dx, dout, rows, n, dim): plain read-add-write per listed row, so
    // a row listed twice is a lost update on the GPU (blocks run concurrently there).
    if (name.rfind("scatter_add_rows_", 0) == 0) {
        const int* rows = reinterpret_cast<const int*>(static_cast<uintptr_t>(slots[2]));
        const long long n = static_cast<int>(slots[3]);
        std::map<int, long long> seen;
        for (long long k = 0; k < n; ++k) {
            auto [it, fresh] = seen.emplace(rows[k], k);
            if (!fresh)
                return name + ": rows[" + std::to_string(it->second) + "] and rows[" + std::to_string(k) +
                       "] are both row " + std::to_string(rows[k]) +
                       "; the kernel adds without atomics and requires distinct rows (on a GPU one of the two "
                       "updates would be lost)";
        }
    }
    return {};
}

}  // namespace

// Run kernel `name` over grid × block with `smem_bytes` of dynamic shared memory and the
// checks and schedule of `opt` (nullptr: the defaults, see default_options). `slots`
// holds one 64-bit slot per argument, `kinds` their kinds (see qf_emu::kind_of).
// Returns 0, or 1 with a message in `err`.
extern "C" int qf_emu_launch_ex(const char* name, const unsigned* grid3, const unsigned* block3, unsigned smem_bytes,
                                const uint64_t* slots, const char* kinds, const qf_emu::Options* opt, char* err,
                                size_t err_cap) {
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
    const qf_emu::Options o = opt ? *opt : qf_emu::default_options();
    if (o.check_preconditions) {
        const std::string why = check_preconditions(name, slots);
        if (!why.empty()) {
            write_error(err, err_cap, why);
            return 1;
        }
    }
    // One launch at a time in the whole process: `__shared__` variables are statics (one
    // copy per function, e.g. the partials of common.cuh's block_sum), so two launches
    // from tests running in parallel would share them.
    static std::mutex one_launch_at_a_time;
    std::lock_guard<std::mutex> lock(one_launch_at_a_time);
    qf_emu::BlockRun& br = qf_emu::run();
    br.opt = o;
    br.rng = qf_emu::mix(o.seed) | 1;
    // The blocks, in index order or (random schedule) in a random one.
    const unsigned long long n_blocks = 1ull * grid.x * grid.y * grid.z;
    std::vector<unsigned long long> order(n_blocks);
    for (unsigned long long b = 0; b < n_blocks; ++b) order[b] = b;
    if (o.random_schedule)
        for (unsigned long long i = n_blocks; i > 1; --i) std::swap(order[i - 1], order[qf_emu::next_random(br.rng) % i]);
    std::string msg;
    for (unsigned long long b : order) {
        const uint3 idx{unsigned(b % grid.x), unsigned((b / grid.x) % grid.y), unsigned(b / (1ull * grid.x * grid.y))};
        if (!qf_emu::run_block(k, slots, idx, grid, block, smem_bytes, msg)) {
            if (o.random_schedule) msg += " [random schedule, seed " + std::to_string(o.seed) + "]";
            msg += " (block " + std::to_string(idx.x) + "," + std::to_string(idx.y) + "," + std::to_string(idx.z) + ")";
            br.current = nullptr;
            write_error(err, err_cap, msg);
            return 1;
        }
    }
    br.current = nullptr;
    return 0;
}

// qf_emu_launch_ex with the default checks and schedule.
extern "C" int qf_emu_launch(const char* name, const unsigned* grid3, const unsigned* block3, unsigned smem_bytes,
                             const uint64_t* slots, const char* kinds, char* err, size_t err_cap) {
    return qf_emu_launch_ex(name, grid3, block3, smem_bytes, slots, kinds, nullptr, err, err_cap);
}
