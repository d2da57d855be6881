"""KV-cache bytes, byte for byte as the pinned llama.cpp allocates them.

How the pinned llama.cpp sizes the cache (src/llama-context.cpp,
src/llama-kv-cache.cpp, src/llama-kv-cache-iswa.cpp):

  n_ctx      = PAD(N, 256)                       (0 means the training context)
  n_batch    = min(N, 2048), n_ubatch = min(n_batch, 512)     (causal models)
  unified:     1 stream of n_ctx cells
  per-slot:    P streams of n_ctx_seq = PAD(n_ctx / P, 256) cells each
  global layers: n_ctx_seq cells per stream
  SWA layers:    PAD(min(n_ctx_seq, n_swa * (unified ? P : 1) + n_ubatch), 256)
                 cells per stream (n_ctx_seq with --swa-full)
  per layer:   K = row_size(type_k, n_head_kv(il) * head_k(il)) * cells * streams
               V = row_size(type_v, n_head_kv(il) * head_v(il)) * cells * streams
               (without flash attention V rows are padded to the largest layer)
  row_size(t, n) = n / block_size(t) * block_bytes(t)   (n must be a multiple)
  with t the block variant of a turbo type that the layer's head size gets
  (formats.fit_type: -ctk turbo3 is turbo3_b96 on a head of 96, turbo3_b32 on 32)

A model with sliding-window layers gets two caches (and llama.cpp prints two
`llama_kv_cache: size = ...` lines): the global layers first, then the SWA
layers.

Boundary layers (patch 0010): with LLAMA_TURBO_BOUNDARY_K / _V = N (or the
CMake default of the same name), a layer il whose requested K / V type is
turbo2/3/4 gets q8_0 instead when il < N or il >= n_layer - N, in whichever
cache (global or SWA) holds the layer. llama.cpp's size line still names the
requested types; its MiB are the per-layer sums, as here.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

from ..errors import TqpatchError
from ..formats import FAMILIES, TURBO_FORMATS, fit_type_or_self, type_info
from .modelinfo import MAX_CTX, ModelInfo

MIB = 1024 * 1024
GIB = 1024 * MIB

# llama.cpp defaults (common/common.h) that the cache size depends on.
DEFAULT_N_BATCH = 2048
DEFAULT_N_UBATCH = 512
CTX_PAD = 256  # llama-context.cpp and llama-kv-cache-iswa.cpp pad cell counts to 256
LLAMA_MAX_SEQ = 256  # src/llama-cparams.h

# Boundary layers (patch 0010): the type a promoted layer gets, and the switches.
BOUNDARY_TYPE = "q8_0"
ENV_BOUNDARY_K = "LLAMA_TURBO_BOUNDARY_K"
ENV_BOUNDARY_V = "LLAMA_TURBO_BOUNDARY_V"
MAX_BOUNDARY = 999_999  # the patched llama.cpp reads at most 6 digits

# Fixed allowance for everything on the GPU that is neither weights nor KV:
# llama.cpp's compute buffers (at n_ubatch 512 typically 0.3-1 GiB, more for
# very large vocabularies), the CUDA context and scratch. Documented in the
# `plan` output and overridable with --overhead.
DEFAULT_OVERHEAD_MIB = 1024
# Upper bounds of the memory amounts (1 PiB): far above any machine, low enough
# that byte counts stay exact integers and printed sizes stay readable.
MAX_VRAM_GIB = float(1 << 20)
MAX_OVERHEAD_MIB = float(1 << 30)


def budget_for_kv(info: ModelInfo, vram_gib: float, overhead_mib: float = DEFAULT_OVERHEAD_MIB) -> int:
    """Bytes left for the KV cache: VRAM - weights - fixed compute allowance."""
    check_memory("--vram", vram_gib, positive=True)
    check_memory("--overhead", overhead_mib, most=MAX_OVERHEAD_MIB)
    return int(vram_gib * GIB) - info.weight_bytes - int(overhead_mib * MIB)


def check_memory(what: str, amount: float, positive: bool = False,
                 most: float = MAX_VRAM_GIB) -> float:
    """A memory amount: a finite number, > 0 (positive) or >= 0, at most `most`; else TqpatchError."""
    try:
        ok = math.isfinite(amount) and (amount > 0 if positive else amount >= 0) and amount <= most
    except TypeError:
        ok = False
    if not ok:
        raise TqpatchError(f"{what} must be a finite number {'> 0' if positive else '>= 0'} and at most "
                           f"{most:g} (got {amount!r})")
    return amount


def fmt_bytes(n: int) -> str:
    if n >= GIB:
        return f"{n / GIB:.2f} GiB"
    return f"{n / MIB:.1f} MiB"



def _pad(x: int, n: int) -> int:
    return (x + n - 1) // n * n


def row_size(type_name: str, n: int) -> int:
    """ggml_row_size: bytes of n values of a type (n a multiple of its block)."""
    ti = type_info(type_name)
    if n % ti.block_size:
        raise TqpatchError(
            f"{type_name}: a row of {n} values is not a multiple of its block of {ti.block_size}"
        )
    return n // ti.block_size * ti.block_bytes


def is_turbo(type_name: str) -> bool:
    return type_name in TURBO_FORMATS


def check_boundary(n, what: str = "boundary") -> int:
    """A number of boundary layers: an int in 0..MAX_BOUNDARY, else TqpatchError."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_BOUNDARY:
        raise TqpatchError(f"{what} must be a whole number of layers 0..{MAX_BOUNDARY} (got {n!r})")
    return n


