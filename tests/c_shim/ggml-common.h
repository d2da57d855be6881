// Minimal stand-in for llama.cpp's ggml-common.h: just enough for the rendered
// C reference (ggml-turbo.c / ggml-turbo-common.h) to compile on its own in the
// fast tests (tests/test_c_reference.py). Not part of any build.
#pragma once
#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint16_t ggml_half;
#define GGML_COMMON_DECL
#define GGML_COMMON_IMPL
#define GGML_TABLE_BEGIN(type, name, size) static const type name[size] = {
#define GGML_TABLE_END() };

#include "ggml-turbo-common.h"
