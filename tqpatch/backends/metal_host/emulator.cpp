// tqpatch-verify-metal-emu: tqpatch-verify for the Metal backend, host-emulated.
//
//   tqpatch-verify-metal-emu --backend MTL0 --in cases.bin --out results.bin
//
// Reads verify's case files and writes its results files (formats:
// tqpatch/verify_io.py), like the real harness, but runs each op as
// ggml-metal would on an Apple GPU: the host side of ggml-metal-ops.cpp
// (with tqpatch's glue patch) is played here -- which kernels, found by their
// host names, with which grids, function constants, threadgroup memory and
// scratch buffers -- and the kernels themselves are the Metal sources of the
// applied tree compiled as C++ (one translation unit per Metal library,
// registered in tq_emu.h's tables) and run by simt.h.
//
// Only the turbo kernels are emulated: a case of an upstream type alone
// answers "unsupported" (verify does not count those).
//
// TQPATCH_METAL_EMU_FA_PATH=vec|mma|mma-kv-f16 forces the flash-attention
// path (the vector kernel, the regular kernel reading K/V as they are, or the
// regular kernel after the f16 conversion of K and V) instead of the host's
// choice by batch size, so a test can cover every path with the same cases.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "ggml.h"

#include <metal_stdlib>

#include "ggml-metal-impl.h"
#include "ggml-metal-turbo.h"
#include "tq_emu.h"
#include "tq_types.h"
#include "tq_wire.h"

// ------------------------------------------------------------------ the ggml facts the glue asks for

static const tq_type_info * type_info(int type) {
    for (const auto & t : tq_types) {
        if (t.id == type) {
            return &t;
        }
    }
    return nullptr;
}

extern "C" const char * ggml_type_name(enum ggml_type type) {
    const tq_type_info * t = type_info(type);
    return t ? t->name : "?";
}

extern "C" int64_t ggml_blck_size(enum ggml_type type) {
    const tq_type_info * t = type_info(type);
    return t ? t->block_size : 0;
}

static size_t type_size(ggml_type type) {
    const tq_type_info * t = type_info(type);
    return t ? t->block_bytes : 0;
}

static bool is_quantized(ggml_type type) {
    return ggml_blck_size(type) > 1;
}

static size_t nbytes(const ggml_tensor & t) {  // contiguous tensors only
    return t.nb[3] * (size_t) t.ne[3];
}

static size_t row_size(ggml_type type, int64_t n) {
    return type_size(type) * (size_t) (n / ggml_blck_size(type));
}

// a contiguous tensor of `type` with shape ne (the fields the glue and the host code read)
static ggml_tensor make_tensor(ggml_type type, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3) {
    ggml_tensor t;
    memset(&t, 0, sizeof(t));
    t.type = type;
    t.ne[0] = ne0; t.ne[1] = ne1; t.ne[2] = ne2; t.ne[3] = ne3;
    t.nb[0] = type_size(type);
    t.nb[1] = row_size(type, ne0);
    t.nb[2] = t.nb[1] * ne1;
    t.nb[3] = t.nb[2] * ne2;
    return t;
}

// ------------------------------------------------------------------ dispatching kernels

static constexpr int MAX_THREADS_PER_THREADGROUP = 1024;  // ggml_metal_pipeline_max_theads_per_threadgroup

struct dispatch_error {
    std::string message;
};

template <typename F>
static const tq_emu::kernel_ref<F> & pipeline(const std::string & name, const tq_emu::fc_values & cv) {
    const tq_emu::kernel_ref<F> * k = tq_emu::find<F>(name);
    if (!k) {
        throw dispatch_error{"kernel not found in any emulated Metal library: " + name};
    }
    k->set_fc(cv);
    return *k;
}

// Bytes of threadgroup memory past what the host sets (a guard). Upstream's vector
// flash-attention kernel zero-fills past its threadgroup memory where DV/4 is not a
// multiple of its lanes per row (DV = 96 at 4 elements per thread: up to 256 bytes,
// the same for its own f16 and q8_0 kernels at head 96); Apple GPUs run that. The
// guard takes those zeros; any other value written there fails the dispatch.
static constexpr size_t SMEM_GUARD = 4096;

// ggml_metal_encoder_dispatch_threadgroups: every threadgroup in order, threadgroup
// memory filled with 0xFF (a half NaN) so that reading what no thread wrote shows
static void dispatch(int gx, int gy, int gz, int tx, int ty, int tz, size_t smem,
                     const std::function<void(const tq_simt::thread_pos &, half *)> & body) {
    if (tx * ty * tz > MAX_THREADS_PER_THREADGROUP) {
        throw dispatch_error{"threadgroup of " + std::to_string(tx * ty * tz) + " threads"};
    }
    std::vector<uint8_t> shmem(smem + SMEM_GUARD, 0xFF);
    const tq_simt::uint3_t grid = {(uint32_t) gx, (uint32_t) gy, (uint32_t) gz};
    const tq_simt::uint3_t ntg = {(uint32_t) tx, (uint32_t) ty, (uint32_t) tz};
    half * sh = (half *) shmem.data();
    const std::function<void(const tq_simt::thread_pos &)> per_thread = [&](const tq_simt::thread_pos & p) {
        body(p, sh);
    };
    for (int z = 0; z < gz; ++z) {
        for (int y = 0; y < gy; ++y) {
            for (int x = 0; x < gx; ++x) {
                memset(shmem.data(), 0xFF, shmem.size());
                tq_simt::run_threadgroup(grid, {(uint32_t) x, (uint32_t) y, (uint32_t) z}, ntg, per_thread);
                for (size_t i = smem; i < shmem.size(); ++i) {
                    if (shmem[i] != 0xFF && shmem[i] != 0x00) {
                        throw dispatch_error{"a kernel wrote past its " + std::to_string(smem) +
                                             " bytes of threadgroup memory (byte " + std::to_string(i) + ")"};
                    }
                }
            }
        }
    }
}

