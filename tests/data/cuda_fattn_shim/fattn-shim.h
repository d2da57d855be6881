// Host stand-ins for what the rendered ggml-cuda/fattn-turbo.cuh takes from fattn-common.cuh
// and the CUDA runtime, just enough to compile its per-type decode helpers as C++
// (tests/test_cuda_fattn_emulation.py). Included after the quantizer shim (common.cuh).
// half2 arithmetic rounds like the GPU's: a product of two halves is exact in float, so
// rounding it to half once is HMUL2's result.
#pragma once

#include <cstdlib>
#include <type_traits>

#define __shared__
#define FP16_AVAILABLE

struct half2 { half x, y; };
static inline half2 make_half2(float a, float b) { return {__float2half(a), __float2half(b)}; }
static inline half2 __float2half2_rn(float a) { return make_half2(a, a); }
static inline float2 __half22float2(half2 h) { return {__half2float(h.x), __half2float(h.y)}; }
static inline half2 operator*(half2 a, half2 b) {
    return make_half2(__half2float(a.x) * __half2float(b.x), __half2float(a.y) * __half2float(b.y));
}

static inline unsigned short __half_as_ushort(half h) { return h; }
struct uint4 { uint32_t x, y, z, w; };
// PTX prmt's default mode: result byte n is byte (s >> 4n) & 7 of y:x (bit 3 would replicate a
// sign; the kernels keep it clear)
static inline uint32_t __byte_perm(uint32_t x, uint32_t y, uint32_t s) {
    const uint64_t xy = ((uint64_t) y << 32) | x;
    uint32_t r = 0;
    for (int n = 0; n < 4; ++n) {
        r |= (uint32_t) ((xy >> (8 * ((s >> 4 * n) & 7))) & 0xFF) << 8 * n;
    }
    return r;
}
#define __align__(n) __attribute__((aligned(n)))

static inline void __syncthreads() {}
struct turbo_emu_dim3 { unsigned x, y, z; };
static const turbo_emu_dim3 threadIdx = {0, 0, 0};
static constexpr int ggml_cuda_get_max_cpy_bytes() { return 16; }

// fattn-common.cuh's function types, declared before it includes fattn-turbo.cuh
typedef float (*vec_dot_KQ_t)(const char *, const void *, const int *, const void *);
typedef void (*dequantize_V_t)(const void *, void *, const int64_t);

// the kernel choice at the end of fattn-turbo.cuh reads the SM count
struct turbo_emu_device { int nsm; };
struct turbo_emu_info { turbo_emu_device devices[1]; };
static inline turbo_emu_info ggml_cuda_info() { return {{{132}}}; }
static inline int ggml_cuda_get_device() { return 0; }
