// flash_attention.cu — fused multi-head attention on tensor cores over packed
// variable-length sequences, with ESM-2's rotary embedding applied to q and k as their
// tiles are loaded. Tiling and the backward split follow FlashAttention-2 (Dao 2023,
// "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning",
// Algorithms 1 and 2); the running max and sum are the online softmax of Milakov &
// Gimelshein 2018. No L×L matrix is ever stored in global memory (except the optional
// probabilities of the contact head).
//
// Maths, for sequence s (tokens [cu_seqlens[s], cu_seqlens[s+1]), length L), head h,
// rows i (queries) and j (keys) of the sequence; R(p) is rotary.cu's rotation (3) at
// position p, c_q = q_scale (ESM-2: head_dim^-1/2, applied before the rotation):
//   q̃_i = fl_T(R(p_i)·q_i·c_q),  k̃_j = fl_T(R(p_j)·k_j)       (as rotary.cu writes them)
//   S_ij = q̃_i·k̃_j                                            (mma, fp32 accumulators)
//   m_i = max_j S_ij,  ℓ_i = Σ_j exp(S_ij − m_i),  LSE_i = m_i + log ℓ_i
//   O_i = Σ_j fl_T(exp(S_ij − m_i))·v_j / ℓ_i, computed over key tiles with the running
//         max m and sum ℓ (each new tile rescales the old sums by exp(m_old − m_new))
//   P_ij = exp(S_ij − LSE_i)                                   (optional output)
// Backward (P recomputed from the saved LSE; G = the gradient on P, from the contact head):
//   Δ_i = Σ_c dO_ic·O_ic + Σ_j G_ij·P_ij            (= Σ_j dP_ij·P_ij, with dP below)
//   dP_ij = dO_i·v_j + G_ij,  dS_ij = P_ij·(dP_ij − Δ_i)            (softmax backward)
//   dv_j += Σ_i fl_T(P_ij)·dO_i,  dk̃_j = Σ_i fl_T(dS_ij)·q̃_i,  dq̃_i = Σ_j fl_T(dS_ij)·k̃_j
//   dk_j += R(p_j)ᵀ·dk̃_j,  dq_i += c_q·R(p_i)ᵀ·dq̃_i                 (rotary.cu's (4))
// All sums are fp32; the tensor-core operands are T (fp16 or bf16), as FlashAttention
// rounds P and dS. The backward is deterministic: no atomics; each dk/dv row is written
// by the one block that owns its key tile, each dq row by the one block that owns its
// query tile (a separate pass that recomputes S and dP: 7 GEMMs instead of 5).
//
// Head dims 16, 24, 32, 64, 128 each have their own kernels (D in the name); none is
// padded: 24 takes one m16n8k16 and one m16n8k8 step over the head dimension.
//
// ABI (T = __half / __nv_bfloat16, suffix _f16 / _bf16; D ∈ {16, 24, 32, 64, 128}):
//   q, k, v, out, dout, dq, dk, dv: [n_tokens, n_heads·D] dense, 16-byte aligned;
//   positions: int [n_tokens] (rotary positions, crop offsets included);
//   cu_seqlens: int [n_seqs + 1], increasing, cu_seqlens[n_seqs] = n_tokens;
//   lse, delta: float [n_heads, n_tokens];
//   probs, dprobs: null, or per sequence s and head h the L×L block at
//     Σ_{s'<s} n_heads·L_{s'}² + h·L² (row i, column j at + i·L + j), packed.
//
//   flash_attention_forward_dD_T(T* out, float* lse, T* probs, const T* q, const T* k,
//       const T* v, const int* positions, const int* cu_seqlens, int n_seqs,
//       int n_tokens, int n_heads, float q_scale)
//     out, lse WRITE; probs (when not null) WRITES every element of every block.
//   flash_attention_backward_dot_T(float* delta, const T* out, const T* dout,
//       const T* probs, const T* dprobs, const int* cu_seqlens, int n_seqs,
//       int n_tokens, int n_heads, int head_dim)
//     delta WRITES Δ (the G·P term only when both probs and dprobs are given).
//   flash_attention_backward_kv_dD_T(T* dk, T* dv, const T* q, const T* k, const T* v,
//       const T* dout, const float* lse, const float* delta, const T* dprobs,
//       const int* positions, const int* cu_seqlens, int n_seqs, int n_tokens,
//       int n_heads, float q_scale)
//     dk, dv ACCUMULATE (+=, fp32 sum rounded once); either may be null (not computed).
//   flash_attention_backward_q_dD_T(T* dq, <the same inputs as _kv_>)
//     dq ACCUMULATES.
//
// Launch: forward, kv and q: block (128, 1, 1) — 4 warps, 16 rows each —, grid
//   (ceil(max_len / 64), n_seqs, n_heads) (blocks past their sequence's end return at
//   once), dynamic shared memory (bytes; stride = D + 8, or D + 16 for D = 24):
//     forward: 2·D + (64 + 2·N)·stride·2              N = 64 for D ≤ 64, else 32
//     kv:      2·D + (128 + 2·Q)·stride·2 + 8·Q        Q = 64 for D ≤ 64, else 32
//     q:       2·D + (128 + 2·N)·stride·2
//   (the D = 128 backward kernels need 51 KiB: the launcher raises the limit). A launch
//   with less shared memory or another block size does nothing. dot: one warp per
//   (head, token) row, block (256, 1, 1), grid ceil(n_heads·n_tokens / 8) (rows
//   grid-strided).
#include "common.cuh"
#include "mma.cuh"
#include "rotary.cuh"

namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kRowsPerBlock = 16 * kWarps;  // query rows (forward, dQ) or key rows (dK, dV)

// Tile shapes of head dimension D.
template <int D> struct Tile {
    static_assert(D % 8 == 0 && D >= 16 && D <= 128, "head dims 16..128, multiples of 8");
    // Elements per shared-memory row: a 16-byte multiple (ldmatrix rows are 16-byte
    // aligned) ≡ 8 mod 16, so the 8 rows of an ldmatrix matrix start 4·(odd) banks apart
    // and hit all 32 banks once (D + 8 for D = 16, 32, 64, 128; D + 16 for D = 24).
    static constexpr int kStride = D + (D % 16 == 8 ? 16 : 8);
    static_assert(kStride % 16 == 8, "bank-conflict-free ldmatrix rows");
    static constexpr int kKSteps = D / 16;           // m16n8k16 steps over the head dimension
    static constexpr bool kK8 = D % 16 == 8;         // then one m16n8k8 step (D = 24)
    static constexpr int kDimTiles = D / 8;          // 8-column tiles of a head
    static constexpr int kKeys = D <= 64 ? 64 : 32;  // keys per step of the forward and dQ passes
    static constexpr int kQueries = D <= 64 ? 64 : 32;  // queries per step of the dK/dV pass
    static constexpr int kInvFreqBytes = D / 2 * 4;  // a multiple of 16 for every supported D
    static constexpr int kRowBytes = kStride * 2;
    // Dynamic shared memory of each kernel (the launch header above).
    static constexpr int kForwardSmem = kInvFreqBytes + (kRowsPerBlock + 2 * kKeys) * kRowBytes;
    static constexpr int kKvSmem = kInvFreqBytes + (2 * kRowsPerBlock + 2 * kQueries) * kRowBytes + 8 * kQueries;
    static constexpr int kQSmem = kInvFreqBytes + (2 * kRowsPerBlock + 2 * kKeys) * kRowBytes;
    // The fp32 gradient rows staged for the inverse rotation reuse the tile area.
    static_assert(kRowsPerBlock * D * 4 <= (2 * kRowsPerBlock + 2 * kQueries) * kRowBytes, "dK staging");
    static_assert(kRowsPerBlock * D * 4 <= (2 * kRowsPerBlock + 2 * kKeys) * kRowBytes, "dQ staging");
};

// The sequence and rows one block works on.
struct BlockRows {
    int start;  // first token of the sequence
    int len;    // its length
    int row0;   // first row of the block within the sequence
    int head;
};

// This block's sequence, head and tile; false when the block has nothing to do.
__device__ __forceinline__ bool block_rows(const int* cu_seqlens, int n_seqs, int n_heads, BlockRows& b) {
    const int seq = blockIdx.y;
    b.head = blockIdx.z;
    if (seq >= n_seqs || b.head >= n_heads || blockDim.x != kThreads) return false;
    b.start = cu_seqlens[seq];
    b.len = cu_seqlens[seq + 1] - b.start;
    b.row0 = blockIdx.x * kRowsPerBlock;
    return b.row0 < b.len;
}

// Σ_{s' < seq} n_heads·L_{s'}²: where sequence `seq`'s probability blocks start.
__device__ __forceinline__ long long prob_block_offset(const int* cu_seqlens, int seq, int n_heads) {
    long long off = 0;
    for (int s = 0; s < seq; ++s) {
        const long long l = cu_seqlens[s + 1] - cu_seqlens[s];
        off += l * l;
    }
    return off * n_heads;
}

template <int D> __device__ __forceinline__ void fill_inv_freq(float* inv_freq) {
    for (int i = threadIdx.x; i < D / 2; i += blockDim.x) inv_freq[i] = qf::rotary_inv_freq(i, D);
}