static metal::uint3 u3(const tq_simt::uint3_t & v) {
    return metal::uint3(v.x, v.y, v.z);
}

static metal::ushort3 us3(const tq_simt::uint3_t & v) {
    return metal::ushort3((ushort) v.x, (ushort) v.y, (ushort) v.z);
}

// ------------------------------------------------------------------ ops (ggml-metal-ops.cpp)

typedef std::vector<uint8_t> bytes;

// ggml_metal_op_set_rows: f32 rows into rows idx[i] of dst
static void op_set_rows(const ggml_tensor & dst, const ggml_tensor & src, const ggml_tensor & idx,
                        const bytes & src_data, const bytes & idx_data, bytes & dst_data) {
    char name[256];
    snprintf(name, sizeof(name), "kernel_set_rows_%s_%s_%s", ggml_type_name(src.type), ggml_type_name(idx.type),
             ggml_type_name(dst.type));
    const auto & k = pipeline<tq_emu::set_rows_fn>(name, {});

    const int32_t nk0 = (int32_t) (dst.ne[0] / ggml_blck_size(dst.type));
    int nth = 32;
    while (nth < nk0 && nth < MAX_THREADS_PER_THREADGROUP) {
        nth *= 2;
    }
    int nrptg = 1;
    if (nth > nk0) {
        nrptg = (nth + nk0 - 1) / nk0;
        nth = nk0;
        if (nrptg * nth > MAX_THREADS_PER_THREADGROUP) {
            nrptg--;
        }
    }
    nth = std::min(nth, nk0);

    ggml_metal_kargs_set_rows args;
    memset(&args, 0, sizeof(args));
    args.nk0 = nk0;
    args.ne01 = (int32_t) src.ne[1];
    args.nb01 = src.nb[1]; args.nb02 = src.nb[2]; args.nb03 = src.nb[3];
    args.ne11 = (int32_t) idx.ne[1]; args.ne12 = (int32_t) idx.ne[2];
    args.nb10 = idx.nb[0]; args.nb11 = idx.nb[1]; args.nb12 = idx.nb[2];
    args.nb1 = dst.nb[1]; args.nb2 = dst.nb[2]; args.nb3 = dst.nb[3];

    dispatch((int) ((src.ne[1] + nrptg - 1) / nrptg), (int) src.ne[2], (int) src.ne[3], nth, nrptg, 1, 0,
             [&](const tq_simt::thread_pos & p, half *) {
                 k.fn(args, (const char *) src_data.data(), (const char *) idx_data.data(), (char *) dst_data.data(),
                      u3(p.tgpig), p.tiitg, u3(p.ntg));
             });
}

// ggml_metal_op_get_rows: rows idx[i] of a quantized src -> f32
static void op_get_rows(const ggml_tensor & src, const ggml_tensor & idx, const ggml_tensor & dst,
                        const bytes & src_data, const bytes & idx_data, bytes & dst_data) {
    char name[256];
    snprintf(name, sizeof(name), "kernel_get_rows_%s", ggml_type_name(src.type));
    const auto & k = pipeline<tq_emu::get_rows_fn>(name, {});

    ggml_metal_kargs_get_rows args;
    memset(&args, 0, sizeof(args));
    args.ne00t = (int32_t) (is_quantized(src.type) ? src.ne[0] / 16 : src.ne[0]);
    args.ne00 = (int32_t) src.ne[0];
    args.nb01 = src.nb[1]; args.nb02 = src.nb[2]; args.nb03 = src.nb[3];
    args.ne10 = (int32_t) idx.ne[0];
    args.nb10 = idx.nb[0]; args.nb11 = idx.nb[1]; args.nb12 = idx.nb[2];
    args.nb1 = dst.nb[1]; args.nb2 = dst.nb[2]; args.nb3 = dst.nb[3];

    const int nth = std::min(args.ne00t, MAX_THREADS_PER_THREADGROUP);
    const int nw0 = (args.ne00t + nth - 1) / nth;
    dispatch(nw0 * (int) idx.ne[0], (int) idx.ne[1], (int) idx.ne[2], nth, 1, 1, 0,
             [&](const tq_simt::thread_pos & p, half *) {
                 k.fn(args, (const char *) src_data.data(), (const char *) idx_data.data(), (char *) dst_data.data(),
                      u3(p.tgpig), (ushort) p.tiitg, us3(p.ntg));
             });
}

