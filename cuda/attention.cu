// Causal grouped-query attention over the F16 KV cache (rows of kv_dim = n_kv * D; query head h
// reads KV head h / (n_head / n_kv)). A sequence's position p lives in row kv_row(table, bs, p)
// (common.cuh): its block table in a paged pool, or row p when the table is null. Every kernel
// takes `window`: 0 for all keys 0..=pos, else only the last `window` of them (keys
// pos - window + 1 ..= pos: a sliding-window layer); the splits below `window_lo` are empty.
//
// One warp processes one query row against a range of keys with an online softmax, 32 keys at a
// time (staged in the warp's shared tile, dynamic shared memory of 2 * tile_halves(D) bytes per
// warp): lane j scores key j of the chunk (a D-long dot product read as 16-byte chunks), the warp
// takes the chunk's max and rescales; then lanes switch to owning output dimensions d = lane + 32 i
// and accumulate sum_j p_j V[j, d] with p_j broadcast by shuffles. D must be a multiple of 8, <= 256.
//
//   attn_rows:    grid (ceil(n / 4), n_head), block 128 = 4 warps = 4 query rows of any sequences;
//                 row t (position row_pos[t], or pos0 + t when row_pos is null) attends to its
//                 sequence's keys 0..=pos, its block table at tables + row_tab[t] (or `tables`
//                 itself when row_tab is null; no table when `tables` is null); output F16
//                 [n, q_dim] for cuBLAS. Prefill of one sequence and a batch of many alike.
//   attn_rows_split + attn_rows_merge: the same rows split over their keys (flash-decoding, for
//                 long contexts): grid (n, n_head * splits), block 32; block (t, h + n_head * s)
//                 takes keys [s * chunk, (s + 1) * chunk) of row t (as attn_decode's split s of one
//                 query) and writes its unnormalised (acc, max, sum) to partial
//                 (t * n_head + h) * splits + s (zeros and -inf past the row's position);
//                 attn_rows_merge (grid (n, n_head), block 32) merges row t's ceil((pos + 1) /
//                 chunk) splits (at most 64) into F16 [n, q_dim] as attn_rows writes it.
//   attn_decode + attn_reduce: one query (position *pos_dev, its K/V already in the cache), split
//                 over the sequence: grid (max_splits, n_head), block 32; split s takes keys
//                 [s * chunk, (s + 1) * chunk) and writes its unnormalised (acc, max, sum);
//                 attn_reduce (grid n_head, block 32) merges the splits into F32 [q_dim].
//   attn_decode_merge: the same splits, and the last of a head's blocks to finish (counted in
//                 count[h] with an atomic after each block's partials are written and fenced)
//                 merges that head's splits as attn_reduce does, then sets count[h] back to 0
//                 for the next launch. One launch instead of two, and the merge is done once per
//                 head. count: n_head ints, zero before the first launch.
#include <math_constants.h>
#include "common.cuh"

#define MAX_D 256
#define PER_LANE (MAX_D / WARP)

struct Softmax {
    float m, l;
    float acc[PER_LANE];
};

// Halves of shared memory one warp needs for a 32-key tile of K (rows padded by 8 halves, so
// lanes reading different rows hit different banks) and of V.
__host__ __device__ constexpr int tile_halves(int D) { return WARP * (D + 8) + WARP * D; }