// Rows [row0, row0 + n_rows) of the sequence, head `head`, rotated by their positions and
// scaled (rotary.cu's (3)), rounded to T into `s` (n_rows × kStride); rows past the end zero.
template <typename T, int D>
__device__ void load_rotated(T* s, const T* x, const int* positions, const float* inv_freq, const BlockRows& b,
                             int row0, int n_rows, int width, float scale) {
    constexpr int half = D / 2;
    for (int item = threadIdx.x; item < n_rows * half; item += blockDim.x) {
        const int r = item / half, i = item - r * half;
        float y1 = 0.0f, y2 = 0.0f;
        if (row0 + r < b.len) {
            const long long token = (long long)b.start + row0 + r;
            const T* src = x + token * width + b.head * D;
            float sn, cs;
            sincosf((float)positions[token] * inv_freq[i], &sn, &cs);
            qf::rotate_pair(qf::to_f32(src[i]), qf::to_f32(src[i + half]), cs, sn, scale, y1, y2);
        }
        s[r * Tile<D>::kStride + i] = qf::from_f32<T>(y1);
        s[r * Tile<D>::kStride + i + half] = qf::from_f32<T>(y2);
    }
}

// Rows [row0, row0 + n_rows) of head `head` copied into `s` with cp.async (16 bytes per
// copy; one commit group), rows past the end zero. The caller waits and synchronises.
template <typename T, int D>
__device__ void load_plain(T* s, const T* x, const BlockRows& b, int row0, int n_rows, int width) {
    constexpr int chunks = D / 8;
    for (int c = threadIdx.x; c < n_rows * chunks; c += blockDim.x) {
        const int r = c / chunks, col = (c - r * chunks) * 8;
        T* dst = s + r * Tile<D>::kStride + col;
        if (row0 + r < b.len) {
            qf::tc::cp_async_16(dst, x + ((long long)b.start + row0 + r) * width + b.head * D + col);
        } else {
#pragma unroll
            for (int e = 0; e < 8; ++e) dst[e] = qf::from_f32<T>(0.0f);
        }
    }
    qf::tc::cp_async_commit();
}

// A fragments (m16n8k16, plus the m16n8k8 step when D = 24) of 16 rows of a tile over its
// D columns.
template <int D> struct FragA {
    uint32_t k16[Tile<D>::kKSteps][4];
    uint32_t k8[2];
};

// Rows [r0, r0 + 16) of the row-major tile `s`: ldmatrix .x4 per k16 step — lane l
// addresses row r0 + l%16 of column block l/16, giving registers (rows 0-7 | 8-15) ×
// (cols 0-7 | 8-15) in the order a0a1, a2a3, a4a5, a6a7 (mma.cuh header).
template <typename T, int D> __device__ __forceinline__ void load_a(FragA<D>& a, const T* s, int r0) {
    using Tl = Tile<D>;
    const int lane = qf::lane_id();
    const T* row = s + (r0 + (lane & 15)) * Tl::kStride;
#pragma unroll
    for (int ks = 0; ks < Tl::kKSteps; ++ks) qf::tc::ldmatrix<4>(a.k16[ks], row + ks * 16 + (lane >> 4) * 8);
    if constexpr (Tl::kK8) qf::tc::ldmatrix<2>(a.k8, row + Tl::kKSteps * 16);
}

// acc[j] += A·Bⱼ for the NT 8-column tiles j of B (D × 8·NT), where B[c][n] = sb[n][c]: the
// rows of `sb` are B's columns (K tiles for Q·Kᵀ, Q for K·Qᵀ, dO for V·dOᵀ, V for dO·Vᵀ).
// ldmatrix .x4 (no .trans) gives the B registers of two column tiles per k16 step:
// matrices (rows n..n+7 | n+8..n+15) × (cols k..k+7 | k+8..k+15).
template <typename T, int D, int NT>
__device__ __forceinline__ void mma_rows_as_columns(float (&acc)[NT][4], const FragA<D>& a, const T* sb) {
    using Tl = Tile<D>;
    static_assert(NT % 2 == 0, "column tiles in pairs");
    const int lane = qf::lane_id();
#pragma unroll
    for (int j = 0; j < NT; j += 2) {
#pragma unroll
        for (int ks = 0; ks < Tl::kKSteps; ++ks) {
            uint32_t b[4];
            qf::tc::ldmatrix<4>(b, sb + (j * 8 + (lane & 7) + (lane >> 4) * 8) * Tl::kStride + ks * 16 +
                                       ((lane >> 3) & 1) * 8);
            qf::tc::mma_16816<T>(acc[j], a.k16[ks], b);
            qf::tc::mma_16816<T>(acc[j + 1], a.k16[ks], b + 2);
        }
        if constexpr (Tl::kK8) {
            uint32_t b[2];
            qf::tc::ldmatrix<2>(b, sb + (j * 8 + (lane & 15)) * Tl::kStride + Tl::kKSteps * 16);
            qf::tc::mma_1688<T>(acc[j], a.k8, b[0]);
            qf::tc::mma_1688<T>(acc[j + 1], a.k8, b[1]);
        }
    }
}

