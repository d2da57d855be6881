"""K/V (and Q) rows recorded from a real model run by the tqpatch-capture tool.

`tqpatch-capture` (rendered from templates/tests/tqpatch-capture.cpp.j2, built
as a target of the patched tree) decodes chunks of a text and records the rows
every layer writes into its K and V cache, as the cache stores them: after
llama.cpp's Walsh-Hadamard rotation (attn_rot_k / attn_rot_v), before
quantization. With --queries it also records each layer's rotated queries and
the softmax scale. `read()` turns its file into one array per (kind, layer);
`run()` runs the tool.

File format (little-endian): b"TQKV", uint32 version (1), then records until
EOF: uint32 kind (0 K, 1 V, 2 Q), layer, n_embd_head, n_head, n_tokens,
float32 scale, float32 rows[n_tokens][n_head * n_embd_head]. Records of kind 3
(one per layer, first, no rows) carry the layer's RoPE: n_rot, rope_type + 1
(0: none; 2: NEOX, as llama.h's LLAMA_ROPE_TYPE_*), n_ctx_train and the
trained frequency base. Records of kind 4 (no rows) give the size of the
Walsh-Hadamard rotation of a layer's K (n_head 0) or V (n_head 1), as seen in
the graph; a layer without one is not rotated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import build_record, fetch, paths, ui
from .backends.base import Backend
from .errors import TqpatchError
from .plan.modelinfo import MAX_CTX  # llama.cpp's -c, an int32

MAGIC = b"TQKV"
VERSION = 1
KINDS = {0: "k", 1: "v", 2: "q"}
ROPE_KIND = 3
ROTATION_KIND = 4
ROPE_TYPE_NEOX = 2  # llama.h LLAMA_ROPE_TYPE_NEOX (GGML_ROPE_TYPE_NEOX); 0 is NORM
_HEADER_INTS = ("kind", "layer", "n_embd_head", "n_head", "n_tokens")
_HEADER = np.dtype([(name, "<u4") for name in _HEADER_INTS] + [("scale", "<f4")])


@dataclass
class Rows:
    """All rows of one kind ('k', 'v' or 'q') of one layer, chunks concatenated."""

    kind: str
    layer: int
    n_embd_head: int
    n_head: int
    scale: float
    chunks: list[np.ndarray] = field(default_factory=list)  # (n_tokens, n_head * n_embd_head) each

    @property
    def data(self) -> np.ndarray:
        return np.concatenate(self.chunks, axis=0)

    def heads(self) -> np.ndarray:
        """(n_tokens, n_head, n_embd_head)."""
        d = self.data
        return d.reshape(d.shape[0], self.n_head, self.n_embd_head)


@dataclass(frozen=True)
class Rope:
    """A layer's rotary embedding as trained: which dims rotate, how pairs form, how fast."""

    n_rot: int          # the first n_rot dims of a head rotate (in pairs)
    rope_type: int      # llama.h LLAMA_ROPE_TYPE_*: -1 none, 0 NORM (2i, 2i+1), 2 NEOX (i, i + n_rot/2)
    n_ctx_train: int
    freq_base: float

    def pair_of(self, n_embd_head: int) -> np.ndarray:
        """For each dim of a head, the index of the rotation pair it belongs to (-1: does not rotate)."""
        out = np.full(n_embd_head, -1)
        if self.rope_type < 0 or self.n_rot <= 0:
            return out
        half = self.n_rot // 2
        if self.rope_type & ROPE_TYPE_NEOX:
            out[:half] = np.arange(half)
            out[half:self.n_rot] = np.arange(half)
        else:
            out[:self.n_rot] = np.arange(self.n_rot) // 2
        return out

    def theta(self, n_embd_head: int) -> np.ndarray:
        """Angle per position of each dim (0 for dims that do not rotate)."""
        pair = self.pair_of(n_embd_head)
        th = self.freq_base ** (-2.0 * np.maximum(pair, 0) / max(self.n_rot, 1))
        return np.where(pair >= 0, th, 0.0)


# Bounds of a record's fields (a crafted n_rot of 2^32-1 must not become an array)
MAX_LAYERS = 512                # llama.cpp's LLAMA_MAX_LAYERS
MAX_WIDTH = 1 << 20             # head sizes, rotation sizes, heads x head size
ROPE_TYPES = (-1, 0, 2, 8, 24, 40)  # llama.h LLAMA_ROPE_TYPE_*: NONE NORM NEOX MROPE VISION IMROPE


