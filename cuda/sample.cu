// Per-row work on a step's logits, so that only a few numbers per sequence cross to the host
// instead of 151,936 logits. One block of 1024 threads per row; ids >= n_text (embedding rows past
// the tokenizer's vocabulary) are never chosen.
//
//   logits_rows: for each row, by mode[row]:
//     every mode: status (0 ok, 1 a NaN or +inf, or nothing finite; 2 too many ties at the head's
//                 edge: the host reads the whole row), the argmax (lowest id on ties), the max;
//     1 (draw):   with p_i = exp((l_i - max) * inv_t[row]): the id where the running sum over ids
//                 in order first exceeds u[row] * sum(p) (the last id with p > 0 when rounding
//                 leaves u * sum at the top), and sum(p);
//     2 (head):   sum(p), and the HEAD_K largest logits sorted descending (ties: lower id first),
//                 found exactly: the candidates are the logits in the fewest top bins of a
//                 histogram of (max - logit) that hold HEAD_K of them (one pass, few atomics on
//                 one address, since the bins spread the bulk of the vocabulary); when those are
//                 more than CAND_CAP, or fewer than HEAD_K logits lie within the histogram's
//                 range, a radix select over the logits' order-preserving keys finds them.
//   Output per row: 8 words [status, argmax, drawn, n_cand, max, total, 0, 0] then HEAD_K pairs
//   (logit, id).
#include <math_constants.h>
#include "common.cuh"

#define HEAD_K 256
#define CAND_CAP 512
// The fast head's histogram: FAST_BINS bins of 1/FAST_SCALE of a logit below the max.
#define FAST_BINS 2048
#define FAST_SCALE 64.0f
#define ROW_WORDS (8 + 2 * HEAD_K)

// Order-preserving key of a float (larger float, larger key; -inf smallest of the non-NaN).
__device__ __forceinline__ unsigned order_key(float v) {
    const unsigned b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// (value, id) max over the block, lowest id on equal values; every thread gets it.
__device__ __forceinline__ void block_argmax(float& v, int& id) {
    __shared__ float sv[32];
    __shared__ int si[32];
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int oi = __shfl_xor_sync(0xffffffffu, id, o);
        if (ov > v || (ov == v && oi < id)) { v = ov; id = oi; }
    }
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    __syncthreads();
    if (lane == 0) { sv[warp] = v; si[warp] = id; }
    __syncthreads();
    v = sv[0];
    id = si[0];
    for (int w = 1; w < (int)(blockDim.x / WARP); w++)
        if (sv[w] > v || (sv[w] == v && si[w] < id)) { v = sv[w]; id = si[w]; }
}

// Exclusive prefix sum over the block of one float per thread (in thread order); `total` gets
// the sum. Thread order = id order when each thread owns a contiguous range.
__device__ __forceinline__ float block_exclusive_scan(float x, float& total) {
    __shared__ float warp_tot[32];
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, nw = blockDim.x / WARP;
    float incl = x;
    for (int o = 1; o < WARP; o <<= 1) {
        const float y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
    }
    __syncthreads();
    if (lane == WARP - 1) warp_tot[warp] = incl;
    __syncthreads();
    float before = 0.0f;
    total = 0.0f;
    for (int w = 0; w < nw; w++) {
        if (w < warp) before += warp_tot[w];
        total += warp_tot[w];
    }
    return before + incl - x;
}

// Mode 1: the draw over ids in order. Each thread owns a contiguous range of ids.
__device__ void draw_row(const float* l, int n_text, float mx, float it, float u, unsigned* o) {
    const int chunk = (n_text + blockDim.x - 1) / blockDim.x;
    const int lo = min(n_text, (int)threadIdx.x * chunk), hi = min(n_text, lo + chunk);
    float s = 0.0f;
    int last = -1;
    for (int i = lo; i < hi; i++) {
        const float p = expf((l[i] - mx) * it);
        if (p > 0.0f) { s += p; last = i; }
    }
    float total;
    const float before = block_exclusive_scan(s, total);
    const float target = u * total;
    __shared__ int drawn;
    if (threadIdx.x == 0) drawn = -1;
    __syncthreads();
    if (s > 0.0f && target >= before && target < before + s) {
        float acc = before;
        int pick = last;
        for (int i = lo; i < hi; i++) {
            const float p = expf((l[i] - mx) * it);
            if (p > 0.0f) {
                acc += p;
                if (target < acc) { pick = i; break; }
            }
        }
        atomicMax(&drawn, pick);
    }
    // Rounding left the target at the very top: the last id with any mass.
    float lv = (float)last;
    int unused = 0;
    block_argmax(lv, unused);
    if (threadIdx.x == 0) {
        o[2] = drawn >= 0 ? drawn : (int)lv;
        o[5] = __float_as_uint(total);
    }
}

