// Standalone check of the rendered CPU turbo kernels (ggml-cpu/turbo-cpu.c) on
// whichever path the compiler flags select (AVX2, NEON or scalar): the dot
// product against f32 rows and the fused V accumulation must match float64
// sums over the reference dequantization (ggml-turbo.c) to float32 rounding.
// Built and run by tests/test_cpu_simd.py; prints "OK <path>" or the first
// mismatch. Links nothing of ggml but the two turbo sources.
#define GGML_COMMON_DECL_C
#include "ggml-common.h"
#include "ggml-impl.h"
#include "ggml-turbo.h"
#include "turbo-cpu.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

// what turbo-cpu.c and ggml-turbo.c use from the rest of ggml
float ggml_table_f32_f16[1 << 16];
size_t ggml_row_size(enum ggml_type type, int64_t ne) { (void) type; return (size_t) ne; }
void ggml_vec_dot_f32(int n, float * s, size_t bs, const float * x, size_t bx, const float * y, size_t by, int nrc) {
    (void) bs; (void) bx; (void) by; (void) nrc;
    double acc = 0.0;
    for (int i = 0; i < n; ++i) {
        acc += (double) x[i] * y[i];
    }
    *s = (float) acc;
}

enum { N = 1536, ITERS = 100 }; // N: a multiple of every turbo block (32, 64, 96)

static float frand(void) { return (float) rand() / (float) RAND_MAX - 0.5f; }

typedef void (*quantize_t)(const float *, void *, int64_t);
typedef void (*dequantize_t)(const void *, float *, int64_t);
typedef void (*dot_t)(int, float *, size_t, const void *, size_t, const void *, size_t, int);

static int check(const char * name, enum ggml_type type, quantize_t quantize, dequantize_t dequantize, dot_t dot) {
    static float x[N], q[N], deq[N], y[N], y0[N];
    static uint8_t blocks[N * 4];
    const ggml_turbo_vec_mad_t mad = ggml_turbo_cpu_vec_mad(type);
    if (!mad) {
        printf("%s: no vec_mad\n", name);
        return 1;
    }
    for (int it = 0; it < ITERS; ++it) {
        const float scale = expf((float) (it % 40) - 20.0f);
        for (int i = 0; i < N; ++i) {
            x[i] = frand() * scale;
            q[i] = frand();
            y[i] = y0[i] = frand();
        }
        quantize(x, blocks, N);
        dequantize(blocks, deq, N);
        double ref = 0.0, mag = 0.0;
        for (int i = 0; i < N; ++i) {
            ref += (double) deq[i] * q[i];
            mag += fabs((double) deq[i] * q[i]);
        }
        float s;
        dot(N, &s, 0, blocks, 0, q, 0, 1);
        if (fabs(s - ref) > 1e-5 * mag + 1e-30) {
            printf("%s: dot %.9g, float64 %.9g (iteration %d)\n", name, s, ref, it);
            return 1;
        }
        const float v = frand();
        mad(N, y, blocks, v);
        for (int i = 0; i < N; ++i) {
            const double r = y0[i] + (double) v * deq[i];
            if (fabs(y[i] - r) > 1e-6 * (fabs(y0[i]) + fabs((double) v * deq[i])) + 1e-30) {
                printf("%s: mad[%d] %.9g, float64 %.9g (iteration %d)\n", name, i, y[i], r, it);
                return 1;
            }
        }
    }
    return 0;
}

#define CHECK(n, T) check(#n, T, (quantize_t) quantize_row_##n##_ref, (dequantize_t) dequantize_row_##n, ggml_vec_dot_##n##_f32)

int main(void) {
    for (int i = 0; i < (1 << 16); ++i) {
        ggml_table_f32_f16[i] = GGML_FP16_TO_FP32((ggml_fp16_t) i);
    }
    int bad = 0;
    TURBO_SIMD_CHECKS
#if defined(__AVX2__) && defined(__FMA__)
    const char * path = "avx2";
#elif defined(__ARM_NEON) && defined(__aarch64__)
    const char * path = "neon";
#else
    const char * path = "scalar";
#endif
    if (!bad) {
        printf("OK %s\n", path);
    }
    return bad;
}
