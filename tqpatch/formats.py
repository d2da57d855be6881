"""The KV-cache types: the one description that everything else reads.

Here, and nowhere else, live: each turbo type's complete block layout (scale,
index bit planes, block size, bits per value, ggml enum id, codebook), the
layouts of the upstream types tqpatch compares against, the list of cache
types every backend must pair freely, the head sizes kernels are built and
verified for, and the K/V configurations that plan / eval / benchmarks report.
The reference quantizer, verify, plan, eval, the templates (through the render
context) and the glue patches (through the rendered X-macro list) all read it.

Turbo block algorithm (measured choice, README "Why this block design"):
  * r = max |x| over the block (exact in any summation order, so every backend
    agrees on it bit for bit), u = x * (1/r);
  * idx = number of decision boundaries strictly below u (nearest centroid of a
    Lloyd-Max codebook fitted to the distribution of x_i / max|x| for a
    Gaussian block of that size);
  * the stored fp16 scale d is the least-squares scale sum(x c) / sum(c c),
    which minimizes the block's squared error for the chosen indices;
  * dequantize: y_i = float(d) * c[idx_i].
The K/V inputs are already rotated by llama.cpp's Walsh-Hadamard transform
(attn_rot_k / attn_rot_v) whenever the cache type is quantized, which makes
each block near-Gaussian.

Index packing: a block stores its indices in one or more bit planes (`Plane`).
Plane p holds bits [p.shift, p.shift + p.bits) of every index, 8 // p.bits
indices per byte, index j in bits p.bits * (j % per_byte) of byte
j // per_byte ("low bits first"). turbo3 = a 2-bit plane `qs` (bits 0-1) and a
1-bit plane `qh` (bit 2). Code that packs or unpacks indices loops over the
planes; nothing branches on a type's bit count.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from .errors import TqpatchError

SCALE_BYTES = 2  # every turbo block starts with its fp16 scale `d`


@dataclass(frozen=True)
class Plane:
    """One bit field of the packed indices (see the module docstring)."""

    field: str  # C struct member: uint8_t <field>[block * bits / 8]
    bits: int   # index bits this plane stores (1, 2 or 4: a byte holds whole values)
    shift: int  # which bits of the index: (idx >> shift) & mask

    @property
    def per_byte(self) -> int:
        return 8 // self.bits

    @property
    def mask(self) -> int:
        return (1 << self.bits) - 1

    def nbytes(self, block: int) -> int:
        return block * self.bits // 8


@dataclass(frozen=True)
class TurboFormat:
    name: str          # ggml type name, as in `-ctk turbo3`
    bits: int          # index bits per value
    block: int         # values per block
    codebook: str      # codebook id in tqpatch/codebooks (<dist>-d<dim>-b<bits>)
    ggml_id: int       # enum value, after upstream's last (GGML_TYPE_Q2_0 = 42)
    planes: tuple[Plane, ...]

    def __post_init__(self):
        covered = sorted(b for p in self.planes for b in range(p.shift, p.shift + p.bits))
        if covered != list(range(self.bits)) or any(8 % p.bits for p in self.planes):
            raise ValueError(f"{self.name}: planes must cover index bits 0..{self.bits - 1} "
                             "once each, with 1, 2 or 4 bits per plane")

    @property
    def index_bytes(self) -> int:
        return sum(p.nbytes(self.block) for p in self.planes)

    @property
    def block_bytes(self) -> int:
        return SCALE_BYTES + self.index_bytes

    @property
    def bits_per_value(self) -> float:
        return self.block_bytes * 8 / self.block

    @property
    def levels(self) -> int:
        return 1 << self.bits

    @property
    def enum(self) -> str:
        return "GGML_TYPE_" + self.name.upper()

    @property
    def struct(self) -> str:
        return "block_" + self.name

    @property
    def group(self) -> int:
        """Values whose indices fill whole bytes of every plane (lcm of per_byte)."""
        from math import lcm

        return lcm(*(p.per_byte for p in self.planes))

    @cached_property
    def plane_offsets(self) -> tuple[tuple[Plane, int], ...]:
        """(plane, byte offset of its field inside the block) in struct order."""
        out, offset = [], SCALE_BYTES
        for p in self.planes:
            out.append((p, offset))
            offset += p.nbytes(self.block)
        return tuple(out)


def _planes(*spec: tuple[str, int]) -> tuple[Plane, ...]:
    """Planes from (field, bits) pairs, lowest index bits first."""
    out, shift = [], 0
    for field, bits in spec:
        out.append(Plane(field, bits, shift))
        shift += bits
    return tuple(out)


TURBO_FORMATS: dict[str, TurboFormat] = {
    f.name: f
    for f in (
        TurboFormat("turbo2", bits=2, block=128, codebook="absmax-d128-b2", ggml_id=43,
                    planes=_planes(("qs", 2))),
        TurboFormat("turbo3", bits=3, block=128, codebook="absmax-d128-b3", ggml_id=44,
                    planes=_planes(("qs", 2), ("qh", 1))),
        TurboFormat("turbo4", bits=4, block=64, codebook="absmax-d64-b4", ggml_id=45,
                    planes=_planes(("qs", 4))),
    )
}
TURBO_TYPES: tuple[str, ...] = tuple(TURBO_FORMATS)
# ggml's GGML_TYPE_COUNT once the turbo types are in
GGML_TYPE_COUNT = max(f.ggml_id for f in TURBO_FORMATS.values()) + 1

# Bit budgets the community forks set; our formats must not exceed them.
BPV_BUDGET = {"turbo2": 2.125, "turbo3": 3.125, "turbo4": 4.25}


@dataclass(frozen=True)
class TypeInfo:
    name: str
    block_size: int
    block_bytes: int
    ggml_id: int

    @property
    def bits_per_value(self) -> float:
        return self.block_bytes * 8 / self.block_size


# Upstream types a KV cache can use at the pin (common/arg.cpp kv_cache_types),
# with ggml's layouts and enum ids (ggml/include/ggml.h).
UPSTREAM_TYPES: dict[str, TypeInfo] = {t.name: t for t in (
    TypeInfo("f32", 1, 4, 0),
    TypeInfo("f16", 1, 2, 1),
    TypeInfo("bf16", 1, 2, 30),
    TypeInfo("q8_0", 32, 34, 8),
    TypeInfo("q4_0", 32, 18, 2),
    TypeInfo("q4_1", 32, 20, 3),
    TypeInfo("iq4_nl", 32, 18, 20),
    TypeInfo("q5_0", 32, 22, 6),
    TypeInfo("q5_1", 32, 24, 7),
)}

ALL_TYPES: dict[str, TypeInfo] = {
    **UPSTREAM_TYPES,
    **{n: TypeInfo(n, f.block, f.block_bytes, f.ggml_id) for n, f in TURBO_FORMATS.items()},
}

# The cache types every backend must support as K and as V in any combination
# (kernels, flash-attention instances, verify's pairs, test-backend-ops cases).
CACHE_TYPES: tuple[str, ...] = ("f16", "q8_0", *TURBO_TYPES)
# Upstream's 4-bit KV type: the anchor reports compare the turbo types with.
ANCHOR_TYPE = "q4_0"

# Head sizes the kernels are instantiated and verified for.
HEAD_SIZES: tuple[int, ...] = (64, 128, 256)

# The K/V configurations plan, eval and the benchmarks report, in this order.
KV_CONFIGS: tuple[tuple[str, str], ...] = (
    ("f16", "f16"),
    ("q8_0", "q8_0"),
    (ANCHOR_TYPE, ANCHOR_TYPE),
    ("q8_0", "turbo4"),
    ("q8_0", "turbo3"),
    ("q8_0", "turbo2"),
    ("turbo4", "turbo4"),
    ("turbo3", "turbo3"),
    ("turbo2", "turbo2"),
)


def cache_pairs(types: tuple[str, ...] = CACHE_TYPES, turbo_only: bool = True) -> list[tuple[str, str]]:
    """Every K type with every V type of `types` (with at least one turbo type)."""
    return [(k, v) for k in types for v in types
            if not turbo_only or k in TURBO_FORMATS or v in TURBO_FORMATS]


def type_info(name: str) -> TypeInfo:
    """Block size, bytes per block, bits per value and ggml id of a cache type."""
    try:
        return ALL_TYPES[name]
    except KeyError:
        raise TqpatchError(
            f"unknown type {name!r}; known types: {', '.join(ALL_TYPES)}"
        ) from None


def type_name(ggml_id: int) -> str:
    """The type name of a ggml enum id ('type<N>' for one tqpatch does not know)."""
    for info in ALL_TYPES.values():
        if info.ggml_id == ggml_id:
            return info.name
    return f"type{ggml_id}"


def fit_type(name: str, n_embd_head: int) -> str:
    """The cache type a head of n_embd_head values gets for `name` (itself when its block fits)."""
    info = type_info(name)
    if n_embd_head % info.block_size == 0:
        return name
    raise TqpatchError(f"{name}'s block of {info.block_size} does not divide a head of {n_embd_head}")