// acc[j] += A·Bⱼ over the D/8 column tiles of B (16·KT × D), where B = sb row-major (rows
// are the k index: V for P·V, dO for Pᵀ·dO, Q̃ for dSᵀ·Q̃, K̃ for dS·K̃) and A (16 × 16·KT)
// comes in registers. ldmatrix .trans gives the column pairs: .x4 matrices
// (rows k..k+7 | k+8..k+15) × (cols n..n+7 | n+8..n+15), .x2 for a last single tile.
template <typename T, int D, int KT>
__device__ __forceinline__ void mma_rows_as_k(float (&acc)[Tile<D>::kDimTiles][4], const uint32_t (&a)[KT][4],
                                              const T* sb) {
    using Tl = Tile<D>;
    const int lane = qf::lane_id();
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
        const T* rows = sb + (kk * 16 + (lane & 15)) * Tl::kStride;
#pragma unroll
        for (int j = 0; j + 1 < Tl::kDimTiles; j += 2) {
            uint32_t b[4];
            qf::tc::ldmatrix_trans<4>(b, rows + j * 8 + (lane >> 4) * 8);
            qf::tc::mma_16816<T>(acc[j], a[kk], b);
            qf::tc::mma_16816<T>(acc[j + 1], a[kk], b + 2);
        }
        if constexpr (Tl::kDimTiles % 2 == 1) {
            uint32_t b[2];
            qf::tc::ldmatrix_trans<2>(b, rows + (Tl::kDimTiles - 1) * 8);
            qf::tc::mma_16816<T>(acc[Tl::kDimTiles - 1], a[kk], b);
        }
    }
}

// Accumulators of NT 8-column tiles (C layout: c0 c1 on row g, c2 c3 on row g+8, columns
// 2t, 2t+1) rounded to T as the A operand of the next product over those 16·(NT/2)
// columns: for k16 step kk, a0a1 = tile 2kk row g, a2a3 = tile 2kk row g+8, a4a5 = tile
// 2kk+1 row g, a6a7 = tile 2kk+1 row g+8 (the C and A layouts of mma.cuh's header).
template <typename T, int NT>
__device__ __forceinline__ void accumulators_to_a(uint32_t (&a)[NT / 2][4], const float (&c)[NT][4]) {
#pragma unroll
    for (int kk = 0; kk < NT / 2; ++kk) {
        a[kk][0] = qf::tc::pack2_rn<T>(c[2 * kk][0], c[2 * kk][1]);
        a[kk][1] = qf::tc::pack2_rn<T>(c[2 * kk][2], c[2 * kk][3]);
        a[kk][2] = qf::tc::pack2_rn<T>(c[2 * kk + 1][0], c[2 * kk + 1][1]);
        a[kk][3] = qf::tc::pack2_rn<T>(c[2 * kk + 1][2], c[2 * kk + 1][3]);
    }
}

// Column of accumulator element i of tile j (within the tile pair's block), and its row.
__device__ __forceinline__ int acc_col(int j, int i) { return 8 * j + 2 * (qf::lane_id() & 3) + (i & 1); }
__device__ __forceinline__ int acc_row(int i) { return (qf::lane_id() >> 2) + 8 * (i >> 1); }

template <int NT> __device__ __forceinline__ void zero(float (&acc)[NT][4]) {
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[j][i] = 0.0f;
}

// Max and sum over the 4 lanes of a quad (the lanes holding one accumulator row).
__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// One online-softmax step (Milakov & Gimelshein 2018) for the two rows r of this lane:
// S (one key tile, masked columns −inf; at least one finite per row) becomes
// exp(S − m_new); m, the lane's partial sum ℓ and the output accumulators o are rescaled
// by exp(m_old − m_new). ℓ is summed over the quad once, at the end.
template <int NT, int DT>
__device__ __forceinline__ void online_softmax_step(float (&s)[NT][4], float (&o)[DT][4], float (&m)[2],
                                                    float (&l)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < NT; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
        const float m_new = fmaxf(m[r], quad_max(mx));
        const float alpha = expf(m[r] - m_new);  // 0 on the first tile (m = −inf)
        m[r] = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const float p = expf(s[j][2 * r + e] - m_new);
                s[j][2 * r + e] = p;
                sum += p;
            }
        l[r] = l[r] * alpha + sum;
#pragma unroll
        for (int j = 0; j < DT; ++j) {
            o[j][2 * r] *= alpha;
            o[j][2 * r + 1] *= alpha;
        }
    }
}

// Columns ≥ `valid` of a key tile get S = −inf (keys past the sequence's end).
template <int NT> __device__ __forceinline__ void mask_columns(float (&s)[NT][4], int valid) {
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i)
            if (acc_col(j, i) >= valid) s[j][i] = -INFINITY;
}

// Write the accumulator rows of this warp (rows row0 + 16·warp + g (+8)) of a [tokens,
// n_heads·D] tensor: out = acc·row_scale[r] (WRITES), pairs of columns as one 32-bit store.
template <typename T, int D>
__device__ void store_rows(T* out, const float (&acc)[Tile<D>::kDimTiles][4], const float (&row_scale)[2],
                           const BlockRows& b, int width) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int i = b.row0 + 16 * qf::warp_id() + acc_row(2 * r);
        if (i >= b.len) continue;
        T* row = out + ((long long)b.start + i) * width + b.head * D;