def layer_type(type_name: str, il: int, n_layer: int, boundary: int) -> str:
    """The cache type patch 0010 gives layer il of n_layer for a requested type."""
    if boundary > 0 and is_turbo(type_name) and (il < boundary or il >= n_layer - boundary):
        return BOUNDARY_TYPE
    return type_name


def boundary_env(type_k: str, type_v: str, boundary_k: int = 0, boundary_v: int = 0) -> dict:
    """The environment settings that ask llama.cpp for these boundary layers (only those that act)."""
    env = {}
    if boundary_k and is_turbo(type_k):
        env[ENV_BOUNDARY_K] = str(boundary_k)
    if boundary_v and is_turbo(type_v):
        env[ENV_BOUNDARY_V] = str(boundary_v)
    return env


def boundary_suffix(type_k: str, type_v: str, boundary_k: int = 0, boundary_v: int = 0) -> str:
    """':bkN:bvM' for the boundary settings that act on these types ('' for none)."""
    out = ""
    if boundary_k and is_turbo(type_k):
        out += f":bk{boundary_k}"
    if boundary_v and is_turbo(type_v):
        out += f":bv{boundary_v}"
    return out


def support(info: ModelInfo, type_k: str, type_v: str) -> str | None:
    """None if the K/V types can serve every layer's head size, else the reason."""
    reasons = []
    for side, t, sizes in (("K", type_k, info.k_head_sizes()), ("V", type_v, info.v_head_sizes())):
        bad = sorted(s for s in sizes if s % type_info(fit_type_or_self(t, s)).block_size)
        if bad:
            blocks = "/".join(str(type_info(v).block_size) for v in (FAMILIES.get(t) or (t,)))
            reasons.append(
                f"{side} head size {'/'.join(map(str, bad))} is not a multiple of "
                f"{t}'s block of {blocks}"
            )
    return "; ".join(reasons) or None


@dataclass(frozen=True)
class KVCache:
    """One llama_kv_cache, as llama.cpp logs it (`llama_kv_cache: size = ...`)."""

    kind: str       # "global" (the non-SWA cache) or "swa"
    cells: int      # per stream
    layers: int
    n_seq_max: int
    n_stream: int
    k_bytes: int
    v_bytes: int

    @property
    def total(self) -> int:
        return self.k_bytes + self.v_bytes


