// Batch-invariant product on the tensor cores: Y[M, N] (+)= X[M, K] · W[N, K]ᵀ, X and W F16
// row-major, F32 accumulation and output (acc != 0 adds into Y). Every output is summed in one
// order fixed by K alone, whatever M is and wherever its row sits in the batch, so a row's values
// are bit-identical alone or beside any others (`--batch-invariant`):
//   - K is cut into 32-column chunks and those into KS ranges (KS = 4 for K <= 1024, else 8: a
//     function of K alone); warp w of the block's KS sums chunks [w*C/KS, (w+1)*C/KS) (C = K/32)
//     in increasing order, two mma.m16n8k16 per chunk, into its own F32 accumulators;
//   - the KS partial sums of an output are added in warp order (((p0 + p1) + p2) + ...).
// Lane (g = lane/4, t = lane%4) reads the 16 bytes at columns 32c + 8t of its rows of X and W and
// feeds them to both mma as the k pairs (2t, 2t+1) and (2t+8, 2t+9): the same permutation of k on
// both sides, so the sum is unchanged and every load is a 16-byte vector load.
// MT (m16 tiles per block, 1/2/4) and NT (n8 tiles per warp, 1/2/4) only choose which block
// computes an output, never how: the host picks them from M and N for speed.
// Launch: block 32*KS, grid (ceil(M / (16 MT)), ceil(N / (8 NT))); K a multiple of 32, X and W
// 16-byte aligned (checked by the host). Rows >= M and columns >= N read as zero and are not
// written.
// The tiled kernels (gemm_fixed_tiled_k*, end of file) compute the same sums in the same order
// through shared memory, for products of many rows; the host picks between the two families.
#include "common.cuh"

__device__ __forceinline__ void mma_16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                          uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// 16 bytes of a weight row, not kept in L1 (each is read once per block).
__device__ __forceinline__ uint4 load_stream(const __half* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// One chunk's operands for a lane: its 16 bytes of each of the tile's X rows (g and g + 8 of
// every m16 tile) and of its W row in every n8 tile; rows past the end read as zero.
template <int MT, int NT>
struct Chunk {
    uint4 a[MT][2];
    uint4 b[NT];
};

template <int MT, int NT>
__device__ __forceinline__ void load_chunk(Chunk<MT, NT>& ch, const __half* const (&xrow)[MT][2],
                                           const __half* const (&wrow)[NT], int c) {
    const uint4 zero = make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int i = 0; i < NT; i++) ch.b[i] = wrow[i] ? load_stream(wrow[i] + (size_t)c * 32) : zero;
#pragma unroll
    for (int j = 0; j < MT; j++)
#pragma unroll
        for (int h = 0; h < 2; h++)
            ch.a[j][h] = xrow[j][h] ? *reinterpret_cast<const uint4*>(xrow[j][h] + (size_t)c * 32) : zero;
}

// Two mma per chunk, k pairs (2t, 2t+1) then (2t+8, 2t+9) from the lane's 16 bytes (file header).
template <int MT, int NT>
__device__ __forceinline__ void mma_chunk(const Chunk<MT, NT>& ch, float (&acc)[MT][NT][4]) {
#pragma unroll
    for (int j = 0; j < MT; j++) {
        const uint4 a0 = ch.a[j][0], a1 = ch.a[j][1];
#pragma unroll
        for (int i = 0; i < NT; i++) {
            mma_16816(acc[j][i], a0.x, a1.x, a0.y, a1.y, ch.b[i].x, ch.b[i].y);
            mma_16816(acc[j][i], a0.z, a1.z, a0.w, a1.w, ch.b[i].z, ch.b[i].w);
        }
    }
}

