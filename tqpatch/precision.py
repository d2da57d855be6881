"""How a backend may legitimately compute K.Q and softmax.V: its verify precision model.

Each backend module returns one of these from `precision()`; verify turns it
into the reference's operand conversions and error bounds. Kept free of numpy
so that backends can build one without importing verify.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import formats


@dataclass(frozen=True)
class Precision:
    """How a backend may legitimately treat the operands of K.Q and softmax.V.

    q_sim:   per K type, the conversion of Q that the reference applies first
             because the backend is known to do exactly that ("f32": none,
             "f16": round to half, "q8_0": upstream's q8_0 quantization).
    q_extra: per K type, what the simulation cannot pin down and the
             tolerance must allow: "none"; "q8_flip" (a few Q values one q8
             level off: those within verify's q8 boundary tolerance, where the
             backend's quantizer may round differently from the reference's,
             ties included); "f16" or "q8" (Q may be converted so, a full
             error bound).
    k_f16 / v_f16: K / V values may be rounded to f16 before use.
    v_acc_f16: V types whose VKQ accumulator may be f16.
    dot_q, dot_k_f16: the same for MUL_MAT (Q conversion bound, K in f16).
    optional_ops: ops the backend may report unsupported for turbo types
             (GPU backends attend through flash attention, not MUL_MAT).
    fa_heads_on_cpu: head sizes at which the backend has no flash-attention
             kernel for turbo caches, so it reports the op unsupported and
             llama.cpp runs it on the CPU backend (verified on its own).
    """
    name: str
    q_sim: dict
    q_extra: dict
    k_f16: bool
    v_f16: bool
    v_acc_f16: frozenset
    dot_q: str
    dot_k_f16: bool
    optional_ops: frozenset = frozenset()
    fa_heads_on_cpu: frozenset = frozenset()


def ggml_cpu() -> Precision:
    """ggml-cpu exactly (ops.cpp, flash_attn_ext_f16_one_chunk): Q goes to K's
    vec_dot_type (f16 for f16, q8_0 for q8_0, f32 for the turbo types), V=f16
    is accumulated in an f16 VKQ buffer, everything else in f32."""
    turbo = formats.TURBO_TYPES
    return Precision("cpu: Q as ggml-cpu converts it for K's vec_dot, f32 otherwise",
                     q_sim={"f16": "f16", "q8_0": "q8_0", **{t: "f32" for t in turbo}},
                     q_extra={"f16": "none", "q8_0": "q8_flip", **{t: "none" for t in turbo}},
                     k_f16=False, v_f16=False, v_acc_f16=frozenset({"f16"}),
                     dot_q="f32", dot_k_f16=False)


def gpu(name: str = "gpu: Q as f16 or q8, K/V as f16, f16 accumulators allowed",
        fa_heads_on_cpu: frozenset = frozenset()) -> Precision:
    """A GPU backend: Q may reach the dot as half or q8_1 (vec kernels for
    quantized K), K and V may be dequantized to half (tensor-core paths), and
    accumulators may be half; MUL_MAT on turbo types is optional, and so is
    flash attention at the head sizes of fa_heads_on_cpu."""
    turbo = formats.TURBO_TYPES
    return Precision(name,
                     q_sim={t: "f32" for t in formats.CACHE_TYPES},
                     q_extra={"f16": "f16", **{t: "q8" for t in formats.CACHE_TYPES if t != "f16"}},
                     k_f16=True, v_f16=True, v_acc_f16=frozenset({"f16", "q8_0", *turbo}),
                     dot_q="q8", dot_k_f16=True, optional_ops=frozenset({"MUL_MAT"}),
                     fa_heads_on_cpu=frozenset(fa_heads_on_cpu))
