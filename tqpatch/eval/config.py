"""K/V configurations as eval takes them: `q8_0/turbo3`, with optional boundary
layers (`q8_0/turbo2:bv2`, `turbo3/turbo3:bk2:bv2`) and a calibration file
(`turbo3/turbo3:cal=gemma.calib.gguf`, from `tqpatch calibrate`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .. import formats
from ..errors import TqpatchError
from ..plan import (ENV_BOUNDARY_K, ENV_BOUNDARY_V, MAX_BOUNDARY, boundary_suffix, effective_bpv,
                    is_turbo)

BASELINE_TYPE = "f16"
DEFAULT_CONFIGS: tuple[str, ...] = tuple(f"{k}/{v}" for k, v in formats.KV_CONFIGS)


def known_types() -> tuple[str, ...]:
    """Cache types eval accepts (every type llama.cpp takes as a cache type): the cache
    types tqpatch pairs first, then the other upstream ones."""
    return tuple(dict.fromkeys([*formats.CACHE_TYPES, *formats.ALL_TYPES]))


_RE_VARIANT = re.compile(r"(bk|bv)(\d+)")
VARIANT_HINT = ("write :bkN / :bvN after the pair to keep the first and last N layers' "
                "K / V cache at q8_0, e.g. q8_0/turbo2:bv2 or turbo3/turbo3:bk2:bv2, "
                "and :cal=FILE to run it with a calibration from `tqpatch calibrate`")
ENV_CALIB = "LLAMA_TURBO_CALIB"  # patch 0021: the calibration file llama.cpp loads


@dataclass(frozen=True)
class Config:
    """One K/V cache type pair, written K/V as in `q8_0/turbo3`, with optional
    boundary layers (`q8_0/turbo2:bv2`: the first and last 2 layers' V at q8_0)."""

    k: str
    v: str
    bk: int = 0
    bv: int = 0
    calib: str = ""  # absolute path of a calibration file ("": the environment's, if any)

    @classmethod
    def parse(cls, text: str) -> "Config":
        raw = text
        text, *variants = text.strip().split(":")
        text = text.lower()
        parts = text.split("/")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise TqpatchError(
                f"malformed configuration {raw!r}: write K/V, e.g. q8_0/turbo3 "
                "(several separated by commas: f16/f16,q8_0/turbo3)"
            )
        k, v = (p.strip() for p in parts)
        known = known_types()
        for role, name in (("K", k), ("V", v)):
            if name not in known:
                raise TqpatchError(
                    f"unknown cache type {name!r} for {role} in {raw!r}; known cache types: "
                    + ", ".join(known)
                )
        bound = {}
        calib = ""
        for var in (x.strip() for x in variants):
            if var.lower().startswith("cal="):
                calib = cls._calib_path(var[4:], raw, k, v, calib)
                continue
            var = var.lower()
            m = _RE_VARIANT.fullmatch(var)
            if not m:
                raise TqpatchError(f"unknown variant {var!r} in {raw!r}: {VARIANT_HINT}")
            side, n = m.group(1), int(m.group(2))
            if side in bound:
                raise TqpatchError(f"{side} given twice in {raw!r}: {VARIANT_HINT}")
            if n > MAX_BOUNDARY:
                raise TqpatchError(f"{var} in {raw!r}: at most {MAX_BOUNDARY} boundary layers")
            typ = k if side == "bk" else v
            if n and not is_turbo(typ):
                raise TqpatchError(
                    f"{var} in {raw!r}: boundary layers apply to turbo2/turbo3/turbo4 caches "
                    f"only, and {'K' if side == 'bk' else 'V'} is {typ}")
            bound[side] = n
        return cls(k, v, bound.get("bk", 0), bound.get("bv", 0), calib)

    @staticmethod
    def _calib_path(path: str, raw: str, k: str, v: str, seen: str) -> str:
        if seen:
            raise TqpatchError(f"cal= given twice in {raw!r}: {VARIANT_HINT}")
        if not (is_turbo(k) or is_turbo(v)):
            raise TqpatchError(f"cal= in {raw!r}: a calibration applies to a turbo K or V cache only "
                               f"(llama.cpp ignores it otherwise), and these are {k}/{v}")
        f = Path(path.strip()).expanduser()
        if not path.strip() or not f.is_file():
            raise TqpatchError(f"cal= in {raw!r}: no calibration file {path.strip()!r} "
                               "(make one with `tqpatch calibrate MODEL`)")
        return str(f.resolve())

    @property
    def label(self) -> str:
        cal = f":cal={Path(self.calib).name}" if self.calib else ""
        return f"{self.k}/{self.v}" + boundary_suffix(self.k, self.v, self.bk, self.bv) + cal

    @property
    def has_boundary(self) -> bool:
        return bool(self.bk or self.bv)

    @property
    def pair(self) -> str:
        return f"{self.k}/{self.v}"

    @property
    def has_turbo(self) -> bool:
        return is_turbo(self.k) or is_turbo(self.v)

    def env(self) -> dict[str, str]:
        """Environment of this configuration's run: both boundary switches, explicit,
        for any configuration with a turbo type (none otherwise), and its calibration
        file if it names one (else the environment's LLAMA_TURBO_CALIB, if set, applies)."""
        if not self.has_turbo:
            return {}
        env = {ENV_BOUNDARY_K: str(self.bk), ENV_BOUNDARY_V: str(self.bv)}
        if self.calib:
            env[ENV_CALIB] = self.calib
        return env

    def layer_bpv(self, info, ctx: int, parallel: int = 1, **kw) -> tuple[float, float]:
        """(bpv K, bpv V) over all layers of a tqpatch.plan ModelInfo at this context."""
        return effective_bpv(info, ctx, self.k, self.v, parallel, boundary_k=self.bk,
                             boundary_v=self.bv, **kw)

    def __str__(self) -> str:
        return self.label

    @property
    def bpv_k(self) -> float:
        """Bits per value of the K type (without boundary layers; see layer_bpv)."""
        return formats.type_info(self.k).bits_per_value

    @property
    def bpv_v(self) -> float:
        return formats.type_info(self.v).bits_per_value

    @property
    def avg_bpv(self) -> float:
        return (self.bpv_k + self.bpv_v) / 2

    @property
    def is_baseline(self) -> bool:
        return self.k == BASELINE_TYPE and self.v == BASELINE_TYPE


BASELINE = Config(BASELINE_TYPE, BASELINE_TYPE)


def parse_configs(text: str | Iterable[str]) -> list[Config]:
    """'f16/f16,q8_0/turbo3' (or a list of such strings) -> Configs, duplicates dropped."""
    items = text.split(",") if isinstance(text, str) else [
        part for chunk in text for part in chunk.split(",")]
    items = [i for i in items if i.strip()]
    if not items:
        raise TqpatchError("no configuration given: write K/V pairs separated by commas, "
                           "e.g. --configs f16/f16,q8_0/turbo3")
    out: list[Config] = []
    for item in items:
        cfg = Config.parse(item)
        if cfg not in out:
            out.append(cfg)
    return out

