// Minimal stand-in for ggml-impl.h: IEEE half conversions with round to
// nearest even, as ggml's (the compiler's _Float16 does exactly that).
#pragma once
#include <string.h>

static inline ggml_half tq_fp32_to_fp16(float f) {
    _Float16 h = (_Float16) f;
    ggml_half b;
    memcpy(&b, &h, sizeof b);
    return b;
}

static inline float tq_fp16_to_fp32(ggml_half b) {
    _Float16 h;
    memcpy(&h, &b, sizeof h);
    return (float) h;
}

#define GGML_FP32_TO_FP16(x) tq_fp32_to_fp16(x)
#define GGML_FP16_TO_FP32(x) tq_fp16_to_fp32(x)
