// Shared pieces of the matrix-vector kernels (gemv.cu, decode_fused.cu): staging the input vector
// in shared memory (plain, RMSNorm-ed, or SwiGLU of a [gate | up] pair) and a warp's dot products
// of R weight rows with it, interleaved so all R rows' loads are in flight together.
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
    if (MODE == 2) {
#pragma unroll 8
        for (int i = threadIdx.x; i < n4; i += blockDim.x) {
            const float4 g = x4[i], u = x4[n4 + i];
            xs4[i] = make_float4(g.x / (1.0f + expf(-g.x)) * u.x, g.y / (1.0f + expf(-g.y)) * u.y,
                                 g.z / (1.0f + expf(-g.z)) * u.z, g.w / (1.0f + expf(-g.w)) * u.w);
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
