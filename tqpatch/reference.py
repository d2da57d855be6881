"""NumPy reference for the KV-cache types: the bytes every backend must produce.

Public API
----------
type_info(name)                     block size, bytes per block, bits per value
CODECS, codec(name)                 the types the reference handles and each one's functions
quantize_rows(x, name)              float32 (n, k) -> uint8 (n, row_bytes): the C block structs
dequantize_rows(data, name, k)      uint8 (n, row_bytes) -> float32 (n, k)
roundtrip(x, name)                  dequantize_rows(quantize_rows(x)) in one call
boundary_margin(x, name)            per value: distance of the pre-quantization value to the
                                    nearest decision boundary (for counting boundary cases)
dot_rows(q, k, type_k)              float64 q . dequant(quant(k)) for every pair of rows
attention(q, k, v, type_k, type_v)  float64 softmax(q k^T * scale) v over quantized K and V

Formats (little-endian, packed, no padding):
  f16     one IEEE half per value (round to nearest even)
  q8_0    {fp16 d; int8 qs[32]}: d = max|x|/127, qs = round-half-away(x * (1/d))  (upstream)
  q4_0    {fp16 d; uint8 qs[16]}: upstream's reference quantizer
  turbo*  {scale (fp16 d or log8 code e); one uint8 array per index bit plane}:
          layouts, planes, scales and the algorithm are described in
          tqpatch.formats (the single source).

Non-finite input: quantize_rows raises by default (nonfinite="error"). Kernels
cannot raise, so they poison the block instead: a block holding any NaN or inf
is written with a NaN scale (fp16 d = 0x7E00, log8 e = 255) and all indices 0,
and dequantizes to NaN,
the way an f16 cache would carry the NaN. `nonfinite="poison"` gives those
bytes here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import codebook, formats
from .errors import TqpatchError, lookup
from .formats import type_info  # noqa: F401  (public API)

F16_NAN_BITS = 0x7E00


def scale_arrays(scale: formats.Scale) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(table, inverse, boundaries) of a log scale as float32: exactly the kernel constants."""
    return (np.asarray(scale.table, dtype=np.float32), np.asarray(scale.inverse, dtype=np.float32),
            np.asarray(scale.boundaries, dtype=np.float32))


class QuantInputError(TqpatchError):
    """Bad input to the reference (shape, dtype, values)."""


def _codebook_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    cb = codebook.load_for(formats.TURBO_FORMATS[name])
    return (np.asarray(cb.centroids, dtype=np.float32),
            np.asarray(cb.boundaries, dtype=np.float32))


_CODEBOOK_CACHE: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}


def codebook_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(centroids, boundaries) as float32 for a turbo type; exactly the kernel constants
    (the shipped codebook, or its override from $TQPATCH_CODEBOOKS: codebook.load_for)."""
    key = (name, codebook.override_dir_key())
    if key not in _CODEBOOK_CACHE:
        _CODEBOOK_CACHE[key] = _codebook_arrays(name)
    return _CODEBOOK_CACHE[key]


def _check_rows(x, name: str) -> np.ndarray:
    info = type_info(name)
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise QuantInputError(f"expected a 2-D array (rows, k), got shape {x.shape}")
    if x.shape[1] % info.block_size:
        raise QuantInputError(
            f"row length {x.shape[1]} is not a multiple of {name}'s block of {info.block_size}"
        )
    return x.astype(np.float32, copy=False)


def _nonfinite_blocks(xb: np.ndarray, nonfinite: str, name: str) -> np.ndarray:
    bad = ~np.isfinite(xb).all(axis=1)
    if bad.any() and nonfinite == "error":
        flat = np.argwhere(~np.isfinite(xb))[0]
        raise QuantInputError(
            f"non-finite value in input to {name} (block {flat[0]}, position {flat[1]}); "
            "pass nonfinite='poison' to get the bytes kernels write for such blocks"
        )
    if nonfinite not in ("error", "poison"):
        raise QuantInputError(f"nonfinite must be 'error' or 'poison', not {nonfinite!r}")
    return bad


# ---------------------------------------------------------------- turbo

def _turbo_indices(xb: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """u = x * (1/max|x|) in float32 and idx = #boundaries strictly below u."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        r = np.abs(xb).max(axis=1)
        inv = np.where(r > 0, np.float32(1.0) / np.where(r > 0, r, 1), np.float32(0))
        u = xb * inv.astype(np.float32)[:, None]
    idx = np.searchsorted(bounds, u, side="left").astype(np.uint8)
    return u, idx


