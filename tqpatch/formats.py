"""The KV-cache types: the one description that everything else reads.

Here, and nowhere else, live: each turbo type's complete block layout (scale,
index bit planes, block size, bits per value, ggml enum id, codebook), which
block variant a turbo type uses at each head size, the layouts of the upstream
types tqpatch compares against, the list of cache types every backend must
pair freely, the head sizes kernels are built and verified for, and the K/V
configurations that plan / eval / benchmarks report. The reference quantizer,
verify, plan, eval, the templates (through the render context) and the glue
patches (through the rendered X-macro list) all read it.

Turbo block algorithm (measured choice, docs/block-design.md):
  * r = max |x| over the block (exact in any summation order, so every backend
    agrees on it bit for bit), u = x * (1/r);
  * idx = number of decision boundaries strictly below u (nearest centroid of a
    Lloyd-Max codebook fitted to the distribution of x_i / max|x| for a
    Gaussian block of that size);
  * s = sum(x c) / sum(c c) over the chosen centroids (the least-squares scale,
    summed in double);
  * the scale is stored as `Scale` says. fp16: d = fp16(s), done. log8: a code
    e = number of the scale's boundaries strictly below float(s) (the nearest
    of 254 log-spaced values 2^((e-128)/8), e in 1..254; e = 0 for an all-zero
    block), and then the indices are chosen again for that stored scale:
    idx = number of codebook boundaries strictly below x * inv[e], inv the
    rendered float32 table of 1/2^((e-128)/8);
  * dequantize: y_i = scale * c[idx_i], scale = float(d) or table[e].
A block holding a NaN or inf is stored as scale NaN (d = 0x7E00, e = 255) with
all indices 0. The K/V inputs are already rotated by llama.cpp's Walsh-Hadamard
transform (attn_rot_k / attn_rot_v) whenever the cache type is quantized, which
makes each block near-Gaussian.

Block variants: a turbo *family* (turbo2, turbo3, turbo4: the names users
give -ctk / -ctv) has one ggml type per block size it offers (FAMILIES); the
cache uses, per layer, the first variant whose block divides that layer's head
size (`fit_type`), so `-ctk turbo3` serves every head size that is a multiple
of 32. Variants beyond the family's budget (BPV_BUDGET) exist only where no
block within it divides the head.

Index packing: a block stores its indices in one or more bit planes (`Plane`).
Plane p holds bits [p.shift, p.shift + p.bits) of every index, 8 // p.bits
indices per byte, index j in bits p.bits * (j % per_byte) of byte
j // per_byte ("low bits first"). turbo3 = a 2-bit plane `qs` (bits 0-1) and a
1-bit plane `qh` (bit 2). Code that packs or unpacks indices loops over the
planes; nothing branches on a type's bit count.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from functools import cached_property
from math import lcm

from .errors import TqpatchError, lookup


def _f32(v: float) -> float:
    """v rounded to the nearest float32 (what the rendered C constants hold)."""
    return struct.unpack("<f", struct.pack("<f", v))[0]


@dataclass(frozen=True)
class Scale:
    """How a turbo block stores its scale: the struct's first member.

    fp16: `ggml_half d`, the IEEE half of the least-squares scale.
    log8: `uint8_t e`, a code for 2^((e - BIAS) / steps): e = 0 is an all-zero
    block, e = 255 a poisoned one (NaN), 1..254 cover 2^-15.875 .. 2^15.75 in
    steps of 2^(1/8) (8 codes per octave). Decoding is a 256-entry float32 table
    (`table`), encoding a count of float32 boundaries (`boundaries`), so every
    backend stores and reads the same bytes and values.
    """

    kind: str          # "fp16" | "log8"
    field: str         # C struct member
    nbytes: int
    steps: int = 0     # log: codes per octave

    BIAS = 128
    ZERO_CODE = 0
    NAN_CODE = 255

    @property
    def is_log(self) -> bool:
        return self.kind != "fp16"

    @cached_property
    def table(self) -> tuple[float, ...]:
        """float32 scale of each code (log scales only): 0, the codes, NaN."""
        if not self.is_log:
            raise ValueError("an fp16 scale has no table")
        vals = [0.0] + [_f32(2.0 ** ((c - self.BIAS) / self.steps)) for c in range(1, self.NAN_CODE)]
        return tuple(vals + [math.nan])

    @cached_property
    def inverse(self) -> tuple[float, ...]:
        """float32 of 1 / 2^((c - BIAS)/steps): what u = x * inverse[e] multiplies by (0 for e = 0)."""
        vals = [0.0] + [_f32(2.0 ** (-(c - self.BIAS) / self.steps)) for c in range(1, self.NAN_CODE)]
        return tuple(vals + [0.0])

    @cached_property
    def boundaries(self) -> tuple[float, ...]:
        """The 253 float32 decision boundaries between codes 1..254: code = 1 + #(b < s)."""
        t = self.table
        return tuple(_f32((t[c] + t[c + 1]) / 2.0) for c in range(1, self.NAN_CODE - 1))


