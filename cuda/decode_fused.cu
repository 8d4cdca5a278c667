// Fused decode kernel: RMSNorm, the QKV biases, RoPE and the KV append folded into the QKV
// matrix-vector product, so a decode step launches two kernels fewer per layer (the split merge of
// the attention is folded into attn_decode_merge, attention.cu).
//
//   gemv_qkv_rope: RMSNorm(x) staged in shared memory (as gemv_norm), then QKV rows with the bias
//     (when non-null), RoPE and the KV append applied in the epilogue: one warp takes the two rows
//     of a rotation pair (rope_cols, common.cuh) of Q or K (their loads interleaved), adds the
//     biases, rotates by pos * inv_freq[i] (as rope_qkv) and writes Q (F32) or the K cache row (F16);
//     the remaining warps take one V row each into the V cache. Position from `pos_dev`; the K/V
//     row from `slot_dev` (a paged pool) or the position when it is null.
//     Launch: block 256 (8 warps), grid ceil(((n_head + n_kv) * D/2 + n_kv * D) / 8), dynamic
//     shared K * 4 B.
// It may be launched as a programmatic dependent (common.cuh). `_cN` variants (gemv.cuh): with
// N > 0 every warp fetches its weight rows into registers (K <= N * 256) before waiting for the
// previous kernel; with N == 0 it asks L2 for them and streams them after the input is staged.
#include "gemv.cuh"

template <int CPL>
__device__ __forceinline__ void qkv_rope(const __half* __restrict__ W, const float* __restrict__ x,
                                         const float* __restrict__ norm_w, float eps, const float* __restrict__ bias,
                                         float* __restrict__ q_out, __half* __restrict__ k_cache,
                                         __half* __restrict__ v_cache, const int* __restrict__ pos_dev,
                                         const int* __restrict__ slot_dev, int n_head, int n_kv, int D,
                                         const float* __restrict__ inv_freq, int interleaved, float mscale,
                                         int K) {
    extern __shared__ float fused_xs[];
    float* xs = fused_xs;
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, warps = blockDim.x / WARP;
    const int half_d = D / 2, q_dim = n_head * D, kv_dim = n_kv * D, rows = q_dim + 2 * kv_dim;
    const int pairs = (n_head + n_kv) * half_d;
    const int t = blockIdx.x * warps + warp;
    // This warp's rows: a rotation pair of Q or K, or one V row (its second row past the end, so
    // skipped: a zero row in the sums). Started before waiting on the previous kernel.
    int r[2] = {rows, rows};
    if (t < pairs) {
        rope_cols((t / half_d) * D, t % half_d, D, interleaved, r[0], r[1]);
    } else if (t < pairs + kv_dim) {
        r[0] = q_dim + kv_dim + (t - pairs);
    }
    uint4 w[2][CPL > 0 ? CPL : 1];
    warp_rows_start<2, CPL>(W, K, rows, r, w);
    grid_dep_sync();
    stage_input<1>(x, norm_w, eps, xs, K);
    if (t >= pairs + kv_dim) return;
    const int pos = *pos_dev;
    const size_t kv_at = slot_dev ? (size_t)*slot_dev : (size_t)pos;
    float s[2];
    warp_rows_dot_any<2, CPL>(W, w, xs, K, rows, r, s);
    if (lane != 0) return;
    if (t < pairs) {
        const int head = t / half_d, i = t % half_d;
        float sn, cs;
        sincosf((float)pos * inv_freq[i], &sn, &cs);
        sn *= mscale;
        cs *= mscale;
        const float x0 = bias ? s[0] + bias[r[0]] : s[0], x1 = bias ? s[1] + bias[r[1]] : s[1];
        const float y0 = x0 * cs - x1 * sn, y1 = x1 * cs + x0 * sn;
        if (head < n_head) {
            q_out[r[0]] = y0;
            q_out[r[1]] = y1;
        } else {
            __half* k = k_cache + kv_at * kv_dim;
            k[r[0] - q_dim] = __float2half_rn(y0);
            k[r[1] - q_dim] = __float2half_rn(y1);
        }
    } else {
        v_cache[kv_at * kv_dim + (t - pairs)] = __float2half_rn(bias ? s[0] + bias[r[0]] : s[0]);
    }
}

#define QKV_ROPE_KERNEL(CPL)                                                                                   \
    extern "C" __global__ void gemv_qkv_rope_c##CPL(                                                          \
        const __half* W, const float* x, const float* norm_w, float eps, const float* bias, float* q_out,     \
        __half* k_cache, __half* v_cache, const int* pos_dev, const int* slot_dev, int n_head, int n_kv, int D,  \
        const float* inv_freq, int interleaved, float mscale, int K) {                                        \
        qkv_rope<CPL>(W, x, norm_w, eps, bias, q_out, k_cache, v_cache, pos_dev, slot_dev, n_head, n_kv, D,       \
                      inv_freq, interleaved, mscale, K);                                                      \
    }
QKV_ROPE_KERNEL(0)
QKV_ROPE_KERNEL(4)
QKV_ROPE_KERNEL(8)
QKV_ROPE_KERNEL(16)
QKV_ROPE_KERNEL(24)