def kv_caches(info: ModelInfo, ctx: int, type_k: str, type_v: str, parallel: int = 1, *,
              unified: bool = True, n_batch: int = DEFAULT_N_BATCH,
              n_ubatch: int = DEFAULT_N_UBATCH, swa_full: bool = False,
              flash_attn: bool = True, boundary_k: int = 0,
              boundary_v: int = 0) -> list[KVCache]:
    """The KV caches llama.cpp allocates for `-c ctx -np parallel` (see module doc).

    boundary_k / boundary_v: LLAMA_TURBO_BOUNDARY_K / _V (patch 0010).
    """
    check_boundary(boundary_k, "boundary K")
    check_boundary(boundary_v, "boundary V")
    if not 1 <= parallel <= LLAMA_MAX_SEQ:
        raise TqpatchError(f"--parallel must be 1..{LLAMA_MAX_SEQ} (got {parallel})")
    try:
        ctx = operator.index(ctx)
    except TypeError:
        ctx = -1
    if not 0 <= ctx <= MAX_CTX:
        raise TqpatchError(f"--ctx must be a whole number 0..{MAX_CTX} (llama.cpp's -c is an "
                           f"int32; got {ctx!r})")
    reason = support(info, type_k, type_v)
    if reason:
        raise TqpatchError(f"-ctk {type_k} -ctv {type_v} cannot serve {info.arch}: {reason}")
    ctx = ctx or info.ctx_train
    n_ctx = _pad(ctx, CTX_PAD)
    n_ubatch_eff = min(min(ctx, n_batch), n_ubatch)
    if unified:
        n_stream, n_ctx_seq = 1, n_ctx
    else:
        n_stream, n_ctx_seq = parallel, _pad(n_ctx // parallel, CTX_PAD)

    v_rows_max = max(info.n_embd_v_gqa(il) for il in range(info.n_layer))

    def build(kind: str, cells: int, layers: list[int]) -> KVCache:
        k = v = 0
        for il in layers:
            tk = fit_type_or_self(layer_type(type_k, il, info.n_layer, boundary_k), info.layer_head_k(il))
            tv = fit_type_or_self(layer_type(type_v, il, info.n_layer, boundary_v), info.layer_head_v(il))
            k += row_size(tk, info.n_embd_k_gqa(il)) * cells * n_stream
            nv = info.n_embd_v_gqa(il) if flash_attn else v_rows_max
            v += row_size(tv, nv) * cells * n_stream
        return KVCache(kind, cells, len(layers), parallel, n_stream, k, v)

    if not info.uses_swa:
        return [build("global", n_ctx_seq, list(range(info.n_layer)))]
    size_swa = _pad(min(n_ctx_seq, info.n_swa * (parallel if unified else 1) + n_ubatch_eff), CTX_PAD)
    if swa_full:
        size_swa = n_ctx_seq
    glob = [il for il in range(info.n_layer) if not info.is_swa[il]]
    swa = [il for il in range(info.n_layer) if info.is_swa[il]]
    return [build("global", n_ctx_seq, glob), build("swa", size_swa, swa)]


def kv_bytes(info: ModelInfo, ctx: int, type_k: str, type_v: str, parallel: int = 1,
             **kw) -> int:
    """Total K+V cache bytes llama.cpp allocates for `-c ctx -np parallel`."""
    return sum(c.total for c in kv_caches(info, ctx, type_k, type_v, parallel, **kw))


def effective_bpv(info: ModelInfo, ctx: int, type_k: str, type_v: str, parallel: int = 1,
                  **kw) -> tuple[float, float]:
    """Bits per cached K value and V value, over all layers as llama.cpp allocates them.

    The type's own bits per value, unless boundary layers mix in q8_0: then the
    average weighted by how many values each layer caches (SWA layers may hold
    fewer cells than global ones).
    """
    caches = kv_caches(info, ctx, type_k, type_v, parallel, **kw)
    plain = {k: v for k, v in kw.items() if k not in ("boundary_k", "boundary_v")}
    f16 = kv_caches(info, ctx, "f16", "f16", parallel, **plain)
    k16 = sum(c.k_bytes for c in f16)
    v16 = sum(c.v_bytes for c in f16)
    if not k16 or not v16:
        return type_info(type_k).bits_per_value, type_info(type_v).bits_per_value
    return (16.0 * sum(c.k_bytes for c in caches) / k16,
            16.0 * sum(c.v_bytes for c in caches) / v16)


def max_ctx(info: ModelInfo, type_k: str, type_v: str, budget_bytes: int,
            parallel: int = 1, limit: int | None = None, **kw) -> int:
    """Largest -c (a multiple of 256, at most `limit`) whose KV fits budget_bytes; 0 if none."""
    limit = limit or info.ctx_train
    hi = limit // CTX_PAD
    lo = 0
    while lo < hi:  # largest m in [0, hi] with kv(m*256) <= budget
        mid = (lo + hi + 1) // 2
        try:
            fits = kv_bytes(info, mid * CTX_PAD, type_k, type_v, parallel, **kw) <= budget_bytes
        except TqpatchError:
            fits = False
        if fits:
            lo = mid
        else:
            hi = mid - 1
    return lo * CTX_PAD


# ----------------------------------------------------------------------------
# llama.cpp's own account of the cache

_KV_LINE = re.compile(
    r"llama_kv_cache:\s+size\s*=\s*(?P<size>[\d.]+)\s*MiB\s*\(\s*(?P<cells>\d+)\s*cells,\s*"
    r"(?P<layers>\d+)\s*layers,\s*(?P<seqs>\d+)\s*/\s*(?P<streams>\d+)\s*seqs\),\s*"
    r"K\s*\((?P<type_k>[\w.]+)\):\s*(?P<k>[\d.]+)\s*MiB,\s*"
    r"V\s*\((?P<type_v>[\w.]+)\):\s*(?P<v>[\d.]+)\s*MiB"
)


def parse_kv_sizes(log_text: str) -> list[dict]:
    """Every `llama_kv_cache: size = ...` line of a llama.cpp log, in order.

    Format (src/llama-kv-cache.cpp): "%s: size = %7.2f MiB (%6u cells, %3d layers,
    %2u/%u seqs), K (%s): %7.2f MiB, V (%s): %7.2f MiB".
    """
    out = []
    for m in _KV_LINE.finditer(log_text):
        out.append({
            "size_mib": float(m["size"]),
            "cells": int(m["cells"]),
            "layers": int(m["layers"]),
            "n_seq_max": int(m["seqs"]),
            "n_stream": int(m["streams"]),
            "type_k": m["type_k"],
            "k_mib": float(m["k"]),
            "type_v": m["type_v"],
            "v_mib": float(m["v"]),
        })
    return out

