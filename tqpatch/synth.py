"""A random-weight llama-architecture GGUF with a chosen attention shape.

The default shape is the attention of a mainstream 8B model (32 query heads,
8 KV heads, head size 128, n_embd 4096, every layer global, RoPE) with a small
feed-forward and vocabulary, so that the weights stay small and KV-cache
bandwidth dominates decode at depth. Speed benchmarks need no real model.

The file carries what llama.cpp's LLM_ARCH_LLAMA loader asks for: the hyper-
parameters, a minimal SentencePiece ("llama") tokenizer (<unk>, <s>, </s>, the
256 byte tokens <0x00>..<0xFF> and filler pieces) and the tensors

  token_embd {n_embd, n_vocab}          output_norm {n_embd}   output {n_embd, n_vocab}
  blk.N.attn_norm {n_embd}              blk.N.ffn_norm {n_embd}
  blk.N.attn_q {n_embd, n_head*hd}      blk.N.attn_k / attn_v {n_embd, n_head_kv*hd}
  blk.N.attn_output {n_head*hd, n_embd}
  blk.N.ffn_gate / ffn_up {n_embd, n_ff}  blk.N.ffn_down {n_ff, n_embd}

(ggml order, fastest dimension first; NumPy shapes are the reverse). Weights
are N(0, 0.02), norms 1, so activations stay finite. Same seed, same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from gguf import TokenType

from .errors import TqpatchError

WEIGHT_TYPES = ("f16", "q8_0")
_N_SPECIAL = 3          # <unk>, <s>, </s>
_N_BYTES = 256          # <0x00>..<0xFF>
MIN_VOCAB = _N_SPECIAL + _N_BYTES + 1


@dataclass(frozen=True)
class SynthShape:
    layers: int = 8
    n_embd: int = 4096
    n_head: int = 32
    n_head_kv: int = 8
    head_dim: int = 128
    ff: int = 1024
    vocab: int = 512
    ctx_train: int = 65536

    def check(self) -> None:
        for name in ("layers", "n_embd", "n_head", "n_head_kv", "head_dim", "ff", "ctx_train"):
            if getattr(self, name) < 1:
                raise TqpatchError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.n_head % self.n_head_kv:
            raise TqpatchError(
                f"query heads ({self.n_head}) must be a multiple of KV heads ({self.n_head_kv})"
            )
        if self.vocab < MIN_VOCAB:
            raise TqpatchError(
                f"--vocab must be at least {MIN_VOCAB} (3 special + 256 byte tokens + 1)"
            )
        if self.head_dim % 2:
            raise TqpatchError(f"head size must be even for RoPE (got {self.head_dim})")


def tokenizer_vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-style vocabulary llama.cpp's "llama" tokenizer accepts."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [int(TokenType.UNKNOWN), int(TokenType.CONTROL), int(TokenType.CONTROL)]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [int(TokenType.BYTE)] * 256
    pieces = _filler_pieces(n_vocab - len(tokens))
    tokens += pieces
    types += [int(TokenType.NORMAL)] * len(pieces)
    scores = [0.0] * (_N_SPECIAL + _N_BYTES) + [-float(i) for i in range(len(pieces))]
    return tokens, scores, types


def _filler_pieces(n: int) -> list[str]:
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    alphabet = letters + letters.upper() + "0123456789"
    out: list[str] = ["\u2581"]
    out += ["\u2581" + c for c in alphabet]
    out += [c for c in alphabet + ".,;:!?'\"-()"]
    i = 0
    while len(out) < n:  # two- and three-letter pieces, unique and deterministic
        a, b = letters[i % 26], letters[(i // 26) % 26]
        piece = a + b if i < 26 * 26 else a + b + letters[(i // 676) % 26]
        out.append(piece)
        out.append("\u2581" + piece)
        i += 1
    return list(dict.fromkeys(out))[:n]  # unique, in order


def _tensor_plan(s: SynthShape) -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, NumPy shape, is_norm) in file order."""
    q, kv = s.n_head * s.head_dim, s.n_head_kv * s.head_dim
    plan: list[tuple[str, tuple[int, ...], bool]] = [
        ("token_embd.weight", (s.vocab, s.n_embd), False)]
    for il in range(s.layers):
        b = f"blk.{il}."
        plan += [
            (b + "attn_norm.weight", (s.n_embd,), True),
            (b + "attn_q.weight", (q, s.n_embd), False),
            (b + "attn_k.weight", (kv, s.n_embd), False),
            (b + "attn_v.weight", (kv, s.n_embd), False),
            (b + "attn_output.weight", (s.n_embd, q), False),
            (b + "ffn_norm.weight", (s.n_embd,), True),
            (b + "ffn_gate.weight", (s.ff, s.n_embd), False),
            (b + "ffn_up.weight", (s.ff, s.n_embd), False),
            (b + "ffn_down.weight", (s.n_embd, s.ff), False),
        ]
    plan += [("output_norm.weight", (s.n_embd,), True),
             ("output.weight", (s.vocab, s.n_embd), False)]
    return plan