// Sort the block's shared candidates (CAND_CAP entries) by value descending, then id ascending.
__device__ void sort_candidates(float* cv, unsigned* ci) {
    for (int k = 2; k <= CAND_CAP; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int i = threadIdx.x; i < CAND_CAP; i += blockDim.x) {
                const int p = i ^ j;
                if (p > i) {
                    const bool before = cv[i] > cv[p] || (cv[i] == cv[p] && ci[i] < ci[p]);
                    const bool up = (i & k) == 0;  // this run ends sorted "first goes first"
                    if (up != before) {
                        const float tv = cv[i]; cv[i] = cv[p]; cv[p] = tv;
                        const unsigned t = ci[i]; ci[i] = ci[p]; ci[p] = t;
                    }
                }
            }
            __syncthreads();
        }
    }
}

// The fast head's bin of logit `v` (row max `mx`), -1 below the histogram's range.
__device__ __forceinline__ int fast_bin(float v, float mx) {
    const float d = (mx - v) * FAST_SCALE;
    return d < (float)FAST_BINS ? (int)d : -1;
}

// Exclusive prefix sum over the block of one unsigned per thread (in thread order).
__device__ __forceinline__ unsigned block_exclusive_scan_u(unsigned x) {
    __shared__ unsigned warp_tot[32];
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    unsigned incl = x;
    for (int o = 1; o < WARP; o <<= 1) {
        const unsigned y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
    }
    __syncthreads();
    if (lane == WARP - 1) warp_tot[warp] = incl;
    __syncthreads();
    unsigned before = 0;
    for (int w = 0; w < warp; w++) before += warp_tot[w];
    return before + incl - x;
}

// The fast head's candidates into cv/ci: every logit in the fewest top bins holding `want`.
// Returns how many were taken, or 0 when they would be more than CAND_CAP or fewer than `want`
// lie in the histogram (the caller then selects by radix).
__device__ unsigned fast_candidates(const float* l, int n_text, float mx, unsigned want,
                                    float* cv, unsigned* ci) {
    __shared__ unsigned fh[FAST_BINS];
    __shared__ int s_last;
    __shared__ unsigned s_taken, s_n;
    for (int b = threadIdx.x; b < FAST_BINS; b += blockDim.x) fh[b] = 0;
    if (threadIdx.x == 0) { s_last = -1; s_taken = 0; s_n = 0; }
    __syncthreads();
    for (int i = threadIdx.x; i < n_text; i += blockDim.x) {
        const int b = fast_bin(l[i], mx);
        if (b >= 0) atomicAdd(&fh[b], 1u);
    }
    __syncthreads();
    // Each thread owns FAST_BINS / blockDim.x consecutive bins (from the top).
    const int per = FAST_BINS / blockDim.x, b0 = threadIdx.x * per;
    unsigned mine = 0;
    for (int b = b0; b < b0 + per; b++) mine += fh[b];
    unsigned cum = block_exclusive_scan_u(mine);
    if (cum < want && cum + mine >= want) {
        for (int b = b0; b < b0 + per; b++) {
            cum += fh[b];
            if (cum >= want) { s_last = b; s_taken = cum; break; }
        }
    }
    __syncthreads();
    const int last = s_last;
    const unsigned taken = s_taken;
    if (last < 0 || taken > CAND_CAP) return 0;
    for (int i = threadIdx.x; i < CAND_CAP; i += blockDim.x) { cv[i] = -CUDART_INF_F; ci[i] = 0xffffffffu; }
    __syncthreads();
    for (int i = threadIdx.x; i < n_text; i += blockDim.x) {
        const int b = fast_bin(l[i], mx);
        if (b >= 0 && b <= last) {
            const unsigned at = atomicAdd(&s_n, 1u);
            cv[at] = l[i];
            ci[at] = i;
        }
    }
    __syncthreads();
    return taken;
}

