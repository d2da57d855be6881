// Host emulation of the CUDA flash-attention decode helpers of the rendered
// ggml-cuda/fattn-turbo.cuh (compiled as C++ under tests/data/cuda_shim and
// tests/data/cuda_fattn_shim): for every turbo type, 8 values at a time across random
// blocks, the tensor-core decode's half2 path (ggml_cuda_turbo_dequantize_h2: the value-pair
// tables of 2- and 3-bit types, the byte tables of turbo4, the codebook of any other) and the
// vector kernel's float path (dequantize_V) must give the C reference's values
// (ggml-turbo.c), the half path within its rounding. Driven by tests/test_cuda_fattn_emulation.py, which passes the type
// list as TURBO_EMU_TYPES (X(name, NAME) per turbo type). Prints "OK" or the mismatches.
#include "common.cuh"      // the quantizer shim
#include "fattn-shim.h"
#include "fattn-turbo.cuh" // rendered: generated/ggml/src/ggml-cuda
#include "ggml-turbo.h"

#include <cstdio>
#include <random>
#include <vector>

size_t ggml_row_size(enum ggml_type type, int64_t ne) {
    (void) type;
    return (size_t) ne;
}

// what each block of the kernel does once, for a kernel whose K (V) cache is of type_K
// (type_V); every table is cleared first, so a decode that reads the other cache's
// table (K for V, V for K) sees zeros
template <ggml_type type_K, ggml_type type_V>
static void fill_tables() {
    memset(ggml_cuda_turbo_lut_K, 0, sizeof(ggml_cuda_turbo_lut_K));
    memset(ggml_cuda_turbo_lut_V, 0, sizeof(ggml_cuda_turbo_lut_V));
    memset(ggml_cuda_turbo_lut2_K, 0, sizeof(ggml_cuda_turbo_lut2_K));
    memset(ggml_cuda_turbo_lut2_V, 0, sizeof(ggml_cuda_turbo_lut2_V));
    memset(ggml_cuda_turbo_perm_K, 0, sizeof(ggml_cuda_turbo_perm_K));
    memset(ggml_cuda_turbo_perm_V, 0, sizeof(ggml_cuda_turbo_perm_V));
    for (int tid = 0; tid < 16; ++tid) {
        ggml_cuda_turbo_fattn_init<type_K, type_V>(tid);
    }
    ggml_cuda_turbo_fattn_init_h2<type_K, type_V>(0, 1);
}

template <ggml_type type, typename block_t>
static int check(const char * name, void (*dequantize_ref)(const block_t *, float *, int64_t), int qk) {
    std::mt19937 rng(1234);
    const int nblocks = 512;
    std::vector<block_t> blocks(nblocks);
    auto * bytes = (uint8_t *) blocks.data();
    for (size_t i = 0; i < sizeof(block_t) * nblocks; ++i) {
        bytes[i] = (uint8_t) rng();
    }
    for (auto & b : blocks) {
        b.e = (uint8_t) (16 + rng() % 224); // finite, non-zero scales that are normal halves
    }
    const int64_t n = (int64_t) nblocks * qk;
    std::vector<float> ref(n);
    dequantize_ref(blocks.data(), ref.data(), n);
    const char * row = (const char *) blocks.data();
    int bad = 0;
    for (int64_t i0 = 0; i0 < n; i0 += 8) {
        half2 hk[4];
        half2 hv[4];
        float f[8];
        fill_tables<type, GGML_TYPE_F16>(); // a turbo K cache
        ggml_cuda_turbo_dequantize_h2<type, true,  8>(row, hk, i0);
        fill_tables<GGML_TYPE_F16, type>(); // a turbo V cache
        ggml_cuda_turbo_dequantize_h2<type, false, 8>(row, hv, i0);
        ggml_cuda_turbo_dequantize_V<type, float, 8>()(row, f, i0);
        for (int l = 0; l < 8; ++l) {
            const float want = ref[i0 + l];
            const float k = __half2float(l % 2 ? hk[l/2].y : hk[l/2].x);
            const float v = __half2float(l % 2 ? hv[l/2].y : hv[l/2].x);
            // d and the codebook entry each rounded to half, their product once more (a
            // subnormal half below 2^-14: steps of 2^-24)
            const float tol = 3.0f * std::ldexp(std::fabs(want), -11) + std::ldexp(1.0f, -24);
            if (f[l] != want || std::fabs(k - want) > tol || std::fabs(v - want) > tol) {
                if (bad++ < 5) {
                    printf("%s value %lld: reference %g, float path %g, half path K %g V %g\n",
                           name, (long long) (i0 + l), want, f[l], k, v);
                }
            }
        }
    }
    printf("%s: %lld values, %d mismatches (%s)\n", name, (long long) n, bad,
           ggml_cuda_turbo_h2_path<type>());
    return bad;
}

int main() {
    int bad = 0;
#define X(n, N) bad += check<GGML_TYPE_##N, block_##n>(#n, dequantize_row_##n, QK_##N);
    TURBO_EMU_TYPES
#undef X
    printf(bad ? "FAIL\n" : "OK\n");
    return bad ? 1 : 0;
}
