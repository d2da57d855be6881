"""The files `tqpatch verify` exchanges with the `tqpatch-verify` harness.

Both are little-endian, packed (no padding), and start with a magic and a
version; the harness (templates/tests/tqpatch-verify.cpp.j2) refuses any other
version. `str` below is a u32 byte length followed by UTF-8 bytes.

This module is the one source of the format's constants: the harness template
and the Metal host emulator's generated header (backends/metal_host/emulate.py)
are rendered from `render_context()`.

Case file (tqpatch -> harness)
    char[4] magic = CASES_MAGIC; u32 version = VERSION; u32 n_cases
    n_cases x case:
        u32 op            OPS[name]
        i32 type_k        ggml type id (the type's ggml_id in tqpatch.formats)
        i32 type_v        ggml type id (FLASH_ATTN_EXT; copies type_k otherwise)
        f32 scale         FLASH_ATTN_EXT's KQ scale (1.0 otherwise)
        i64 dims[N_DIMS]  op-specific, unused ones 0 (below)
        u32 n_buffers     at most MAX_BUFFERS
        n_buffers x { u64 nbytes; u8 data[nbytes] }   (the harnesses refuse
                          nbytes >= 2**MAX_BUFFER_BITS: a corrupt length)

    Per op (arrays row-major, last index fastest):
      SET_ROWS        dims k, n.   buffers: f32 src (n, k); i64 idx (n).
                      output: type_k rows (n, k); src row i lands in row idx[i].
      GET_ROWS        dims k, n, m.   buffers: type_k rows (n, k); i32 idx (m).
                      output: f32 (m, k).
      CPY             dims k, n.   buffers: type_k rows (n, k).   output: f32 (n, k).
      MUL_MAT         dims k, nk, nq.   buffers: type_k K rows (nk, k); f32 Q (nq, k).
                      output: f32 (nq, nk) = Q K^T.
      FLASH_ATTN_EXT  dims d, nq, nh, nkv, nh_kv.   buffers: f32 q (nh, nq, d);
                      type_k k (nh_kv, nkv, d); type_v v (nh_kv, nkv, d); f16 mask (nq, nkv).
                      output: f32 (nq, nh, d).

    (In ggml's notation FLASH_ATTN_EXT's q is [d, nq, nh, 1], k and v [d, nkv, nh_kv, 1],
    the mask [nkv, nq, 1, 1] and the result [d, nh, nq, 1].)

Results file (harness -> tqpatch)
    char[4] magic = RESULTS_MAGIC; u32 version = VERSION; u32 n_cases
    str backend_name; str device_name; str device_description
    up to n_cases x record, written and flushed one at a time (a crash leaves
    the earlier ones readable):
        u32 case_index; u32 status (STATUS_NAMES); str message;
        u64 nbytes; u8 data[nbytes]
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import formats
from .errors import TqpatchError

CASES_MAGIC = b"TQVC"
RESULTS_MAGIC = b"TQVR"
VERSION = 1
N_DIMS = 8
MAX_BUFFERS = 16
MAX_BUFFER_BITS = 34  # a buffer of 16 GiB or more is a corrupt length, not a case

OPS = {"SET_ROWS": 1, "GET_ROWS": 2, "CPY": 3, "MUL_MAT": 4, "FLASH_ATTN_EXT": 5}
OP_NAMES = {v: k for k, v in OPS.items()}

STATUS_OK, STATUS_UNSUPPORTED, STATUS_ERROR = 0, 1, 2
STATUS_NAMES = {STATUS_OK: "ok", STATUS_UNSUPPORTED: "unsupported", STATUS_ERROR: "error"}


def render_context() -> dict:
    """The wire facts the C++ sides are rendered from: the harness template's
    `verify_io` and the Metal host emulator's tq_wire.h. Op and status names are
    the C enumerators without their OP_ / STATUS_ prefix, in code order."""
    return {
        "cases_magic": CASES_MAGIC.decode("ascii"),
        "results_magic": RESULTS_MAGIC.decode("ascii"),
        "version": VERSION,
        "n_dims": N_DIMS,
        "max_buffers": MAX_BUFFERS,
        "max_buffer_bits": MAX_BUFFER_BITS,
        "ops": dict(sorted(OPS.items(), key=lambda kv: kv[1])),
        "statuses": {STATUS_NAMES[code].upper(): code for code in sorted(STATUS_NAMES)},
    }


def type_id(name: str) -> int:
    return formats.type_info(name).ggml_id


def type_name(tid: int) -> str:
    return formats.type_name(tid)


class FormatError(TqpatchError):
    """A case or results file that is not what the other side wrote."""


@dataclass
class Case:
    op: str                       # key of OPS
    type_k: str
    type_v: str
    dims: tuple[int, ...]         # up to N_DIMS, op-specific (see module docstring)
    scale: float = 1.0
    buffers: list[bytes] = field(default_factory=list)

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"unknown op {self.op!r}")
        if len(self.dims) > N_DIMS:
            raise ValueError(f"at most {N_DIMS} dims")
        if len(self.buffers) > MAX_BUFFERS:
            raise ValueError(f"at most {MAX_BUFFERS} buffers")
        self.buffers = [_as_bytes(b) for b in self.buffers]


@dataclass
class Result:
    index: int
    status: int
    message: str
    data: bytes

    @property
    def status_name(self) -> str:
        return STATUS_NAMES.get(self.status, f"status{self.status}")


@dataclass
class Results:
    n_cases: int
    backend_name: str
    device_name: str
    device_description: str
    records: list[Result]

    @property
    def complete(self) -> bool:
        return len(self.records) == self.n_cases


def _as_bytes(b) -> bytes:
    if isinstance(b, np.ndarray):
        # the file is little-endian; every array verify builds already is
        if b.dtype.byteorder == ">":
            b = b.astype(b.dtype.newbyteorder("<"))
        return np.ascontiguousarray(b).tobytes()
    return bytes(b)


# ---------------------------------------------------------------- cases

def encode_cases(cases: list[Case]) -> bytes:
    out = io.BytesIO()
    out.write(CASES_MAGIC + struct.pack("<II", VERSION, len(cases)))
    for c in cases:
        dims = list(c.dims) + [0] * (N_DIMS - len(c.dims))
        out.write(struct.pack("<Iiif", OPS[c.op], type_id(c.type_k), type_id(c.type_v), c.scale))
        out.write(struct.pack(f"<{N_DIMS}q", *dims))
        out.write(struct.pack("<I", len(c.buffers)))
        for b in c.buffers:
            out.write(struct.pack("<Q", len(b)))
            out.write(b)
    return out.getvalue()


class _Reader:
    def __init__(self, data: bytes, what: str):
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Truncated()
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (n,) = self.unpack("I")
        return self.take(n).decode("utf-8", errors="replace")

    def header(self, magic: bytes) -> int:
        try:
            got = self.take(4)
            (version,) = self.unpack("I")
        except _Truncated:
            got, version = b"", 0
        if got != magic:
            raise FormatError(f"{self.what} is not a tqpatch-verify {magic.decode()} file")
        if version != VERSION:
            raise FormatError(f"{self.what} has format version {version}; this tqpatch reads "
                              f"version {VERSION} (re-render, apply and rebuild the harness)")
        (n,) = self.unpack("I")
        return n


class _Truncated(Exception):
    pass


def decode_cases(data: bytes, what: str = "case file") -> list[Case]:
    r = _Reader(data, what)
    try:
        n = r.header(CASES_MAGIC)
        cases = []
        for _ in range(n):
            op, tk, tv, scale = r.unpack("Iiif")
            dims = r.unpack(f"{N_DIMS}q")
            (nb,) = r.unpack("I")
            bufs = []
            for _ in range(nb):
                (size,) = r.unpack("Q")
                bufs.append(r.take(size))
            if op not in OP_NAMES:
                raise FormatError(f"{what}: unknown op code {op}")
            last = max((i for i, d in enumerate(dims) if d), default=-1)
            cases.append(Case(OP_NAMES[op], type_name(tk), type_name(tv),
                              tuple(dims[:last + 1]), scale, bufs))
    except _Truncated:
        raise FormatError(f"{what} is truncated") from None
    if r.pos != len(data):
        raise FormatError(f"{what} has {len(data) - r.pos} trailing bytes")
    return cases


def write_cases(path: Path, cases: list[Case]) -> None:
    Path(path).write_bytes(encode_cases(cases))


# ---------------------------------------------------------------- results

def encode_results(results: Results) -> bytes:
    """What the harness writes (used by tests and fake harnesses)."""
    out = io.BytesIO()
    out.write(RESULTS_MAGIC + struct.pack("<II", VERSION, results.n_cases))
    for s in (results.backend_name, results.device_name, results.device_description):
        out.write(_str(s))
    for rec in results.records:
        out.write(struct.pack("<II", rec.index, rec.status) + _str(rec.message))
        out.write(struct.pack("<Q", len(rec.data)) + bytes(rec.data))
    return out.getvalue()


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<I", len(b)) + b


def decode_results(data: bytes, what: str = "results file") -> Results:
    """Read a results file; a truncated last record (harness crash) is dropped."""
    r = _Reader(data, what)
    try:
        n = r.header(RESULTS_MAGIC)
        names = (r.string(), r.string(), r.string())
    except _Truncated:
        raise FormatError(f"{what} is truncated inside its header") from None
    records: list[Result] = []
    while r.pos < len(data) and len(records) < n:
        try:
            idx, status = r.unpack("II")
            msg = r.string()
            (size,) = r.unpack("Q")
            payload = r.take(size)
        except _Truncated:
            break
        records.append(Result(idx, status, msg, payload))
    return Results(n, *names, records)


def read_results(path: Path) -> Results:
    return decode_results(Path(path).read_bytes(), str(path))