// ggml_metal_op_cpy
static void op_cpy(const ggml_tensor & src, const ggml_tensor & dst, const bytes & src_data, bytes & dst_data) {
    char name[256];
    snprintf(name, sizeof(name), "kernel_cpy_%s_%s", ggml_type_name(src.type), ggml_type_name(dst.type));
    const auto & k = pipeline<tq_emu::cpy_fn>(name, {});

    int64_t nk0 = src.ne[0];
    if (is_quantized(src.type)) {
        nk0 = src.ne[0] / 16;
    } else if (is_quantized(dst.type)) {
        nk0 = src.ne[0] / ggml_blck_size(dst.type);
    }
    int nth = (int) std::min<int64_t>(nk0 * src.ne[1], 256);
    const int nrptg = 1;  // rows are batched only for types with a block of 1
    nth = (int) std::min<int64_t>(nth, nk0);

    ggml_metal_kargs_cpy args;
    memset(&args, 0, sizeof(args));
    args.nk0 = nk0;
    args.ne00 = src.ne[0]; args.ne01 = src.ne[1]; args.ne02 = src.ne[2]; args.ne03 = src.ne[3];
    args.nb00 = src.nb[0]; args.nb01 = src.nb[1]; args.nb02 = src.nb[2]; args.nb03 = src.nb[3];
    args.ne0 = dst.ne[0]; args.ne1 = dst.ne[1]; args.ne2 = dst.ne[2]; args.ne3 = dst.ne[3];
    args.nb0 = dst.nb[0]; args.nb1 = dst.nb[1]; args.nb2 = dst.nb[2]; args.nb3 = dst.nb[3];

    const int nw0 = (int) ((nk0 + nth - 1) / nth);
    dispatch(nw0 * (int) ((src.ne[1] + nrptg - 1) / nrptg), (int) src.ne[2], (int) src.ne[3], nth, nrptg, 1, 0,
             [&](const tq_simt::thread_pos & p, half *) {
                 k.fn(args, (const char *) src_data.data(), (char *) dst_data.data(), u3(p.tgpig), us3(p.tpitg),
                      us3(p.ntg));
             });
}

// ------------------------------------------------------------------ flash attention

enum class fa_path { host, vec, mma, mma_kv_f16 };

static fa_path forced_fa_path() {
    const char * v = getenv("TQPATCH_METAL_EMU_FA_PATH");
    if (!v || !*v || !strcmp(v, "host")) {
        return fa_path::host;
    }
    if (!strcmp(v, "vec")) {
        return fa_path::vec;
    }
    if (!strcmp(v, "mma")) {
        return fa_path::mma;
    }
    if (!strcmp(v, "mma-kv-f16")) {
        return fa_path::mma_kv_f16;
    }
    fprintf(stderr, "TQPATCH_METAL_EMU_FA_PATH=%s: use host, vec, mma or mma-kv-f16\n", v);
    exit(2);
}

// ggml_metal_op_flash_attn_ext_use_vec
static bool fa_use_vec(const ggml_tensor & op) {
    return op.src[0]->ne[1] < 20 && op.src[0]->ne[0] % 32 == 0;
}

// ggml_metal_op_flash_attn_ext_use_kv_f16, with the glue's turbo rule
static bool fa_use_kv_f16(const ggml_tensor & op) {
    if (op.src[0]->ne[1] < 32) {
        return false;
    }
    if (ggml_metal_turbo_fa(&op)) {
        return ggml_metal_turbo_fa_use_kv_f16(&op);
    }
    return false;  // upstream types are not emulated
}

// K or V -> contiguous f16 (kernel_flash_attn_ext_kv_<type>_f16); returns the f16 bytes
static bytes fa_kv_to_f16(const ggml_tensor & t, const bytes & data) {
    char name[256];
    snprintf(name, sizeof(name), "kernel_flash_attn_ext_kv_%s_f16", ggml_type_name(t.type));
    const auto & k = pipeline<tq_emu::kv_f16_fn>(name, {});

    const int64_t nblocks64 = (t.ne[0] / ggml_blck_size(t.type)) * t.ne[1] * t.ne[2] * t.ne[3];
    const int32_t nblocks = (int32_t) nblocks64;
    const int nth = std::min(MAX_THREADS_PER_THREADGROUP, 256);

    ggml_metal_kargs_flash_attn_ext_kv_f16 args;
    memset(&args, 0, sizeof(args));
    args.ne0 = (int32_t) t.ne[0]; args.ne1 = (int32_t) t.ne[1]; args.ne2 = (int32_t) t.ne[2]; args.ne3 = (int32_t) t.ne[3];
    args.nb0 = t.nb[0]; args.nb1 = t.nb[1]; args.nb2 = t.nb[2]; args.nb3 = t.nb[3];
    args.nblocks = nblocks;

    bytes out(2 * (size_t) (t.ne[0] * t.ne[1] * t.ne[2] * t.ne[3]) + 16, 0xFF);
    dispatch((nblocks + nth - 1) / nth, 1, 1, nth, 1, 1, 0, [&](const tq_simt::thread_pos & p, half *) {
        k.fn(args, (const char *) data.data(), (half *) out.data(), p.tpig.x);
    });
    return out;
}

