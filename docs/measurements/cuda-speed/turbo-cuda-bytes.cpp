// Byte check (tqpatch CUDA bring-up; rerun by device-steps.sh beside it): the CUDA turbo
// quantizer (CPY f32->turbo, SET_ROWS f32/f16->turbo) must give the C
// reference's bytes, and the CUDA dequantizer (CPY turbo->f32) its floats,
// on random and adversarial blocks.
#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cuda.h"

#include <cmath>
#include <cfloat>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "turbo_block_data.h" // tests/data: make_data, NE0, turbo_test_points

static bool same_float(float a, float b) {
    return (std::isnan(a) && std::isnan(b)) || memcmp(&a, &b, sizeof(float)) == 0;
}

// runs one op on CUDA: returns dst bytes
static std::vector<uint8_t> run_cuda(ggml_backend_t be, ggml_type src_type, ggml_type dst_type, const void * src, int64_t n,
                                     bool set_rows) {
    ggml_init_params ip = { 16*ggml_tensor_overhead() + ggml_graph_overhead(), nullptr, true };
    ggml_context * ctx = ggml_init(ip);
    const int64_t nrows = n / NE0;
    ggml_tensor * a = ggml_new_tensor_2d(ctx, src_type, NE0, nrows);
    ggml_tensor * d = ggml_new_tensor_2d(ctx, dst_type, NE0, nrows);
    ggml_tensor * idx = nullptr;
    ggml_tensor * out;
    if (set_rows) {
        idx = ggml_new_tensor_1d(ctx, GGML_TYPE_I64, nrows);
        out = ggml_set_rows(ctx, d, a, idx);
    } else {
        out = ggml_cpy(ctx, a, d);
    }
    ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, out);
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, be);
    ggml_backend_tensor_set(a, src, 0, ggml_nbytes(a));
    if (idx) {
        std::vector<int64_t> ids(nrows);
        for (int64_t i = 0; i < nrows; ++i) ids[i] = i;
        ggml_backend_tensor_set(idx, ids.data(), 0, ggml_nbytes(idx));
    }
    if (ggml_backend_graph_compute(be, gf) != GGML_STATUS_SUCCESS) {
        fprintf(stderr, "compute failed\n");
        exit(2);
    }
    std::vector<uint8_t> res(ggml_nbytes(d));
    ggml_backend_tensor_get(d, res.data(), 0, res.size());
    ggml_backend_buffer_free(buf);
    ggml_free(ctx);
    return res;
}

int main() {
    ggml_backend_t be = ggml_backend_cuda_init(0);
    if (!be) { fprintf(stderr, "no CUDA backend\n"); return 2; }
    int failures = 0;
#define TURBO_TYPE(name, NAME, id) GGML_TYPE_##NAME,
    const ggml_type types[] = { GGML_TURBO_TYPES(TURBO_TYPE) }; // every turbo type, variants included
#undef TURBO_TYPE
    for (const ggml_type type : types) {
        const int qk = (int) ggml_blck_size(type);
        const size_t bs = ggml_type_size(type);
        int n_adv = 0;
        std::vector<float> x = make_data(qk, turbo_test_points, 16, n_adv);
        const int64_t n = (int64_t) x.size();
        const int64_t nb = n / qk;

        std::vector<uint8_t> ref(nb * bs);
        ggml_quantize_chunk(type, x.data(), ref.data(), 0, n / NE0, NE0, nullptr);

        std::vector<ggml_fp16_t> xh(n);
        ggml_fp32_to_fp16_row(x.data(), xh.data(), n);
        std::vector<float> xhf(n);
        ggml_fp16_to_fp32_row(xh.data(), xhf.data(), n);
        std::vector<uint8_t> refh(nb * bs);
        ggml_quantize_chunk(type, xhf.data(), refh.data(), 0, n / NE0, NE0, nullptr);

        struct { const char * name; ggml_type src; const void * data; bool set_rows; const std::vector<uint8_t> * want; } cases[] = {
            { "CPY f32->", GGML_TYPE_F32, x.data(), false, &ref },
            { "SET_ROWS f32->", GGML_TYPE_F32, x.data(), true, &ref },
            { "SET_ROWS f16->", GGML_TYPE_F16, xh.data(), true, &refh },
        };
        for (auto & c : cases) {
            std::vector<uint8_t> got = run_cuda(be, c.src, type, c.data, n, c.set_rows);
            int64_t bad = 0, bad_adv = 0, bad_scale_only = 0;
            for (int64_t b = 0; b < nb; ++b) {
                const uint8_t * g = got.data() + b*bs;
                const uint8_t * w = c.want->data() + b*bs;
                if (memcmp(g, w, bs) != 0) {
                    ++bad;
                    if (b < n_adv) ++bad_adv;
                    const size_t scale_bytes = 1; // the block's first member, its 8-bit log scale code
                    if (memcmp(g + scale_bytes, w + scale_bytes, bs - scale_bytes) == 0) ++bad_scale_only;
                    if (bad <= 5) {
                        printf("  mismatch %s%s block %lld (%s): scale byte 0 got %02x want %02x\n", c.name, ggml_type_name(type),
                               (long long) b, b < n_adv ? "adversarial" : "random", g[0], w[0]);
                    }
                }
            }
            printf("%-15s%-7s blocks %7lld  (adversarial %d)  byte-identical: %s  (mismatching blocks %lld, adversarial %lld, scale only %lld)\n",
                   c.name, ggml_type_name(type), (long long) nb, n_adv, bad ? "NO" : "yes", (long long) bad, (long long) bad_adv,
                   (long long) bad_scale_only);
            failures += bad != 0;
        }
        // dequantize: CUDA CPY turbo->f32 of the reference bytes vs the CPU to_float
        std::vector<uint8_t> got = run_cuda(be, type, GGML_TYPE_F32, ref.data(), n, false);
        std::vector<float> want(n);
        ggml_get_type_traits(type)->to_float(ref.data(), want.data(), n);
        int64_t bad = 0;
        for (int64_t i = 0; i < n; ++i) {
            float gv;
            memcpy(&gv, got.data() + i*sizeof(float), sizeof(float));
            bad += !same_float(gv, want[i]);
        }
        printf("%-15s%-7s values %7lld  bit-identical: %s  (mismatches %lld)\n", "CPY ->f32 ", ggml_type_name(type), (long long) n,
               bad ? "NO" : "yes", (long long) bad);
        failures += bad != 0;
    }
    ggml_backend_free(be);
    printf("%s\n", failures ? "FAIL" : "OK: CUDA turbo bytes == C reference bytes");
    return failures ? 1 : 0;
}