// Mode 2: the sum of p, and the HEAD_K largest logits (radix select on the keys, 8 bits a pass).
__device__ void head_row(const float* l, int n_text, float mx, float it, unsigned* o) {
    __shared__ unsigned hist[256];
    __shared__ unsigned s_bin, s_need, s_n;
    __shared__ float cv[CAND_CAP];
    __shared__ unsigned ci[CAND_CAP];
    float s = 0.0f;
    for (int i = threadIdx.x; i < n_text; i += blockDim.x) s += expf((l[i] - mx) * it);
    s = block_sum(s);
    const unsigned want = min(HEAD_K, n_text);
    if (fast_candidates(l, n_text, mx, want, cv, ci) > 0) {
        sort_candidates(cv, ci);
        for (int j = threadIdx.x; j < (int)want; j += blockDim.x) {
            o[8 + 2 * j] = __float_as_uint(cv[j]);
            o[8 + 2 * j + 1] = ci[j];
        }
        if (threadIdx.x == 0) {
            o[0] = 0u;
            o[3] = want;
            o[5] = __float_as_uint(s);
        }
        return;
    }
    unsigned prefix = 0, pmask = 0, need = want;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
        __syncthreads();
        for (int i = threadIdx.x; i < n_text; i += blockDim.x) {
            const unsigned key = order_key(l[i]);
            if ((key & pmask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            unsigned cum = 0;
            for (int b = 255; b >= 0; b--) {
                if (cum + hist[b] >= need) { s_bin = b; s_need = need - cum; break; }
                cum += hist[b];
            }
        }
        __syncthreads();
        prefix |= s_bin << shift;
        pmask |= 0xffu << shift;
        need = s_need;
        __syncthreads();
    }
    // prefix: the key of the want-th largest; `need` of the values equal to it are taken.
    for (int i = threadIdx.x; i < CAND_CAP; i += blockDim.x) { cv[i] = -CUDART_INF_F; ci[i] = 0xffffffffu; }
    if (threadIdx.x == 0) s_n = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < n_text; i += blockDim.x) {
        const unsigned key = order_key(l[i]);
        if (key >= prefix) {
            const unsigned at = atomicAdd(&s_n, 1u);
            if (at < CAND_CAP) { cv[at] = l[i]; ci[at] = i; }
        }
    }
    __syncthreads();
    const bool overflow = s_n > CAND_CAP;
    if (!overflow) sort_candidates(cv, ci);
    for (int j = threadIdx.x; j < (int)want; j += blockDim.x) {
        o[8 + 2 * j] = __float_as_uint(cv[j]);
        o[8 + 2 * j + 1] = ci[j];
    }
    if (threadIdx.x == 0) {
        o[0] = overflow ? 2u : 0u;
        o[3] = want;
        o[5] = __float_as_uint(s);
    }
}

extern "C" __global__ void logits_rows(const float* __restrict__ logits, int vocab, int n_text,
                                       const int* __restrict__ mode, const float* __restrict__ inv_t,
                                       const float* __restrict__ u, unsigned* __restrict__ out) {
    const int row = blockIdx.x;
    const float* l = logits + (size_t)row * vocab;
    unsigned* o = out + (size_t)row * ROW_WORDS;
    bool bad = false, fin = false;
    float mx = -CUDART_INF_F;
    int arg = 0x7fffffff;
    for (int i = threadIdx.x; i < n_text; i += blockDim.x) {
        const float v = l[i];
        const unsigned b = __float_as_uint(v);
        bad |= b == 0x7f800000u || (b & 0x7fffffffu) > 0x7f800000u;
        fin |= (b & 0x7f800000u) != 0x7f800000u;
        if (v > mx) { mx = v; arg = i; }
    }
    bad = __syncthreads_or(bad);
    fin = __syncthreads_or(fin);
    block_argmax(mx, arg);
    if (threadIdx.x == 0) {
        o[0] = (bad || !fin) ? 1u : 0u;
        o[1] = arg;
        o[2] = arg;
        o[3] = 0;
        o[4] = __float_as_uint(mx);
        o[5] = 0;
    }
    if (bad || !fin) return;
    const int m = mode[row];
    if (m == 1) draw_row(l, n_text, mx, inv_t[row], u[row], o);
    if (m == 2) head_row(l, n_text, mx, inv_t[row], o);
}