// The warp's sums over chunks [c0, c1): U chunks loaded at a time, the next U loaded while the
// current U are multiplied (so memory latency overlaps the products).
template <int MT, int NT>
__device__ __forceinline__ void fixed_chunks(const __half* __restrict__ X, const __half* __restrict__ W, int M,
                                             int N, int K, int m0, int n0, int c0, int c1, float (&acc)[MT][NT][4]) {
    const int lane = threadIdx.x % WARP, g = lane / 4, t = lane % 4;
    // Registers a chunk's operands take, and chunks loaded at a time within about 48 of them.
    constexpr int WORDS = 8 * MT + 4 * NT;
    constexpr int U = 48 / WORDS > 0 ? 48 / WORDS : 1;
    const __half* wrow[NT];
    const __half* xrow[MT][2];
#pragma unroll
    for (int i = 0; i < NT; i++) {
        const int n = n0 + 8 * i + g;
        wrow[i] = n < N ? W + (size_t)n * K + 8 * t : nullptr;
    }
#pragma unroll
    for (int j = 0; j < MT; j++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int r = m0 + 16 * j + 8 * h + g;
            xrow[j][h] = r < M ? X + (size_t)r * K + 8 * t : nullptr;
        }
    if (c0 >= c1) return;
    Chunk<MT, NT> cur[U], nxt[U];
#pragma unroll
    for (int u = 0; u < U; u++)
        if (c0 + u < c1) load_chunk<MT, NT>(cur[u], xrow, wrow, c0 + u);
    for (int c = c0; c < c1; c += U) {
#pragma unroll
        for (int u = 0; u < U; u++)
            if (c + U + u < c1) load_chunk<MT, NT>(nxt[u], xrow, wrow, c + U + u);
#pragma unroll
        for (int u = 0; u < U; u++)
            if (c + u < c1) mma_chunk<MT, NT>(cur[u], acc);
#pragma unroll
        for (int u = 0; u < U; u++) cur[u] = nxt[u];
    }
}

// The block's outputs for n8 tiles [n0, n0 + 8 NT) over rows [m0, m0 + 16 MT).
template <int MT, int NT, int KS>
__device__ __forceinline__ void fixed_tile(const __half* __restrict__ X, const __half* __restrict__ W,
                                           float* __restrict__ Y, int M, int N, int K, int acc_out, int m0,
                                           int n0, float (*part)[MT * NT * 4][WARP]) {
    constexpr int E = MT * NT * 4;  // accumulators a thread holds
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    const int chunks = K / 32, c0 = warp * chunks / KS, c1 = (warp + 1) * chunks / KS;
    float acc[MT][NT][4];
#pragma unroll
    for (int j = 0; j < MT; j++)
#pragma unroll
        for (int i = 0; i < NT; i++)
#pragma unroll
            for (int q = 0; q < 4; q++) acc[j][i][q] = 0.0f;
    fixed_chunks<MT, NT>(X, W, M, N, K, m0, n0, c0, c1, acc);
#pragma unroll
    for (int j = 0; j < MT; j++)
#pragma unroll
        for (int i = 0; i < NT; i++)
#pragma unroll
            for (int q = 0; q < 4; q++) part[warp][(j * NT + i) * 4 + q][lane] = acc[j][i][q];
    __syncthreads();
    for (int e = threadIdx.x; e < E * WARP; e += blockDim.x) {
        const int slot = e / WARP, l = e % WARP, q = slot % 4, i = (slot / 4) % NT, j = slot / (4 * NT);
        const int row = m0 + 16 * j + l / 4 + (q >= 2 ? 8 : 0), col = n0 + 8 * i + 2 * (l % 4) + (q & 1);
        if (row >= M || col >= N) continue;
        float v = part[0][slot][l];
#pragma unroll
        for (int w = 1; w < KS; w++) v += part[w][slot][l];
        float* y = Y + (size_t)row * N + col;
        *y = acc_out ? *y + v : v;
    }
}