def _pack(idx: np.ndarray, plane: formats.Plane) -> np.ndarray:
    """One plane of indices (nb, B) as bytes: plane.per_byte values per byte, low bits first."""
    field = (idx >> plane.shift) & plane.mask
    g = field.reshape(idx.shape[0], -1, plane.per_byte).astype(np.uint8)
    out = np.zeros(g.shape[:2], dtype=np.uint8)
    for t in range(plane.per_byte):
        out |= (g[:, :, t] << (plane.bits * t)).astype(np.uint8)
    return out


def _unpack(packed: np.ndarray, plane: formats.Plane) -> np.ndarray:
    """The plane's contribution to the indices (already shifted into place)."""
    parts = [(packed >> (plane.bits * t)) & plane.mask for t in range(plane.per_byte)]
    field = np.stack(parts, axis=-1).reshape(packed.shape[0], -1)
    return (field << plane.shift).astype(np.uint8)


def turbo_fields(blocks: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(raw scale field (nb,): fp16 bits as uint16 or log8 codes as uint8, indices (nb, block))
    of turbo blocks (nb, block_bytes)."""
    fmt = formats.TURBO_FORMATS[name]
    blocks = np.asarray(blocks, dtype=np.uint8).reshape(-1, fmt.block_bytes)
    raw = blocks[:, :fmt.scale.nbytes].copy()
    d = raw[:, 0] if fmt.scale.is_log else raw.view("<u2")[:, 0]
    idx = np.zeros((blocks.shape[0], fmt.block), dtype=np.uint8)
    for plane, offset in fmt.plane_offsets:
        idx |= _unpack(blocks[:, offset:offset + plane.nbytes(fmt.block)], plane)
    return d, idx


def turbo_blocks(d_bits: np.ndarray, idx: np.ndarray, name: str) -> np.ndarray:
    """Inverse of turbo_fields: blocks (nb, block_bytes) from raw scale fields and indices."""
    fmt = formats.TURBO_FORMATS[name]
    idx = np.asarray(idx, dtype=np.uint8).reshape(-1, fmt.block)
    if fmt.scale.is_log:
        d = np.asarray(d_bits, dtype=np.uint8).reshape(-1, 1)
    else:
        d = np.asarray(d_bits, dtype=np.uint16).reshape(-1).astype("<u2").view(np.uint8).reshape(-1, 2)
    return np.concatenate([d, *(_pack(idx, plane) for plane in fmt.planes)], axis=1)


def turbo_scales(d_raw: np.ndarray, name: str) -> np.ndarray:
    """float32 scale of each block from its raw scale field (what dequantize multiplies by)."""
    fmt = formats.TURBO_FORMATS[name]
    if fmt.scale.is_log:
        return scale_arrays(fmt.scale)[0][np.asarray(d_raw, dtype=np.int64)]
    return np.asarray(d_raw, dtype=np.uint16).view("<f2").astype(np.float32)


def turbo_ls_scale(xb: np.ndarray, idx: np.ndarray, cent: np.ndarray) -> np.ndarray:
    """The least-squares scale sum(x c) / sum(c c) of blocks for given indices (float64)."""
    c = cent[idx].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xb.astype(np.float64) * c).sum(axis=1) / (c * c).sum(axis=1)


def log_scale_code(s: np.ndarray, scale: formats.Scale) -> np.ndarray:
    """The code of a log scale for least-squares scales s: 0 unless float32(s) > 0, else
    1 + the number of the scale's boundaries strictly below float32(s)."""
    _, _, bounds = scale_arrays(scale)
    with np.errstate(invalid="ignore", over="ignore"):
        s32 = np.asarray(s, dtype=np.float64).astype(np.float32)
    code = 1 + np.searchsorted(bounds, s32, side="left")
    return np.where(s32 > 0, code, scale.ZERO_CODE).astype(np.uint8)


def turbo_reindex(xb: np.ndarray, codes: np.ndarray, name: str, book=None) -> np.ndarray:
    """Indices of blocks for given log-scale codes: #codebook boundaries strictly below
    x * inverse[code] (float32), the second pass of a log-scale type's quantizer."""
    fmt = formats.TURBO_FORMATS[name]
    _, bounds = book if book is not None else codebook_arrays(name)
    inv = scale_arrays(fmt.scale)[1][np.asarray(codes, dtype=np.int64)]
    with np.errstate(invalid="ignore", over="ignore"):
        u = xb.astype(np.float32) * inv[:, None]
    return np.searchsorted(bounds, u, side="left").astype(np.uint8)


def turbo_encode(xb: np.ndarray, name: str, book=None, bad=None) -> tuple[np.ndarray, np.ndarray]:
    """(raw scale fields, indices) of finite blocks xb (nb, block) of a turbo type, with
    its codebook or `book` = (centroids, boundaries) as float32 (codebook fitting tries
    candidates through this); blocks flagged in `bad` get the poison fields."""
    fmt = formats.TURBO_FORMATS[name]
    cent, bounds = book if book is not None else codebook_arrays(name)
    bad = np.zeros(xb.shape[0], dtype=bool) if bad is None else bad
    _, idx = _turbo_indices(xb, bounds)
    idx[bad] = 0
    s = turbo_ls_scale(xb, idx, cent)
    if fmt.scale.is_log:
        d = log_scale_code(np.where(bad, 0.0, s), fmt.scale)
        idx = turbo_reindex(np.where(bad[:, None], 0, xb), d, name, (cent, bounds))
        d[bad] = fmt.scale.NAN_CODE
    else:
        d = s.astype(np.float32).astype(np.float16).view(np.uint16)
        d[bad] = F16_NAN_BITS
    idx[bad] = 0
    return d, idx


def _turbo_quantize(x: np.ndarray, name: str, nonfinite: str) -> np.ndarray:
    fmt = formats.TURBO_FORMATS[name]
    xb = x.reshape(-1, fmt.block)
    bad = _nonfinite_blocks(xb, nonfinite, name)
    d, idx = turbo_encode(xb, name, bad=bad)
    return turbo_blocks(d, idx, name).reshape(x.shape[0], -1)


def _turbo_dequantize(data: np.ndarray, name: str, k: int) -> np.ndarray:
    cent, _ = codebook_arrays(name)
    d_raw, idx = turbo_fields(data, name)
    d = turbo_scales(d_raw, name)[:, None]
    y = d * cent[idx]
    return y.reshape(data.shape[0], k).astype(np.float32)


def _turbo_margin(x: np.ndarray, name: str) -> np.ndarray:
    # u = x/max|x| (fp16 scale) or x * inverse[e] for the stored log-scale code e
    fmt = formats.TURBO_FORMATS[name]
    _, bounds = codebook_arrays(name)
    xb = x.reshape(-1, fmt.block)
    if fmt.scale.is_log:
        codes = turbo_fields(_turbo_quantize(np.nan_to_num(x), name, "poison"), name)[0]
        inv = scale_arrays(fmt.scale)[1][codes.astype(np.int64)]
        u = xb * inv[:, None]
    else:
        u, _ = _turbo_indices(xb, bounds)
    m = np.abs(u[..., None].astype(np.float64) - bounds.astype(np.float64)).min(axis=-1)
    return m.reshape(x.shape)


# ---------------------------------------------------------------- upstream types

def _round_half_away(v: np.ndarray) -> np.ndarray:
    # C roundf(): halves away from zero; float64 keeps |v| + 0.5 exact.
    v64 = v.astype(np.float64)
    return np.sign(v64) * np.floor(np.abs(v64) + 0.5)


def _blocks(x: np.ndarray, name: str, nonfinite: str) -> np.ndarray:
    """x as blocks of an upstream type; non-finite input an error unless `nonfinite` says
    otherwise (upstream's quantizers have no poison: the values go through as they are)."""
    xb = x.reshape(-1, type_info(name).block_size)
    _nonfinite_blocks(xb, nonfinite if nonfinite == "error" else "poison", name)
    return xb


def _fp16_bytes(d: np.ndarray) -> np.ndarray:
    """(nb, 2): each float32 scale as the bytes of its IEEE half."""
    return d.astype(np.float16).astype("<f2").view(np.uint8).reshape(-1, 2)


def _q8_0_quantize(x: np.ndarray, name: str, nonfinite: str) -> np.ndarray:
    xb = _blocks(x, name, nonfinite)
    amax = np.abs(xb).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    q = _round_half_away(xb * inv[:, None]).astype(np.int8)
    return np.concatenate([_fp16_bytes(d), q.view(np.uint8)], axis=1).reshape(x.shape[0], -1)


def _q8_0_dequantize(data: np.ndarray, name: str, k: int) -> np.ndarray:
    blocks = data.reshape(-1, type_info(name).block_bytes)
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)
    q = blocks[:, 2:].view(np.int8).astype(np.float32)
    return (d * q).reshape(data.shape[0], k)


