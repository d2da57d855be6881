"""The KV-cache block formats: one description that the reference, the
templates and the reports all read.

Turbo block design (measured choice, see README "Block design"):
  * values are quantized in blocks of `block` values;
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
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TurboFormat:
    name: str          # ggml type name, as in `-ctk turbo3`
    bits: int          # index bits per value
    block: int         # values per block
    codebook: str      # codebook id in tqpatch/codebooks (<dist>-d<dim>-b<bits>)
    ggml_id: int       # enum value appended after upstream's GGML_TYPE_Q2_0 = 42

    @property
    def index_bytes(self) -> int:
        return self.block * self.bits // 8

    @property
    def block_bytes(self) -> int:
        return 2 + self.index_bytes  # fp16 scale + packed indices

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


TURBO_FORMATS: dict[str, TurboFormat] = {
    f.name: f
    for f in (
        TurboFormat("turbo2", bits=2, block=128, codebook="absmax-d128-b2", ggml_id=43),
        TurboFormat("turbo3", bits=3, block=128, codebook="absmax-d128-b3", ggml_id=44),
        TurboFormat("turbo4", bits=4, block=64, codebook="absmax-d64-b4", ggml_id=45),
    )
}

# Bit budgets the community forks set; our formats must not exceed them.
BPV_BUDGET = {"turbo2": 2.125, "turbo3": 3.125, "turbo4": 4.25}


@dataclass(frozen=True)
class TypeInfo:
    name: str
    block_size: int
    block_bytes: int

    @property
    def bits_per_value(self) -> float:
        return self.block_bytes * 8 / self.block_size


# Upstream types a KV cache is compared against (ggml's layouts).
UPSTREAM_TYPES = {
    "f32": TypeInfo("f32", 1, 4),
    "f16": TypeInfo("f16", 1, 2),
    "q8_0": TypeInfo("q8_0", 32, 34),
    "q4_0": TypeInfo("q4_0", 32, 18),
}

ALL_TYPES: dict[str, TypeInfo] = {
    **UPSTREAM_TYPES,
    **{n: TypeInfo(n, f.block, f.block_bytes) for n, f in TURBO_FORMATS.items()},
}

# The K/V cache types tqpatch builds, verifies and reports on.
KV_TYPES = ("f16", "q8_0", "q4_0", "turbo2", "turbo3", "turbo4")


def type_info(name: str) -> TypeInfo:
    """Block size, bytes per block and bits per value of a cache type."""
    from .errors import TqpatchError

    try:
        return ALL_TYPES[name]
    except KeyError:
        raise TqpatchError(
            f"unknown type {name!r}; known types: {', '.join(ALL_TYPES)}"
        ) from None