// Block (x, y) takes rows [16 MT x, 16 MT (x + 1)) and columns [8 NT y, 8 NT (y + 1)); the m
// blocks of one n block are adjacent in launch order, so W's tile is read from DRAM once. Each
// warp asks L2 for its part of W before waiting on the previous kernel (a programmatic dependent
// launch, common.cuh); nothing else is read before.
template <int MT, int NT, int KS>
__device__ __forceinline__ void gemm_fixed(const __half* __restrict__ X, const __half* __restrict__ W,
                                           float* __restrict__ Y, int M, int N, int K, int acc_out) {
    __shared__ float part[KS][MT * NT * 4][WARP];
    const int m0 = blockIdx.x * 16 * MT, n0 = blockIdx.y * 8 * NT;
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, chunks = K / 32;
    const int c0 = warp * chunks / KS, lines = ((warp + 1) * chunks / KS - c0) / 2;  // 128-byte lines
    for (int e = lane; e < 8 * NT * lines; e += WARP) {
        const int n = n0 + e / lines;
        if (n < N) asm volatile("prefetch.global.L2 [%0];" ::"l"(W + (size_t)n * K + c0 * 32 + (e % lines) * 64));
    }
    grid_dep_sync();
    fixed_tile<MT, NT, KS>(X, W, Y, M, N, K, acc_out, m0, n0, part);
}

#define GEMM_FIXED_KERNEL(MT, NT, KS)                                                                      \
    extern "C" __global__ void __launch_bounds__(32 * KS) gemm_fixed_k##KS##_m##MT##_n##NT(                   \
        const __half* X, const __half* W, float* Y, int M, int N, int K, int acc) {                            \
        gemm_fixed<MT, NT, KS>(X, W, Y, M, N, K, acc);                                                        \
    }
// K split in 4 (K <= 1024) or 8 ranges; with 8, at most 2 n8 tiles a warp (the partial sums'
// shared memory).
GEMM_FIXED_KERNEL(1, 1, 4)
GEMM_FIXED_KERNEL(1, 2, 4)
GEMM_FIXED_KERNEL(1, 4, 4)
GEMM_FIXED_KERNEL(2, 1, 4)
GEMM_FIXED_KERNEL(2, 2, 4)
GEMM_FIXED_KERNEL(2, 4, 4)
GEMM_FIXED_KERNEL(4, 1, 4)
GEMM_FIXED_KERNEL(4, 2, 4)
GEMM_FIXED_KERNEL(4, 4, 4)
GEMM_FIXED_KERNEL(1, 1, 8)
GEMM_FIXED_KERNEL(1, 2, 8)
GEMM_FIXED_KERNEL(2, 1, 8)
GEMM_FIXED_KERNEL(2, 2, 8)
GEMM_FIXED_KERNEL(4, 1, 8)
GEMM_FIXED_KERNEL(4, 2, 8)

// The tiled kernels, for products of many rows: the sums above, operands staged through shared
// memory so that X is read once per 64 columns and W once per 64 rows.
//   - A block takes a 64 × 64 tile of Y; its 4 warps (2 × 2) take 32 × 32 each (2 m16 tiles × 4
//     n8 tiles). Every warp walks all C chunks in increasing order through a TILE_STAGES-deep
//     cp.async ring (a stage holds 64 rows of X and 64 rows of W, 32 columns each); rows past the
//     end are zero-filled.
//   - Lane (g, t) reads the same 16 bytes of each row (column 32c + 8t) and runs the same two mma
//     as the kernel above. With 64-byte rows a quarter warp reads 128 contiguous bytes: no bank
//     conflicts.
//   - Range r (chunks [r*C/KS, (r+1)*C/KS)) is summed from zero in its own accumulators, then
//     folded into the total: v = p0, v += p1, ... (an empty range folds +0.0f), as the partial
//     sums of the warps above are added. So every output carries the same bits in either kernel.
// Launch: block TILE_THREADS, grid (ceil(M / 64), ceil(N / 64)); the operand contract above.
constexpr int TILE_M = 64, TILE_N = 64, TILE_STAGES = 4, TILE_THREADS = 128;
static_assert(TILE_M == 64 && TILE_N == 64 && TILE_THREADS == 128, "2 × 2 warps of 32 × 32; 2 rows a thread a stage");