// ggml_metal_op_flash_attn_ext (no sinks, no ALiBi, no softcap, no sparse index lists:
// what llama.cpp's KV cache and verify ask for)
static void op_flash_attn_ext(const ggml_tensor & op, float scale, const bytes & q_data, const bytes & k_data,
                              const bytes & v_data, const bytes & m_data, bytes & dst_data) {
    const ggml_tensor & Q = *op.src[0];
    const ggml_tensor & K = *op.src[1];
    const ggml_tensor & V = *op.src[2];
    const ggml_tensor & M = *op.src[3];

    const int32_t ne00 = (int32_t) Q.ne[0], ne01 = (int32_t) Q.ne[1], ne02 = (int32_t) Q.ne[2], ne03 = (int32_t) Q.ne[3];
    const int32_t ne10 = (int32_t) K.ne[0], ne11 = (int32_t) K.ne[1], ne12 = (int32_t) K.ne[2], ne13 = (int32_t) K.ne[3];
    const int32_t ne20 = (int32_t) V.ne[0], ne22 = (int32_t) V.ne[2], ne23 = (int32_t) V.ne[3];
    const int32_t ne30 = (int32_t) M.ne[0], ne31 = (int32_t) M.ne[1], ne32 = (int32_t) M.ne[2], ne33 = (int32_t) M.ne[3];

    const bool has_mask = true;
    const bool has_sinks = false;
    const bool has_bias = false;
    const bool has_scap = false;
    const float max_bias = 0.0f;
    const float logit_softcap = 0.0f;
    const uint32_t n_head = (uint32_t) ne02;
    const int32_t n_head_log2 = 1u << (uint32_t) floorf(log2f((float) n_head));
    const float m0 = powf(2.0f, -(max_bias) / n_head_log2);
    const float m1 = powf(2.0f, -(max_bias / 2.0f) / n_head_log2);

    const fa_path forced = forced_fa_path();
    bool use_vec = fa_use_vec(op);
    bool use_kv_f16 = fa_use_kv_f16(op);
    if (forced != fa_path::host) {
        use_vec = forced == fa_path::vec;
        use_kv_f16 = forced == fa_path::mma_kv_f16 && ggml_metal_turbo_fa_use_kv_f16(&op);
    }

    const char * k_src = (const char *) k_data.data();
    const char * v_src = (const char *) v_data.data();
    uint64_t nb10 = K.nb[0], nb11 = K.nb[1], nb12 = K.nb[2], nb13 = K.nb[3];
    uint64_t nb20 = V.nb[0], nb21 = V.nb[1], nb22 = V.nb[2], nb23 = V.nb[3];
    bytes k_f16, v_f16;
    if (use_kv_f16) {
        k_f16 = fa_kv_to_f16(K, k_data);
        v_f16 = fa_kv_to_f16(V, v_data);
        k_src = (const char *) k_f16.data();
        v_src = (const char *) v_f16.data();
        nb10 = 2; nb11 = nb10 * ne10; nb12 = nb11 * ne11; nb13 = nb12 * ne12;
        nb20 = 2; nb21 = nb20 * ne20; nb22 = nb21 * V.ne[1]; nb23 = nb22 * ne22;
    }
    const int32_t ns10 = (int32_t) (nb11 / nb10);
    const int32_t ns20 = (int32_t) (nb21 / nb20);
    const char * mask = (const char *) m_data.data();
    // the function constants both flash-attention kernels read, at their own base
    const auto set_shared_constants = [&](tq_emu::fc_values & fc, int base, bool kvpad, int32_t n_sg) {
        fc.set(base + 0, has_mask);
        fc.set(base + 1, has_sinks);
        fc.set(base + 2, has_bias);
        fc.set(base + 3, has_scap);
        fc.set(base + 4, kvpad);
        fc.set(base + 20, ns10);
        fc.set(base + 21, ns20);
        fc.set(base + 22, n_sg);
    };

    char kv_name[64];
    ggml_metal_fa_kv_name(kv_name, sizeof(kv_name), &op, use_kv_f16);

    // the last partial chunk of C cache items is read from a padded copy (kernel_flash_attn_ext_pad)
    auto pad = [&](int ncpsg, bytes & pad_data) {
        ggml_metal_kargs_flash_attn_ext_pad args;
        memset(&args, 0, sizeof(args));
        args.ne11 = ne11; args.ne_12_2 = ne12; args.ne_12_3 = ne13;
        args.nb11 = nb11; args.nb12 = nb12; args.nb13 = nb13;
        args.nb21 = nb21; args.nb22 = nb22; args.nb23 = nb23;
        args.ne31 = ne31; args.ne32 = ne32; args.ne33 = ne33;
        args.nb31 = M.nb[1]; args.nb32 = M.nb[2]; args.nb33 = M.nb[3];
        tq_emu::fc_values cv;
        cv.set(FC_FLASH_ATTN_EXT_PAD + 0, has_mask);
        cv.set(FC_FLASH_ATTN_EXT_PAD + 25, ncpsg);
        const auto & k = pipeline<tq_emu::fa_pad_fn>("kernel_flash_attn_ext_pad", cv);
        pad_data.assign(ncpsg * (nb11 * ne12 * ne13 + nb21 * ne22 * ne23 + 2 * (size_t) ne31 * ne32 * ne33) + 16, 0xFF);
        dispatch(ncpsg, std::max(ne12, ne32), std::max(ne13, ne33), 32, 1, 1, 0,
                 [&](const tq_simt::thread_pos & p, half *) {
                     k.fn(args, k_src, v_src, mask, (char *) pad_data.data(), u3(p.tgpig), (ushort) p.tiitg,
                          us3(p.ntg));
                 });
    };

    ggml_metal_kargs_flash_attn_ext args;  // the regular and the vector kernel's args share these fields
    memset(&args, 0, sizeof(args));
    args.ne01 = ne01; args.ne02 = ne02; args.ne03 = ne03;
    args.nb01 = Q.nb[1]; args.nb02 = Q.nb[2]; args.nb03 = Q.nb[3];
    args.ne11 = ne11; args.ne_12_2 = ne12; args.ne_12_3 = ne13;
    args.ns10 = ns10; args.nb11 = nb11; args.nb12 = nb12; args.nb13 = nb13;
    args.ns20 = ns20; args.nb21 = nb21; args.nb22 = nb22; args.nb23 = nb23;
    args.ne31 = ne31; args.ne32 = ne32; args.ne33 = ne33;
    args.nb31 = M.nb[1]; args.nb32 = M.nb[2]; args.nb33 = M.nb[3];
    args.ne1 = (int32_t) op.ne[1]; args.ne2 = (int32_t) op.ne[2]; args.ne3 = (int32_t) op.ne[3];
    args.scale = scale; args.max_bias = max_bias; args.m0 = m0; args.m1 = m1;
    args.n_head_log2 = n_head_log2; args.logit_softcap = logit_softcap;

    const char * q = (const char *) q_data.data();
    const char * sinks = q;

    if (!use_vec) {
        const int nqptg = OP_FLASH_ATTN_EXT_NQPSG;
        const int ncpsg = OP_FLASH_ATTN_EXT_NCPSG;
        const bool has_kvpad = ne11 % ncpsg != 0;
        bytes pad_data(16, 0xFF);
        if (has_kvpad) {
            pad(ncpsg, pad_data);
        }
        const int32_t nblk1 = (ne01 + nqptg - 1) / nqptg;
        const int32_t nblk0 = (ne30 + ncpsg - 1) / ncpsg;
        bytes blk((size_t) nblk0 * nblk1 * ne32 * ne33 + 16, 0xFF);
        {
            ggml_metal_kargs_flash_attn_ext_blk bargs;
            memset(&bargs, 0, sizeof(bargs));
            bargs.ne01 = ne01; bargs.ne30 = ne30; bargs.ne31 = ne31; bargs.ne32 = ne32; bargs.ne33 = ne33;
            bargs.nb31 = M.nb[1]; bargs.nb32 = M.nb[2]; bargs.nb33 = M.nb[3];
            tq_emu::fc_values cv;
            cv.set(FC_FLASH_ATTN_EXT_BLK + 24, nqptg);
            cv.set(FC_FLASH_ATTN_EXT_BLK + 25, ncpsg);
            const auto & k = pipeline<tq_emu::fa_blk_fn>("kernel_flash_attn_ext_blk", cv);
            dispatch(nblk0, nblk1, ne32 * ne33, 32, 1, 1, 0, [&](const tq_simt::thread_pos & p, half *) {
                k.fn(bargs, mask, (char *) blk.data(), u3(p.tgpig), (ushort) p.tiisg);
            });
        }
        const int is_q = !use_kv_f16 && (is_quantized(K.type) || is_quantized(V.type)) ? 1 : 0;
        const int64_t dv_pad = (ne20 + 63) / 64 * 64;
        const int32_t nsg = ne00 >= 512 ? 8 : 4;
        const size_t smem_half = nqptg * (ne00 + 2 * dv_pad + 4 * ncpsg) + is_q * (16 * 32 * nsg);
        const size_t smem = (smem_half * 2 + 15) / 16 * 16;
        const bool bc_mask = M.ne[1] % 8 != 0;

        char name[256];
        snprintf(name, sizeof(name), "kernel_flash_attn_ext_%s_dk%d_dv%d", kv_name, ne10, ne20);
        tq_emu::fc_values cv;
        set_shared_constants(cv, FC_FLASH_ATTN_EXT, has_kvpad, nsg);
        cv.set(FC_FLASH_ATTN_EXT + 10, bc_mask);
        const auto & k = pipeline<tq_emu::fa_fn>(name, cv);
        dispatch((ne01 + nqptg - 1) / nqptg, ne02, ne03, 32, nsg, 1, smem,
                 [&](const tq_simt::thread_pos & p, half * sh) {
                     k.fn(args, q, k_src, v_src, mask, sinks, (const char *) pad_data.data(),
                          (const char *) blk.data(), (char *) dst_data.data(), sh, u3(p.tgpig), (ushort) p.tiisg,
                          (ushort) p.sgitg);
                 });
        return;
    }

    // the vector kernel, at the baseline configuration (one query per threadgroup)
    const int nqptg = 1;
    const int ncpsg = OP_FLASH_ATTN_EXT_VEC_NCPSG;
    const int nhptg = 1;
    const bool has_kvpad = ne11 % ncpsg != 0;
    bytes pad_data(16, 0xFF);
    if (has_kvpad) {
        pad(ncpsg, pad_data);
    }
    int32_t nwg = 32;
    int32_t nsg = 1;
    while (2 * nwg * nsg * ncpsg < ne11 && nsg < 4) {
        nsg *= 2;
    }
    const int64_t dk_pad = (ne00 + 127) / 128 * 128;
    const int64_t dv_pad = (ne20 + 127) / 128 * 128;
    const size_t smem_half = (size_t) (dk_pad + 4 * ncpsg + 2 * dv_pad) * nqptg * nsg;
    const size_t smem = (smem_half * 2 + 15) / 16 * 16;

    ggml_metal_kargs_flash_attn_ext_vec vargs;
    memset(&vargs, 0, sizeof(vargs));
    static_assert(offsetof(ggml_metal_kargs_flash_attn_ext_vec, logit_softcap) ==
                  offsetof(ggml_metal_kargs_flash_attn_ext, logit_softcap), "FA args layouts differ");
    memcpy(&vargs, &args, sizeof(args));
    vargs.n_kv_max_padded = 0;

    char name[256];
    snprintf(name, sizeof(name), "kernel_flash_attn_ext_vec_%s_dk%d_dv%d", kv_name, ne10, ne20);
    tq_emu::fc_values cv;
    set_shared_constants(cv, FC_FLASH_ATTN_EXT_VEC, has_kvpad, nsg);
    cv.set(FC_FLASH_ATTN_EXT_VEC + 5, false);  // no sparse index lists
    cv.set(FC_FLASH_ATTN_EXT_VEC + 23, nwg);
    const auto & k = pipeline<tq_emu::fa_vec_fn>(name, cv);

    // with several workgroups each writes its partial result (and S, M) to a temporary buffer
    bytes tmp(4 * (size_t) ne01 * ne02 * ne03 * nwg * (ne20 + 2) + 16, 0xFF);
    char * out = nwg == 1 ? (char *) dst_data.data() : (char *) tmp.data();
    dispatch((ne01 + nqptg - 1) / nqptg, (ne02 + nhptg - 1) / nhptg, ne03 * nwg, 32, nsg, 1, smem,
             [&](const tq_simt::thread_pos & p, half * sh) {
                 k.fn(vargs, q, k_src, v_src, mask, sinks, (const char *) pad_data.data(), out, q, sh, u3(p.tgpig),
                      (ushort) p.tiisg, (ushort) p.sgitg);
             });
    if (nwg > 1) {
        ggml_metal_kargs_flash_attn_ext_vec_reduce rargs;
        rargs.nrows = (int32_t) (op.ne[1] * op.ne[2] * op.ne[3]);
        tq_emu::fc_values rcv;
        rcv.set(FC_FLASH_ATTN_EXT_VEC_REDUCE + 0, ne20);
        rcv.set(FC_FLASH_ATTN_EXT_VEC_REDUCE + 1, nwg);
        const auto & r = pipeline<tq_emu::fa_vec_reduce_fn>("kernel_flash_attn_ext_vec_reduce", rcv);
        dispatch(rargs.nrows, 1, 1, 32 * nwg, 1, 1, 0, [&](const tq_simt::thread_pos & p, half *) {
            r.fn(rargs, (const char *) tmp.data(), (char *) dst_data.data(), p.tgpig.x, (ushort) p.tiisg,
                 (ushort) p.sgitg);
        });
    }
}

