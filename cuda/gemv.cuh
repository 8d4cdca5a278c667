// Shared pieces of the matrix-vector kernels (gemv.cu, decode_fused.cu): staging the input vector
// in shared memory (plain, RMSNorm-ed, or SwiGLU of a [gate | up] pair) and a warp's dot products
// of R weight rows with it, interleaved so all R rows' loads are in flight together.
// Two ways to read the rows: streamed (warp_rows_dot: loads in an unrolled loop, any K), or fetched
// into registers first (warp_rows_fetch + warp_rows_dot_fetched: CPL 16-byte chunks per lane, so
// K <= CPL * 256): every weight load of the warp is issued at the kernel's start, before the input
// is staged and before waiting on the previous kernel, so their latency overlaps both.
#pragma once
#include "common.cuh"

// Stage in(x) in shared memory. Every global load is a 16-byte vector load issued from an
// unrolled loop, so a thread's loads are all in flight before the first is used (a plain strided
// loop waits one memory latency per element).
template <int MODE>
__device__ __forceinline__ void stage_input(const float* __restrict__ x, const float* __restrict__ norm_w,
                                            float eps, float* xs, int K) {
    const int n4 = K / 4;
    const float4* x4 = reinterpret_cast<const float4*>(x);
    float4* xs4 = reinterpret_cast<float4*>(xs);
    if (MODE == 2 || MODE == 3) {
        const int gelu = MODE == 3;
#pragma unroll 8
        for (int i = threadIdx.x; i < n4; i += blockDim.x) {
            const float4 g = x4[i], u = x4[n4 + i];
            xs4[i] = make_float4(gated(g.x, gelu) * u.x, gated(g.y, gelu) * u.y, gated(g.z, gelu) * u.z,
                                 gated(g.w, gelu) * u.w);
        }
        __syncthreads();
        return;
    }
    float ss = 0.0f;
#pragma unroll 8
    for (int i = threadIdx.x; i < n4; i += blockDim.x) {
        const float4 v = x4[i];
        xs4[i] = v;
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    if (MODE == 1) {
        ss = block_sum(ss);  // its barriers also order the xs writes above
        const float scale = 1.0f / sqrtf(ss / (float)K + eps);
        const float4* w4 = reinterpret_cast<const float4*>(norm_w);
#pragma unroll 8
        for (int i = threadIdx.x; i < n4; i += blockDim.x) {
            const float4 v = xs4[i], w = w4[i];
            xs4[i] = make_float4(v.x * scale * w.x, v.y * scale * w.y, v.z * scale * w.z, v.w * scale * w.w);
        }
    }
    __syncthreads();
}

// The warp's R rows of W (K halves each) prefetched to L2; rows >= N skipped.
template <int R>
__device__ __forceinline__ void warp_prefetch_rows(const __half* __restrict__ W, int K, int N, const int (&rows)[R]) {
#pragma unroll
    for (int r = 0; r < R; r++)
        if (rows[r] < N) warp_prefetch_l2(W + (size_t)rows[r] * K, (size_t)K * 2);
}

// s[r] = W[row_r, :] · xs for R rows of a row-major F16 matrix with K columns (K a multiple of
// 8); every lane of the warp gets the sums. A row index >= N is skipped (its sum stays 0).
template <int R>
__device__ __forceinline__ void warp_rows_dot(const __half* __restrict__ W, const float* xs, int K, int N,
                                              const int (&rows)[R], float (&s)[R]) {
    const int lane = threadIdx.x % WARP, chunks = K / 8;
#pragma unroll
    for (int r = 0; r < R; r++) s[r] = 0.0f;
    // 8 (one row) or 4 (several) chunks of every row in flight per lane.
#pragma unroll(R == 1 ? 8 : 4)
    for (int c = lane; c < chunks; c += WARP) {
        const float4 a = *reinterpret_cast<const float4*>(xs + c * 8);
        const float4 b = *reinterpret_cast<const float4*>(xs + c * 8 + 4);
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (rows[r] < N) {
                float wf[8];
                load_half8(W + (size_t)rows[r] * K + c * 8, wf);
                s[r] += wf[0] * a.x + wf[1] * a.y + wf[2] * a.z + wf[3] * a.w
                      + wf[4] * b.x + wf[5] * b.y + wf[6] * b.z + wf[7] * b.w;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) s[r] = warp_sum(s[r]);
}

// Fetch a warp's R rows into registers: lane l holds chunks l, l + 32, ... (8 halves each) of every
// row, zeros past the row's end or for rows >= N. Issued together; nothing waits for them here.
template <int R, int CPL>
__device__ __forceinline__ void warp_rows_fetch(const __half* __restrict__ W, int K, int N, const int (&rows)[R],
                                                uint4 (&w)[R][CPL]) {
    const int lane = threadIdx.x % WARP, chunks = K / 8;
#pragma unroll
    for (int i = 0; i < CPL; i++) {
        const int c = lane + i * WARP;
#pragma unroll
        for (int r = 0; r < R; r++) {
            w[r][i] = make_uint4(0u, 0u, 0u, 0u);
            if (c < chunks && rows[r] < N) w[r][i] = __ldg(reinterpret_cast<const uint4*>(W + (size_t)rows[r] * K) + c);
        }
    }
}

// s[r] = (fetched row r) · xs, summed in the same order as warp_rows_dot; every lane gets the sums.
template <int R, int CPL>
__device__ __forceinline__ void warp_rows_dot_fetched(const uint4 (&w)[R][CPL], const float* xs, int K,
                                                      float (&s)[R]) {
    const int lane = threadIdx.x % WARP, chunks = K / 8;
#pragma unroll
    for (int r = 0; r < R; r++) s[r] = 0.0f;
#pragma unroll
    for (int i = 0; i < CPL; i++) {
        const int c = lane + i * WARP;
        if (c < chunks) {
            const float4 a = *reinterpret_cast<const float4*>(xs + c * 8);
            const float4 b = *reinterpret_cast<const float4*>(xs + c * 8 + 4);
#pragma unroll
            for (int r = 0; r < R; r++) {
                float wf[8];
                half8_to_float(w[r][i], wf);
                s[r] += wf[0] * a.x + wf[1] * a.y + wf[2] * a.z + wf[3] * a.w
                      + wf[4] * b.x + wf[5] * b.y + wf[6] * b.z + wf[7] * b.w;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) s[r] = warp_sum(s[r]);
}

// The dot products of a warp's R rows with xs, either way: CPL > 0 with `w` fetched by
// warp_rows_fetch<R, CPL>, CPL == 0 streamed from W.
template <int R, int CPL>
__device__ __forceinline__ void warp_rows_dot_any(const __half* __restrict__ W, const uint4 (&w)[R][CPL > 0 ? CPL : 1],
                                                  const float* xs, int K, int N, const int (&rows)[R], float (&s)[R]) {
    if constexpr (CPL > 0) {
        warp_rows_dot_fetched<R, CPL>(w, xs, K, s);
    } else {
        warp_rows_dot<R>(W, xs, K, N, rows, s);
    }
}

// Before waiting on the previous kernel: fetch the rows into registers (CPL > 0) or ask L2 for them.
template <int R, int CPL>
__device__ __forceinline__ void warp_rows_start(const __half* __restrict__ W, int K, int N, const int (&rows)[R],
                                                uint4 (&w)[R][CPL > 0 ? CPL : 1]) {
    if constexpr (CPL > 0) {
        warp_rows_fetch<R, CPL>(W, K, N, rows, w);
    } else {
        warp_prefetch_rows<R>(W, K, N, rows);
    }
}
