// The kernels of tqpatch's Metal host emulation, found by name as ggml-metal's
// host code finds its pipelines (the [[host_name]] of each instantiation), each
// with the function-constant setter of the library (translation unit) that
// holds it. Typed by signature: a kernel whose parameters differ from what the
// emulated host code passes does not compile.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <type_traits>

#include <metal_stdlib>

#include "ggml-metal-impl.h"

namespace tq_emu {

// function-constant values by index, as ggml_metal_cv_set_* gives them to a pipeline
struct fc_values {
    std::map<int, int32_t> v;
    void set(int index, int32_t value) { v[index] = value; }
    int32_t get(int index) const {
        auto it = v.find(index);
        return it == v.end() ? 0 : it->second;
    }
};

typedef void set_fc_fn(const fc_values &);

template <typename F>
struct kernel_ref {
    F * fn = nullptr;
    set_fc_fn * set_fc = nullptr;
};

template <typename F>
inline std::map<std::string, kernel_ref<F>> & table() {
    static std::map<std::string, kernel_ref<F>> t;
    return t;
}

template <typename F>
inline const kernel_ref<F> * find(const std::string & name) {
    auto & t = table<F>();
    auto it = t.find(name);
    return it == t.end() ? nullptr : &it->second;
}

using metal::uint3;
using metal::ushort3;

// the signatures of the kernels the emulated host code dispatches
typedef void set_rows_fn(ggml_metal_kargs_set_rows &, const char *, const char *, char *, uint3, uint, uint3);
typedef void get_rows_fn(ggml_metal_kargs_get_rows &, const char *, const char *, char *, uint3, ushort, ushort3);
typedef void cpy_fn(ggml_metal_kargs_cpy &, const char *, char *, uint3, ushort3, ushort3);
typedef void kv_f16_fn(ggml_metal_kargs_flash_attn_ext_kv_f16 &, const char *, half *, uint);
typedef void fa_pad_fn(ggml_metal_kargs_flash_attn_ext_pad &, const char *, const char *, const char *, char *,
                       uint3, ushort, ushort3);
typedef void fa_blk_fn(ggml_metal_kargs_flash_attn_ext_blk &, const char *, char *, uint3, ushort);
typedef void fa_fn(ggml_metal_kargs_flash_attn_ext &, const char *, const char *, const char *, const char *,
                   const char *, const char *, const char *, char *, half *, uint3, ushort, ushort);
typedef void fa_vec_fn(ggml_metal_kargs_flash_attn_ext_vec &, const char *, const char *, const char *,
                       const char *, const char *, const char *, char *, const char *, half *, uint3, ushort,
                       ushort);
typedef void fa_vec_reduce_fn(ggml_metal_kargs_flash_attn_ext_vec_reduce &, const char *, char *, uint, ushort,
                              ushort);

template <typename F, typename... Known>
struct is_one_of : std::false_type {};
template <typename F, typename K, typename... Rest>
struct is_one_of<F, K, Rest...> : std::integral_constant<bool, std::is_same<F, K>::value || is_one_of<F, Rest...>::value> {};

template <typename F>
inline bool add(const char * name, F * fn, set_fc_fn * set_fc) {
    static_assert(is_one_of<F, set_rows_fn, get_rows_fn, cpy_fn, kv_f16_fn, fa_pad_fn, fa_blk_fn, fa_fn, fa_vec_fn,
                            fa_vec_reduce_fn>::value,
                  "a kernel's parameters differ from what the emulated host code passes");
    table<F>()[name] = kernel_ref<F>{fn, set_fc};
    return true;
}

} // namespace tq_emu

#define TQ_EMU_CAT2(a, b) a##b
#define TQ_EMU_CAT(a, b) TQ_EMU_CAT2(a, b)
// after an instantiation in a kernel source: make it findable by its host name
#define TQ_EMU_REGISTER(name, ...) \
    static const bool TQ_EMU_CAT(tq_emu_registered_, __COUNTER__) = ::tq_emu::add(name, &__VA_ARGS__, &tq_emu_set_fc);
