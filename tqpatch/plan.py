"""KV-cache memory planning for a GGUF model.

Reads a GGUF's metadata and computes, byte for byte, the KV cache the pinned
llama.cpp allocates for `-c N -np P` with each K/V cache type, then recommends
a configuration following the asymmetric K/V findings (K precision dominates;
V compression is nearly free).

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

import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import TqpatchError
from . import formats
from .formats import TURBO_FORMATS, type_info

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

# The K/V configurations every plan shows, in this order.
CONFIGS: tuple[tuple[str, str], ...] = formats.KV_CONFIGS

# llama_ftype (include/llama.h) -> the short name quantizers use.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S",
    15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS",
    20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S",
    25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M",
    30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
    38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0", 41: "Q2_0",
}
_FTYPE_GUESSED = 1024

# ggml tensor type -> file type name, for files without general.file_type
# (llama.cpp guesses the file type from the most common tensor type).
_GUESS_FROM_TENSOR = {
    "F32": "F32", "F16": "F16", "BF16": "BF16", "Q4_0": "Q4_0", "Q4_1": "Q4_1",
    "Q5_0": "Q5_0", "Q5_1": "Q5_1", "Q8_0": "Q8_0", "Q2_K": "Q2_K",
    "Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q6_K": "Q6_K",
    "IQ2_XXS": "IQ2_XXS", "IQ2_XS": "IQ2_XS", "IQ2_S": "IQ2_S", "IQ3_XXS": "IQ3_XXS",
    "IQ3_S": "IQ3_S", "IQ1_S": "IQ1_S", "IQ1_M": "IQ1_M", "IQ4_NL": "IQ4_NL",
    "IQ4_XS": "IQ4_XS", "TQ1_0": "TQ1_0", "TQ2_0": "TQ2_0", "MXFP4": "MXFP4_MOE",
}

# Weight precision classes used by the recommendation.
_HIGH_PRECISION = {"F32", "F16", "BF16", "Q8_0"}
_MID_PRECISION = {"Q6_K", "Q5_K_M", "Q5_K_S", "Q5_0", "Q5_1"}

# Architectures whose every layer is global in the pinned llama.cpp (checked in
# src/models/<arch>.cpp: they never set a sliding-window type).
_GLOBAL_ARCHS = {
    "llama", "mistral3", "qwen2", "qwen2moe", "qwen3", "qwen3moe", "gemma",
    "phi2", "phi3", "granite", "starcoder2", "command-r", "internlm2",
}


@dataclass(frozen=True)
class _SwaRule:
    pattern: int            # default n_pattern for llama_hparams::set_swa_pattern
    dense_first: bool
    mode: str               # "always" | "if_window" | "unless_zero"
    default_window: int = 0
    swa_type: str = "standard"


# Architectures with sliding-window (or chunked) layers, as their
# load_arch_hparams in src/models/ decides it.
_SWA_RULES = {
    # gemma2: always SWA, window defaults to 4096, every other layer (il % 2 == 0)
    "gemma2": _SwaRule(2, False, "always", 4096),
    # gemma3: SWA iff sliding_window > 0; 5 of every 6 layers (il % 6 < 5)
    "gemma3": _SwaRule(6, False, "if_window"),
    "cohere2": _SwaRule(4, False, "always"),
    "gpt-oss": _SwaRule(2, False, "always"),
    "olmo2": _SwaRule(4, False, "if_window"),
    # llama4: chunked attention of 8192 unless sliding_window is present and 0
    "llama4": _SwaRule(4, False, "unless_zero", 8192, "chunked"),
}

# Architectures llama.cpp builds no KV cache for (llama_model::create_memory).
_NO_KV_ARCHS = {
    "bert", "jina-bert-v2", "jina-bert-v3", "nomic-bert", "nomic-bert-moe",
    "neo-bert", "eurobert", "modern-bert", "gemma-embedding", "wavtokenizer-dec",
    "dream", "llada", "llada-moe", "rnd1", "t5encoder",
}


# ----------------------------------------------------------------------------
# reading the model


@dataclass
class ModelInfo:
    path: str
    arch: str
    name: str | None
    n_layer: int
    n_embd: int
    n_head: list[int]
    n_head_kv: list[int]
    head_k: int                 # key_length of global layers
    head_v: int                 # value_length of global layers
    head_k_swa: int
    head_v_swa: int
    swa_type: str               # "none" | "standard" | "chunked"
    n_swa: int                  # window in tokens; 0 without SWA
    is_swa: list[bool]
    ctx_train: int
    file_type: int | None
    file_type_name: str
    weight_bytes: int
    n_tensors: int
    n_vocab: int | None
    file_size: int
    arch_known: bool = True
    notes: list[str] = field(default_factory=list)

    # per-layer shapes, as llama_hparams computes them
    def layer_head_k(self, il: int) -> int:
        return self.head_k_swa if self.is_swa[il] else self.head_k

    def layer_head_v(self, il: int) -> int:
        return self.head_v_swa if self.is_swa[il] else self.head_v

    def n_embd_k_gqa(self, il: int) -> int:
        return self.layer_head_k(il) * self.n_head_kv[il]

    def n_embd_v_gqa(self, il: int) -> int:
        return self.layer_head_v(il) * self.n_head_kv[il]

    @property
    def uses_swa(self) -> bool:
        return self.swa_type != "none" and any(self.is_swa)

    @property
    def n_swa_layers(self) -> int:
        return sum(1 for s in self.is_swa if s) if self.uses_swa else 0

    def k_head_sizes(self) -> set[int]:
        return {self.layer_head_k(il) for il in range(self.n_layer) if self.n_head_kv[il] > 0}

    def v_head_sizes(self) -> set[int]:
        return {self.layer_head_v(il) for il in range(self.n_layer) if self.n_head_kv[il] > 0}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["uses_swa"] = self.uses_swa
        d["n_swa_layers"] = self.n_swa_layers
        return d


def _field_value(f):
    """Value of a GGUFReader field: int/float/bool/str, or a list for arrays."""
    from gguf import GGUFValueType

    if not f.types:
        return None
    main = f.types[0]
    if main == GGUFValueType.ARRAY:
        sub = f.types[-1] if len(f.types) > 1 else None
        if sub == GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8", "replace") for i in f.data]
        out = []
        for i in f.data:
            out.extend(f.parts[i].tolist())
        return out
    if main == GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8", "replace")
    return f.parts[f.data[0]].tolist()[0]


def _open_reader(path: Path):
    if not path.exists():
        raise TqpatchError(f"{path}: no such file")
    if not path.is_file():
        raise TqpatchError(f"{path}: not a file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise TqpatchError(
            f"{path}: not a GGUF file (bad magic {magic!r}, expected b'GGUF')"
        )
    try:
        import gguf
    except ImportError:  # pragma: no cover - declared dependency
        raise TqpatchError("the `gguf` package is missing: pip install gguf") from None
    try:
        try:
            reader = _fast_reader_class()(str(path))
        except Exception:
            # the fast path leans on GGUFReader internals; the plain reader decides
            reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # gguf raises ValueError/IndexError/KeyError/...
        raise TqpatchError(
            f"{path}: truncated or corrupt GGUF ({size} bytes): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    for t in reader.tensors:
        if int(t.data_offset) + int(t.n_bytes) > size:
            raise TqpatchError(
                f"{path}: truncated GGUF: tensor {t.name} ends at byte "
                f"{int(t.data_offset) + int(t.n_bytes)} but the file has {size} bytes"
            )
    return reader, size


def _fast_reader_class():
    """GGUFReader that reads big metadata arrays in one piece.

    The stock reader builds one NumPy view per array element, which takes
    seconds for a 262k-token vocabulary. Numeric arrays become one part here;
    long string arrays (tokenizer tokens/merges, which plan never reads) are
    skipped over as one blob with no data indices. Their element count stays
    in parts[4], as in the stock reader.
    """
    import numpy as np
    from gguf import GGUFReader, GGUFValueType

    class _FastReader(GGUFReader):
        def _get_field_parts(self, orig_offs, raw_type):
            if raw_type == GGUFValueType.ARRAY:
                itype = self._get(orig_offs, np.uint32)
                sub = GGUFValueType(int(itype[0]))
                alen = self._get(orig_offs + 4, np.uint64)
                n = int(alen[0])
                start = orig_offs + 12
                nptype = self.gguf_scalar_to_np.get(sub)
                if nptype is not None:
                    vals = self._get(start, nptype, n)
                    if len(vals) != n:
                        raise ValueError("array runs past the end of the file")
                    return 12 + int(vals.nbytes), [itype, alen, vals], [2], [GGUFValueType.ARRAY, sub]
                if sub == GGUFValueType.STRING and n > 1024 and self.byte_order == "I":
                    mv = memoryview(self.data)
                    end = len(mv)
                    offs = start
                    for _ in range(n):
                        if offs + 8 > end:
                            raise ValueError("string array runs past the end of the file")
                        offs += 8 + int.from_bytes(mv[offs:offs + 8], "little")
                    if offs > end:
                        raise ValueError("string array runs past the end of the file")
                    blob = self._get(start, np.uint8, offs - start)
                    return offs - orig_offs, [itype, alen, blob], [], [GGUFValueType.ARRAY, sub]
            return super()._get_field_parts(orig_offs, raw_type)

    return _FastReader


def _array_len(f) -> int:
    return int(f.parts[4][0])


def _per_layer(value, n_layer: int, key: str) -> list[int]:
    if isinstance(value, list):
        if len(value) < n_layer:
            raise TqpatchError(f"{key} has {len(value)} entries for {n_layer} layers")
        return [int(v) for v in value[:n_layer]]
    return [int(value)] * n_layer


def read_model(path) -> ModelInfo:
    """Read what KV sizing needs from a GGUF's metadata (no tensor data)."""
    path = Path(path)
    reader, size = _open_reader(path)
    kv = {name: f for name, f in reader.fields.items() if not name.startswith("GGUF.")}

    def get(key, default=None):
        f = kv.get(key)
        return default if f is None else _field_value(f)

    def need(key):
        if key not in kv:
            raise TqpatchError(f"{path}: not an LLM GGUF: missing {key}")
        return _field_value(kv[key])

    arch = need("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise TqpatchError(f"{path}: not an LLM GGUF: general.architecture is not a name")
    if arch in _NO_KV_ARCHS:
        raise TqpatchError(
            f"{path}: not a decoder LLM: llama.cpp keeps no KV cache for "
            f"architecture {arch!r} (embedding/encoder model)"
        )
    notes: list[str] = []
    n_layer = int(need(f"{arch}.block_count"))
    if n_layer <= 0:
        raise TqpatchError(f"{path}: not an LLM GGUF: {arch}.block_count is {n_layer}")
    n_head = _per_layer(need(f"{arch}.attention.head_count"), n_layer, f"{arch}.attention.head_count")
    if max(n_head) == 0:
        raise TqpatchError(
            f"{path}: not an LLM GGUF: {arch}.attention.head_count is 0 (no attention layers)"
        )
    n_head_kv = _per_layer(get(f"{arch}.attention.head_count_kv", n_head), n_layer,
                           f"{arch}.attention.head_count_kv")
    n_embd = int(need(f"{arch}.embedding_length"))
    ctx_train = int(need(f"{arch}.context_length"))

    # head sizes default to n_embd / n_head(0) (llama_model::load_hparams)
    head_default = n_embd // n_head[0] if n_head[0] else 0
    head_k = int(get(f"{arch}.attention.key_length", head_default))
    head_v = int(get(f"{arch}.attention.value_length", head_default))
    head_k_swa = int(get(f"{arch}.attention.key_length_swa", head_k))
    head_v_swa = int(get(f"{arch}.attention.value_length_swa", head_v))
    if f"{arch}.attention.kv_lora_rank" in kv or f"{arch}.attention.key_length_mla" in kv:
        notes.append(
            "multi-head latent attention (MLA) metadata found: llama.cpp caches the "
            "compressed latent, so these KV figures (per-head K/V) overstate it"
        )

    # sliding-window layers, as the pinned llama.cpp decides per architecture
    is_swa = [False] * n_layer
    swa_type = "none"
    n_swa = 0
    window = get(f"{arch}.attention.sliding_window")
    rule = _SWA_RULES.get(arch)
    arch_known = arch in _GLOBAL_ARCHS or rule is not None
    if rule is not None:
        on = False
        if rule.mode == "always":
            n_swa = int(window) if window is not None else rule.default_window
            on = n_swa > 0
            if window is None and not rule.default_window:
                notes.append(f"{arch}.attention.sliding_window is missing: llama.cpp "
                             "will refuse this file; sized as all-global")
        elif rule.mode == "if_window":
            on = window is not None and int(window) > 0
            n_swa = int(window) if on else 0
        elif rule.mode == "unless_zero":
            on = not (window is not None and int(window) == 0)
            n_swa = rule.default_window if on else 0
        if on:
            swa_type = rule.swa_type
            pat = get(f"{arch}.attention.sliding_window_pattern")
            if isinstance(pat, list):
                # llama_model_loader::get_arr: per-layer flags, missing ones global
                for il, flag in enumerate(pat[:n_layer]):
                    is_swa[il] = bool(flag)
            else:
                n_pattern = int(pat) if pat is not None else rule.pattern
                is_swa = _swa_pattern(n_layer, n_pattern, rule.dense_first)
    elif arch in _GLOBAL_ARCHS:
        if arch == "phi3" and window:
            notes.append("phi3 sliding window is disabled in llama.cpp: all layers global")
    else:
        notes.append(
            f"unknown architecture {arch!r}: all {n_layer} layers treated as global "
            "(full-context KV); the real cache may be smaller"
            + (" (it declares a sliding window)" if window else "")
        )

    file_type = get("general.file_type")
    if file_type is not None:
        file_type = int(file_type)
        base = FILE_TYPES.get(file_type & ~_FTYPE_GUESSED, f"unknown ({file_type})")
        file_type_name = base + (" (guessed)" if file_type & _FTYPE_GUESSED else "")
    else:
        file_type_name = _guess_file_type(reader)

    weight_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    tokens = kv.get("tokenizer.ggml.tokens")
    n_vocab = _array_len(tokens) if tokens is not None else None

    return ModelInfo(
        path=str(path), arch=arch, name=get("general.name"), n_layer=n_layer,
        n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv, head_k=head_k,
        head_v=head_v, head_k_swa=head_k_swa, head_v_swa=head_v_swa,
        swa_type=swa_type, n_swa=n_swa, is_swa=is_swa, ctx_train=ctx_train,
        file_type=file_type, file_type_name=file_type_name,
        weight_bytes=weight_bytes, n_tensors=len(reader.tensors), n_vocab=n_vocab,
        file_size=size, arch_known=arch_known, notes=notes,
    )


def _swa_pattern(n_layer: int, n_pattern: int, dense_first: bool) -> list[bool]:
    """llama_hparams::set_swa_pattern."""
    if dense_first:
        return [n_pattern == 0 or (il % n_pattern != 0) for il in range(n_layer)]
    return [n_pattern == 0 or (il % n_pattern < n_pattern - 1) for il in range(n_layer)]


def _guess_file_type(reader) -> str:
    counts = Counter(t.tensor_type.name for t in reader.tensors)
    if not counts:
        return "unknown"
    top = counts.most_common(1)[0][0]
    return _GUESS_FROM_TENSOR.get(top, top) + " (guessed)"


def weight_class(file_type_name: str) -> str:
    """'high' (Q8_0 and up), 'mid' (Q5/Q6), 'low' (Q4_K_M and lower) or 'unknown'."""
    base = file_type_name.split(" ")[0]
    if base in _HIGH_PRECISION:
        return "high"
    if base in _MID_PRECISION:
        return "mid"
    if base in FILE_TYPES.values():
        return "low"
    return "unknown"


# ----------------------------------------------------------------------------
# KV arithmetic


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
        block = type_info(t).block_size
        bad = sorted(s for s in sizes if s % block)
        if bad:
            reasons.append(
                f"{side} head size {'/'.join(map(str, bad))} is not a multiple of "
                f"{t}'s block of {block}"
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
    if ctx < 0:
        raise TqpatchError(f"--ctx must be positive (got {ctx})")
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
            tk = layer_type(type_k, il, info.n_layer, boundary_k)
            tv = layer_type(type_v, il, info.n_layer, boundary_v)
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
# the plan


@dataclass
class ConfigRow:
    type_k: str
    type_v: str
    bpv_k: float
    bpv_v: float
    supported: bool
    reason: str | None = None
    kv_bytes: int | None = None
    compression: float | None = None      # f16 KV bytes / these KV bytes
    max_ctx: int | None = None            # with --vram: largest -c that fits
    boundary_k: int = 0                   # boundary layers kept at q8_0 (turbo types only)
    boundary_v: int = 0

    @property
    def label(self) -> str:
        return (f"{self.type_k}/{self.type_v}"
                + boundary_suffix(self.type_k, self.type_v, self.boundary_k, self.boundary_v))

    @property
    def kv_mib(self) -> float | None:
        return None if self.kv_bytes is None else self.kv_bytes / MIB


def budget_for_kv(info: ModelInfo, vram_gib: float, overhead_mib: float = DEFAULT_OVERHEAD_MIB) -> int:
    """Bytes left for the KV cache: VRAM - weights - fixed compute allowance."""
    return int(vram_gib * GIB) - info.weight_bytes - int(overhead_mib * MIB)


def plan_rows(info: ModelInfo, ctx: int, parallel: int = 1, vram_gib: float | None = None,
              overhead_mib: float = DEFAULT_OVERHEAD_MIB, configs=CONFIGS, **kw) -> list[ConfigRow]:
    f16 = kv_bytes(info, ctx, "f16", "f16", parallel, **kw)
    budget = budget_for_kv(info, vram_gib, overhead_mib) if vram_gib is not None else None
    rows = []
    bk, bv = kw.get("boundary_k", 0), kw.get("boundary_v", 0)
    for k, v in configs:
        row = ConfigRow(k, v, type_info(k).bits_per_value, type_info(v).bits_per_value, True,
                        boundary_k=bk if is_turbo(k) else 0, boundary_v=bv if is_turbo(v) else 0)
        reason = support(info, k, v)
        if reason:
            row.supported, row.reason = False, reason
        else:
            row.bpv_k, row.bpv_v = effective_bpv(info, ctx, k, v, parallel, **kw)
            row.kv_bytes = kv_bytes(info, ctx, k, v, parallel, **kw)
            row.compression = f16 / row.kv_bytes if row.kv_bytes else None
            if budget is not None:
                row.max_ctx = max_ctx(info, k, v, budget, parallel, **kw) if budget > 0 else 0
        rows.append(row)
    return rows


@dataclass
class Recommendation:
    type_k: str
    type_v: str
    flags: str
    reasons: list[str]
    alternatives: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def _server_flags(info: ModelInfo, ctx: int, k: str, v: str, parallel: int, unified: bool,
                  boundary_k: int = 0, boundary_v: int = 0) -> str:
    env = boundary_env(k, v, boundary_k, boundary_v)
    flags = "".join(f"{name}={val} " for name, val in env.items())
    flags += f"llama-server -m {info.path} -c {ctx} -ctk {k} -ctv {v} -fa on"
    if parallel > 1:
        flags += f" -np {parallel}" + (" -kvu" if unified else "")
    return flags


def recommend(info: ModelInfo, ctx: int | None = None, parallel: int = 1,
              vram_gib: float | None = None, overhead_mib: float = DEFAULT_OVERHEAD_MIB,
              unified: bool = True, boundary_k: int = 0, boundary_v: int = 0) -> Recommendation:
    """A K/V configuration following the asymmetric K/V findings, with the flags.

    boundary_k / boundary_v: the boundary layers the user runs with (sizes and
    flags account for them).
    """
    bkw = dict(boundary_k=boundary_k, boundary_v=boundary_v)
    ctx = ctx or info.ctx_train
    wclass = weight_class(info.file_type_name)
    budget = budget_for_kv(info, vram_gib, overhead_mib) if vram_gib is not None else None
    qwen = info.arch.startswith("qwen")

    def ok(k, v):
        return support(info, k, v) is None

    def need(k, v):
        return kv_bytes(info, ctx, k, v, parallel, unified=unified, **bkw)

    def fits(k, v):
        return budget is None or need(k, v) <= budget

    reasons = ["K precision dominates attention quality (softmax amplifies K error "
               "exponentially, V error only linearly): keep K at q8_0, compress V."]
    alternatives: list[str] = []

    if not ok("q8_0", "turbo4"):
        heads = "/".join(map(str, sorted(info.v_head_sizes())))
        reasons.append(
            f"head size {heads} is not a multiple of 64 (turbo4) or 128 (turbo3, turbo2): "
            "the turbo types cannot serve this model; upstream types that work are listed."
        )
        ladder = [c for c in (("q8_0", "q8_0"), ("q8_0", "q4_0"), ("f16", "f16")) if ok(*c)]
    else:
        if wclass == "high" and not qwen:
            ladder = [("q8_0", "turbo4"), ("q8_0", "turbo3"), ("turbo4", "turbo4"), ("turbo3", "turbo3")]
        else:
            ladder = [("q8_0", "turbo4"), ("q8_0", "turbo3"), ("q8_0", "turbo2")]
        ladder = [c for c in ladder if ok(*c)]
        if not ok("q8_0", "turbo3"):
            reasons.append(
                f"V head size {'/'.join(map(str, sorted(info.v_head_sizes())))} is not a multiple "
                "of 128: turbo3 and turbo2 cannot serve it, turbo4 (block 64) can."
            )
        if wclass in ("low", "unknown"):
            what = info.file_type_name if wclass == "low" else f"of unknown precision ({info.file_type_name})"
            reasons.append(
                f"weights are {what}: symmetric turbo K stacks on weight quantization error "
                "and is catastrophic on some families (Qwen2.5-7B Q4_K_M turbo3/turbo3: PPL 3556); "
                "asymmetric q8_0/turbo4 is +0.3-1.3% PPL on every model measured."
            )
        elif wclass == "mid":
            reasons.append(
                f"weights are {info.file_type_name}: asymmetric is the safe default; symmetric "
                "turbo4/turbo4 probably works at this weight precision, but validate PPL first "
                "(tqpatch eval)."
            )
        else:
            reasons.append(
                f"weights are {info.file_type_name}: symmetric turbo4/turbo4 also works at this "
                "weight precision (phi-4 Q8_0: +1.7% PPL) and saves more memory."
            )
        if qwen:
            reasons.append(
                "Qwen family: symmetric turbo K is catastrophic on Qwen2.5 and Qwen3 at Q4_K_M; "
                "use an asymmetric configuration only."
            )

    if not ladder:  # nothing quantized serves it; f16 always does
        ladder = [("f16", "f16")]
    choice = next((c for c in ladder if fits(*c)), None)
    if choice is None and budget <= 0:
        choice = ladder[0]
        reasons.append(
            f"the weights ({_fmt_bytes(info.weight_bytes)}) plus the {overhead_mib:.0f} MiB compute "
            f"allowance already exceed {vram_gib:g} GiB: no KV cache type makes this fit; offload "
            "fewer layers (-ngl) or use smaller weights."
        )
    elif choice is None:
        choice = ladder[-1]
        best = max_ctx(info, *choice, budget, parallel, unified=unified, **bkw)
        reasons.append(
            f"even {choice[0]}/{choice[1]} needs {need(*choice) / GIB:.2f} GiB of KV at -c {ctx}, "
            f"more than the {budget / GIB:.2f} GiB left after weights and compute; "
            + (f"the largest context that fits is -c {best}." if best else
               "not even 256 tokens fit.")
        )
    elif choice != ladder[0]:
        first = ladder[0]
        reasons.append(
            f"{first[0]}/{first[1]} needs {need(*first) / GIB:.2f} GiB of KV at -c {ctx}, more than "
            f"the {budget / GIB:.2f} GiB left: memory is tight, so {choice[0]}/{choice[1]}."
        )
    for c in ladder:
        if c == choice:
            continue
        note = {
            ("q8_0", "turbo3"): "if memory is tight (+1-2% PPL)",
            ("q8_0", "turbo2"): "maximum V compression (+3-10% PPL)",
            ("q8_0", "turbo4"): "safest turbo configuration",
            ("turbo4", "turbo4"): "symmetric, Q8_0+ weights only",
            ("turbo3", "turbo3"): "symmetric, most compression; validate PPL first",
            ("q8_0", "q4_0"): "more V compression, upstream type",
            ("q8_0", "q8_0"): "upstream baseline",
            ("f16", "f16"): "uncompressed",
        }.get(c, "")
        alternatives.append(
            f"{_server_flags(info, ctx, c[0], c[1], parallel, unified, **bkw)}   # {note}".rstrip(" #")
        )
    return Recommendation(choice[0], choice[1],
                          _server_flags(info, ctx, choice[0], choice[1], parallel, unified, **bkw),
                          reasons, alternatives)


# ----------------------------------------------------------------------------
# llama.cpp log parsing

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


# ----------------------------------------------------------------------------
# text report


def _fmt_bytes(n: int) -> str:
    if n >= GIB:
        return f"{n / GIB:.2f} GiB"
    return f"{n / MIB:.1f} MiB"


def describe_model(info: ModelInfo) -> list[str]:
    hk = sorted({h for h in info.n_head_kv})
    hq = sorted(set(info.n_head))
    lines = [f"model: {os.path.basename(info.path)}" + (f" ({info.name})" if info.name else "")]
    layers = f"{info.n_layer} layers"
    if info.uses_swa:
        kind = "chunked-attention" if info.swa_type == "chunked" else "sliding-window"
        layers += (f" ({info.n_swa_layers} {kind} of {info.n_swa} tokens, "
                   f"{info.n_layer - info.n_swa_layers} global)")
    else:
        layers += " (all global)"
    heads = f"heads {'/'.join(map(str, hq))} q, {'/'.join(map(str, hk))} kv"
    hs = f"head size K {info.head_k} V {info.head_v}"
    if info.uses_swa and (info.head_k_swa, info.head_v_swa) != (info.head_k, info.head_v):
        hs += f" (SWA layers K {info.head_k_swa} V {info.head_v_swa})"
    lines.append(f"  arch {info.arch}, {layers}, {heads}, {hs}")
    lines.append(f"  weights {info.file_type_name}, {_fmt_bytes(info.weight_bytes)} in "
                 f"{info.n_tensors} tensors; trained context {info.ctx_train}")
    for n in info.notes:
        lines.append(f"  note: {n}")
    return lines


def render_text(info: ModelInfo, ctx: int, rows: list[ConfigRow], rec: Recommendation,
                parallel: int, vram_gib: float | None, overhead_mib: float,
                unified: bool, boundary_k: int = 0, boundary_v: int = 0) -> str:
    ctx = ctx or info.ctx_train
    out = describe_model(info)
    caches = kv_caches(info, ctx, "f16", "f16", parallel, unified=unified)
    layout = ", ".join(
        f"{c.kind} layers {c.cells} cells" + (f" x {c.n_stream} streams" if c.n_stream > 1 else "")
        for c in caches
    )
    out.append("")
    out.append(f"KV cache at -c {ctx} -np {parallel} "
               f"({'unified' if unified or parallel == 1 else 'one stream per slot'}, "
               f"flash attention): {layout}")
    if boundary_k or boundary_v:
        out.append(f"boundary layers: the first and last {boundary_k} (K) / {boundary_v} (V) "
                   f"layers of a turbo cache at {BOUNDARY_TYPE} ({ENV_BOUNDARY_K}={boundary_k} "
                   f"{ENV_BOUNDARY_V}={boundary_v}); bpv is the average over all layers")
    w = max([15] + [len(r.label) for r in rows])
    header = f"  {'K/V':<{w}} {'K bpv':>6} {'V bpv':>6} {'KV MiB':>10} {'vs f16':>7}"
    if vram_gib is not None:
        header += f"  {'max ctx':>9}"
    out.append(header)
    for r in rows:
        if not r.supported:
            out.append(f"  {r.label:<{w}} {r.bpv_k:>6.3f} {r.bpv_v:>6.3f}  unsupported: {r.reason}")
            continue
        line = f"  {r.label:<{w}} {r.bpv_k:>6.3f} {r.bpv_v:>6.3f} {r.kv_mib:>10.2f} {r.compression:>6.2f}x"
        if vram_gib is not None:
            mc = r.max_ctx or 0
            line += f"  {mc:>9}" + (" (full)" if mc >= info.ctx_train else "")
        out.append(line)
    if vram_gib is not None:
        budget = budget_for_kv(info, vram_gib, overhead_mib)
        out.append(
            f"  max ctx: largest -c (multiple of 256, up to the trained {info.ctx_train}) with "
            f"weights {_fmt_bytes(info.weight_bytes)} + KV + {overhead_mib:.0f} MiB compute "
            f"allowance <= {vram_gib:g} GiB ({_fmt_bytes(max(budget, 0))} left for KV); "
            "all layers on the GPU"
        )
    out.append("")
    out.append(f"recommendation: -ctk {rec.type_k} -ctv {rec.type_v}")
    for r in rec.reasons:
        out.append(f"  - {r}")
    out.append(f"  {rec.flags}")
    if rec.alternatives:
        out.append("alternatives:")
        for a in rec.alternatives:
            out.append(f"  {a}")
    return "\n".join(out)


def plan_json(info: ModelInfo, ctx: int, rows: list[ConfigRow], rec: Recommendation,
              parallel: int, vram_gib: float | None, overhead_mib: float, unified: bool,
              boundary_k: int = 0, boundary_v: int = 0) -> dict:
    ctx = ctx or info.ctx_train
    caches = kv_caches(info, ctx, "f16", "f16", parallel, unified=unified)
    return {
        "model": info.to_dict(),
        "ctx": ctx,
        "parallel": parallel,
        "unified": unified,
        "boundary_k": boundary_k,
        "boundary_v": boundary_v,
        "cells": {c.kind: c.cells for c in caches},
        "n_stream": caches[0].n_stream,
        "vram_gib": vram_gib,
        "overhead_mib": overhead_mib if vram_gib is not None else None,
        "configs": [
            {**asdict(r), "label": r.label, "kv_mib": r.kv_mib} for r in rows
        ],
        "recommendation": rec.to_dict(),
    }
