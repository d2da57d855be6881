// Host stand-in for ggml-cuda's common.cuh, just enough to compile the rendered
// turbo.cuh quantizer as C++ (tests/test_cuda_quantizer_emulation.py): device
// qualifiers vanish, half is ggml's fp16 bit pattern, and a lane group's
// shuffles exchange values through a slot array between two barriers (below).
// The test sets x86 MXCSR FTZ+DAZ, which flushes float subnormals in
// arithmetic and in float <-> double conversions as nvcc's -use_fast_math does.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#define GGML_COMMON_DECL_CPP
#define GGML_COMMON_IMPL_CPP
#include "ggml-common.h"
#include "ggml-impl.h"

#define __device__
#define __host__
#define __forceinline__ inline
#define WARP_SIZE 32

typedef uint16_t half;
struct float2 { float x, y; };

static inline float __half2float(half h) { return GGML_FP16_TO_FP32(h); }
static inline half __float2half(float f) { return GGML_FP32_TO_FP16(f); }
static inline half __ushort_as_half(unsigned short u) { return u; }
static inline uint32_t __float_as_uint(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float __uint_as_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
#define __log2f log2f  // glibc declares a __log2f of its own
static inline int __float2int_rn(float x) { return (int) lrintf(x); }

// The lanes of one group run as cooperative user contexts (the test's
// turbo_emu_barrier switches to the next lane; once the last lane has
// arrived the first one resumes); turbo_emu_lane is the running lane.
extern int turbo_emu_lane;
extern uint64_t turbo_emu_slot[WARP_SIZE];
void turbo_emu_barrier();

template <typename T>
static T __shfl_xor_sync(unsigned mask, T v, int offset, int width) {
    (void) mask;
    static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a wide type");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    const int lane = turbo_emu_lane;
    turbo_emu_slot[lane] = bits;
    turbo_emu_barrier();
    bits = turbo_emu_slot[(lane & ~(width - 1)) | ((lane ^ offset) & (width - 1))];
    turbo_emu_barrier();
    T out;
    memcpy(&out, &bits, sizeof(T));
    return out;
}
