// Shared helpers for the kernel files: warp and block reductions, F16 vector loads.
// Every kernel file includes this; build.rs compiles all kernel files as one translation unit.
#pragma once
#include <cuda_fp16.h>
#include <stdint.h>

#define WARP 32

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[32];
    __shared__ float total;
    v = warp_sum(v);
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float s = lane < (int)(blockDim.x / WARP) ? partial[lane] : 0.0f;
        s = warp_sum(s);
        if (lane == 0) total = s;
    }
    __syncthreads();
    return total;
}

// Programmatic dependent launch (sm_90 and later; no-ops when a kernel is launched the ordinary
// way, and in the compute_80 PTX). A kernel launched as a dependent of the previous kernel in its
// stream may start before that kernel finishes: everything before grid_dep_sync() must touch
// only memory no earlier kernel writes (the weights); grid_dep_sync() waits until the previous
// kernel has finished and its writes are visible, then lets this kernel's own dependent launch
// (so at most two kernels overlap: one running, the next prefetching its weights).
__device__ __forceinline__ void grid_dep_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// The calling warp asks L2 to fetch `bytes` bytes from p (128-byte lines, one per lane per step);
// nothing waits for them. Used before grid_dep_sync() to stream weights in while the previous
// kernel runs.
__device__ __forceinline__ void warp_prefetch_l2(const void* p, size_t bytes) {
    const char* c = static_cast<const char*>(p);
    for (size_t off = (size_t)(threadIdx.x % WARP) * 128; off < bytes; off += WARP * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(c + off));
}

// Eight halves packed in 16 bytes as floats.
__device__ __forceinline__ void half8_to_float(const uint4 raw, float out[8]) {
    const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 f = __half22float2(h[i]);
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
    }
}

// Eight halves (16 bytes, 16-byte aligned) as floats.
__device__ __forceinline__ void load_half8(const __half* p, float out[8]) {
    half8_to_float(*reinterpret_cast<const uint4*>(p), out);
}

// The KV cache row holding position p of a sequence: with a block table (paged KV pool), block
// table[p / bs] holds positions [b * bs, (b + 1) * bs) in rows b * bs ..; without one (null) the
// sequence's rows are contiguous from row 0.
__device__ __forceinline__ size_t kv_row(const int* __restrict__ table, int bs, int p) {
    return table ? (size_t)table[p / bs] * bs + p % bs : (size_t)p;
}

// The gate's activation of a gated MLP: silu(g) (SwiGLU), or with `gelu` the tanh approximation of
// GELU (GeGLU: Gemma's gelu_pytorch_tanh).
__device__ __forceinline__ float gated(float g, int gelu) {
    if (gelu) {
        const float inner = 0.7978845608028654f * (g + 0.044715f * g * g * g);
        return 0.5f * g * (1.0f + tanhf(inner));
    }
    return g / (1.0f + expf(-g));
}

// The two columns of rotation pair i of a head starting at column `head0`: (i, i + D/2) in the
// NeoX layout, (2i, 2i + 1) in the interleaved one (llama files' Q/K rows as the converter wrote
// them). The angle of pair i is pos * inv_freq[i] either way.
__device__ __forceinline__ void rope_cols(int head0, int i, int D, int interleaved, int& c0, int& c1) {
    c0 = head0 + (interleaved ? 2 * i : i);
    c1 = interleaved ? c0 + 1 : c0 + D / 2;
}