#pragma unroll
        for (int j = 0; j < Tile<D>::kDimTiles; ++j) {
            const int c = acc_col(j, 0);
            *reinterpret_cast<uint32_t*>(row + c) =
                qf::tc::pack2_rn<T>(acc[j][2 * r] * row_scale[r], acc[j][2 * r + 1] * row_scale[r]);
        }
    }
}

// Gradient rows of the rotated tensor (this warp's accumulators, rows row0 + 16·warp + …)
// staged in shared memory as fp32, rotated back by −θ and scaled (rotary.cu's (4)), and
// ACCUMULATED into the [tokens, n_heads·D] gradient `dx`. Every thread of the block calls
// it (it synchronises); `stage` holds kRowsPerBlock × D floats.
template <typename T, int D>
__device__ void accumulate_unrotated(T* dx, const float (&acc)[Tile<D>::kDimTiles][4], float* stage,
                                     const int* positions, const float* inv_freq, const BlockRows& b, int width,
                                     float scale) {
    __syncthreads();  // the tiles that `stage` overlaps are no longer read
#pragma unroll
    for (int j = 0; j < Tile<D>::kDimTiles; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) stage[(16 * qf::warp_id() + acc_row(i)) * D + acc_col(j, i)] = acc[j][i];
    __syncthreads();
    constexpr int half = D / 2;
    for (int item = threadIdx.x; item < kRowsPerBlock * half; item += blockDim.x) {
        const int r = item / half, i = item - r * half;
        if (b.row0 + r >= b.len) continue;
        const long long token = (long long)b.start + b.row0 + r;
        float sn, cs, d1, d2;
        sincosf((float)positions[token] * inv_freq[i], &sn, &cs);
        qf::rotate_pair_inverse(stage[r * D + i], stage[r * D + i + half], cs, sn, scale, d1, d2);
        T* row = dx + token * width + b.head * D;
        qf::accumulate_into(row + i, d1);
        qf::accumulate_into(row + i + half, d2);
    }
}

// ---------------------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------------------

// Second pass for the contact head: P_ij = exp(S_ij − LSE_i) of this warp's rows for
// every key of the sequence, written to the packed probability blocks.
template <typename T, int D>
__device__ void write_probabilities(T* probs, const FragA<D>& qa, const float (&lse)[2], T* sK, const T* k,
                                    const int* positions, const float* inv_freq, const BlockRows& b,
                                    long long block_offset, int width) {
    using Tl = Tile<D>;
    constexpr int NT = Tl::kKeys / 8;
    for (int n0 = 0; n0 < b.len; n0 += Tl::kKeys) {
        __syncthreads();
        load_rotated<T, D>(sK, k, positions, inv_freq, b, n0, Tl::kKeys, width, 1.0f);
        __syncthreads();
        float s[NT][4];
        zero(s);
        mma_rows_as_columns<T, D, NT>(s, qa, sK);
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int row = b.row0 + 16 * qf::warp_id() + acc_row(i), col = n0 + acc_col(j, i);
                if (row < b.len && col < b.len)
                    probs[block_offset + (long long)row * b.len + col] = qf::from_f32<T>(expf(s[j][i] - lse[i >> 1]));
            }
    }
}

template <typename T, int D>
__device__ void flash_forward(T* out, float* lse, T* probs, const T* q, const T* k, const T* v, const int* positions,
                              const int* cu_seqlens, int n_seqs, int n_tokens, int n_heads, float q_scale) {
    using Tl = Tile<D>;
    constexpr int NT = Tl::kKeys / 8;
    BlockRows b;
    if (!block_rows(cu_seqlens, n_seqs, n_heads, b) || qf::dynamic_smem_bytes() < (unsigned)Tl::kForwardSmem) return;
    QF_DYNAMIC_SHARED(unsigned char, smem);
    float* inv_freq = reinterpret_cast<float*>(smem);
    T* sQ = reinterpret_cast<T*>(smem + Tl::kInvFreqBytes);
    T* sK = sQ + kRowsPerBlock * Tl::kStride;
    T* sV = sK + Tl::kKeys * Tl::kStride;
    const int width = n_heads * D;

    fill_inv_freq<D>(inv_freq);
    __syncthreads();
    load_rotated<T, D>(sQ, q, positions, inv_freq, b, b.row0, kRowsPerBlock, width, q_scale);
    __syncthreads();
    FragA<D> qa;
    load_a<T, D>(qa, sQ, 16 * qf::warp_id());

    float o[Tl::kDimTiles][4];
    zero(o);
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    for (int n0 = 0; n0 < b.len; n0 += Tl::kKeys) {
        __syncthreads();  // the previous tiles are no longer read
        load_rotated<T, D>(sK, k, positions, inv_freq, b, n0, Tl::kKeys, width, 1.0f);
        load_plain<T, D>(sV, v, b, n0, Tl::kKeys, width);
        qf::tc::cp_async_wait<0>();
        __syncthreads();
        float s[NT][4];
        zero(s);
        mma_rows_as_columns<T, D, NT>(s, qa, sK);
        mask_columns(s, b.len - n0);
        online_softmax_step(s, o, m, l);
        uint32_t pa[NT / 2][4];
        accumulators_to_a<T, NT>(pa, s);
        mma_rows_as_k<T, D, NT / 2>(o, pa, sV);
    }

    float inv_l[2], row_lse[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float total = quad_sum(l[r]);
        inv_l[r] = 1.0f / total;
        row_lse[r] = m[r] + logf(total);
        const int i = b.row0 + 16 * qf::warp_id() + acc_row(2 * r);
        if ((qf::lane_id() & 3) == 0 && i < b.len) lse[(long long)b.head * n_tokens + b.start + i] = row_lse[r];
    }
    store_rows<T, D>(out, o, inv_l, b, width);
    if (probs != nullptr) {
        const long long offset =
            prob_block_offset(cu_seqlens, blockIdx.y, n_heads) + (long long)b.head * b.len * b.len;
        write_probabilities<T, D>(probs, qa, row_lse, sK, k, positions, inv_freq, b, offset, width);
    }
}