def _q8_0_margin(x: np.ndarray, name: str) -> np.ndarray:
    # x/d, whose boundaries are the half-integers
    xb = x.reshape(-1, type_info(name).block_size)
    d = np.abs(xb).max(axis=1) / np.float32(127)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(d[:, None] > 0, xb / d[:, None], 0).astype(np.float64)
    return np.abs(np.abs(v) - np.floor(np.abs(v)) - 0.5).reshape(x.shape)


def _q4_0_quantize(x: np.ndarray, name: str, nonfinite: str) -> np.ndarray:
    # upstream quantize_row_q4_0_ref: d = max/-8 (signed max), q = trunc(x/d + 8.5) clipped;
    # value j of a block in the low nibble of byte j, value j + block/2 in its high nibble
    xb = _blocks(x, name, nonfinite)
    half = xb.shape[1] // 2
    pos = np.abs(xb).argmax(axis=1)
    mx = xb[np.arange(xb.shape[0]), pos]
    d = (mx / np.float32(-8)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    v = (xb * inv[:, None]).astype(np.float32) + np.float32(8.5)
    q = np.minimum(np.trunc(v), 15).astype(np.uint8)
    packed = q[:, :half] | (q[:, half:] << 4)
    return np.concatenate([_fp16_bytes(d), packed.astype(np.uint8)], axis=1).reshape(x.shape[0], -1)


def _q4_0_dequantize(data: np.ndarray, name: str, k: int) -> np.ndarray:
    blocks = data.reshape(-1, type_info(name).block_bytes)
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)
    qs = blocks[:, 2:]
    q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.float32) - 8
    return (d * q).reshape(data.shape[0], k)


