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
float32 scale, float32 rows[n_tokens][n_head * n_embd_head].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import TqpatchError

MAGIC = b"TQKV"
VERSION = 1
KINDS = {0: "k", 1: "v", 2: "q"}
_HEADER = np.dtype([("kind", "<u4"), ("layer", "<u4"), ("n_embd_head", "<u4"),
                    ("n_head", "<u4"), ("n_tokens", "<u4"), ("scale", "<f4")])


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


def read(path) -> dict[tuple[str, int], Rows]:
    """{(kind, layer): Rows} from a tqpatch-capture file; TqpatchError if it is not one."""
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
    out: dict[tuple[str, int], Rows] = {}
    pos = 8
    while pos < len(raw):
        if pos + _HEADER.itemsize > len(raw):
            raise TqpatchError(f"{path}: truncated record header at byte {pos}")
        h = np.frombuffer(raw, _HEADER, 1, pos)[0]
        pos += _HEADER.itemsize
        kind = KINDS.get(int(h["kind"]))
        width = int(h["n_embd_head"]) * int(h["n_head"])
        count = width * int(h["n_tokens"])
        if kind is None or width == 0 or pos + 4 * count > len(raw):
            raise TqpatchError(f"{path}: corrupt record at byte {pos - _HEADER.itemsize}")
        rows = np.frombuffer(raw, "<f4", count, pos).reshape(int(h["n_tokens"]), width)
        pos += 4 * count
        key = (kind, int(h["layer"]))
        rec = out.setdefault(key, Rows(kind, int(h["layer"]), int(h["n_embd_head"]),
                                       int(h["n_head"]), float(h["scale"])))
        rec.chunks.append(rows)
    return out


def layers(rows: dict[tuple[str, int], Rows], kind: str) -> list[int]:
    return sorted(layer for (k, layer) in rows if k == kind)
