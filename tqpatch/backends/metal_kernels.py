"""How ggml-metal's turbo kernels are laid out: the cache types' readers, the flash-attention
instances and libraries the Metal templates render (and the host emulation compiles)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .. import formats


@dataclass(frozen=True)
class KVType:
    """How ggml-metal's flash-attention and conversion kernels read one cache type.

    f16 and q8_0 use upstream's names (kernels/dequantize.h); the turbo types
    use the dequantizers kernels/turbo.h renders. `deq` yields 16 values per
    call (nl calls per block, the regular kernel), `deq4` 4 values (nl4 calls,
    the vector kernel).
    """
    name: str
    block: str      # what the regular kernel reads from device memory
    deq: str
    nl: int
    block4: str     # what the vector kernel reads
    deq4: str
    nl4: int
    block_size: int
    quantized: bool  # has a kernel_flash_attn_ext_kv_<name>_f16 conversion kernel

    @property
    def lib_suffix(self) -> str:
        return self.name.upper()


def kv_types() -> dict[str, KVType]:
    out = {
        "f16": KVType("f16", "half4x4", "dequantize_f16", 1, "half4", "dequantize_f16_t4", 1, 1,
                      False),
        "q8_0": KVType("q8_0", "block_q8_0", "dequantize_q8_0", 2, "block_q8_0",
                       "dequantize_q8_0_t4", 8, 32, True),
    }
    for f in formats.TURBO_FORMATS.values():
        out[f.name] = KVType(f.name, f.struct, f"dequantize_{f.name}", f.block // 16, f.struct,
                             f"dequantize_{f.name}_t4", f.block // 4, f.block, True)
    assert tuple(out) == formats.CACHE_TYPES, "every cache type needs its Metal reader"
    return out


# The vector kernel's elements per thread that ggml-metal-tuning.cpp's
# fa_vec_baseline_ne() gives each head size at the pin: the host names the
# baseline pipeline without a _q<Q>_ne<NE> suffix, and turbo pairs always run
# the baseline configuration.
FA_VEC_BASELINE_NE = {32: 4, 64: 2, 96: 4, 128: 1, 256: 1}


@functools.cache
def fa_instances() -> tuple[tuple[int, str, str], ...]:
    """(head size, K, V) of every turbo flash-attention kernel pair the Metal sources
    instantiate: at each head size of formats.fa_cases(), every K/V pair that head
    produces (formats.served_pairs). Metal instantiates per head size, so the family
    types at heads of 32 and 96 (turbo4, paired with f16, q8_0 or itself) need their
    own instances too. Other head sizes (192, 512, ...) have no turbo kernel:
    supports_op refuses them and ggml runs that attention on the CPU."""
    heads = sorted({h for h, _, _ in formats.fa_cases()})
    return tuple((h, k, v) for h in heads for k, v in formats.served_pairs(h))


def fa_head_sizes() -> list[int]:
    """The head sizes that have turbo flash-attention kernels."""
    return sorted({h for h, _, _ in fa_instances()})


def fa_heads(k: str, v: str) -> list[int]:
    return [h for h, kk, vv in fa_instances() if (kk, vv) == (k, v)]


def fa_k_files() -> list[dict]:
    """One flash-attention file pair (regular + vector) per K type: its turbo pairs."""
    kv = kv_types()
    out = []
    for k in formats.CACHE_TYPES:
        vs = dict.fromkeys(vv for _, kk, vv in fa_instances() if kk == k)
        pairs = [{"k": kv[k], "v": kv[v], "heads": fa_heads(k, v), "name": k if k == v else f"{k}_{v}"}
                 for v in vs]
        if pairs:
            out.append({"slug": k, "k": kv[k], "pairs": pairs})
    return out


def libraries() -> list[tuple[str, str]]:
    """(enum suffix, kernels/<name>.metal) of every turbo Metal library."""
    libs = [("TURBO", "turbo")]
    for f in fa_k_files():
        libs.append((f"FA_TURBO_{f['k'].lib_suffix}", f"fa_turbo_{f['slug']}"))
        libs.append((f"FA_VEC_TURBO_{f['k'].lib_suffix}", f"fa_vec_turbo_{f['slug']}"))
    return libs


def render_context() -> dict:
    return {
        "kv": kv_types(),
        "fa_files": fa_k_files(),
        "vec_ne": FA_VEC_BASELINE_NE,
        "fa_instances": fa_instances(),
        "fa_heads": fa_head_sizes(),
        "libraries": libraries(),
    }


def render_expansions() -> dict:
    return {"metal_fa_k": fa_k_files}
