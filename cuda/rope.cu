// Q/K/V post-processing after the QKV product, for a run of tokens at positions base..base+n-1:
// add the Q/K/V biases, rotate Q and K with RoPE in the NeoX ("half rotation") layout Qwen2 uses
// (pairs (i, i + D/2), angle = pos * base^(-2i/D)), write Q (F32) for attention, and append K and V
// to the F16 KV cache. Token t's position: *pos_dev + t when pos_dev is non-null (decode inside a
// captured graph), else row_pos[t] when that is non-null (a batch of many sequences), else pos0 + t.
// Its K/V row: slots[t] when slots is non-null (a paged pool), else the position.
// Row layout of `qkv` ([n, q_dim + 2 kv_dim]): Q heads, then K heads, then V heads.
// Grid: one block per token; block: 512 threads striding over (head, pair) and V elements.
#include "common.cuh"

extern "C" __global__ void rope_qkv(const float* __restrict__ qkv, const float* __restrict__ bias,
                                    float* __restrict__ q_out, __half* __restrict__ k_cache,
                                    __half* __restrict__ v_cache, const int* __restrict__ pos_dev,
                                    const int* __restrict__ row_pos, const int* __restrict__ slots, int pos0,
                                    int n_head, int n_kv, int D, float freq_base) {
    const int t = blockIdx.x;
    grid_dep_sync();  // may be a programmatic dependent launch (common.cuh)
    const int pos = pos_dev ? *pos_dev + t : (row_pos ? row_pos[t] : pos0 + t);
    const size_t kv_at = slots ? (size_t)slots[t] : (size_t)pos;
    const int q_dim = n_head * D, kv_dim = n_kv * D, half_d = D / 2;
    const float* row = qkv + (size_t)t * (q_dim + 2 * kv_dim);
    const int pairs = (n_head + n_kv) * half_d;
    for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
        const int head = p / half_d, i = p % half_d;
        const float inv_freq = 1.0f / powf(freq_base, (float)(2 * i) / (float)D);
        float sn, cs;
        sincosf((float)pos * inv_freq, &sn, &cs);
        const int c0 = head * D + i, c1 = c0 + half_d;  // columns within Q|K (K starts at q_dim)
        const float x0 = row[c0] + bias[c0], x1 = row[c1] + bias[c1];
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
    for (int c = threadIdx.x; c < kv_dim; c += blockDim.x) {
        const int col = q_dim + kv_dim + c;
        v[c] = __float2half_rn(row[col] + bias[col]);
    }
}