# ---------------------------------------------------------------- the types' table

@dataclass(frozen=True)
class Codec:
    """The reference of one type. Every function gets the type's name (a layout's
    sizes come from formats) and rows already checked against its block."""

    quantize: Callable[[np.ndarray, str, str], np.ndarray]    # float32 (n, k), name, nonfinite -> uint8
    dequantize: Callable[[np.ndarray, str, int], np.ndarray]  # uint8 (n, row_bytes), name, k -> float32
    margin: Callable[[np.ndarray, str], np.ndarray] | None = None  # None: no boundaries tracked (inf)


def _float_codec(dtype: str) -> Codec:
    """One IEEE value per element (an f16 rounds to nearest even); no decision boundaries."""

    def quantize(x: np.ndarray, name: str, nonfinite: str) -> np.ndarray:
        if nonfinite == "error":
            _nonfinite_blocks(x, "error", name)
        return np.ascontiguousarray(x.astype(dtype)).view(np.uint8)

    def dequantize(data: np.ndarray, name: str, k: int) -> np.ndarray:
        return np.ascontiguousarray(data).view(dtype).astype(np.float32)

    return Codec(quantize, dequantize)


_TURBO = Codec(_turbo_quantize, _turbo_dequantize, _turbo_margin)

# Every type the reference handles, by formats' type name: the turbo types and the
# upstream ones tqpatch checks or compares with (the baselines of verify, f32 for its
# float reference, the anchor). formats.UPSTREAM_TYPES lists more (what llama.cpp
# takes as a cache type): asking for one of those is a TqpatchError naming these.
CODECS: dict[str, Codec] = {
    "f32": _float_codec("<f4"),
    "f16": _float_codec("<f2"),
    "q8_0": Codec(_q8_0_quantize, _q8_0_dequantize, _q8_0_margin),
    "q4_0": Codec(_q4_0_quantize, _q4_0_dequantize),
    **{name: _TURBO for name in formats.TURBO_FORMATS},
}


