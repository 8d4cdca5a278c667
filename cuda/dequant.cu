// Dequantization of GGUF tensor data to F16 on the device, bit-identical to the CPU reference
// (`quant::dequantize_f16`): raw tensor bytes already in device memory become F16 elements in
// ggml order, so quantized files load straight into the F16 weight arena.
//
// Block layouts (little-endian; `f16` fields read bytewise, blocks start at any byte):
//   F32    4 B / 1 elem     BF16   2 B / 1 elem (top half of an f32)
//   Q8_0  34 B / 32: d f16, 32 x i8                          x = q * d
//   Q4_0  18 B / 32: d, 16 nibble bytes                      x = d * (q - 8)
//   Q4_1  20 B / 32: d, m, 16 nibble bytes                   x = d * q + m
//   Q5_0  22 B / 32: d, qh u32, 16 nibble bytes              x = d * (q - 16)
//   Q5_1  24 B / 32: d, m, qh u32, 16 nibble bytes           x = d * q + m
//     (element i < 16 is the low nibble of byte i, i + 16 its high nibble; Q5 bit 4 of element j
//      is bit j of qh)
//   Q4_K 144 B / 256: d, dmin, 12 scale bytes, 128 nibble bytes
//   Q5_K 176 B / 256: d, dmin, 12 scale bytes, 32 qh bytes, 128 nibble bytes
//     (sub-block j of 32 elements: 6-bit scale sc_j and min m_j; elements 64c..64c+32 are the low
//      nibbles of quant bytes 32c..32c+32, 64c+32..64c+64 their high nibbles; Q5_K bit 4 of
//      element l of sub-block j is bit j of qh[l]; x = (d * sc_j) * q - (dmin * m_j))
//   Q6_K 210 B / 256: ql[128], qh[64], 16 x i8 scales, d; element 128n + 32k + l is nibble k/2 of
//      ql[64n + 32(k%2) + l] with bits 2k..2k+2 of qh[32n + l] on top; x = (d * sc[e/16]) * (q - 32)
//
// Rounding: every value is computed in f32 with the CPU's operations in the CPU's order, each
// rounded separately (__fmul_rn/__fadd_rn/__fsub_rn: no FMA contraction), then rounded to f16 to
// nearest even by a port of float.rs. NaNs follow the x86-64 SSE rules the CPU reference runs
// under, not the GPU's canonical NaN: a NaN operand propagates quieted (the first operand's when
// both are NaN), an invalid operation (inf * 0, inf - inf) gives the default NaN 0xffc00000, and
// f16 <-> f32 conversions keep NaN payloads as float.rs does (__half2float and __float2half_rn are
// exact on every non-NaN but return canonical NaNs, hence the ports below).
//
// Launch contract: 256 threads per block, any 1-D grid (every kernel is a grid-stride loop). A
// thread handles one element (F32, BF16) or one group of 32 consecutive output elements: a whole
// block of the 32-element formats, one 32-element sub-block of a K-quant super-block. `n` is the
// number of output elements, a whole number of blocks; `src` may have any alignment; `dst` needs
// 2-byte alignment (a group is stored with 16- or 4-byte stores when its address allows).

#include <cuda_fp16.h>
#include <stdint.h>

