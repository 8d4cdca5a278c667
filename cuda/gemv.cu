// Matrix-vector products for decode (one token): y[n] = (acc ? y[n] : 0) + (bias ? bias[n] : 0)
//                                                       + sum_k W[n, k] * in(x)[k]
// W is F16, row-major [N, K] (a GGUF matrix: ne0 = K contiguous); x and y are F32.
// Three input transforms, fused so the vector never makes an extra trip through memory:
//   gemv_plain: in(x) = x
//   gemv_norm : in(x) = x / sqrt(mean(x^2) + eps) * norm_w        (RMSNorm of the residual stream)
//   gemv_silu : in(x)[k] = silu(x[k]) * x[K + k]                   (x = [gate | up], SwiGLU)
// Algorithm: the block stages in(x) in shared memory (K floats, dynamic), then each warp owns R
// consecutive rows (`_r1`, `_r4` variants); a lane reads 16-byte chunks (8 halves) strided by the
// warp, so a warp reads 512 contiguous bytes of each row per step, the R rows interleaved and the
// loop unrolled for many loads in flight; warp shuffle reductions give the rows' sums. K must be a
// multiple of 8 (checked by the host).
// Launch: block 256 threads (8 warps), grid ceil(N / (8 * R)), dynamic shared K * 4 B.
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

// R rows per warp, interleaved so that the loads of all R rows are in flight together.
template <int MODE, int R>
__device__ __forceinline__ void gemv(const __half* __restrict__ W, const float* __restrict__ x,
                                     const float* __restrict__ norm_w, float eps, const float* __restrict__ bias,
                                     float* __restrict__ y, int N, int K, int acc) {
    extern __shared__ float xs[];
    stage_input<MODE>(x, norm_w, eps, xs, K);
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, warps = blockDim.x / WARP;
    const int chunks = K / 8;
    const int row0 = (blockIdx.x * warps + warp) * R;
    if (row0 >= N) return;
    float s[R];
#pragma unroll
    for (int r = 0; r < R; r++) s[r] = 0.0f;
#pragma unroll 4
    for (int c = lane; c < chunks; c += WARP) {
        const float4 a = *reinterpret_cast<const float4*>(xs + c * 8);
        const float4 b = *reinterpret_cast<const float4*>(xs + c * 8 + 4);
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (row0 + r < N) {
                float wf[8];
                load_half8(W + (size_t)(row0 + r) * K + c * 8, wf);
                s[r] += wf[0] * a.x + wf[1] * a.y + wf[2] * a.z + wf[3] * a.w
                      + wf[4] * b.x + wf[5] * b.y + wf[6] * b.z + wf[7] * b.w;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        const float t = warp_sum(s[r]);
        const int n = row0 + r;
        if (lane == 0 && n < N) {
            const float v = bias ? t + bias[n] : t;
            y[n] = acc ? y[n] + v : v;
        }
    }
}

#define GEMV_KERNELS(R)                                                                                         \
    extern "C" __global__ void gemv_plain_r##R(const __half* W, const float* x, const float* bias, float* y,   \
                                               int N, int K, int acc) {                                        \
        gemv<0, R>(W, x, nullptr, 0.0f, bias, y, N, K, acc);                                                   \
    }                                                                                                          \
    extern "C" __global__ void gemv_norm_r##R(const __half* W, const float* x, const float* norm_w, float eps, \
                                              const float* bias, float* y, int N, int K, int acc) {            \
        gemv<1, R>(W, x, norm_w, eps, bias, y, N, K, acc);                                                     \
    }                                                                                                          \
    extern "C" __global__ void gemv_silu_r##R(const __half* W, const float* gu, const float* bias, float* y,   \
                                              int N, int K, int acc) {                                         \
        gemv<2, R>(W, gu, nullptr, 0.0f, bias, y, N, K, acc);                                                  \
    }

GEMV_KERNELS(1)
GEMV_KERNELS(4)
