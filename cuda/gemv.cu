// Matrix-vector products for decode (one token): y[n] = (acc ? y[n] : 0) + (bias ? bias[n] : 0)
//                                                       + sum_k W[n, k] * in(x)[k]
// W is F16, row-major [N, K] (a GGUF matrix: ne0 = K contiguous); x and y are F32.
// Three input transforms, fused so the vector never makes an extra trip through memory:
//   gemv_plain: in(x) = x
//   gemv_norm : in(x) = x / sqrt(mean(x^2) + eps) * norm_w        (RMSNorm of the residual stream)
//   gemv_silu : in(x)[k] = silu(x[k]) * x[K + k]                   (x = [gate | up], SwiGLU)
//   gemv_gelu : in(x)[k] = gelu_tanh(x[k]) * x[K + k]              (GeGLU, Gemma)
// Algorithm: each warp owns R consecutive rows (`_r1`, `_r4` variants); a lane reads 16-byte chunks
// (8 halves) strided by the warp, so a warp reads 512 contiguous bytes of each row per step. With
// `_cN` (N > 0) a lane fetches its N chunks of every row into registers first, so all the warp's
// loads are in flight while the block stages in(x) in shared memory (K floats, dynamic); with
// `_c0` the rows are streamed after staging, the R rows interleaved and the loop unrolled. Warp
// shuffle reductions give the rows' sums. K must be a multiple of 8 (checked by the host).
// Launch: block 256 threads (8 warps; any multiple of 32 works), grid ceil(N / (warps * R)),
// dynamic shared K * 4 B. May be launched as a programmatic dependent (common.cuh): the weight
// rows are fetched (or prefetched to L2) before waiting for the previous kernel.
#include "gemv.cuh"

// R rows per warp, interleaved so that the loads of all R rows are in flight together; CPL > 0:
// the rows fetched into registers before anything else (K <= CPL * 256), CPL == 0: streamed.
template <int MODE, int R, int CPL>
__device__ __forceinline__ void gemv(const __half* __restrict__ W, const float* __restrict__ x,
                                     const float* __restrict__ norm_w, float eps, const float* __restrict__ bias,
                                     float* __restrict__ y, int N, int K, int acc) {
    extern __shared__ float xs[];
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, warps = blockDim.x / WARP;
    const int row0 = (blockIdx.x * warps + warp) * R;
    int rows[R];
    float s[R];
#pragma unroll
    for (int r = 0; r < R; r++) rows[r] = row0 + r;
    // The weights do not depend on the previous kernel: start them before waiting for it.
    uint4 w[R][CPL > 0 ? CPL : 1];
    warp_rows_start<R, CPL>(W, K, N, rows, w);
    grid_dep_sync();
    stage_input<MODE>(x, norm_w, eps, xs, K);
    if (row0 >= N) return;
    warp_rows_dot_any<R, CPL>(W, w, xs, K, N, rows, s);
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int n = rows[r];
        if (lane == 0 && n < N) {
            const float v = bias ? s[r] + bias[n] : s[r];
            y[n] = acc ? y[n] + v : v;
        }
    }
}

#define GEMV_KERNELS(R, CPL)                                                                                    \
    extern "C" __global__ void gemv_plain_r##R##_c##CPL(const __half* W, const float* x, const float* bias,     \
                                                        float* y, int N, int K, int acc) {                      \
        gemv<0, R, CPL>(W, x, nullptr, 0.0f, bias, y, N, K, acc);                                              \
    }                                                                                                          \
    extern "C" __global__ void gemv_norm_r##R##_c##CPL(const __half* W, const float* x, const float* norm_w,    \
                                                       float eps, const float* bias, float* y, int N, int K,    \
                                                       int acc) {                                               \
        gemv<1, R, CPL>(W, x, norm_w, eps, bias, y, N, K, acc);                                                \
    }                                                                                                          \
    extern "C" __global__ void gemv_silu_r##R##_c##CPL(const __half* W, const float* gu, const float* bias,     \
                                                       float* y, int N, int K, int acc) {                       \
        gemv<2, R, CPL>(W, gu, nullptr, 0.0f, bias, y, N, K, acc);                                             \
    }                                                                                                          \
    extern "C" __global__ void gemv_gelu_r##R##_c##CPL(const __half* W, const float* gu, const float* bias,     \
                                                       float* y, int N, int K, int acc) {                       \
        gemv<3, R, CPL>(W, gu, nullptr, 0.0f, bias, y, N, K, acc);                                             \
    }

// (rows per warp, chunks per lane): streamed for any K, fetched for K <= 1024 / 2048 / 4096 / 6144
// (one row per warp beyond 2048, to bound the registers the fetched rows take).
GEMV_KERNELS(1, 0)
GEMV_KERNELS(4, 0)
GEMV_KERNELS(1, 4)
GEMV_KERNELS(4, 4)
GEMV_KERNELS(1, 8)
GEMV_KERNELS(4, 8)
GEMV_KERNELS(1, 16)
GEMV_KERNELS(1, 24)