// Fold keys [k0, k1) into `st` for the query row `q` (shared, D floats). Each 32-key tile of K
// and V is first copied into the warp's shared tile with coalesced 16-byte loads (all in flight
// at once), so the score and value loops read shared memory instead of waiting on scattered loads.
__device__ __forceinline__ void attend_range(const float* q, const __half* __restrict__ kc,
                                             const __half* __restrict__ vc, const int* __restrict__ table, int bs,
                                             int kv_dim, int kv_off, int D, float scale, int k0, int k1, Softmax& st,
                                             __half* tile) {
    const int lane = threadIdx.x % WARP;
    const int kstride = D + 8, per_row = D / 8;
    __half* ks = tile;
    __half* vs = tile + WARP * kstride;
    for (int j0 = k0; j0 < k1; j0 += WARP) {
        const int nk = min(WARP, k1 - j0);
#pragma unroll 4
        for (int i = lane; i < nk * per_row; i += WARP) {
            const int r = i / per_row, c = (i % per_row) * 8;
            const size_t src = kv_row(table, bs, j0 + r) * kv_dim + kv_off + c;
            *reinterpret_cast<uint4*>(ks + r * kstride + c) = *reinterpret_cast<const uint4*>(kc + src);
            *reinterpret_cast<uint4*>(vs + r * D + c) = *reinterpret_cast<const uint4*>(vc + src);
        }
        __syncwarp();
        float s = -CUDART_INF_F;
        if (lane < nk) {
            const __half* k = ks + lane * kstride;
            float dot = 0.0f;
            for (int c = 0; c < D; c += 8) {
                float kf[8];
                load_half8(k + c, kf);
#pragma unroll
                for (int e = 0; e < 8; e++) dot += q[c + e] * kf[e];
            }
            s = dot * scale;
        }
        const float m_new = fmaxf(st.m, warp_max(s));
        const float p = (lane < nk) ? expf(s - m_new) : 0.0f;
        const float corr = expf(st.m - m_new);  // 0 when st.m is -inf
        st.l = st.l * corr + warp_sum(p);
        st.m = m_new;
#pragma unroll
        for (int i = 0; i < PER_LANE; i++) st.acc[i] *= corr;
        for (int jj = 0; jj < nk; jj++) {
            const float pj = __shfl_sync(0xffffffffu, p, jj);
#pragma unroll
            for (int i = 0; i < PER_LANE; i++) {
                const int d = lane + WARP * i;
                if (d < D) st.acc[i] += pj * __half2float(vs[jj * D + d]);
            }
        }
        __syncwarp();
    }
}

__device__ __forceinline__ void softmax_init(Softmax& st) {
    st.m = -CUDART_INF_F;
    st.l = 0.0f;
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) st.acc[i] = 0.0f;
}

// The first key a query at `pos` attends to.
__device__ __forceinline__ int window_lo(int pos, int window) { return window > 0 ? max(0, pos + 1 - window) : 0; }

extern "C" __global__ void attn_rows(const float* __restrict__ q, const __half* __restrict__ kc,
                                     const __half* __restrict__ vc, __half* __restrict__ out, int n,
                                     const int* __restrict__ row_pos, int pos0, const int* __restrict__ row_tab,
                                     const int* __restrict__ tables, int bs, int n_head, int n_kv, int D,
                                     float scale, int window) {
    __shared__ float qs[4][MAX_D];
    extern __shared__ __align__(16) __half tiles[];
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int t = blockIdx.x * 4 + warp, h = blockIdx.y;
    grid_dep_sync();  // may be a programmatic dependent launch (common.cuh)
    if (t >= n) return;
    const int q_dim = n_head * D, kv_dim = n_kv * D, kv_off = (h / (n_head / n_kv)) * D;
    for (int d = lane; d < D; d += WARP) qs[warp][d] = q[(size_t)t * q_dim + h * D + d];
    __syncwarp();
    Softmax st;
    softmax_init(st);
    const int pos = row_pos ? row_pos[t] : pos0 + t;
    const int* table = tables ? tables + (row_tab ? row_tab[t] : 0) : nullptr;
    attend_range(qs[warp], kc, vc, table, bs, kv_dim, kv_off, D, scale, window_lo(pos, window), pos + 1, st,
                 tiles + warp * tile_halves(D));
    const float inv = 1.0f / st.l;
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) {
        const int d = lane + WARP * i;
        if (d < D) out[(size_t)t * q_dim + h * D + d] = __float2half_rn(st.acc[i] * inv);
    }
}