FP16 = Scale("fp16", "d", 2)
LOG8 = Scale("log8", "e", 1, steps=8)
SCALES = {s.kind: s for s in (FP16, LOG8)}
SCALE_BYTES = FP16.nbytes  # the fp16 scale's size (kept for callers of the first layout)


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
    name: str          # ggml type name (`-ctk turbo3` names the family, see FAMILIES)
    bits: int          # index bits per value
    block: int         # values per block
    codebook: str      # codebook id in tqpatch/codebooks (<dist>-d<dim>-b<bits>)
    ggml_id: int       # enum value, after upstream's last (GGML_TYPE_Q2_0 = 42)
    planes: tuple[Plane, ...]
    scale: Scale = FP16
    family: str = ""   # the cache-type name this variant serves ("" = its own name)

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
        return self.scale.nbytes + self.index_bytes

    @property
    def family_name(self) -> str:
        return self.family or self.name

    @property
    def is_variant(self) -> bool:
        """A block variant of a family, not the family's own type."""
        return self.family_name != self.name

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
        return lcm(*(p.per_byte for p in self.planes))

    @cached_property
    def plane_offsets(self) -> tuple[tuple[Plane, int], ...]:
        """(plane, byte offset of its field inside the block) in struct order."""
        out, offset = [], self.scale.nbytes
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


_TWO = _planes(("qs", 2))
_THREE = _planes(("qs", 2), ("qh", 1))
_FOUR = _planes(("qs", 4))

TURBO_FORMATS: dict[str, TurboFormat] = {
    f.name: f
    for f in (
        # the family types: blocks of 64 (turbo2, turbo3) and 32 (turbo4), 8-bit log scale
        TurboFormat("turbo2", bits=2, block=64, codebook="absmax-d64-b2", ggml_id=43, planes=_TWO, scale=LOG8),
        TurboFormat("turbo3", bits=3, block=64, codebook="absmax-d64-b3", ggml_id=44, planes=_THREE, scale=LOG8),
        TurboFormat("turbo4", bits=4, block=32, codebook="absmax-d32-b4", ggml_id=45, planes=_FOUR, scale=LOG8),
        # block variants for heads that 64 does not divide: 96 (within budget), 32 (over it)
        TurboFormat("turbo2_b96", bits=2, block=96, codebook="absmax-d96-b2", ggml_id=46, planes=_TWO,
                    scale=LOG8, family="turbo2"),
        TurboFormat("turbo2_b32", bits=2, block=32, codebook="absmax-d32-b2", ggml_id=47, planes=_TWO,
                    scale=LOG8, family="turbo2"),
        TurboFormat("turbo3_b96", bits=3, block=96, codebook="absmax-d96-b3", ggml_id=48, planes=_THREE,
                    scale=LOG8, family="turbo3"),
        TurboFormat("turbo3_b32", bits=3, block=32, codebook="absmax-d32-b3", ggml_id=49, planes=_THREE,
                    scale=LOG8, family="turbo3"),
    )
}
TURBO_TYPES: tuple[str, ...] = tuple(TURBO_FORMATS)
# ggml's GGML_TYPE_COUNT once the turbo types are in
GGML_TYPE_COUNT = max(f.ggml_id for f in TURBO_FORMATS.values()) + 1

# The cache-type names users give (-ctk / -ctv turbo3) and, for each, its
# variants in the order the cache tries them: the first whose block divides
# the head size serves it (turbo3: 64 for heads 64, 128, 192, 256, 512; 96
# for 96; 32 for 32).
FAMILIES: dict[str, tuple[str, ...]] = {}
for _f in TURBO_FORMATS.values():
    FAMILIES.setdefault(_f.family_name, ())
    FAMILIES[_f.family_name] += (_f.name,)
FAMILY_TYPES: tuple[str, ...] = tuple(FAMILIES)

# Bit budgets the community forks set; a family's variants stay within them
# wherever a block within budget divides the head (turbo2 and turbo3 at head 32
# cannot: 2.25 and 3.25 bits per value there).
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
# with ggml's layouts and enum ids (ggml/include/ggml.h). The NumPy reference
# handles those tqpatch checks or compares with (reference.CODECS), not all of them.
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

# The ggml types a K or V cache holds and every backend must support, in any
# combination that occurs (kernels, flash-attention instances, verify's pairs,
# test-backend-ops cases): every turbo variant included. The names users give
# -ctk / -ctv are USER_CACHE_TYPES; `served_pairs(head)` lists the K/V type
# pairs that a head size really produces.
CACHE_TYPES: tuple[str, ...] = ("f16", "q8_0", *TURBO_TYPES)
USER_CACHE_TYPES: tuple[str, ...] = ("f16", "q8_0", *FAMILY_TYPES)
# Upstream's 4-bit KV type: the anchor reports compare the turbo types with.
ANCHOR_TYPE = "q4_0"

# Head sizes the kernels are instantiated and verified for.
HEAD_SIZES: tuple[int, ...] = (64, 128, 256)
# Every head size a turbo family serves (through its variants): verify, the
# synthetic models and test-backend-ops cover these for the variants that serve them.
SERVED_HEAD_SIZES: tuple[int, ...] = (32, 64, 96, 128, 192, 256, 512)

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