// ---------------------------------------------------------------------------------------
// backward
// ---------------------------------------------------------------------------------------

// Δ for one (head, token) row per warp.
template <typename T>
__device__ void flash_backward_dot(float* delta, const T* out, const T* dout, const T* probs, const T* dprobs,
                                   const int* cu_seqlens, int n_seqs, int n_tokens, int n_heads, int head_dim) {
    const long long rows = (long long)n_heads * n_tokens;
    const int wpb = qf::warps_per_block(), lane = qf::lane_id();
    const int width = n_heads * head_dim;
    for (long long r = (long long)blockIdx.x * wpb + qf::warp_id(); r < rows; r += (long long)gridDim.x * wpb) {
        const int head = (int)(r / n_tokens), token = (int)(r - (long long)head * n_tokens);
        const long long at = (long long)token * width + head * head_dim;
        float sum = 0.0f;
        for (int c = lane; c < head_dim; c += 32) sum += qf::to_f32(out[at + c]) * qf::to_f32(dout[at + c]);
        if (probs != nullptr && dprobs != nullptr) {
            int lo = 0, hi = n_seqs - 1;  // the sequence holding `token`: last s with cu[s] ≤ token
            while (lo < hi) {
                const int mid = (lo + hi + 1) / 2;
                if (cu_seqlens[mid] <= token) lo = mid;
                else hi = mid - 1;
            }
            const int len = cu_seqlens[lo + 1] - cu_seqlens[lo], i = token - cu_seqlens[lo];
            const long long off =
                prob_block_offset(cu_seqlens, lo, n_heads) + ((long long)head * len + i) * len;
            for (int j = lane; j < len; j += 32) sum += qf::to_f32(probs[off + j]) * qf::to_f32(dprobs[off + j]);
        }
        sum = qf::warp_sum(sum);
        if (lane == 0) delta[r] = sum;
    }
}