// One split of the decode attention: keys [s * chunk, (s + 1) * chunk) of head h, its unnormalised
// (acc, max, sum) written to partial s of the head (zeros and -inf for a split past the end).
__device__ __forceinline__ void decode_split(const float* __restrict__ q, const __half* __restrict__ kc,
                                             const __half* __restrict__ vc, const int* __restrict__ table, int bs,
                                             float* __restrict__ part_acc,
                                             float* __restrict__ part_ml, int len, int window, int s, int h,
                                             int max_splits, int n_head, int n_kv, int D, float scale, int chunk) {
    __shared__ float qs[MAX_D];
    extern __shared__ __align__(16) __half tiles[];
    const int lane = threadIdx.x;
    const int k0 = max(s * chunk, window_lo(len - 1, window)), k1 = min(len, s * chunk + chunk);
    const size_t part = (size_t)h * max_splits + s;
    Softmax st;
    softmax_init(st);
    if (k0 < k1) {
        const int kv_dim = n_kv * D, kv_off = (h / (n_head / n_kv)) * D;
        for (int d = lane; d < D; d += WARP) qs[d] = q[h * D + d];
        __syncwarp();
        attend_range(qs, kc, vc, table, bs, kv_dim, kv_off, D, scale, k0, k1, st, tiles);
    }
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) {
        const int d = lane + WARP * i;
        if (d < D) part_acc[part * D + d] = st.acc[i];
    }
    if (lane == 0) {
        part_ml[part * 2] = st.m;
        part_ml[part * 2 + 1] = st.l;
    }
}

// Merge the first `splits` partials from `base` (one warp) into o[i] for d = lane + 32 i, already
// normalised. Lane s holds split s and s + 32 (at most 64 splits), so the merge weights take one
// round of loads and shuffles; the output loop then reads every split's partial sums
// independently. The loads bypass L1 (__ldcg): in attn_decode_merge the partials were written by
// other blocks of the same launch.
__device__ __forceinline__ void merge_into(const float* part_acc, const float* part_ml, size_t base, int D,
                                           int splits, float (&o)[PER_LANE]) {
    const int lane = threadIdx.x % WARP;
    float m0 = -CUDART_INF_F, m1 = -CUDART_INF_F, l0 = 0.0f, l1 = 0.0f;
    if (lane < splits) { m0 = __ldcg(part_ml + (base + lane) * 2); l0 = __ldcg(part_ml + (base + lane) * 2 + 1); }
    if (lane + WARP < splits) {
        m1 = __ldcg(part_ml + (base + lane + WARP) * 2);
        l1 = __ldcg(part_ml + (base + lane + WARP) * 2 + 1);
    }
    const float m = warp_max(fmaxf(m0, m1));
    const float w0 = lane < splits ? expf(m0 - m) : 0.0f;
    const float w1 = lane + WARP < splits ? expf(m1 - m) : 0.0f;
    const float inv = 1.0f / warp_sum(l0 * w0 + l1 * w1);
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) o[i] = 0.0f;
    for (int s = 0; s < splits; s++) {
        const float ws = __shfl_sync(0xffffffffu, s < WARP ? w0 : w1, s % WARP);
#pragma unroll
        for (int i = 0; i < PER_LANE; i++) {
            const int d = lane + WARP * i;
            if (d < D) o[i] += __ldcg(part_acc + (base + s) * D + d) * ws;
        }
    }
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) o[i] *= inv;
}

// Merge the first `splits` partials of head h into out[h * D ..] (F32).
__device__ __forceinline__ void merge_splits(const float* part_acc, const float* part_ml, float* __restrict__ out,
                                             int h, int D, int splits, int max_splits) {
    const int lane = threadIdx.x % WARP;
    float o[PER_LANE];
    merge_into(part_acc, part_ml, (size_t)h * max_splits, D, splits, o);
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) {
        const int d = lane + WARP * i;
        if (d < D) out[h * D + d] = o[i];
    }
}

__device__ __forceinline__ int active_splits(int len, int chunk, int max_splits) {
    return min(min(max_splits, 64), (len + chunk - 1) / chunk);
}

