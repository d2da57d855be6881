// Host emulation of the CUDA turbo quantizer: the rendered ggml-cuda/turbo.cuh,
// compiled as C++ under tests/data/cuda_shim/common.cuh, runs each lane of a
// group as a user context (ucontext; a shuffle's barrier switches to the next
// lane) with x86 MXCSR FTZ+DAZ set, the flush-to-zero of nvcc's
// -use_fast_math; its block bytes must equal
// the C reference's (ggml-turbo.c, run without flushing) on the byte check's
// random and adversarial blocks, from f32 and from f16 rows. Driven by
// tests/test_cuda_quantizer_emulation.py, which passes the type list as
// TURBO_EMU_TYPES (X(name, NAME) per turbo type). Prints "OK" or the first
// mismatching blocks.
#include "common.cuh" // the shim, not ggml-cuda's
#include "turbo.cuh"  // rendered: generated/ggml/src/ggml-cuda
#include "ggml-turbo.h"
#include "turbo_block_data.h"

#include <pmmintrin.h>
#include <ucontext.h>
#include <xmmintrin.h>

#include <cstdio>
#include <functional>
#include <vector>

// what ggml-turbo.c (the reference, linked in) uses from the rest of ggml
size_t ggml_row_size(enum ggml_type type, int64_t ne) {
    (void) type;
    return (size_t) ne;
}

int turbo_emu_lane = 0;
uint64_t turbo_emu_slot[WARP_SIZE];

static int emu_lanes = 1;
static std::vector<ucontext_t> emu_ctx;
static std::function<void(int)> emu_body;

void turbo_emu_barrier() {
    const int me = turbo_emu_lane;
    const int next = (me + 1) % emu_lanes;
    turbo_emu_lane = next;
    swapcontext(&emu_ctx[me], &emu_ctx[next]);
    turbo_emu_lane = me;
}

static void emu_entry(int lane) {
    emu_body(lane);
}

// body(lane) on `lanes` cooperative contexts, lane 0 first; returns when all are done
static void run_lanes(int lanes, std::function<void(int)> body) {
    static thread_local std::vector<std::vector<char>> stacks;
    ucontext_t main_ctx;
    emu_lanes = lanes;
    emu_body = std::move(body);
    emu_ctx.assign(lanes, ucontext_t());
    stacks.assign(lanes, std::vector<char>(1 << 18));
    for (int lane = lanes - 1; lane >= 0; --lane) {
        getcontext(&emu_ctx[lane]);
        emu_ctx[lane].uc_stack.ss_sp = stacks[lane].data();
        emu_ctx[lane].uc_stack.ss_size = stacks[lane].size();
        emu_ctx[lane].uc_link = lane + 1 < lanes ? &emu_ctx[lane + 1] : &main_ctx;
        makecontext(&emu_ctx[lane], (void (*)()) emu_entry, 1, lane);
    }
    turbo_emu_lane = 0;
    swapcontext(&main_ctx, &emu_ctx[0]);
}

template <typename block_t, typename src_t>
static std::vector<block_t> quantize_lanes(void (*quant)(const src_t *, block_t *, int, bool), int qk, int lanes,
                                           const std::vector<src_t> & x) {
    const size_t nb = x.size() / qk;
    std::vector<block_t> y(nb);
    const unsigned int csr = _mm_getcsr();
    _MM_SET_FLUSH_ZERO_MODE(_MM_FLUSH_ZERO_ON);
    _MM_SET_DENORMALS_ZERO_MODE(_MM_DENORMALS_ZERO_ON);
    run_lanes(lanes, [&](int lane) {
        for (size_t b = 0; b < nb; ++b) {
            quant(x.data() + b*qk, &y[b], lane, true);
        }
    });
    _mm_setcsr(csr);
    return y;
}