namespace dequant_detail {

__device__ __forceinline__ bool is_nan_bits(unsigned u) { return (u & 0x7fffffffu) > 0x7f800000u; }

// x86 SSE NaN rules for `r = a op b`: a NaN operand wins quieted, `a` before `b`; a NaN from
// non-NaN operands is the default NaN (negative, quiet).
__device__ __forceinline__ float x86_nan(float a, float b, float r) {
    const unsigned ua = __float_as_uint(a), ub = __float_as_uint(b);
    if (is_nan_bits(ua)) return __uint_as_float(ua | 0x00400000u);
    if (is_nan_bits(ub)) return __uint_as_float(ub | 0x00400000u);
    if (is_nan_bits(__float_as_uint(r))) return __uint_as_float(0xffc00000u);
    return r;
}

__device__ __forceinline__ float mul(float a, float b) { return x86_nan(a, b, __fmul_rn(a, b)); }
__device__ __forceinline__ float add(float a, float b) { return x86_nan(a, b, __fadd_rn(a, b)); }
__device__ __forceinline__ float sub(float a, float b) { return x86_nan(a, b, __fsub_rn(a, b)); }

__device__ __forceinline__ unsigned rd_u16(const unsigned char* p) {
    return unsigned(p[0]) | (unsigned(p[1]) << 8);
}

__device__ __forceinline__ unsigned rd_u32(const unsigned char* p) {
    return unsigned(p[0]) | (unsigned(p[1]) << 8) | (unsigned(p[2]) << 16) | (unsigned(p[3]) << 24);
}

// f16 bits -> f32, exact; NaN payloads shifted up, not quieted (float.rs f16_bits_to_f32).
__device__ __forceinline__ float f16_to_f32(unsigned h) {
    const unsigned sign = (h & 0x8000u) << 16;
    const unsigned exp = (h >> 10) & 0x1fu;
    const unsigned man = h & 0x03ffu;
    unsigned bits;
    if (exp == 0u) {
        // Subnormal: man * 2^-24 is a normal f32, exact.
        bits = man == 0u ? sign : sign | __float_as_uint(__fmul_rn(__uint2float_rn(man), 5.9604644775390625e-8f));
    } else if (exp == 0x1fu) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    }
    return __uint_as_float(bits);
}

// f32 -> f16 bits, nearest even, overflow to infinity; a NaN keeps the top 10 payload bits and
// stays a NaN (float.rs f32_to_f16_bits, operation for operation).
__device__ __forceinline__ unsigned f32_to_f16(float x) {
    const unsigned f = __float_as_uint(x);
    const unsigned sign = (f >> 16) & 0x8000u;
    const unsigned abs = f & 0x7fffffffu;
    const unsigned odd = (abs >> 13) & 1u;
    const unsigned normal = (abs - 0x38000000u + (0x0fffu + odd)) >> 13;
    // |x| < 2^-14: adding 0.5 aligns the f16 subnormal grid with the low f32 mantissa bits.
    const unsigned subnormal = __float_as_uint(__fadd_rn(__uint_as_float(abs), 0.5f)) - 0x3f000000u;
    const unsigned payload = (abs & 0x007fffffu) >> 13;
    const unsigned nan = 0x7c00u | payload | (payload == 0u ? 1u : 0u);
    unsigned h;
    if (abs > 0x7f800000u) {
        h = nan;
    } else if (abs >= 0x47800000u) {
        h = 0x7c00u;
    } else if (abs < 0x38800000u) {
        h = subnormal;
    } else {
        h = normal;
    }
    return (sign | h) & 0xffffu;
}

// Rounds the 32 f32 values `value(0..32)` to f16 and stores them at `dst`, with the widest stores
// its alignment allows.
template <class F>
__device__ __forceinline__ void emit32(__half* dst, F value) {
    unsigned p[16];
#pragma unroll
    for (int k = 0; k < 16; ++k) {
        p[k] = f32_to_f16(value(2 * k)) | (f32_to_f16(value(2 * k + 1)) << 16);
    }
    const uintptr_t a = reinterpret_cast<uintptr_t>(dst);
    if ((a & 15u) == 0u) {
        uint4* v = reinterpret_cast<uint4*>(dst);
#pragma unroll
        for (int k = 0; k < 4; ++k) v[k] = make_uint4(p[4 * k], p[4 * k + 1], p[4 * k + 2], p[4 * k + 3]);
    } else if ((a & 3u) == 0u) {
        unsigned* v = reinterpret_cast<unsigned*>(dst);
#pragma unroll
        for (int k = 0; k < 16; ++k) v[k] = p[k];
    } else {
        unsigned short* v = reinterpret_cast<unsigned short*>(dst);
#pragma unroll
        for (int k = 0; k < 16; ++k) {
            v[2 * k] = (unsigned short)(p[k] & 0xffffu);
            v[2 * k + 1] = (unsigned short)(p[k] >> 16);
        }
    }
}