// One stage of the ring: 32 columns (4 × 16 bytes) of the tile's rows of X and of W.
struct TileStage {
    uint4 x[TILE_M][4];
    uint4 w[TILE_N][4];
};

__device__ __forceinline__ void tile_cp_async16(void* dst, const void* src, bool valid) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
}

__device__ __forceinline__ void tile_cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

// Waits until at most PENDING of this thread's committed groups are still in flight.
template <int PENDING>
__device__ __forceinline__ void tile_cp_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(PENDING) : "memory");
}

// The 16-byte pieces a thread copies into every stage of one operand: rows r and r + 32 of the
// tile (r = thread / 4), at column 8 (thread % 4) of each chunk; null past the operand's end.
struct TileSrc {
    const __half* p[2];
};

__device__ __forceinline__ TileSrc tile_src(const __half* __restrict__ A, int rows, int K, int r0) {
    TileSrc s;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int r = r0 + threadIdx.x / 4 + 32 * h;
        s.p[h] = r < rows ? A + (size_t)r * K + 8 * (threadIdx.x % 4) : nullptr;
    }
    return s;
}

// Chunk c of one operand's 64 rows into a stage (zeros for rows past the end).
__device__ __forceinline__ void tile_fetch(uint4 (&dst)[TILE_M][4], const TileSrc& s, const __half* any, int c) {
#pragma unroll
    for (int h = 0; h < 2; h++)
        tile_cp_async16(&dst[threadIdx.x / 4 + 32 * h][threadIdx.x % 4], s.p[h] ? s.p[h] + (size_t)c * 32 : any,
                        s.p[h] != nullptr);
}

// The warp's 32 × 32 outputs (tot, the sums of all ranges) into Y: rows >= M and columns >= N are
// not written; pairs of adjacent columns as one 8-byte access where N and Y allow.
__device__ __forceinline__ void tile_store(float* __restrict__ Y, int M, int N, int acc_out, int row0, int col0,
                                           const float (&tot)[2][4][4]) {
    const int lane = threadIdx.x % WARP, g = lane / 4, t = lane % 4;
    const bool pairs = N % 2 == 0 && reinterpret_cast<uintptr_t>(Y) % 8 == 0;
#pragma unroll
    for (int j = 0; j < 2; j++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int row = row0 + 16 * j + 8 * h + g;
            if (row >= M) continue;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int col = col0 + 8 * i + 2 * t;
                const float v0 = tot[j][i][2 * h], v1 = tot[j][i][2 * h + 1];
                float* y = Y + (size_t)row * N + col;
                if (pairs && col < N) {
                    float2 o = make_float2(v0, v1);
                    if (acc_out) {
                        const float2 old = *reinterpret_cast<const float2*>(y);
                        o = make_float2(old.x + v0, old.y + v1);
                    }
                    *reinterpret_cast<float2*>(y) = o;
                } else {
                    if (col < N) y[0] = acc_out ? y[0] + v0 : v0;
                    if (col + 1 < N) y[1] = acc_out ? y[1] + v1 : v1;
                }
            }
        }
}

