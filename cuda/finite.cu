// Non-finite check of weights as they land: one pass over a tensor's elements (F16 or F32 bits)
// looking for an all-ones exponent (NaN or infinity). The first hit writes the tensor's tag into
// `*flag` (which holds 0xffffffff until then) with a compare-and-swap, so the flag names the first
// bad tensor whatever the order of the hits.
//
// Launch contract: 256 threads per block, any 1-D grid (grid-stride loops).

extern "C" __global__ void nonfinite_f16(const unsigned short* p, unsigned long long n,
                                         unsigned int* flag, unsigned int tag) {
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += stride) {
        if ((p[i] & 0x7c00u) == 0x7c00u) {
            atomicCAS(flag, 0xffffffffu, tag);
            return;
        }
    }
}

extern "C" __global__ void nonfinite_f32(const unsigned int* p, unsigned long long n,
                                         unsigned int* flag, unsigned int tag) {
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += stride) {
        if ((p[i] & 0x7f800000u) == 0x7f800000u) {
            atomicCAS(flag, 0xffffffffu, tag);
            return;
        }
    }
}