# What `tqpatch serve` probes on the user's model and build, calibrated and not
# (tqpatch.serve.candidates): q8_0 K with each turbo V, and each turbo K with a V
# of no more bits; the uncalibrated ones only where a user would type them.
PROBE_CONFIGS: tuple[tuple[str, str], ...] = (
    ("q8_0", "turbo4"), ("q8_0", "turbo3"), ("q8_0", "turbo2"),
    ("turbo4", "turbo4"), ("turbo4", "turbo3"), ("turbo3", "turbo3"),
    ("turbo3", "turbo2"), ("turbo2", "turbo2"),
)
PROBE_UNCALIBRATED: tuple[tuple[str, str], ...] = (
    ("q8_0", "turbo4"), ("turbo4", "turbo4"), ("turbo3", "turbo3"),
)
# The anchors serve's quality levels are defined against, measured in the same probe.
LOSSLESS_ANCHOR: tuple[str, str] = ("q8_0", "q8_0")
SMALL_ANCHOR: tuple[str, str] = (ANCHOR_TYPE, ANCHOR_TYPE)


def cache_pairs(types: tuple[str, ...] = CACHE_TYPES, turbo_only: bool = True) -> list[tuple[str, str]]:
    """Every K type with every V type of `types` (with at least one turbo type)."""
    return [(k, v) for k in types for v in types
            if not turbo_only or k in TURBO_FORMATS or v in TURBO_FORMATS]


def type_info(name: str) -> TypeInfo:
    """Block size, bytes per block, bits per value and ggml id of a cache type."""
    return lookup(ALL_TYPES, name, f"unknown type {name!r}; known types:")


def type_name(ggml_id: int) -> str:
    """The type name of a ggml enum id ('type<N>' for one tqpatch does not know)."""
    for info in ALL_TYPES.values():
        if info.ggml_id == ggml_id:
            return info.name
    return f"type{ggml_id}"



def fit_type(name: str, n_embd_head: int) -> str:
    """The ggml type a cache of `name` uses for heads of n_embd_head values:
    a turbo family's first variant whose block divides the head, any other type
    itself when its block divides it; TqpatchError naming what fits otherwise."""
    candidates = FAMILIES.get(name) or (name,)
    for t in candidates:
        if n_embd_head % type_info(t).block_size == 0:
            return t
    fits = [n for n in dict.fromkeys((*CACHE_TYPES, *UPSTREAM_TYPES))
            if n_embd_head % type_info(fit_type_or_self(n, n_embd_head)).block_size == 0]
    raise TqpatchError(f"{name} has no block that divides a head of {n_embd_head} values; "
                       f"cache types that fit: {', '.join(fits)}")


def fit_type_or_self(name: str, n_embd_head: int) -> str:
    """fit_type without the error: the type itself when nothing fits."""
    for t in FAMILIES.get(name) or (name,):
        if n_embd_head % type_info(t).block_size == 0:
            return t
    return name


def variants_for_head(n_embd_head: int) -> tuple[str, ...]:
    """The turbo ggml types a head size uses (one per family that serves it)."""
    return tuple(fit_type_or_self(f, n_embd_head) for f in FAMILY_TYPES
                 if n_embd_head % type_info(fit_type_or_self(f, n_embd_head)).block_size == 0)


def serving_heads(name: str, heads: tuple[int, ...] = SERVED_HEAD_SIZES) -> tuple[int, ...]:
    """The head sizes (of `heads`) at which the cache uses turbo type `name`."""
    fmt = TURBO_FORMATS[name]
    return tuple(h for h in heads if fit_type_or_self(fmt.family_name, h) == name)


def served_pairs(n_embd_head: int, names: tuple[str, ...] = USER_CACHE_TYPES) -> list[tuple[str, str]]:
    """The (K type, V type) ggml pairs a head of n_embd_head values produces from every
    K and V cache-type name of `names` (with at least one turbo type), in order."""
    out = []
    for k in names:
        for v in names:
            tk, tv = fit_type_or_self(k, n_embd_head), fit_type_or_self(v, n_embd_head)
            if (tk in TURBO_FORMATS or tv in TURBO_FORMATS) and (tk, tv) not in out \
                    and all(n_embd_head % type_info(t).block_size == 0 for t in (tk, tv)):
                out.append((tk, tv))
    return out


def fa_cases() -> list[tuple[int, str, str]]:
    """(head size, K type, V type) of every flash-attention case kernels are checked on
    (verify, test-backend-ops): every pair `served_pairs` gives at each of HEAD_SIZES, and
    at the other SERVED_HEAD_SIZES the pairs with a block variant that only they use
    (the family types there run the same kernels as at HEAD_SIZES)."""
    out = []
    for h in sorted(set(HEAD_SIZES) | set(SERVED_HEAD_SIZES)):
        for k, v in served_pairs(h):
            if h in HEAD_SIZES or any(t in TURBO_FORMATS and TURBO_FORMATS[t].is_variant for t in (k, v)):
                out.append((h, k, v))
    return out
