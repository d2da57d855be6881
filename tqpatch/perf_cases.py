"""The shape of the decode perf cases the patch adds to test-backend-ops: one constant, two readers.

templates/tests/test-backend-ops-turbo.inc.j2 renders its `tqpatch_turbo_perf_cases`
flash-attention loop from FA_DECODE (the render context's `perf_cases`), and
tqpatch.bench.fa_perf selects exactly those cases with a `-p` regex built from it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecodeShape:
    """test_flash_attn_ext's arguments of a decode case: every K/V pair at each head size."""

    head_sizes: tuple[int, ...]   # hsk = hsv
    n_kv_heads: int               # nh
    nr23: tuple[int, int]         # query heads per KV head, and the 3rd dim's repeat
    kv: int                       # KV length
    nb: int                       # query rows (1: decode)
    mask: bool
    sinks: bool

    @property
    def head_sizes_c(self) -> str:
        """The head sizes as a C++ initialiser list: '{128, 256}'."""
        return "{" + ", ".join(str(h) for h in self.head_sizes) + "}"

    @property
    def nr23_c(self) -> str:
        return "{" + ", ".join(str(n) for n in self.nr23) + "}"


# 8 KV heads x 4 query heads each (an 8B model's attention), a 16384-row cache, one query row
FA_DECODE = DecodeShape(head_sizes=(128, 256), n_kv_heads=8, nr23=(4, 1), kv=16384, nb=1,
                        mask=True, sinks=False)
