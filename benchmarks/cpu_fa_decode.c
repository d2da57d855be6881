// CPU flash-attention decode cost per K/V type pair, in process CPU time (so a
// shared, loaded machine still gives comparable numbers): ggml_flash_attn_ext
// on one thread for one query row against a long KV cache, the shape of
// Gemma 3 270M's global layers (head 256, 4 query heads on 1 KV head).
//
// Build against a tqpatch CPU build (static libs), e.g.:
//   B=$TQPATCH_CACHE/build/cpu; T=$TQPATCH_CACHE/work/llama.cpp-0c1e57098
//   gcc -O2 benchmarks/cpu_fa_decode.c -I$T/ggml/include $B/ggml/src/libggml.a \
//       $B/ggml/src/libggml-cpu.a $B/ggml/src/libggml-base.a -lstdc++ -lm -fopenmp -o cpu_fa_decode
//   ./cpu_fa_decode [kv] [repetitions] [K/V ...]     (default 4096 50 f16/f16 q8_0/q8_0 q8_0/turbo3 turbo3/turbo3)
// Prints us per call (CPU time) and the ratio to the first pair.
#include "ggml.h"
#include "ggml-cpu.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static enum ggml_type type_by_name(const char * name) {
    for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
        const char * n = ggml_type_name((enum ggml_type) t);
        if (n && strcmp(n, name) == 0) {
            return (enum ggml_type) t;
        }
    }
    fprintf(stderr, "unknown type %s\n", name);
    exit(2);
}

static void fill(struct ggml_tensor * t, unsigned seed) {
    const int64_t n = ggml_nelements(t);
    float * x = malloc(n * sizeof(float));
    srand(seed);
    for (int64_t i = 0; i < n; ++i) {
        x[i] = (float) rand() / RAND_MAX - 0.5f;
    }
    if (t->type == GGML_TYPE_F32) {
        memcpy(t->data, x, n * sizeof(float));
    } else if (t->type == GGML_TYPE_F16) {
        ggml_fp32_to_fp16_row(x, t->data, n);
    } else {
        ggml_quantize_chunk(t->type, x, t->data, 0, ggml_nrows(t), t->ne[0], NULL);
    }
    free(x);
}

int main(int argc, char ** argv) {
    const int kv   = argc > 1 ? atoi(argv[1]) : 4096;
    const int reps = argc > 2 ? atoi(argv[2]) : 50;
    const char * defaults[] = { "f16/f16", "q8_0/q8_0", "q8_0/turbo3", "turbo3/turbo3" };
    const int npairs = argc > 3 ? argc - 3 : 4;
    const int D = 256, nh = 4, nh_kv = 1;
    double base = 0.0;
    printf("flash attention decode, head %d, %d query heads on %d KV head, kv %d, 1 thread, %d calls\n", D, nh, nh_kv, kv, reps);
    printf("%17s %13s  %s\n", "K/V", "CPU time", "ratio to the first pair");
    for (int p = 0; p < npairs; ++p) {
        char name[64];
        snprintf(name, sizeof(name), "%s", argc > 3 ? argv[3 + p] : defaults[p]);
        char * slash = strchr(name, '/');
        if (!slash) {
            fprintf(stderr, "pair as K/V: %s\n", name);
            return 2;
        }
        *slash = 0;
        const enum ggml_type tk = type_by_name(name), tv = type_by_name(slash + 1);
        struct ggml_init_params ip = { (size_t) 256 << 20, NULL, false };
        struct ggml_context * ctx = ggml_init(ip);
        struct ggml_tensor * q = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, D, 1, nh, 1);
        struct ggml_tensor * k = ggml_new_tensor_4d(ctx, tk, D, kv, nh_kv, 1);
        struct ggml_tensor * v = ggml_new_tensor_4d(ctx, tv, D, kv, nh_kv, 1);
        fill(q, 1); fill(k, 2); fill(v, 3);
        struct ggml_tensor * out = ggml_flash_attn_ext(ctx, q, k, v, NULL, 1.0f / sqrtf((float) D), 0.0f, 0.0f);
        struct ggml_cgraph * gf = ggml_new_graph(ctx);
        ggml_build_forward_expand(gf, out);
        ggml_graph_compute_with_ctx(ctx, gf, 1); // warm-up
        const double t0 = cpu_seconds();
        for (int r = 0; r < reps; ++r) {
            ggml_graph_compute_with_ctx(ctx, gf, 1);
        }
        const double us = 1e6 * (cpu_seconds() - t0) / reps;
        if (p == 0) {
            base = us;
        }
        printf("%8s/%-8s %10.1f us  %6.3f\n", ggml_type_name(tk), ggml_type_name(tv), us, us / base);
        ggml_free(ctx);
    }
    return 0;
}