// ------------------------------------------------------------------ verify's cases and results

// the wire format's constants (magics, version, op and status codes) are tq_wire.h's,
// generated from tqpatch/verify_io.py
namespace {

struct test_case {
    uint32_t op = 0;
    int32_t type_k = 0;
    int32_t type_v = 0;
    float scale = 1.0f;
    int64_t dims[N_DIMS] = {};
    std::vector<bytes> bufs;
};

struct result {
    uint32_t status = STATUS_ERROR;
    std::string message;
    bytes data;
};

struct reader {
    FILE * f;
    bool ok = true;
    template <typename T> T get() {
        T v{};
        ok = ok && fread(&v, sizeof(T), 1, f) == 1;
        return v;
    }
};

bool read_cases(const char * path, std::vector<test_case> & cases, std::string & err) {
    FILE * f = fopen(path, "rb");
    if (!f) {
        err = std::string("cannot open ") + path;
        return false;
    }
    reader r{f};
    char magic[4] = {};
    r.ok = fread(magic, 1, 4, f) == 4 && memcmp(magic, CASES_MAGIC, 4) == 0;
    const uint32_t version = r.get<uint32_t>();
    const uint32_t n = r.get<uint32_t>();
    if (!r.ok || version != FORMAT_VERSION) {
        err = std::string(path) + " is not a version-" + std::to_string(FORMAT_VERSION) +
              " tqpatch-verify case file";
        fclose(f);
        return false;
    }
    cases.resize(n);
    for (uint32_t i = 0; i < n && r.ok; ++i) {
        test_case & c = cases[i];
        c.op = r.get<uint32_t>();
        c.type_k = r.get<int32_t>();
        c.type_v = r.get<int32_t>();
        c.scale = r.get<float>();
        for (int64_t & d : c.dims) {
            d = r.get<int64_t>();
        }
        const uint32_t nb = r.get<uint32_t>();
        r.ok = r.ok && nb <= MAX_BUFFERS;
        for (uint32_t b = 0; b < nb && r.ok; ++b) {
            const uint64_t size = r.get<uint64_t>();
            r.ok = r.ok && size < (uint64_t(1) << MAX_BUFFER_BITS);
            if (r.ok) {
                c.bufs.emplace_back(size);
                r.ok = size == 0 || fread(c.bufs.back().data(), 1, size, f) == size;
            }
        }
    }
    fclose(f);
    if (!r.ok) {
        err = std::string(path) + " is truncated or corrupt";
    }
    return r.ok;
}

struct writer {
    FILE * f;
    bool ok = true;
    void raw(const void * p, size_t n) { ok = ok && (n == 0 || fwrite(p, 1, n, f) == n); }
    template <typename T> void put(const T & v) { raw(&v, sizeof(T)); }
    void str(const std::string & s) { put((uint32_t) s.size()); raw(s.data(), s.size()); }
};

std::string not_emulated(const char * what, int type) {
    return std::string(what) + " on " + ggml_type_name((ggml_type) type) +
           ": the host emulation runs the turbo kernels only";
}

bool known_type(int32_t t) {
    return type_info(t) != nullptr;
}

result run_case(const test_case & c) {
    result res;
    const int64_t * d = c.dims;
    if (!known_type(c.type_k) || !known_type(c.type_v)) {
        res.message = "unknown ggml type id " + std::to_string(c.type_k) + "/" + std::to_string(c.type_v);
        return res;
    }
    const ggml_type tk = (ggml_type) c.type_k;
    const ggml_type tv = (ggml_type) c.type_v;
    // the row ops: their buffers, and only turbo kernels are emulated
    static const struct { uint32_t op; size_t n_bufs; } row_ops[] = {{OP_SET_ROWS, 2}, {OP_GET_ROWS, 2}, {OP_CPY, 1}};
    for (const auto & r : row_ops) {
        if (c.op != r.op) {
            continue;
        }
        if (c.bufs.size() != r.n_bufs || d[0] % ggml_blck_size(tk) != 0) {
            res.message = std::string(op_label(r.op)) + " needs " + std::to_string(r.n_bufs) +
                          " buffer(s) and k a multiple of the block";
            return res;
        }
        if (!ggml_metal_type_is_turbo(tk)) {
            res.status = STATUS_UNSUPPORTED;
            res.message = not_emulated(op_label(r.op), tk);
            return res;
        }
    }
    try {
        switch (c.op) {
            case OP_SET_ROWS: {
                const ggml_tensor dst = make_tensor(tk, d[0], d[1], 1, 1);
                const ggml_tensor src = make_tensor(GGML_TYPE_F32, d[0], d[1], 1, 1);
                const ggml_tensor idx = make_tensor(GGML_TYPE_I64, d[1], 1, 1, 1);
                res.data.assign(nbytes(dst), 0);
                op_set_rows(dst, src, idx, c.bufs[0], c.bufs[1], res.data);
                break;
            }
            case OP_GET_ROWS: {
                const ggml_tensor src = make_tensor(tk, d[0], d[1], 1, 1);
                const ggml_tensor idx = make_tensor(GGML_TYPE_I32, d[2], 1, 1, 1);
                const ggml_tensor dst = make_tensor(GGML_TYPE_F32, d[0], d[2], 1, 1);
                res.data.assign(nbytes(dst), 0xFF);
                op_get_rows(src, idx, dst, c.bufs[0], c.bufs[1], res.data);
                break;
            }
            case OP_CPY: {
                const ggml_tensor src = make_tensor(tk, d[0], d[1], 1, 1);
                const ggml_tensor dst = make_tensor(GGML_TYPE_F32, d[0], d[1], 1, 1);
                res.data.assign(nbytes(dst), 0xFF);
                op_cpy(src, dst, c.bufs[0], res.data);
                break;
            }
            case OP_MUL_MAT: {
                // ggml_metal_supports_mul_mat_op refuses turbo weights (the glue): the KV
                // cache attends through flash attention
                res.status = STATUS_UNSUPPORTED;
                res.message = ggml_metal_type_is_turbo(tk) ? "MUL_MAT not supported by MTL0 for turbo types"
                                                           : not_emulated(op_label(c.op), tk);
                return res;
            }
            case OP_FLASH_ATTN_EXT: {
                const int64_t hd = d[0], nq = d[1], nh = d[2], nkv = d[3], nh_kv = d[4];
                if (c.bufs.size() != 4 || nh_kv == 0 || nh % nh_kv != 0 || hd % ggml_blck_size(tk) != 0 ||
                    hd % ggml_blck_size(tv) != 0) {
                    res.message = "FLASH_ATTN_EXT needs 4 buffers, nh a multiple of nh_kv and the head size a "
                                  "multiple of both blocks";
                    return res;
                }
                ggml_tensor q = make_tensor(GGML_TYPE_F32, hd, nq, nh, 1);
                ggml_tensor k = make_tensor(tk, hd, nkv, nh_kv, 1);
                ggml_tensor v = make_tensor(tv, hd, nkv, nh_kv, 1);
                ggml_tensor m = make_tensor(GGML_TYPE_F16, nkv, nq, 1, 1);
                ggml_tensor op = make_tensor(GGML_TYPE_F32, hd, nh, nq, 1);
                op.op = GGML_OP_FLASH_ATTN_EXT;
                op.src[0] = &q; op.src[1] = &k; op.src[2] = &v; op.src[3] = &m;
                // supports_op, FLASH_ATTN_EXT (the glue): turbo pairs answer from ggml-metal-turbo.h
                if (!ggml_metal_turbo_fa(&op)) {
                    res.status = STATUS_UNSUPPORTED;
                    res.message = not_emulated(op_label(c.op), tk);
                    return res;
                }
                if (!ggml_metal_turbo_supports_fa(&op)) {
                    res.status = STATUS_UNSUPPORTED;
                    res.message = "FLASH_ATTN_EXT not supported by MTL0 for this K/V pair and head size";
                    return res;
                }
                for (size_t i = 0; i < 4; ++i) {
                    const size_t want = nbytes(*op.src[i]);
                    if (c.bufs[i].size() != want) {
                        res.message = "input " + std::to_string(i) + " has " + std::to_string(c.bufs[i].size()) +
                                      " bytes, the tensor needs " + std::to_string(want);
                        return res;
                    }
                }
                res.data.assign(nbytes(op), 0xFF);
                op_flash_attn_ext(op, c.scale, c.bufs[0], c.bufs[1], c.bufs[2], c.bufs[3], res.data);
                break;
            }
            default:
                res.message = "unknown op code " + std::to_string(c.op);
                return res;
        }
    } catch (const dispatch_error & e) {
        res.status = STATUS_ERROR;
        res.message = e.message;
        res.data.clear();
        return res;
    }
    res.status = STATUS_OK;
    return res;
}

} // namespace