// Block (x, y) takes rows [64 x, 64 x + 64) and columns [64 y, 64 y + 64); the m blocks of one n
// block are adjacent in launch order, so W's tile is read from DRAM once. Before waiting on the
// previous kernel (common.cuh) the block copies W's part of the first stages and asks L2 for the
// next 8 chunks of its W rows; X is read only after.
template <int KS>
__device__ __forceinline__ void gemm_fixed_tiled(const __half* __restrict__ X, const __half* __restrict__ W,
                                                 float* __restrict__ Y, int M, int N, int K, int acc_out) {
    __shared__ TileStage stage[TILE_STAGES];
    const int m0 = blockIdx.x * TILE_M, n0 = blockIdx.y * TILE_N, chunks = K / 32;
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, g = lane / 4, t = lane % 4;
    const int wm = warp % 2 * 32, wn = warp / 2 * 32;  // the warp's rows and columns in the tile
    const TileSrc xs = tile_src(X, M, K, m0), ws = tile_src(W, N, K, n0);
#pragma unroll
    for (int s = 0; s < TILE_STAGES - 1; s++)
        if (s < chunks) tile_fetch(stage[s].w, ws, W, s);
    // 128-byte lines [l0, l0 + lines) of each W row: chunks TILE_STAGES - 1 .. TILE_STAGES + 6.
    const int l0 = (TILE_STAGES - 1) / 2, lines = (min(chunks, TILE_STAGES - 1 + 8) + 1) / 2 - l0;
    for (int e = threadIdx.x; e < TILE_N * lines; e += TILE_THREADS) {
        const int n = n0 + e / lines;
        if (n < N) asm volatile("prefetch.global.L2 [%0];" ::"l"(W + (size_t)n * K + (l0 + e % lines) * 64));
    }
    grid_dep_sync();
#pragma unroll
    for (int s = 0; s < TILE_STAGES - 1; s++) {
        if (s < chunks) tile_fetch(stage[s].x, xs, X, s);
        tile_cp_commit();  // group s: chunk s (group 0 also holds W's part of the first stages)
    }
    float cur[2][4][4], tot[2][4][4];
#pragma unroll
    for (int j = 0; j < 2; j++)
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int q = 0; q < 4; q++) tot[j][i][q] = 0.0f;
    int c = 0;
#pragma unroll 1
    for (int r = 0; r < KS; r++) {
        const int c1 = (r + 1) * chunks / KS;
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int q = 0; q < 4; q++) cur[j][i][q] = 0.0f;
        for (; c < c1; c++) {
            // Chunk c landed (this thread's copies, then everyone's); every warp is past chunk c - 1,
            // so its stage may take chunk c + TILE_STAGES - 1.
            tile_cp_wait<TILE_STAGES - 2>();
            __syncthreads();
            const int next = c + TILE_STAGES - 1;
            if (next < chunks) {
                TileStage& st = stage[next % TILE_STAGES];
                tile_fetch(st.x, xs, X, next);
                tile_fetch(st.w, ws, W, next);
            }
            tile_cp_commit();
            const TileStage& st = stage[c % TILE_STAGES];
            Chunk<2, 4> ch;
#pragma unroll
            for (int j = 0; j < 2; j++)
#pragma unroll
                for (int h = 0; h < 2; h++) ch.a[j][h] = st.x[wm + 16 * j + 8 * h + g][t];
#pragma unroll
            for (int i = 0; i < 4; i++) ch.b[i] = st.w[wn + 8 * i + g][t];
            mma_chunk<2, 4>(ch, cur);
        }
        // v = p0, then v += p_r: the order in which the kernel above adds its warps' partial sums.
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int q = 0; q < 4; q++) tot[j][i][q] = r == 0 ? cur[j][i][q] : tot[j][i][q] + cur[j][i][q];
    }
    tile_store(Y, M, N, acc_out, m0 + wm, n0 + wn, tot);
}

#define GEMM_FIXED_TILED_KERNEL(KS)                                                                         \
    extern "C" __global__ void __launch_bounds__(TILE_THREADS) gemm_fixed_tiled_k##KS(                        \
        const __half* X, const __half* W, float* Y, int M, int N, int K, int acc) {                            \
        gemm_fixed_tiled<KS>(X, W, Y, M, N, K, acc);                                                          \
    }
GEMM_FIXED_TILED_KERNEL(4)
GEMM_FIXED_TILED_KERNEL(8)
