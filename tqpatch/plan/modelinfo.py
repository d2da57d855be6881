"""What KV sizing needs from a GGUF's metadata, read as untrusted input.

read_model() returns a ModelInfo: layers, heads, head sizes, which layers
use a sliding window (as the pinned llama.cpp decides per architecture),
trained context, weight type and bytes. Every count is checked against a
bound before anything is built from it (BOUNDS: llama.cpp's own limits and
the widths a model can have), and a value beyond it is refused in one line
that names the key and the value: a crafted block_count of 1e9 must not
become a list of 1e9 entries.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import TqpatchError
from .gguf_file import array_len, field_value, open_gguf

# Bounds of the counts read from a GGUF.
MAX_LAYERS = 512            # LLAMA_MAX_LAYERS (src/llama-hparams.h): llama.cpp refuses more
MAX_CTX = 2**31 - 1         # llama.cpp's -c is an int32
MAX_WIDTH = 1 << 20         # n_embd and head sizes: the widest models are ~25k wide
UINT32_MAX = 2**32 - 1      # llama.cpp reads these keys as uint32


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


class _Metadata:
    """A GGUF's key-value pairs, read with bounds: every refusal names key and value."""

    def __init__(self, path: Path, fields: dict):
        self.path = path
        self.kv = fields

    def __contains__(self, key: str) -> bool:
        return key in self.kv

    def get(self, key: str, default=None):
        f = self.kv.get(key)
        if f is None:
            return default
        if f.is_array and f.value is None:  # too long for the reader to build its values
            self.refuse(key, f"an array of {f.count}",
                        f"has more than {MAX_LAYERS} entries (llama.cpp's layer limit)")
        return field_value(f)

    def need(self, key: str):
        if key not in self.kv:
            raise TqpatchError(f"{self.path}: not an LLM GGUF: missing {key}")
        return self.get(key)

    def refuse(self, key: str, value, why: str):
        shown = value if not isinstance(value, list) else f"an array of {len(value)}"
        raise TqpatchError(f"{self.path}: {key} = {shown} {why}: corrupt or crafted GGUF")

    def count(self, key: str, lo: int, hi: int, default=None, hi_why: str = "") -> int:
        """A whole number lo..hi (the key's value, or default when it is absent)."""
        value = self.get(key, default) if default is not None else self.need(key)
        self.check(key, value, lo, hi, hi_why)
        return int(value)

    def check(self, key: str, value, lo: int, hi: int, hi_why: str = "") -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.refuse(key, value, "is not a whole number")
        if value < lo:
            self.refuse(key, value, f"is below {lo}")
        if value > hi:
            self.refuse(key, value, f"exceeds {hi}" + (f" ({hi_why})" if hi_why else ""))

    def per_layer(self, key: str, n_layer: int, hi: int, default=None, hi_why: str = "") -> list[int]:
        """One count per layer: an array of at least n_layer entries, or one value for all."""
        value = self.get(key, default) if default is not None else self.need(key)
        if not isinstance(value, list):
            self.check(key, value, 0, hi, hi_why)
            return [int(value)] * n_layer
        if len(value) > MAX_LAYERS:
            self.refuse(key, value, f"has more than {MAX_LAYERS} entries (llama.cpp's layer limit)")
        if len(value) < n_layer:
            raise TqpatchError(f"{self.path}: {key} has {len(value)} entries for {n_layer} layers")
        for v in value[:n_layer]:
            self.check(key, v, 0, hi, hi_why)
        return [int(v) for v in value[:n_layer]]


def read_model(path) -> ModelInfo:
    """Read what KV sizing needs from a GGUF's metadata (no tensor data)."""
    path = Path(path)
    reader, size = open_gguf(path)
    meta = _Metadata(path, reader.fields)
    get = meta.get

    arch = meta.need("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise TqpatchError(f"{path}: not an LLM GGUF: general.architecture is not a name")
    if arch in _NO_KV_ARCHS:
        raise TqpatchError(
            f"{path}: not a decoder LLM: llama.cpp keeps no KV cache for "
            f"architecture {arch!r} (embedding/encoder model)"
        )
    notes: list[str] = []
    n_layer = meta.count(f"{arch}.block_count", 1, MAX_LAYERS,
                         hi_why="llama.cpp's LLAMA_MAX_LAYERS")
    n_embd = meta.count(f"{arch}.embedding_length", 1, MAX_WIDTH, hi_why="wider than any model")
    n_head = meta.per_layer(f"{arch}.attention.head_count", n_layer, n_embd,
                            hi_why="more heads than embedding_length")
    if max(n_head) == 0:
        raise TqpatchError(
            f"{path}: not an LLM GGUF: {arch}.attention.head_count is 0 (no attention layers)"
        )
    n_head_kv = meta.per_layer(f"{arch}.attention.head_count_kv", n_layer, max(n_head),
                               default=n_head, hi_why="more KV heads than query heads")
    ctx_train = meta.count(f"{arch}.context_length", 1, MAX_CTX, hi_why="llama.cpp's -c is an int32")

    # head sizes default to n_embd / n_head(0) (llama_model::load_hparams)
    head_default = n_embd // n_head[0] if n_head[0] else 0

    def head_size(key: str, default: int) -> int:
        return meta.count(f"{arch}.attention.{key}", 1, MAX_WIDTH, default=default or None,
                          hi_why="wider than any model")

    head_k = head_size("key_length", head_default)
    head_v = head_size("value_length", head_default)
    head_k_swa = head_size("key_length_swa", head_k)
    head_v_swa = head_size("value_length_swa", head_v)
    if f"{arch}.attention.kv_lora_rank" in meta or f"{arch}.attention.key_length_mla" in meta:
        notes.append(
            "multi-head latent attention (MLA) metadata found: llama.cpp caches the "
            "compressed latent, so these KV figures (per-head K/V) overstate it"
        )

    # sliding-window layers, as the pinned llama.cpp decides per architecture
    is_swa = [False] * n_layer
    swa_type = "none"
    n_swa = 0
    window = get(f"{arch}.attention.sliding_window")
    if window is not None:
        meta.check(f"{arch}.attention.sliding_window", window, 0, MAX_CTX)
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
            key = f"{arch}.attention.sliding_window_pattern"
            pat = get(key)
            if isinstance(pat, list):
                if len(pat) > MAX_LAYERS:
                    meta.refuse(key, pat, f"has more than {MAX_LAYERS} entries (llama.cpp's layer limit)")
                # llama_model_loader::get_arr: per-layer flags, missing ones global
                for il, flag in enumerate(pat[:n_layer]):
                    is_swa[il] = bool(flag)
            else:
                n_pattern = meta.count(key, 0, UINT32_MAX, default=rule.pattern)
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
        file_type = meta.count("general.file_type", 0, UINT32_MAX)
        base = FILE_TYPES.get(file_type & ~_FTYPE_GUESSED, f"unknown ({file_type})")
        file_type_name = base + (" (guessed)" if file_type & _FTYPE_GUESSED else "")
    else:
        file_type_name = _guess_file_type(reader)

    weight_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    # the reader has checked that the token array lies inside the file
    tokens = meta.kv.get("tokenizer.ggml.tokens")
    n_vocab = array_len(tokens) if tokens is not None else None

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

