// Q/K/V post-processing after the QKV product, for a run of tokens: add the Q/K/V biases (when
// `bias` is non-null), RMS-normalise each Q and K head with q_norm / k_norm (D weights each, when
// non-null: Qwen3, Gemma 3), rotate Q and K with RoPE (pair i by pos * inv_freq[i], cos and sin
// times mscale — YaRN's attention factor, else 1 —, pairs as rope_cols in common.cuh says), write Q (F32) for attention, and append K and V to the F16 KV
// cache. Token t's position: *pos_dev + t when pos_dev is non-null (decode inside a captured
// graph), else row_pos[t] when that is non-null (a batch of many sequences), else pos0 + t. Its K/V
// row: slots[t] when slots is non-null (a paged pool), else the position.
// Row layout of `qkv` ([n, q_dim + 2 kv_dim]): Q heads, then K heads, then V heads.
// Grid: one block per token; block: 512 threads (16 warps: a warp per head for the norms, then
// every thread striding over (head, pair) and V elements).
#include "common.cuh"

#define ROPE_MAX_HEADS 256

extern "C" __global__ void rope_qkv(const float* __restrict__ qkv, const float* __restrict__ bias,
                                    const float* __restrict__ q_norm, const float* __restrict__ k_norm, float eps,
                                    float* __restrict__ q_out, __half* __restrict__ k_cache,
                                    __half* __restrict__ v_cache, const int* __restrict__ pos_dev,
                                    const int* __restrict__ row_pos, const int* __restrict__ slots, int pos0,
                                    int n_head, int n_kv, int D, const float* __restrict__ inv_freq,
                                    int interleaved, float mscale) {
    __shared__ float head_scale[ROPE_MAX_HEADS];
    const int t = blockIdx.x;
    grid_dep_sync();  // may be a programmatic dependent launch (common.cuh)
    const int pos = pos_dev ? *pos_dev + t : (row_pos ? row_pos[t] : pos0 + t);
    const size_t kv_at = slots ? (size_t)slots[t] : (size_t)pos;
    const int q_dim = n_head * D, kv_dim = n_kv * D, half_d = D / 2;
    const float* row = qkv + (size_t)t * (q_dim + 2 * kv_dim);
    auto in = [&](int c) { return bias ? row[c] + bias[c] : row[c]; };
    if (q_norm) {
        const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, warps = blockDim.x / WARP;
        for (int h = warp; h < n_head + n_kv; h += warps) {
            float ss = 0.0f;
            for (int d = lane; d < D; d += WARP) ss += in(h * D + d) * in(h * D + d);
            ss = warp_sum(ss);
            if (lane == 0) head_scale[h] = 1.0f / sqrtf(ss / (float)D + eps);
        }
        __syncthreads();
    }
    const int pairs = (n_head + n_kv) * half_d;
    for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
        const int head = p / half_d, i = p % half_d;
        float sn, cs;
        sincosf((float)pos * inv_freq[i], &sn, &cs);
        sn *= mscale;
        cs *= mscale;
        int c0, c1;  // columns within Q|K (K starts at q_dim)
        rope_cols(head * D, i, D, interleaved, c0, c1);
        float x0 = in(c0), x1 = in(c1);
        if (q_norm) {
            const float* w = head < n_head ? q_norm : k_norm;
            x0 *= head_scale[head] * w[c0 - head * D];
            x1 *= head_scale[head] * w[c1 - head * D];
        }
        const float y0 = x0 * cs - x1 * sn, y1 = x1 * cs + x0 * sn;
        if (head < n_head) {
            q_out[(size_t)t * q_dim + c0] = y0;
            q_out[(size_t)t * q_dim + c1] = y1;
        } else {
            __half* k = k_cache + kv_at * kv_dim;
            k[c0 - q_dim] = __float2half_rn(y0);
            k[c1 - q_dim] = __float2half_rn(y1);
        }
    }
    __half* v = v_cache + kv_at * kv_dim;
    for (int c = threadIdx.x; c < kv_dim; c += blockDim.x) v[c] = __float2half_rn(in(q_dim + kv_dim + c));
}