// dK and dV of one key tile (64 keys, 16 per warp), iterating over the query tiles.
template <typename T, int D>
__device__ void flash_backward_kv(T* dk, T* dv, const T* q, const T* k, const T* v, const T* dout, const float* lse,
                                  const float* delta, const T* dprobs, const int* positions, const int* cu_seqlens,
                                  int n_seqs, int n_tokens, int n_heads, float q_scale) {
    using Tl = Tile<D>;
    constexpr int QT = Tl::kQueries, NT = QT / 8;
    BlockRows b;  // row0: the first key of the tile
    if (!block_rows(cu_seqlens, n_seqs, n_heads, b) || qf::dynamic_smem_bytes() < (unsigned)Tl::kKvSmem) return;
    QF_DYNAMIC_SHARED(unsigned char, smem);
    float* inv_freq = reinterpret_cast<float*>(smem);
    T* sK = reinterpret_cast<T*>(smem + Tl::kInvFreqBytes);
    T* sV = sK + kRowsPerBlock * Tl::kStride;
    T* sQ = sV + kRowsPerBlock * Tl::kStride;
    T* sdO = sQ + QT * Tl::kStride;
    float* sLse = reinterpret_cast<float*>(sdO + QT * Tl::kStride);
    float* sDelta = sLse + QT;
    const int width = n_heads * D;
    const long long prob_offset =
        dprobs ? prob_block_offset(cu_seqlens, blockIdx.y, n_heads) + (long long)b.head * b.len * b.len : 0;

    fill_inv_freq<D>(inv_freq);
    __syncthreads();
    load_rotated<T, D>(sK, k, positions, inv_freq, b, b.row0, kRowsPerBlock, width, 1.0f);
    load_plain<T, D>(sV, v, b, b.row0, kRowsPerBlock, width);
    qf::tc::cp_async_wait<0>();
    __syncthreads();
    FragA<D> ka, va;
    load_a<T, D>(ka, sK, 16 * qf::warp_id());
    load_a<T, D>(va, sV, 16 * qf::warp_id());

    float dk_acc[Tl::kDimTiles][4], dv_acc[Tl::kDimTiles][4];
    zero(dk_acc);
    zero(dv_acc);
    for (int i0 = 0; i0 < b.len; i0 += QT) {
        __syncthreads();
        load_rotated<T, D>(sQ, q, positions, inv_freq, b, i0, QT, width, q_scale);
        load_plain<T, D>(sdO, dout, b, i0, QT, width);
        for (int r = threadIdx.x; r < QT; r += blockDim.x) {
            const bool valid = i0 + r < b.len;
            const long long at = (long long)b.head * n_tokens + b.start + i0 + r;
            sLse[r] = valid ? lse[at] : INFINITY;  // P = exp(S − ∞) = 0 past the end
            sDelta[r] = valid ? delta[at] : 0.0f;
        }
        qf::tc::cp_async_wait<0>();
        __syncthreads();
        // Pᵀ = exp(K̃·Q̃ᵀ − LSE[column]) for this warp's 16 keys × QT queries.
        float pt[NT][4];
        zero(pt);
        mma_rows_as_columns<T, D, NT>(pt, ka, sQ);
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int i = 0; i < 4; ++i) pt[j][i] = expf(pt[j][i] - sLse[acc_col(j, i)]);
        uint32_t pa[NT / 2][4];
        accumulators_to_a<T, NT>(pa, pt);
        mma_rows_as_k<T, D, NT / 2>(dv_acc, pa, sdO);  // dV += Pᵀ·dO
        // dPᵀ = V·dOᵀ (+ Gᵀ), dSᵀ = Pᵀ ∘ (dPᵀ − Δ[column]).
        float dst[NT][4];
        zero(dst);
        mma_rows_as_columns<T, D, NT>(dst, va, sdO);
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                float dp = dst[j][i];
                if (dprobs != nullptr) {
                    const int key = b.row0 + 16 * qf::warp_id() + acc_row(i), query = i0 + acc_col(j, i);
                    if (key < b.len && query < b.len) dp += qf::to_f32(dprobs[prob_offset + (long long)query * b.len + key]);
                }
                dst[j][i] = pt[j][i] * (dp - sDelta[acc_col(j, i)]);
            }
        uint32_t dsa[NT / 2][4];
        accumulators_to_a<T, NT>(dsa, dst);
        mma_rows_as_k<T, D, NT / 2>(dk_acc, dsa, sQ);  // dK̃ += dSᵀ·Q̃
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {  // dV rows: no rotation, accumulated straight from the registers
        const int key = b.row0 + 16 * qf::warp_id() + acc_row(2 * r);
        if (dv == nullptr || key >= b.len) continue;
        T* row = dv + ((long long)b.start + key) * width + b.head * D;
#pragma unroll
        for (int j = 0; j < Tl::kDimTiles; ++j) {
            qf::accumulate_into(row + acc_col(j, 0), dv_acc[j][2 * r]);
            qf::accumulate_into(row + acc_col(j, 1), dv_acc[j][2 * r + 1]);
        }
    }
    if (dk != nullptr)
        accumulate_unrotated<T, D>(dk, dk_acc, reinterpret_cast<float*>(smem + Tl::kInvFreqBytes), positions,
                                   inv_freq, b, width, 1.0f);
}