def read(path, n_layer: int | None = None) -> dict:
    """{(kind, layer): Rows, "rope": {layer: Rope}, "rotation": {("k" | "v", layer):
    Hadamard size}} from a tqpatch-capture file; TqpatchError if it is not one.

    Every field is checked against the file and, with n_layer (the model's
    block count), against the model: layers in range, head and RoPE sizes that
    fit each other, rotations that divide the head, finite rows and scales.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TqpatchError(f"{path}: cannot read capture file: {e.strerror or e}") from None
    if raw[:4] != MAGIC or len(raw) < 8:
        raise TqpatchError(f"{path}: not a tqpatch-capture file")
    version = int(np.frombuffer(raw, "<u4", 1, 4)[0])
    if version != VERSION:
        raise TqpatchError(f"{path}: capture file version {version}, this tqpatch reads {VERSION}")
    layer_limit = MAX_LAYERS if n_layer is None else min(n_layer, MAX_LAYERS)
    out: dict = {}
    ropes: dict[int, Rope] = {}
    rotations: dict[tuple[str, int], int] = {}
    pos = 8
    while pos < len(raw):
        at = pos

        def bad(why: str):
            return TqpatchError(f"{path}: corrupt record at byte {at}: {why}")

        if pos + _HEADER.itemsize > len(raw):
            raise TqpatchError(f"{path}: truncated record header at byte {pos}")
        h = np.frombuffer(raw, _HEADER, 1, pos)[0]
        pos += _HEADER.itemsize
        kind_id, layer, head, n_head, n_tokens = (int(h[f]) for f in _HEADER_INTS)
        scale = float(h["scale"])
        if layer >= layer_limit:
            raise bad(f"layer {layer} of a model of {layer_limit} layers"
                      if n_layer is not None else f"layer {layer}, more than llama.cpp's {MAX_LAYERS}")
        if kind_id == ROPE_KIND:
            rope = Rope(head, n_head - 1, n_tokens, scale)
            if rope.rope_type not in ROPE_TYPES:
                raise bad(f"RoPE type {rope.rope_type} is none of llama.cpp's {ROPE_TYPES}")
            if rope.n_rot % 2 or rope.n_rot > MAX_WIDTH:
                raise bad(f"RoPE n_rot {rope.n_rot} is not an even head size")
            if rope.n_ctx_train > MAX_CTX or not (np.isfinite(scale) and scale > 0):
                raise bad(f"RoPE n_ctx_train {rope.n_ctx_train} / base {scale} out of range")
            if ropes.setdefault(layer, rope) != rope:
                raise bad(f"a second, different RoPE record for layer {layer}")
            continue
        if kind_id == ROTATION_KIND:
            if n_head > 1 or not 0 < head <= MAX_WIDTH or head & (head - 1):
                raise bad(f"rotation of size {head} for side {n_head} (a power of 2 for K (0) or V (1))")
            rotations[("kv"[n_head], layer)] = head
            continue
        kind = KINDS.get(kind_id)
        if kind is None:
            raise bad(f"unknown kind {kind_id}")
        width = head * n_head
        if not (0 < head <= MAX_WIDTH and 0 < n_head and width <= MAX_WIDTH and n_tokens > 0):
            raise bad(f"{n_tokens} rows of {n_head} heads of {head}")
        count = width * n_tokens
        if pos + 4 * count > len(raw):
            raise bad(f"{n_tokens} rows of {width} values run past the end of the file")
        if not np.isfinite(scale):
            raise bad(f"scale {scale}")
        rows = np.frombuffer(raw, "<f4", count, pos).reshape(n_tokens, width)
        if not np.isfinite(rows).all():
            raise bad(f"{kind.upper()} rows of layer {layer} hold NaN or infinite values")
        pos += 4 * count
        rec = out.setdefault((kind, layer), Rows(kind, layer, head, n_head, scale))
        if (rec.n_embd_head, rec.n_head) != (head, n_head):
            raise bad(f"{kind.upper()} rows of layer {layer} of {n_head} heads of {head}, earlier "
                      f"ones of {rec.n_head} heads of {rec.n_embd_head}")
        rec.chunks.append(rows)
    _check_layers(path, out, ropes, rotations)
    out["rope"] = ropes
    out["rotation"] = rotations
    return out


def _check_layers(path: Path, rows: dict, ropes: dict, rotations: dict) -> None:
    """Sizes that must agree across a layer's records."""
    for (kind, layer), rec in rows.items():
        rope = ropes.get(layer)
        if kind in "kq" and rope is not None and rope.n_rot > rec.n_embd_head:
            raise TqpatchError(f"{path}: layer {layer}'s RoPE turns {rope.n_rot} dims of "
                               f"{kind.upper()} heads of {rec.n_embd_head}: corrupt capture file")
        rot = rotations.get((kind, layer))
        if kind in "kv" and rot is not None and rec.n_embd_head % rot:
            raise TqpatchError(f"{path}: layer {layer}'s {kind.upper()} rotation of {rot} does not "
                               f"divide its heads of {rec.n_embd_head}: corrupt capture file")
    if ropes:
        missing = sorted({layer for _, layer in rows if layer not in ropes})
        if missing:
            raise TqpatchError(f"{path}: rows of layer {missing[0]}, which has no RoPE record "
                               "(the tool writes one per layer first): corrupt capture file")


def layers(rows: dict[tuple[str, int], Rows], kind: str) -> list[int]:
    return sorted(key[1] for key in rows if isinstance(key, tuple) and key[0] == kind)


# ---------------------------------------------------------------- running the tool

DEFAULT_TEXT_REL = "docs/build.md"   # not the text eval scores (tools/server/README.md)
DEFAULT_CHUNKS = 4
DEFAULT_CTX = 512


def default_text() -> Path:
    """docs/build.md of the pinned llama.cpp tree: a text of its own, so that what is
    fitted on it is measured on another (eval's tools/server/README.md)."""
    path = paths.pristine_tree() / DEFAULT_TEXT_REL
    if not path.is_file():
        fetch.ensure_pristine()
    fetch.read_pristine(DEFAULT_TEXT_REL)
    return path


def run(model, out, *, text=None, chunks: int = DEFAULT_CHUNKS, ctx: int = DEFAULT_CTX,
        queries: bool = True, backend: Backend, threads: int | None = None,
        build_dir=None, log=None) -> Path:
    """Run the tqpatch-capture of `backend`'s build on a model (on the CPU backend every
    build holds); returns `out` (a capture file)."""
    binary = build_record.find_binary("tqpatch-capture", backend, build_dir)
    text = Path(text) if text else default_text()
    threads = threads or max(1, min(8, os.cpu_count() or 1))
    cmd = [binary, "-m", model, "-f", text, "--out", out, "-c", ctx, "--chunks", chunks,
           "-t", threads, *(["--queries"] if queries else [])]
    ui.run(cmd, log=Path(log) if log else None, what="tqpatch-capture")
    return Path(out)
