// Matrix-vector products for decode (one token): y[n] = (acc ? y[n] : 0) + (bias ? bias[n] : 0)
//                                                       + sum_k W[n, k] * in(x)[k]
// W is F16, row-major [N, K] (a GGUF matrix: ne0 = K contiguous); x and y are F32.
// Three input transforms, fused so the vector never makes an extra trip through memory:
//   gemv_plain: in(x) = x
//   gemv_norm : in(x) = x / sqrt(mean(x^2) + eps) * norm_w        (RMSNorm of the residual stream)
//   gemv_silu : in(x)[k] = silu(x[k]) * x[K + k]                   (x = [gate | up], SwiGLU)
// Algorithm: the block stages in(x) in shared memory (K floats, dynamic), then each warp owns
// `rows_per_warp` consecutive rows; a lane reads 16-byte chunks (8 halves) strided by the warp, so a
// warp reads 512 contiguous bytes of a row per step, unrolled for several loads in flight; a warp
// shuffle reduction gives the row's sum. K must be a multiple of 8 (checked by the host).
// Launch: block 256 threads (8 warps), grid ceil(N / (8 * rows_per_warp)), dynamic shared K * 4 B.
#include "common.cuh"

template <int MODE>
__device__ __forceinline__ void stage_input(const float* __restrict__ x, const float* __restrict__ norm_w,
                                            float eps, float* xs, int K) {
    if (MODE == 1) {
        float ss = 0.0f;
        for (int k = threadIdx.x; k < K; k += blockDim.x) ss += x[k] * x[k];
        ss = block_sum(ss);
        const float scale = 1.0f / sqrtf(ss / (float)K + eps);
        for (int k = threadIdx.x; k < K; k += blockDim.x) xs[k] = x[k] * scale * norm_w[k];
    } else if (MODE == 2) {
        for (int k = threadIdx.x; k < K; k += blockDim.x) {
            const float g = x[k];
            xs[k] = g / (1.0f + expf(-g)) * x[K + k];
        }
    } else {
        for (int k = threadIdx.x; k < K; k += blockDim.x) xs[k] = x[k];
    }
    __syncthreads();
}

template <int MODE>
__device__ __forceinline__ void gemv(const __half* __restrict__ W, const float* __restrict__ x,
                                     const float* __restrict__ norm_w, float eps, const float* __restrict__ bias,
                                     float* __restrict__ y, int N, int K, int acc, int rows_per_warp) {
    extern __shared__ float xs[];
    stage_input<MODE>(x, norm_w, eps, xs, K);
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, warps = blockDim.x / WARP;
    const int chunks = K / 8;
    const int row0 = (blockIdx.x * warps + warp) * rows_per_warp;
    for (int r = 0; r < rows_per_warp; r++) {
        const int n = row0 + r;
        if (n >= N) return;
        const __half* w = W + (size_t)n * K;
        float s = 0.0f;
#pragma unroll 8
        for (int c = lane; c < chunks; c += WARP) {
            float wf[8];
            load_half8(w + c * 8, wf);
            const float4 a = *reinterpret_cast<const float4*>(xs + c * 8);
            const float4 b = *reinterpret_cast<const float4*>(xs + c * 8 + 4);
            s += wf[0] * a.x + wf[1] * a.y + wf[2] * a.z + wf[3] * a.w
               + wf[4] * b.x + wf[5] * b.y + wf[6] * b.z + wf[7] * b.w;
        }
        s = warp_sum(s);
        if (lane == 0) {
            if (bias) s += bias[n];
            y[n] = acc ? y[n] + s : s;
        }
    }
}

extern "C" __global__ void gemv_plain(const __half* W, const float* x, const float* bias, float* y, int N, int K,
                                      int acc, int rows_per_warp) {
    gemv<0>(W, x, nullptr, 0.0f, bias, y, N, K, acc, rows_per_warp);
}

extern "C" __global__ void gemv_norm(const __half* W, const float* x, const float* norm_w, float eps,
                                     const float* bias, float* y, int N, int K, int acc, int rows_per_warp) {
    gemv<1>(W, x, norm_w, eps, bias, y, N, K, acc, rows_per_warp);
}

extern "C" __global__ void gemv_silu(const __half* W, const float* gu, const float* bias, float* y, int N, int K,
                                     int acc, int rows_per_warp) {
    gemv<2>(W, gu, nullptr, 0.0f, bias, y, N, K, acc, rows_per_warp);
}
