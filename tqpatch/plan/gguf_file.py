"""Opening an untrusted GGUF file: the reader, its field values, header bounds.

Every count the file declares is bounded by what its bytes can hold before
anything is built from it: the header's tensor and key counts here, array
lengths in the reader (an array cannot run past the end of the file). The
model's hyperparameters are bounded in modelinfo.
"""

from __future__ import annotations

import struct
from pathlib import Path

from ..errors import TqpatchError

# magic, version (uint32), tensor count, metadata key count (uint64 since GGUF v2)
HEADER_BYTES = 24
# the smallest a tensor info / a key-value pair can be: a name (8-byte length,
# at least 1 byte), then n_dims + type + offset (4 + 4 + 8) / a type and a
# value of at least 1 byte
MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 4 + 8
MIN_KV_BYTES = 8 + 1 + 4 + 1


def check_header(path: Path, head: bytes, size: int) -> None:
    """Refuse a tensor or key count that the file is too small to hold."""
    if len(head) < HEADER_BYTES:
        raise TqpatchError(f"{path}: truncated GGUF: {size} bytes, shorter than its header")
    order = "<" if struct.unpack_from("<I", head, 4)[0] & 0xFFFF else ">"  # big-endian files exist
    version, n_tensors, n_kv = struct.unpack_from(order + "IQQ", head, 4)
    if version < 2:  # v1 counts are 32-bit; the gguf reader refuses v1 anyway
        return
    for what, n, least in (("tensor count", n_tensors, MIN_TENSOR_INFO_BYTES),
                           ("metadata key count", n_kv, MIN_KV_BYTES)):
        if n * least > size:
            raise TqpatchError(
                f"{path}: GGUF header {what} {n} cannot fit in a {size}-byte file "
                "(corrupt or crafted)")


def field_value(f):
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


def open_gguf(path: Path):
    if not path.exists():
        raise TqpatchError(f"{path}: no such file")
    if not path.is_file():
        raise TqpatchError(f"{path}: not a file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(HEADER_BYTES)
    magic = head[:4]
    if magic != b"GGUF":
        raise TqpatchError(
            f"{path}: not a GGUF file (bad magic {magic!r}, expected b'GGUF')"
        )
    check_header(path, head, size)
    try:
        import gguf
    except ImportError:  # pragma: no cover - declared dependency
        raise TqpatchError("the `gguf` package is missing: pip install gguf") from None
    try:
        try:
            reader = _fast_reader_class()(str(path))
        except ArrayTooLong as exc:
            raise TqpatchError(
                f"{path}: metadata {exc.key} declares an array of {exc.n} entries, more than "
                f"the {exc.left} bytes left in the file can hold (corrupt or crafted)") from None
        except Exception:
            # the fast path leans on GGUFReader internals; the plain reader decides
            reader = gguf.GGUFReader(str(path))
    except TqpatchError:
        raise
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


class ArrayTooLong(Exception):
    """A metadata array whose declared length the rest of the file cannot hold."""

    def __init__(self, key: str, n: int, left: int):
        super().__init__(key, n, left)
        self.key, self.n, self.left = key, n, left


def _fast_reader_class():
    """GGUFReader that bounds array lengths and reads big metadata arrays in one piece.

    An array's declared length is checked against the bytes left in the file
    before anything is read (ArrayTooLong names the key: the last string read).

    The stock reader builds one NumPy view per array element, which takes
    seconds for a 262k-token vocabulary. Numeric arrays become one part here;
    long string arrays (tokenizer tokens/merges, which plan never reads) are
    skipped over as one blob with no data indices. Their element count stays
    in parts[4], as in the stock reader.
    """
    import numpy as np
    from gguf import GGUFReader, GGUFValueType

    class _FastReader(GGUFReader):
        _last_str = ""

        def _get_str(self, offset):
            parts = super()._get_str(offset)
            self._last_str = bytes(parts[1]).decode("utf-8", "replace")
            return parts

        def _get_field_parts(self, orig_offs, raw_type):
            if raw_type == GGUFValueType.ARRAY:
                itype = self._get(orig_offs, np.uint32)
                sub = GGUFValueType(int(itype[0]))
                alen = self._get(orig_offs + 4, np.uint64)
                n = int(alen[0])
                start = orig_offs + 12
                nptype = self.gguf_scalar_to_np.get(sub)
                # a string takes 8 bytes or more, a nested array 12 or more
                least = np.dtype(nptype).itemsize if nptype is not None else (
                    8 if sub == GGUFValueType.STRING else 12)
                if n * least > len(self.data) - start:
                    raise ArrayTooLong(self._last_str, n, len(self.data) - start)
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


def array_len(f) -> int:
    return int(f.parts[4][0])
