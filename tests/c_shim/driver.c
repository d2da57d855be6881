// Runs the rendered C reference on stdin: `driver <type> quantize <k>` reads
// float32 rows of k values and writes their blocks; `driver <type> dequantize <k>`
// reads blocks and writes float32 values. Every turbo type comes from the
// X-macro list, so a new type in tqpatch.formats is covered without edits here.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-turbo.h"

size_t ggml_row_size(enum ggml_type type, int64_t n) {
    switch (type) {
#define ROW_SIZE(name, NAME, id) case GGML_TYPE_##NAME: return sizeof(block_##name) * (size_t) (n / QK_##NAME);
        GGML_TURBO_TYPES(ROW_SIZE)
#undef ROW_SIZE
    }
    return 0;
}

static void * read_all(size_t * len) {
    size_t cap = 1 << 20, n = 0;
    char * buf = malloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n, stdin)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    *len = n;
    return buf;
}

int main(int argc, char ** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s <type> quantize|dequantize <k>\n", argv[0]);
        return 2;
    }
    const long k = atol(argv[3]);
    const int quantize = strcmp(argv[2], "quantize") == 0;
    size_t len;
    void * in = read_all(&len);
#define RUN(name, NAME, id)                                                              \
    if (strcmp(argv[1], #name) == 0) {                                                   \
        const size_t row = ggml_row_size(GGML_TYPE_##NAME, k);                          \
        const size_t nrows = quantize ? len / (sizeof(float) * k) : len / row;          \
        void * out = malloc(nrows * (quantize ? row : k * sizeof(float)) + 1);          \
        if (quantize) {                                                                  \
            quantize_##name((const float *) in, out, nrows, k, NULL);                   \
        } else {                                                                         \
            dequantize_row_##name((const block_##name *) in, (float *) out, nrows * k); \
        }                                                                                \
        fwrite(out, 1, nrows * (quantize ? row : k * sizeof(float)), stdout);           \
        return 0;                                                                        \
    }
    GGML_TURBO_TYPES(RUN)
#undef RUN
    fprintf(stderr, "unknown type %s\n", argv[1]);
    return 2;
}