// dQ of one query tile (64 queries, 16 per warp), iterating over the key tiles.
template <typename T, int D>
__device__ void flash_backward_q(T* dq, const T* q, const T* k, const T* v, const T* dout, const float* lse,
                                 const float* delta, const T* dprobs, const int* positions, const int* cu_seqlens,
                                 int n_seqs, int n_tokens, int n_heads, float q_scale) {
    using Tl = Tile<D>;
    constexpr int NT = Tl::kKeys / 8;
    BlockRows b;
    if (!block_rows(cu_seqlens, n_seqs, n_heads, b) || qf::dynamic_smem_bytes() < (unsigned)Tl::kQSmem) return;
    QF_DYNAMIC_SHARED(unsigned char, smem);
    float* inv_freq = reinterpret_cast<float*>(smem);
    T* sQ = reinterpret_cast<T*>(smem + Tl::kInvFreqBytes);
    T* sdO = sQ + kRowsPerBlock * Tl::kStride;
    T* sK = sdO + kRowsPerBlock * Tl::kStride;
    T* sV = sK + Tl::kKeys * Tl::kStride;
    const int width = n_heads * D;
    const long long prob_offset =
        dprobs ? prob_block_offset(cu_seqlens, blockIdx.y, n_heads) + (long long)b.head * b.len * b.len : 0;

    fill_inv_freq<D>(inv_freq);
    __syncthreads();
    load_rotated<T, D>(sQ, q, positions, inv_freq, b, b.row0, kRowsPerBlock, width, q_scale);
    load_plain<T, D>(sdO, dout, b, b.row0, kRowsPerBlock, width);
    qf::tc::cp_async_wait<0>();
    __syncthreads();
    FragA<D> qa, doa;
    load_a<T, D>(qa, sQ, 16 * qf::warp_id());
    load_a<T, D>(doa, sdO, 16 * qf::warp_id());
    float row_lse[2], row_delta[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int i = b.row0 + 16 * qf::warp_id() + acc_row(2 * r);
        const long long at = (long long)b.head * n_tokens + b.start + i;
        row_lse[r] = i < b.len ? lse[at] : INFINITY;
        row_delta[r] = i < b.len ? delta[at] : 0.0f;
    }

    float dq_acc[Tl::kDimTiles][4];
    zero(dq_acc);
    for (int n0 = 0; n0 < b.len; n0 += Tl::kKeys) {
        __syncthreads();
        load_rotated<T, D>(sK, k, positions, inv_freq, b, n0, Tl::kKeys, width, 1.0f);
        load_plain<T, D>(sV, v, b, n0, Tl::kKeys, width);
        qf::tc::cp_async_wait<0>();
        __syncthreads();
        float p[NT][4], ds[NT][4];
        zero(p);
        zero(ds);
        mma_rows_as_columns<T, D, NT>(p, qa, sK);   // S = Q̃·K̃ᵀ
        mma_rows_as_columns<T, D, NT>(ds, doa, sV);  // dP = dO·Vᵀ
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int key = n0 + acc_col(j, i);
                const float pij = key < b.len ? expf(p[j][i] - row_lse[i >> 1]) : 0.0f;
                float dp = ds[j][i];
                if (dprobs != nullptr) {
                    const int query = b.row0 + 16 * qf::warp_id() + acc_row(i);
                    if (key < b.len && query < b.len) dp += qf::to_f32(dprobs[prob_offset + (long long)query * b.len + key]);
                }
                ds[j][i] = pij * (dp - row_delta[i >> 1]);
            }
        uint32_t dsa[NT / 2][4];
        accumulators_to_a<T, NT>(dsa, ds);
        mma_rows_as_k<T, D, NT / 2>(dq_acc, dsa, sK);  // dQ̃ += dS·K̃
    }
    accumulate_unrotated<T, D>(dq, dq_acc, reinterpret_cast<float*>(smem + Tl::kInvFreqBytes), positions, inv_freq, b,
                               width, q_scale);
}

}  // namespace

#define QF_FLASH_KERNELS(T, SUF, D)                                                                             \
    extern "C" __global__ void __launch_bounds__(kThreads)                                                    \
        flash_attention_forward_d##D##_##SUF(T* out, float* lse, T* probs, const T* q, const T* k, const T* v, \
                                             const int* positions, const int* cu_seqlens, int n_seqs,         \
                                             int n_tokens, int n_heads, float q_scale) {                      \
        flash_forward<T, D>(out, lse, probs, q, k, v, positions, cu_seqlens, n_seqs, n_tokens, n_heads, q_scale); \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(kThreads) flash_attention_backward_kv_d##D##_##SUF(           \
        T* dk, T* dv, const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta,  \
        const T* dprobs, const int* positions, const int* cu_seqlens, int n_seqs, int n_tokens, int n_heads,    \
        float q_scale) {                                                                                      \
        flash_backward_kv<T, D>(dk, dv, q, k, v, dout, lse, delta, dprobs, positions, cu_seqlens, n_seqs,        \
                                n_tokens, n_heads, q_scale);                                                  \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(kThreads) flash_attention_backward_q_d##D##_##SUF(            \
        T* dq, const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta,         \
        const T* dprobs, const int* positions, const int* cu_seqlens, int n_seqs, int n_tokens, int n_heads,    \
        float q_scale) {                                                                                      \
        flash_backward_q<T, D>(dq, q, k, v, dout, lse, delta, dprobs, positions, cu_seqlens, n_seqs, n_tokens,  \
                               n_heads, q_scale);                                                             \
    }

#define QF_FLASH_HEAD_DIMS(T, SUF) \
    QF_FLASH_KERNELS(T, SUF, 16)   \
    QF_FLASH_KERNELS(T, SUF, 24)   \
    QF_FLASH_KERNELS(T, SUF, 32)   \
    QF_FLASH_KERNELS(T, SUF, 64)   \
    QF_FLASH_KERNELS(T, SUF, 128)  \
    extern "C" __global__ void flash_attention_backward_dot_##SUF(                                              \
        float* delta, const T* out, const T* dout, const T* probs, const T* dprobs, const int* cu_seqlens,      \
        int n_seqs, int n_tokens, int n_heads, int head_dim) {                                                \
        flash_backward_dot<T>(delta, out, dout, probs, dprobs, cu_seqlens, n_seqs, n_tokens, n_heads, head_dim); \
    }

QF_FLASH_HEAD_DIMS(__half, f16)
QF_FLASH_HEAD_DIMS(__nv_bfloat16, bf16)
