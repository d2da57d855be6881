// experiment TU: one flash_attn_ext_vec kernel, chosen by -D macros
#include "ggml/src/ggml-cuda/fattn-vec.cuh"
#ifndef EXP_D
#define EXP_D 128
#endif
#ifndef EXP_NCOLS
#define EXP_NCOLS 1
#endif
#ifndef EXP_K
#define EXP_K GGML_TYPE_TURBO3
#endif
#ifndef EXP_V
#define EXP_V GGML_TYPE_TURBO3
#endif
#ifndef EXP_GQA
#define EXP_GQA false
#endif
void * exp_kernel() { return (void *) flash_attn_ext_vec<EXP_D, EXP_NCOLS, EXP_K, EXP_V, false, EXP_GQA>; }