def codec(name: str) -> Codec:
    """The reference of a type; TqpatchError for a name formats does not know or one the
    reference does not handle (naming those it does)."""
    type_info(name)  # an unknown name: its error lists every known type
    return lookup(CODECS, name, f"the NumPy reference does not handle {name}; it handles")


# ---------------------------------------------------------------- public API

def quantize_rows(x, name: str, nonfinite: str = "error") -> np.ndarray:
    """Quantize float32 rows (n, k) into the exact bytes of the C block structs."""
    c = codec(name)
    return c.quantize(_check_rows(x, name), name, nonfinite)


def dequantize_rows(data, name: str, k: int) -> np.ndarray:
    """Decode rows of block structs back to float32 (n, k)."""
    c = codec(name)
    info = type_info(name)
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim == 1:
        data = data[None, :]
    if k % info.block_size:
        raise QuantInputError(f"k={k} is not a multiple of {name}'s block of {info.block_size}")
    row_bytes = k // info.block_size * info.block_bytes
    if data.ndim != 2 or data.shape[1] != row_bytes:
        raise QuantInputError(
            f"{name} rows of {k} values take {row_bytes} bytes; got array of shape {data.shape}"
        )
    return c.dequantize(data, name, k)


def roundtrip(x, name: str) -> np.ndarray:
    x = _check_rows(x, name)
    return dequantize_rows(quantize_rows(x, name), name, x.shape[1])


def boundary_margin(x, name: str) -> np.ndarray:
    """Distance of each pre-quantization value to its nearest decision boundary.

    In the units the decision is taken in (u = x/max|x| for turbo types with an
    fp16 scale, u = x * inverse[e] for a log scale's stored code e, x/d for q8_0
    (boundaries at half-integers)); inf for a type whose codec tracks none (f16,
    f32, q4_0).
    """
    c = codec(name)
    x = _check_rows(x, name)
    return c.margin(x, name) if c.margin is not None else np.full(x.shape, np.inf)


def dot_rows(q, k, type_k: str) -> np.ndarray:
    """float64 dot products of every q row with every (quantized) k row: (nq, nk)."""
    kd = roundtrip(k, type_k).astype(np.float64)
    return np.asarray(q, dtype=np.float64) @ kd.T


def attention(q, k, v, type_k: str, type_v: str, scale: float | None = None,
              mask=None) -> np.ndarray:
    """Reference attention softmax(q k^T * scale + mask) v in float64.

    q: (nq, dk), k: (nkv, dk), v: (nkv, dv); K and V go through their cache
    type (quantize -> dequantize) first, any K type with any V type. Returns
    (nq, dv) float64.
    """
    q = np.asarray(q, dtype=np.float64)
    if scale is None:
        scale = 1.0 / np.sqrt(q.shape[1])
    s = dot_rows(q, k, type_k) * scale
    if mask is not None:
        s = s + np.asarray(mask, dtype=np.float64)
    s -= s.max(axis=1, keepdims=True)
    w = np.exp(s)
    w /= w.sum(axis=1, keepdims=True)
    vd = roundtrip(v, type_v).astype(np.float64)
    return w @ vd
