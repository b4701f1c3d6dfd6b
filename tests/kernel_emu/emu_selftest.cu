// emu_selftest.cu — deliberately broken kernels, compiled into the emulator only (module
// `emu_selftest`, never into the engine). Each carries a bug that a GPU exposes and the
// emulation's old behaviour hid; tests/kernels_emulated.rs shows that each is caught by
// the check that the emulator now makes, and was not with that check off.
#include "common.cuh"

// BUG: shared memory read before it is written. Only block 0 fills `table`; every block
// reads it. With `__shared__` statics that keep the previous block's values (the old
// emulation) blocks 1.. see block 0's table and the output is right; on a GPU, and with
// static shared memory poisoned at every block start, they read garbage (NaN).
// Launch: grid (any), block (32, 1, 1); out [gridDim.x · 32].
extern "C" __global__ void selftest_shared_read_before_write(float* out) {
    __shared__ float table[32];
    if (blockIdx.x == 0) table[threadIdx.x] = 2.0f * threadIdx.x;
    __syncthreads();
    out[blockIdx.x * 32 + threadIdx.x] = table[threadIdx.x];
}

// BUG: a missing __syncthreads. Thread t writes its slot and reads its left neighbour's
// without a barrier in between. Threads in index order, each running to its end, always
// find the neighbour's slot written; on a GPU, and under a random schedule, thread t may
// read before thread t − 1 wrote.
// Launch: grid (any), block (64, 1, 1); in, out [gridDim.x · 64].
extern "C" __global__ void selftest_missing_syncthreads(const float* in, float* out) {
    __shared__ float slot[64];
    const int t = threadIdx.x;
    const int i = blockIdx.x * 64 + t;
    slot[t] = in[i];
    // __syncthreads();  <- missing
    out[i] = slot[t] + (t > 0 ? slot[t - 1] : 0.0f);
}

// The same kernel with its barrier: correct under every schedule.
extern "C" __global__ void selftest_with_syncthreads(const float* in, float* out) {
    __shared__ float slot[64];
    const int t = threadIdx.x;
    const int i = blockIdx.x * 64 + t;
    slot[t] = in[i];
    __syncthreads();
    out[i] = slot[t] + (t > 0 ? slot[t - 1] : 0.0f);
}

// BUG: a shuffle whose mask leaves out lanes that call it (and that it reads): lanes
// 16..31 call __shfl_xor_sync with mask 0x0000ffff. The old emulation ignored the mask
// (every lane exchanged, the result looks right).
// Launch: grid (1), block (32, 1, 1); out [32].
extern "C" __global__ void selftest_shfl_lane_outside_mask(float* out) {
    const float v = (float)threadIdx.x;
    out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, v, 1);
}

// BUG: a full-mask shuffle after half the warp has returned: the mask names exited
// lanes (undefined on a GPU). The old emulation let the live lanes exchange among
// themselves.
// Launch: grid (1), block (32, 1, 1); out [32].
extern "C" __global__ void selftest_shfl_exited_lane(float* out) {
    if (threadIdx.x >= 16) return;
    const float v = (float)threadIdx.x;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, 1);
}

// A correct partial-warp shuffle: lanes 0..15 exchange under mask 0x0000ffff while lanes
// 16..31 have returned.
extern "C" __global__ void selftest_shfl_half_warp(float* out) {
    if (threadIdx.x >= 16) return;
    const float v = (float)threadIdx.x;
    out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, v, 1);
}

// A correct kernel for the driver's checks (tests/emulated_driver.rs): out[i] = i.
// Launch: grid (any), block (any); out [n].
extern "C" __global__ void selftest_iota(float* out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) out[i] = (float)i;
}