def _quantizer(wtype: str):
    """(ggml type or None for f16, function float32 array -> stored array)."""
    if wtype == "f16":
        return None, lambda a: a.astype(np.float16)
    quants = getattr(gguf, "quants", None)
    if quants is None or not hasattr(quants, "quantize"):
        return None, None
    qt = gguf.GGMLQuantizationType.Q8_0
    return qt, lambda a: quants.quantize(a, qt)


def synth_model(out, shape: SynthShape | None = None, *, seed: int = 0,
                wtype: str = "f16", name: str | None = None) -> dict:
    """Write the GGUF; return a summary (path, bytes, shape, weight type)."""
    s = shape or SynthShape()
    s.check()
    if wtype not in WEIGHT_TYPES:
        raise TqpatchError(f"--type must be one of {', '.join(WEIGHT_TYPES)} (got {wtype!r})")
    qtype, convert = _quantizer(wtype)
    notes = []
    if convert is None:
        notes.append("gguf.quants is not available: wrote f16 instead of q8_0")
        wtype = "f16"
        qtype, convert = _quantizer("f16")
    if qtype is not None and (s.n_embd % 32 or s.ff % 32 or (s.n_head * s.head_dim) % 32):
        raise TqpatchError("q8_0 weights need n_embd, --ff and n_head*head_dim to be multiples of 32")

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    arch = "llama"
    w = gguf.GGUFWriter(str(out), arch)
    w.add_name(name or f"tqpatch synthetic llama {s.n_head}q/{s.n_head_kv}kv x{s.head_dim}")
    w.add_context_length(s.ctx_train)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.layers)
    w.add_feed_forward_length(s.ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    if s.head_dim * s.n_head != s.n_embd:
        w.add_key_length(s.head_dim)
        w.add_value_length(s.head_dim)
    w.add_rope_dimension_count(s.head_dim)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(s.vocab)
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q8_0 if qtype is not None
                        else gguf.LlamaFileType.MOSTLY_F16))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokens, scores, types = tokenizer_vocab(s.vocab)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    rng = np.random.default_rng(seed)
    plan = _tensor_plan(s)
    # Tensor infos first, then stream each tensor so only one is in memory.
    for tname, shp, is_norm in plan:
        if is_norm:
            w.add_tensor_info(tname, shp, np.dtype(np.float32), int(np.prod(shp)) * 4)
        elif qtype is None:
            w.add_tensor_info(tname, shp, np.dtype(np.float16), int(np.prod(shp)) * 2)
        else:
            bshape = gguf.quant_shape_to_byte_shape(shp, qtype)
            w.add_tensor_info(tname, bshape, np.dtype(np.uint8), int(np.prod(bshape)), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    total = 0
    for tname, shp, is_norm in plan:
        if is_norm:
            data = np.ones(shp, dtype=np.float32)
        else:
            data = convert(rng.standard_normal(shp, dtype=np.float32) * np.float32(0.02))
        w.write_tensor_data(data)
        total += data.nbytes
    w.close()
    return {
        "path": str(out),
        "file_bytes": out.stat().st_size,
        "weight_bytes": total,
        "weight_type": wtype,
        "shape": s,
        "n_tensors": len(plan),
        "notes": notes,
    }