template <typename block_t>
static int compare(const char * what, const std::vector<block_t> & got, const std::vector<block_t> & want, int n_adv) {
    int bad = 0;
    for (size_t b = 0; b < want.size(); ++b) {
        if (memcmp(&got[b], &want[b], sizeof(block_t)) != 0) {
            if (++bad <= 5) {
                // the scale is the block's first member (fp16 d or an 8-bit code e): its first byte
                printf("%s: block %zu (%s) differs: scale byte 0 got %02x want %02x\n", what, b,
                       (int) b < n_adv ? "adversarial" : "random",
                       (unsigned) ((const uint8_t *) &got[b])[0], (unsigned) ((const uint8_t *) &want[b])[0]);
            }
        }
    }
    printf("%-24s %6zu blocks, %d mismatching\n", what, want.size(), bad);
    return bad;
}

template <typename block_t>
static int check(const char * name, int qk, int lanes, void (*quant_f32)(const float *, block_t *, int, bool),
                 void (*quant_f16)(const half *, block_t *, int, bool), void (*ref)(const float *, block_t *, int64_t)) {
    int n_adv = 0;
    std::vector<float> x = make_data(qk, turbo_test_points, 16, n_adv, 2048);
    std::vector<block_t> want(x.size() / qk);
    ref(x.data(), want.data(), (int64_t) x.size());
    std::vector<half> xh(x.size());
    std::vector<float> xhf(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
        xh[i] = GGML_FP32_TO_FP16(x[i]);
        xhf[i] = GGML_FP16_TO_FP32(xh[i]);
    }
    std::vector<block_t> want_h(x.size() / qk);
    ref(xhf.data(), want_h.data(), (int64_t) x.size());
    char what[64];
    snprintf(what, sizeof(what), "%s from f32", name);
    int bad = compare(what, quantize_lanes(quant_f32, qk, lanes, x), want, n_adv);
    snprintf(what, sizeof(what), "%s from f16", name);
    bad += compare(what, quantize_lanes(quant_f16, qk, lanes, xh), want_h, n_adv);
    return bad;
}

// The log8 scale without tables (turbo_log8_value / _inv / _code) against the tables and a
// count of the boundaries: every code, every boundary and its float neighbours, and a sweep.
static int check_log8() {
    int bad = 0;
    const int nb = (int) (sizeof(ggml_turbo_log8_bounds) / sizeof(float));
    auto want_code = [&](double s) {
        if (!(s > 0.0)) return 0;
        int n = 0;
        while (n < nb && (double) ggml_turbo_log8_bounds[n] < s) ++n;
        return 1 + n;
    };
    for (int c = 1; c < GGML_TURBO_LOG8_NAN_CODE; ++c) {
        bad += turbo_log8_value(c) != ggml_turbo_log8_scale[c] || turbo_log8_inv(c) != ggml_turbo_log8_inv[c];
    }
    std::vector<float> pts = {0.0f, 1e-30f, 1e-7f, 1e-6f, 1e6f, 3e38f};
    for (int i = 0; i < nb; ++i) {
        const float b = ggml_turbo_log8_bounds[i];
        pts.insert(pts.end(), {b, std::nextafter(b, 0.0f), std::nextafter(b, INFINITY)});
    }
    for (float e = -40.0f; e <= 40.0f; e += 0.001f) {
        pts.push_back(exp2f(e));
    }
    for (float s : pts) {
        if (turbo_log8_code((double) s) != want_code((double) s)) {
            if (bad++ < 5) printf("log8 code of %a: %d, want %d\n", s, turbo_log8_code((double) s), want_code((double) s));
        }
    }
    printf("log8 scale: %zu values, %d codes: %s\n", pts.size(), GGML_TURBO_LOG8_NAN_CODE - 1, bad ? "FAIL" : "identical");
    return bad;
}

int main() {
    int bad = check_log8();
#define X(n, N) bad += check<block_##n>(#n, QK_##N, N##_QUANT_LANES, quantize_##n##_block_lanes<float>, \
                                       quantize_##n##_block_lanes<half>, quantize_row_##n##_ref);
    TURBO_EMU_TYPES
#undef X
    printf("%s\n", bad ? "FAIL" : "OK");
    return bad ? 1 : 0;
}
