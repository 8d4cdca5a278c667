// RMSNorm for prefill: y[r, :] = f16(x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w), the input of the
// next cuBLAS product. Output row r reads input row rows[r] when `rows` is non-null (the rows
// whose logits a batch wants), else row r. Grid: one block per output row; block: 256 threads
// (sum of squares reduced over the block, then each thread scales its columns).
#include "common.cuh"

extern "C" __global__ void rmsnorm_f16(const float* __restrict__ x, const float* __restrict__ w,
                                       __half* __restrict__ y, const int* __restrict__ rows, int cols, float eps) {
    grid_dep_sync();  // may be a programmatic dependent launch (common.cuh)
    const float* xr = x + (size_t)(rows ? rows[blockIdx.x] : blockIdx.x) * cols;
    __half* yr = y + (size_t)blockIdx.x * cols;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) ss += xr[c] * xr[c];
    ss = block_sum(ss);
    const float scale = 1.0f / sqrtf(ss / (float)cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = __float2half_rn(xr[c] * scale * w[c]);
}

// The post-norm residual (Gemma 3): x[r, :] += y[r, :] / sqrt(mean(y[r, :]^2) + eps) * w, where y
// is a projection's F32 output. Grid: one block per row; block: 256 threads.
extern "C" __global__ void rmsnorm_add(const float* __restrict__ y, const float* __restrict__ w,
                                       float* __restrict__ x, int cols, float eps) {
    grid_dep_sync();
    const float* yr = y + (size_t)blockIdx.x * cols;
    float* xr = x + (size_t)blockIdx.x * cols;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) ss += yr[c] * yr[c];
    ss = block_sum(ss);
    const float scale = 1.0f / sqrtf(ss / (float)cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) xr[c] += yr[c] * scale * w[c];
}
