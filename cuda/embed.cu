// Embedding gather: x[t, :] = float(table[ids[t], :]) * scale for every token t (scale 1, or
// sqrt(hidden) for the families that scale their embeddings).
// Grid: one block per token; block: 256 threads striding over the hidden size.
#include "common.cuh"

extern "C" __global__ void embed_gather(const __half* __restrict__ table, const unsigned* __restrict__ ids,
                                        float* __restrict__ x, int hidden, float scale) {
    grid_dep_sync();  // may be a programmatic dependent launch (common.cuh)
    const int t = blockIdx.x;
    const __half* row = table + (size_t)ids[t] * hidden;
    float* out = x + (size_t)t * hidden;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) out[c] = __half2float(row[c]) * scale;
}