__device__ __forceinline__ unsigned long long thread_index() {
    return (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ unsigned long long thread_stride() {
    return (unsigned long long)gridDim.x * blockDim.x;
}

// Scale and minimum of sub-block j (0..8) of a Q4_K/Q5_K super-block from its 12 scale bytes `s`:
// bytes 0..4 hold scales 0..4 and the top 2 bits of scales 4..8, bytes 4..8 the same for minimums,
// bytes 8..12 the low 4 bits of scale (low nibble) and minimum (high nibble) 4..8.
__device__ __forceinline__ void k4_scale_min(const unsigned char* s, int j, unsigned& sc, unsigned& mn) {
    if (j < 4) {
        sc = s[j] & 0x3fu;
        mn = s[j + 4] & 0x3fu;
    } else {
        sc = (s[j + 4] & 0x0fu) | ((s[j - 4] >> 2) & 0x30u);
        mn = (s[j + 4] >> 4) | ((s[j] >> 2) & 0x30u);
    }
}

}  // namespace dequant_detail

extern "C" __global__ void __launch_bounds__(256)
dequant_f32(const unsigned char* __restrict__ src, __half* __restrict__ dst, unsigned long long n) {
    using namespace dequant_detail;
    for (unsigned long long i = thread_index(); i < n; i += thread_stride()) {
        const unsigned h = f32_to_f16(__uint_as_float(rd_u32(src + 4 * i)));
        reinterpret_cast<unsigned short*>(dst)[i] = (unsigned short)h;
    }
}

extern "C" __global__ void __launch_bounds__(256)
dequant_bf16(const unsigned char* __restrict__ src, __half* __restrict__ dst, unsigned long long n) {
    using namespace dequant_detail;
    for (unsigned long long i = thread_index(); i < n; i += thread_stride()) {
        const unsigned h = f32_to_f16(__uint_as_float(rd_u16(src + 2 * i) << 16));
        reinterpret_cast<unsigned short*>(dst)[i] = (unsigned short)h;
    }
}

extern "C" __global__ void __launch_bounds__(256)
dequant_q8_0(const unsigned char* __restrict__ src, __half* __restrict__ dst, unsigned long long n) {
    using namespace dequant_detail;
    for (unsigned long long blk = thread_index(); blk < n / 32; blk += thread_stride()) {
        const unsigned char* b = src + 34 * blk;
        const float d = f16_to_f32(rd_u16(b));
        emit32(dst + 32 * blk, [&](int e) { return mul(float((signed char)b[2 + e]), d); });
    }
}

extern "C" __global__ void __launch_bounds__(256)
dequant_q4_0(const unsigned char* __restrict__ src, __half* __restrict__ dst, unsigned long long n) {
    using namespace dequant_detail;
    for (unsigned long long blk = thread_index(); blk < n / 32; blk += thread_stride()) {
        const unsigned char* b = src + 18 * blk;
        const float d = f16_to_f32(rd_u16(b));
        emit32(dst + 32 * blk, [&](int e) {
            const int q = e < 16 ? (b[2 + e] & 0x0f) : (b[2 + e - 16] >> 4);
            return mul(d, float(q - 8));
        });
    }
}

extern "C" __global__ void __launch_bounds__(256)
dequant_q4_1(const unsigned char* __restrict__ src, __half* __restrict__ dst, unsigned long long n) {
    using namespace dequant_detail;
    for (unsigned long long blk = thread_index(); blk < n / 32; blk += thread_stride()) {
        const unsigned char* b = src + 20 * blk;
        const float d = f16_to_f32(rd_u16(b));
        const float m = f16_to_f32(rd_u16(b + 2));
        emit32(dst + 32 * blk, [&](int e) {
            const int q = e < 16 ? (b[4 + e] & 0x0f) : (b[4 + e - 16] >> 4);
            return add(mul(d, float(q)), m);
        });
    }
}

extern "C" __global__ void __launch_bounds__(256)
dequant_q5_0(const unsigned char* __restrict__ src, __half* __restrict__ dst, unsigned long long n) {
    using namespace dequant_detail;
    for (unsigned long long blk = thread_index(); blk < n / 32; blk += thread_stride()) {
        const unsigned char* b = src + 22 * blk;
        const float d = f16_to_f32(rd_u16(b));
        const unsigned qh = rd_u32(b + 2);
        emit32(dst + 32 * blk, [&](int e) {
            const int lo = e < 16 ? (b[6 + e] & 0x0f) : (b[6 + e - 16] >> 4);
            const int q = lo | int(((qh >> e) & 1u) << 4);
            return mul(d, float(q - 16));
        });
    }
}

extern "C" __global__ void __launch_bounds__(256)
dequant_q5_1(const unsigned char* __restrict__ src, __half* __restrict__ dst, unsigned long long n) {
    using namespace dequant_detail;
    for (unsigned long long blk = thread_index(); blk < n / 32; blk += thread_stride()) {
        const unsigned char* b = src + 24 * blk;
        const float d = f16_to_f32(rd_u16(b));
        const float m = f16_to_f32(rd_u16(b + 2));
        const unsigned qh = rd_u32(b + 4);
        emit32(dst + 32 * blk, [&](int e) {
            const int lo = e < 16 ? (b[8 + e] & 0x0f) : (b[8 + e - 16] >> 4);
            const int q = lo | int(((qh >> e) & 1u) << 4);
            return add(mul(d, float(q)), m);
        });
    }
}

// One thread per 32-element sub-block j of a super-block: j = 2c takes the low nibbles of quant
// bytes 32c..32c+32, j = 2c + 1 their high nibbles.
extern "C" __global__ void __launch_bounds__(256)
dequant_q4_k(const unsigned char* __restrict__ src, __half* __restrict__ dst, unsigned long long n) {
    using namespace dequant_detail;
    for (unsigned long long g = thread_index(); g < n / 32; g += thread_stride()) {
        const unsigned char* b = src + 144 * (g / 8);
        const int j = int(g % 8);
        unsigned sc, mn;
        k4_scale_min(b + 4, j, sc, mn);
        const float ds = mul(f16_to_f32(rd_u16(b)), float(sc));
        const float dm = mul(f16_to_f32(rd_u16(b + 2)), float(mn));
        const unsigned char* qs = b + 16 + 32 * (j / 2);
        const int shift = 4 * (j % 2);
        emit32(dst + 32 * g, [&](int l) { return sub(mul(ds, float((qs[l] >> shift) & 0x0f)), dm); });
    }
}

extern "C" __global__ void __launch_bounds__(256)
dequant_q5_k(const unsigned char* __restrict__ src, __half* __restrict__ dst, unsigned long long n) {
    using namespace dequant_detail;
    for (unsigned long long g = thread_index(); g < n / 32; g += thread_stride()) {
        const unsigned char* b = src + 176 * (g / 8);
        const int j = int(g % 8);
        unsigned sc, mn;
        k4_scale_min(b + 4, j, sc, mn);
        const float ds = mul(f16_to_f32(rd_u16(b)), float(sc));
        const float dm = mul(f16_to_f32(rd_u16(b + 2)), float(mn));
        const unsigned char* qh = b + 16;
        const unsigned char* qs = b + 48 + 32 * (j / 2);
        const int shift = 4 * (j % 2);
        emit32(dst + 32 * g, [&](int l) {
            const int q = ((qs[l] >> shift) & 0x0f) | (((qh[l] >> j) & 1) << 4);
            return sub(mul(ds, float(q)), dm);
        });
    }
}

// One thread per 32 elements 128n + 32k .. +32 (g = 4n + k), which span scales 2g and 2g + 1.
extern "C" __global__ void __launch_bounds__(256)
dequant_q6_k(const unsigned char* __restrict__ src, __half* __restrict__ dst, unsigned long long n) {
    using namespace dequant_detail;
    for (unsigned long long g = thread_index(); g < n / 32; g += thread_stride()) {
        const unsigned char* b = src + 210 * (g / 8);
        const int t = int(g % 8);
        const int half_n = t / 4, k = t % 4;
        const float d = f16_to_f32(rd_u16(b + 208));
        const float ds_lo = mul(d, float((signed char)b[192 + 2 * t]));
        const float ds_hi = mul(d, float((signed char)b[192 + 2 * t + 1]));
        const unsigned char* ql = b + 64 * half_n + 32 * (k % 2);
        const unsigned char* qh = b + 128 + 32 * half_n;
        const int shift_lo = 4 * (k / 2), shift_hi = 2 * k;
        emit32(dst + 32 * g, [&](int l) {
            const int q = ((ql[l] >> shift_lo) & 0x0f) | (((qh[l] >> shift_hi) & 0x03) << 4);
            return mul(l < 16 ? ds_lo : ds_hi, float(q - 32));
        });
    }
}
