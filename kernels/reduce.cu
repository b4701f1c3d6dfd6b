// reduce.cu — sum of a flat fp32 buffer (e.g. the per-row losses of
// cross_entropy_forward_backward into the scalar mean loss).
//
// Maths:  *out += Σ_{i<n} x_i      (fp32: per-thread partials, a block tree
//                                  sum, one atomicAdd per block)
// The summation order depends on the launch shape, so results can differ
// from a sequential CPU sum in the last bits (and between runs when more
// than one block is launched).  For a deterministic loss launch ONE block.
//
// ABI:
//   sum_f32(float* out, const float* x, long long n)
//       *out ACCUMULATES (+=): zero it first for a plain sum.
// Launch: block (256, 1, 1) (any multiple of 32 ≤ 1024); grid (1, 1, 1) for a
// deterministic result, or (min(ceil(n/256), 8·num_SMs), 1, 1) for large n.
#include "common.cuh"

extern "C" __global__ void sum_f32(float* out, const float* x, long long n) {
    float partial = 0.0f;
    for (long long i = qf::global_thread_index(); i < n; i += qf::global_thread_count()) partial += x[i];
    const float total = qf::block_sum(partial);
    if (threadIdx.x == 0) atomicAdd(out, total);
}
