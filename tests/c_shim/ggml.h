// Minimal stand-in for ggml.h (see ggml-common.h in this folder).
#pragma once
#include <assert.h>
#include <stddef.h>
#include <stdint.h>

#include "ggml-turbo-types.h"

#define GGML_API
#define GGML_RESTRICT restrict
#define GGML_UNUSED(x) (void) (x)

enum ggml_type {
    GGML_TURBO_TYPES(GGML_TURBO_ENUM_ENTRY)
};

size_t ggml_row_size(enum ggml_type type, int64_t n);
