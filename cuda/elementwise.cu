// Gated activation for prefill: act[t, i] = f16(a(gate[t, i]) * up[t, i]) where each row of `gu`
// holds the gate half then the up half (the stacked gate/up product); a = silu (SwiGLU), or with
// `gelu` the tanh approximation of GELU (GeGLU, Gemma). Grid-stride over all elements.
#include "common.cuh"

extern "C" __global__ void gated_mul(const float* __restrict__ gu, __half* __restrict__ act, int n_tokens, int ffn,
                                     int gelu) {
    grid_dep_sync();  // may be a programmatic dependent launch (common.cuh)
    const size_t n = (size_t)n_tokens * ffn;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t t = i / ffn, c = i % ffn;
        const float g = gu[t * 2 * ffn + c], u = gu[t * 2 * ffn + ffn + c];
        act[i] = __float2half_rn(gated(g, gelu) * u);
    }
}