int main(int argc, char ** argv) {
    const char * backend = nullptr;
    const char * in_path = nullptr;
    const char * out_path = nullptr;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        if (a == "--backend") {
            backend = argv[i + 1];
        } else if (a == "--in") {
            in_path = argv[i + 1];
        } else if (a == "--out") {
            out_path = argv[i + 1];
        }
    }
    if (!backend || !in_path || !out_path) {
        fprintf(stderr, "usage: %s --backend MTL0 --in cases.bin --out results.bin\n", argv[0]);
        return 2;
    }
    if (strcmp(backend, "MTL0") != 0) {
        fprintf(stderr, "tqpatch-verify-metal-emu: no backend device named '%s'\navailable devices:\n"
                        "  MTL0 (host emulation)\n", backend);
        return 2;
    }
    forced_fa_path();  // reject a bad value before any case

    std::vector<test_case> cases;
    std::string err;
    if (!read_cases(in_path, cases, err)) {
        fprintf(stderr, "tqpatch-verify-metal-emu: %s\n", err.c_str());
        return 1;
    }
    FILE * f = fopen(out_path, "wb");
    if (!f) {
        fprintf(stderr, "tqpatch-verify-metal-emu: cannot write %s\n", out_path);
        return 1;
    }
    writer w{f};
    w.raw(RESULTS_MAGIC, 4);
    w.put(FORMAT_VERSION);
    w.put((uint32_t) cases.size());
    w.str("MTL0");
    w.str(TQ_EMU_DEVICE_NAME);
    w.str(TQ_EMU_DEVICE_DESCRIPTION);
    fflush(f);
    for (size_t i = 0; i < cases.size() && w.ok; ++i) {
        fprintf(stderr, "tqpatch-verify: case %zu op %u %s/%s\n", i, cases[i].op,
                known_type(cases[i].type_k) ? ggml_type_name((ggml_type) cases[i].type_k) : "?",
                known_type(cases[i].type_v) ? ggml_type_name((ggml_type) cases[i].type_v) : "?");
        const result r = run_case(cases[i]);
        w.put((uint32_t) i);
        w.put(r.status);
        w.str(r.message);
        w.put((uint64_t) r.data.size());
        w.raw(r.data.data(), r.data.size());
        fflush(f);
    }
    fclose(f);
    return w.ok ? 0 : 1;
}
