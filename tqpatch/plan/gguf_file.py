"""Reading an untrusted GGUF: header, the metadata tqpatch needs, tensor infos.

Our own streaming parser (GGUF v2/v3, little- and big-endian), never
gguf.GGUFReader: that one builds an object per array element, and crafted
files of a megabyte took it to gigabytes and minutes. Here every count and
length is checked against the bytes left in the file before it is used,
values of keys the caller does not want are skipped without being built
(fixed-size arrays by seeking, string arrays by walking their lengths), and
the file is read through one window of CHUNK bytes, so memory stays a few
megabytes whatever the file holds. Any file that is not a sane GGUF is
refused in one line naming the path.

The checks follow the pinned llama.cpp's gguf.cpp (versions, empty and
duplicate keys, nested arrays, tensor name length and dimensions, alignment),
so a file passing here is not refused there for its layout.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gguf import GGUFValueType
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from ..errors import TqpatchError

# magic, version (uint32), tensor count, metadata key count (uint64 since GGUF v2)
HEADER_BYTES = 24
ByteOrder = Literal["<", ">"]   # as a struct prefix

# the smallest a tensor info / a key-value pair can be: a name (8-byte length,
# at least 1 byte), then n_dims + type + offset (4 + 4 + 8) / a type and a
# value of at least 1 byte
MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 4 + 8
MIN_KV_BYTES = 8 + 1 + 4 + 1

# Caps on work, far above any real model (hundreds of keys, a few thousand
# tensors, vocabularies and merge lists of a few hundred thousand strings),
# low enough that the slowest file within them reads in a couple of seconds.
MAX_KEYS = 1 << 20
MAX_TENSORS = 1 << 17
MAX_STRINGS = 1 << 23           # strings walked in arrays, over the whole file
MAX_BUILT = 1 << 16             # values built for wanted keys (a real model: a few thousand)
MAX_BUILT_TEXT = 1 << 20        # bytes of strings built for wanted keys
MAX_KEY_BYTES = 1024            # a longer key is skipped: no key tqpatch reads is that long
MAX_STRING_VALUE = 1 << 16      # a wanted string longer than this is refused
MAX_ARRAY_VALUES = 4096         # a wanted array longer than this keeps its length only
GGML_MAX_NAME = 64              # ggml.h: a tensor name is shorter
GGML_MAX_DIMS = 4
DEFAULT_ALIGNMENT = 32          # GGUF_DEFAULT_ALIGNMENT
CHUNK = 1 << 20                 # the read window

SUPPORTED_VERSIONS = (2, 3)     # v1 had 32-bit counts; llama.cpp reads up to GGUF_VERSION 3

# GGUF value types (gguf.GGUFValueType): struct format of the fixed-size ones
_STRING, _ARRAY = 8, 9
_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?",
            10: "Q", 11: "q", 12: "d"}
_SIZES = {t: struct.calcsize(f) for t, f in _FORMATS.items()}

# The keys tqpatch reads from a model (plan.modelinfo, eval): general ones by
# name, hyperparameters as <arch>.<suffix>. Every other key is skipped unread.
MODEL_GENERAL_KEYS = frozenset({
    "general.architecture", "general.name", "general.file_type", "general.alignment",
    "tokenizer.ggml.tokens",
})
MODEL_ARCH_SUFFIXES = tuple("." + s for s in (
    "block_count", "embedding_length", "context_length", "attention.head_count",
    "attention.head_count_kv", "attention.key_length", "attention.value_length",
    "attention.key_length_swa", "attention.value_length_swa", "attention.kv_lora_rank",
    "attention.key_length_mla", "attention.sliding_window",
    "attention.sliding_window_pattern",
))


def model_key(name: str) -> bool:
    return name in MODEL_GENERAL_KEYS or name.endswith(MODEL_ARCH_SUFFIXES)


@dataclass(frozen=True)
class Field:
    """One metadata key. value: int/float/bool/str, a list for an array, or
    None for an array longer than MAX_ARRAY_VALUES (count still holds its length)."""

    name: str
    type: int           # GGUF value type of the value, or of the items of an array
    is_array: bool
    count: int
    value: object


@dataclass(frozen=True)
class TensorInfo:
    name: str
    tensor_type: object     # gguf.GGMLQuantizationType
    shape: tuple            # ggml order: fastest dimension first
    n_elements: int
    n_bytes: int
    data_offset: int        # from the start of the file


@dataclass(frozen=True)
class GGUFFile:
    path: Path
    size: int
    version: int
    byte_order: ByteOrder
    alignment: int
    fields: dict            # name -> Field, wanted keys only
    tensors: list           # TensorInfo


class _Bad(Exception):
    """Why a file is not a sane GGUF; open_gguf adds the path."""


@dataclass(frozen=True)
class _Header:
    size: int
    order: ByteOrder
    version: int
    n_tensors: int
    n_kv: int


def _header(path: Path) -> _Header:
    if not path.exists():
        raise TqpatchError(f"{path}: no such file")
    if not path.is_file():
        raise TqpatchError(f"{path}: not a file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(HEADER_BYTES)
    except OSError as exc:
        raise TqpatchError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if head[:4] != b"GGUF":
        raise TqpatchError(f"{path}: not a GGUF file (bad magic {head[:4]!r}, expected b'GGUF')")
    if len(head) < HEADER_BYTES:
        raise TqpatchError(f"{path}: truncated GGUF: {size} bytes, shorter than its header")
    # the version's low half is never 0, so a 0 there means a big-endian file
    order: ByteOrder = "<" if struct.unpack_from("<I", head, 4)[0] & 0xFFFF else ">"
    version, n_tensors, n_kv = struct.unpack_from(order + "IQQ", head, 4)
    if version not in SUPPORTED_VERSIONS:
        raise TqpatchError(f"{path}: GGUF version {version} is not supported "
                           f"(llama.cpp reads versions 2 and 3)")
    for what, n, least, cap in (("tensor count", n_tensors, MIN_TENSOR_INFO_BYTES, MAX_TENSORS),
                                ("metadata key count", n_kv, MIN_KV_BYTES, MAX_KEYS)):
        if n * least > size:
            raise TqpatchError(f"{path}: GGUF header {what} {n} cannot fit in a {size}-byte "
                               "file (corrupt or crafted)")
        if n > cap:
            raise TqpatchError(f"{path}: GGUF header {what} {n} exceeds {cap}, far more "
                               "than any model has (corrupt or crafted)")
    return _Header(size, order, version, n_tensors, n_kv)


def require_gguf(path) -> None:
    """Refuse, in one line, a path that is not a readable GGUF with a sane header.

    Cheap (it reads 24 bytes): commands call it first, before anything else can
    fail for a reason that is really a wrong model file.
    """
    _header(Path(path))


def open_gguf(path, want=model_key) -> tuple[GGUFFile, int]:
    """The header, the metadata keys for which want(name) is true, and tensor infos.

    Returns (file, size in bytes). Raises TqpatchError for anything else than
    a sane GGUF, tensor data past the end of the file included.
    """
    path = Path(path)
    head = _header(path)
    try:
        with open(path, "rb") as fh:
            return _Parser(fh, head, want).parse(path), head.size
    except _Bad as exc:
        raise TqpatchError(f"{path}: {exc}") from None
    except OSError as exc:
        raise TqpatchError(f"{path}: cannot read: {exc.strerror or exc}") from None


class _Parser:
    def __init__(self, fh, head: _Header, want):
        self.fh, self.size, self.order, self.want = fh, head.size, head.order, want
        self.head = head
        self.buf, self.base, self.pos = b"", 0, HEADER_BYTES
        self.u32 = struct.Struct(head.order + "I")
        self.u64 = struct.Struct(head.order + "Q")
        self.array_head = struct.Struct(head.order + "IQ")  # item type, length
        self.strings_left = MAX_STRINGS
        self.built_left, self.text_left = MAX_BUILT, MAX_BUILT_TEXT

        self.quant_sizes, self.quant_type = GGML_QUANT_SIZES, GGMLQuantizationType

    # -- the read window

    def _take(self, n: int, what: str, name="") -> int:
        """Offset in self.buf of the next n bytes, read in if need be; moves past them."""
        pos = self.pos
        off = pos - self.base
        if off < 0 or off + n > len(self.buf):
            if n > self.size - pos:
                raise _Bad(f"truncated GGUF: {what.format(name)} runs past the end of the file "
                           f"({self.size} bytes)")
            self.fh.seek(pos)
            self.buf = self.fh.read(max(n, CHUNK))
            self.base, off = pos, 0
            if len(self.buf) < n:
                raise _Bad("the file shrank while it was read")
        self.pos = pos + n
        return off

    def _skip(self, n: int, what: str, name="") -> None:
        if n > self.size - self.pos:
            raise _Bad(f"truncated GGUF: {what.format(name)} runs past the end of the file "
                       f"({self.size} bytes)")
        self.pos += n

    # (_take may replace self.buf: call it before reading self.buf)
    def _u32(self, what: str, name="") -> int:
        off = self._take(4, what, name)
        return self.u32.unpack_from(self.buf, off)[0]

    def _u64(self, what: str, name="") -> int:
        off = self._take(8, what, name)
        return self.u64.unpack_from(self.buf, off)[0]

    def _str(self, what: str, name, limit: int) -> bytes | None:
        """A string's bytes, or None (skipped) when it is longer than limit."""
        n = self._u64(what, name)
        if n > limit:
            self._skip(n, what, name)
            return None
        off = self._take(n, what, name)
        return self.buf[off:off + n]

    # -- the file

    def parse(self, path: Path) -> GGUFFile:
        fields: dict[str, Field] = {}
        alignment = DEFAULT_ALIGNMENT
        for i in range(self.head.n_kv):
            name = self._key(i)
            if name == "general.alignment":
                f = self._value(name, keep=True)
                value = f.value if f else None
                if (f is None or f.type != 4 or f.is_array or not isinstance(value, int)
                        or value == 0 or value & (value - 1)):
                    raise _Bad(f"general.alignment = {value!r} is not a power of 2 "
                               "stored as uint32 (corrupt or crafted)")
                alignment = value
            else:
                keep = name is not None and self.want(name)
                f = self._value(name or f"metadata key {i}", keep)
            if f is None:
                continue
            if f.name in fields:
                raise _Bad(f"duplicate metadata key {f.name!r} (corrupt or crafted)")
            self._spend(f.name, 1)
            fields[f.name] = f
        infos = [self._tensor_info(i) for i in range(self.head.n_tensors)]
        return GGUFFile(path, self.size, self.head.version, self.order, alignment, fields,
                        self._place(infos, alignment))

    def _key(self, i: int) -> str | None:
        """The i-th key; None when it is too long to be one tqpatch reads."""
        raw = self._str("metadata key {}", i, MAX_KEY_BYTES)
        if raw is None:
            return None
        if not raw:
            raise _Bad(f"metadata key {i} is empty (corrupt or crafted)")
        return raw.decode("utf-8", "replace")

    def _value(self, name: str, keep: bool) -> Field | None:
        vtype = self._u32("type of {}", name)
        if vtype != _ARRAY:
            return self._scalar(name, vtype, keep)
        off = self._take(12, "array header of {}", name)
        itype, n = self.array_head.unpack_from(self.buf, off)
        if itype == _ARRAY:
            raise _Bad(f"metadata {name} is an array of arrays, which llama.cpp refuses "
                       "(corrupt or crafted)")
        fmt = _FORMATS.get(itype)
        if fmt is None and itype != _STRING:
            raise _Bad(f"metadata {name} has invalid GGUF value type {itype} (corrupt or crafted)")
        left = self.size - self.pos
        if n * _SIZES.get(itype, 8) > left:
            raise _Bad(f"metadata {name} declares an array of {n} entries, more than the "
                       f"{left} bytes left in the file can hold (corrupt or crafted)")
        read = keep and n <= MAX_ARRAY_VALUES
        if read:
            self._spend(name, n)
        if fmt is not None:
            nbytes = n * _SIZES[itype]
            if read:
                off = self._take(nbytes, "array {}", name)
                value = list(struct.unpack_from(f"{self.order}{n}{fmt}", self.buf, off))
            else:
                self._skip(nbytes, "array {}", name)
                value = None
        elif read:
            value = [self._text(name, self._str("array {}", name, MAX_STRING_VALUE))
                     for _ in range(n)]
        else:
            self._skip_strings(n, name)
            value = None
        return Field(name, itype, True, n, value) if keep else None

    def _scalar(self, name: str, vtype: int, keep: bool) -> Field | None:
        if vtype == _STRING:
            if not keep:
                self._skip(self._u64("value of {}", name), "value of {}", name)
                return None
            return Field(name, vtype, False, 1,
                         self._text(name, self._str("value of {}", name, MAX_STRING_VALUE)))
        fmt = _FORMATS.get(vtype)
        if fmt is None:
            raise _Bad(f"metadata {name} has invalid GGUF value type {vtype} (corrupt or crafted)")
        size = _SIZES[vtype]
        if not keep:
            self._skip(size, "value of {}", name)
            return None
        off = self._take(size, "value of {}", name)
        return Field(name, vtype, False, 1, struct.unpack_from(self.order + fmt, self.buf, off)[0])

    def _spend(self, name: str, values: int, text: int = 0) -> None:
        """Count values built against the caps: wanted keys are few in any real model."""
        self.built_left -= values
        self.text_left -= text
        if self.built_left < 0 or self.text_left < 0:
            raise _Bad(f"metadata {name} brings the values tqpatch builds over {MAX_BUILT} "
                       f"(or {MAX_BUILT_TEXT} bytes of text), far more than any model has "
                       "(corrupt or crafted)")

    def _text(self, name: str, raw: bytes | None) -> str:
        if raw is None:
            raise _Bad(f"metadata {name} holds a string longer than {MAX_STRING_VALUE} bytes "
                       "(corrupt or crafted)")
        self._spend(name, 0, len(raw))
        return raw.decode("utf-8", "replace")

    def _skip_strings(self, n: int, name: str) -> None:
        """Walk past n strings, each length checked against the file (the hot loop
        of a tokenizer's vocabulary: kept short)."""
        self.strings_left -= n
        if self.strings_left < 0:
            raise _Bad(f"metadata {name} brings the file's string arrays over {MAX_STRINGS} "
                       "entries, far more than any tokenizer has (corrupt or crafted)")
        unpack, size, take = self.u64.unpack_from, self.size, self._take
        for _ in range(n):
            off = take(8, "array {}", name)
            length = unpack(self.buf, off)[0]
            if length > size - self.pos:
                raise _Bad(f"truncated GGUF: array {name} runs past the end of the file "
                           f"({size} bytes)")
            self.pos += length

    def _tensor_info(self, i: int):
        raw = self._str("tensor info {}", i, GGML_MAX_NAME - 1)
        if raw is None:
            raise _Bad(f"tensor {i}'s name is {GGML_MAX_NAME} bytes or longer, which llama.cpp "
                       "refuses (corrupt or crafted)")
        name = raw.decode("utf-8", "replace")
        n_dims = self._u32("tensor {}", name)
        if n_dims > GGML_MAX_DIMS:
            raise _Bad(f"tensor {name} has {n_dims} dimensions, more than ggml's "
                       f"{GGML_MAX_DIMS} (corrupt or crafted)")
        shape = tuple(self._u64("tensor {}", name) for _ in range(n_dims))
        n_elements = 1
        for d in shape:
            n_elements *= d
        if any(d >= 1 << 63 for d in shape) or n_elements >= 1 << 63:
            raise _Bad(f"tensor {name} has shape {list(shape)}, beyond int64 (corrupt or crafted)")
        raw_type = self._u32("tensor {}", name)
        try:
            ttype = self.quant_type(raw_type)
            block, type_size = self.quant_sizes[ttype]
        except (ValueError, KeyError):
            raise _Bad(f"tensor {name} has unknown ggml type {raw_type} "
                       "(corrupt, crafted or newer than the gguf package)") from None
        if shape and shape[0] % block:
            raise _Bad(f"tensor {name} of type {ttype.name} has {shape[0]} elements per row, "
                       f"not a multiple of its block size {block} (corrupt or crafted)")
        offset = self._u64("tensor {}", name)
        return name, ttype, shape, n_elements, n_elements // block * type_size, offset

    def _place(self, infos: list, alignment: int) -> list[TensorInfo]:
        """TensorInfos with file offsets; tensor data must lie inside the file."""
        start = -(-self.pos // alignment) * alignment  # the data section is aligned
        seen: set[str] = set()
        out = []
        for name, ttype, shape, n_elements, n_bytes, offset in infos:
            if name in seen:
                raise _Bad(f"duplicate tensor name {name!r} (corrupt or crafted)")
            seen.add(name)
            end = start + offset + n_bytes
            if end > self.size:
                raise _Bad(f"truncated GGUF: tensor {name} ends at byte {end} but the file "
                           f"has {self.size} bytes")
            out.append(TensorInfo(name, ttype, shape, n_elements, n_bytes, start + offset))
        return out


def field_value(f):
    """The value of a Field; also of a gguf.GGUFReader field (tests read files
    tqpatch wrote with the stock reader)."""
    if isinstance(f, Field):
        return f.value

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


def array_len(f: Field) -> int:
    return f.count