extern "C" __global__ void attn_decode(const float* __restrict__ q, const __half* __restrict__ kc,
                                       const __half* __restrict__ vc, const int* __restrict__ table, int bs,
                                       float* __restrict__ part_acc,
                                       float* __restrict__ part_ml, const int* __restrict__ pos_dev, int n_head,
                                       int n_kv, int D, float scale, int chunk, int window) {
    grid_dep_sync();  // may be a programmatic dependent launch (common.cuh)
    decode_split(q, kc, vc, table, bs, part_acc, part_ml, *pos_dev + 1, window, blockIdx.x, blockIdx.y, gridDim.x,
                 n_head, n_kv, D, scale, chunk);
}

extern "C" __global__ void attn_reduce(const float* __restrict__ part_acc, const float* __restrict__ part_ml,
                                       float* __restrict__ out, const int* __restrict__ pos_dev, int D, int chunk,
                                       int max_splits) {
    grid_dep_sync();
    merge_splits(part_acc, part_ml, out, blockIdx.x, D, active_splits(*pos_dev + 1, chunk, max_splits), max_splits);
}

extern "C" __global__ void attn_decode_merge(const float* __restrict__ q, const __half* __restrict__ kc,
                                             const __half* __restrict__ vc, const int* __restrict__ table, int bs,
                                             float* part_acc, float* part_ml,
                                             float* __restrict__ out, int* count, const int* __restrict__ pos_dev,
                                             int n_head, int n_kv, int D, float scale, int chunk, int window) {
    const int h = blockIdx.y, max_splits = gridDim.x;
    grid_dep_sync();
    const int len = *pos_dev + 1;
    decode_split(q, kc, vc, table, bs, part_acc, part_ml, len, window, blockIdx.x, h, max_splits, n_head, n_kv, D,
                 scale, chunk);
    // Every lane's partial writes are visible device-wide before the block is counted.
    __threadfence();
    __syncwarp();
    int last = 0;
    if (threadIdx.x == 0) last = atomicAdd(count + h, 1) == max_splits - 1;
    if (!__shfl_sync(0xffffffffu, last, 0)) return;
    __threadfence();  // the other blocks' partials are read after their counts
    if (threadIdx.x == 0) count[h] = 0;
    merge_splits(part_acc, part_ml, out, h, D, active_splits(len, chunk, max_splits), max_splits);
}

extern "C" __global__ void attn_rows_split(const float* __restrict__ q, const __half* __restrict__ kc,
                                           const __half* __restrict__ vc, float* __restrict__ part_acc,
                                           float* __restrict__ part_ml, int n, const int* __restrict__ row_pos,
                                           int pos0, const int* __restrict__ row_tab, const int* __restrict__ tables,
                                           int bs, int n_head, int n_kv, int D, float scale, int chunk, int splits,
                                           int window) {
    const int t = blockIdx.x, h = blockIdx.y % n_head, sp = blockIdx.y / n_head;
    grid_dep_sync();
    if (t >= n) return;
    const int pos = row_pos ? row_pos[t] : pos0 + t;
    const int* table = tables ? tables + (row_tab ? row_tab[t] : 0) : nullptr;
    // Row t's partials are its own `n_head * splits` of them, as one decode query's.
    const size_t row_parts = (size_t)t * n_head * splits;
    decode_split(q + (size_t)t * n_head * D, kc, vc, table, bs, part_acc + row_parts * D, part_ml + row_parts * 2,
                 pos + 1, window, sp, h, splits, n_head, n_kv, D, scale, chunk);
}

extern "C" __global__ void attn_rows_merge(const float* __restrict__ part_acc, const float* __restrict__ part_ml,
                                           __half* __restrict__ out, int n, const int* __restrict__ row_pos, int pos0,
                                           int n_head, int D, int chunk, int splits) {
    const int t = blockIdx.x, h = blockIdx.y, lane = threadIdx.x;
    grid_dep_sync();
    if (t >= n) return;
    const int pos = row_pos ? row_pos[t] : pos0 + t;
    const int active = min(splits, (pos + chunk) / chunk);
    float o[PER_LANE];
    merge_into(part_acc, part_ml, ((size_t)t * n_head + h) * splits, D, active, o);
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) {
        const int d = lane + WARP * i;
        if (d < D) out[(size_t)t * n_head * D + h * D + d] = __float2half_rn(o[i]);
    }
}
