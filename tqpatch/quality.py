"""The quality levels and the rule that turns probe results (`tqpatch serve`'s) into one
configuration; `tqpatch serve` and `tqpatch plan` both decide by it.

Every level is defined against anchors measured in the same probe, on the same
build and text, so that the probe's own noise and the model's sensitivity set
the bar, not numbers from another machine:

  lossless   KLD within q8_0/q8_0's (x LOSSLESS_SLACK, for the probe's noise)
  balanced   KLD at most BALANCED_FRACTION of q4_0/q4_0's: clearly better than
             upstream's 4-bit cache (the default)
  small      KLD no worse than q4_0/q4_0's

and at every level the configuration must stay coherent (tqpatch.coherence:
greedy continuations of its prompts keep their answers). The choice is the
most compressed configuration (fewest bits per value, K and V averaged) that
meets the level; of equal bits, the lower KLD. The anchors themselves are
candidates, so a model no turbo configuration serves well still gets q8_0/q8_0
(or, for `small`, q4_0/q4_0); f16/f16 is the last resort.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from . import formats
from .errors import TqpatchError

LOSSLESS_SLACK = 1.25
BALANCED_FRACTION = 0.5
LEVELS: dict[str, str] = {
    "lossless": f"KLD within q8_0/q8_0's (x{LOSSLESS_SLACK:g}) and coherent",
    "balanced": f"KLD at most {BALANCED_FRACTION:g} x q4_0/q4_0's and coherent",
    "small": "KLD no worse than q4_0/q4_0's and coherent",
}
DEFAULT_LEVEL = "balanced"


@dataclass
class ProbeRow:
    """One configuration's probe result."""

    k: str
    v: str
    calibrated: bool
    kld: float | None = None          # mean KLD against the same build's f16 logits
    ppl: float | None = None
    coherent: bool | None = None      # None: not checked
    coherence: str = ""               # '3/3', '1/3', 'failed'
    error: str | None = None          # the run failed

    @property
    def label(self) -> str:
        return f"{self.k}/{self.v}" + (" cal" if self.calibrated else "")

    @property
    def pair(self) -> tuple[str, str]:
        return (self.k, self.v)

    @property
    def bits(self) -> float:
        """Bits per value, K and V averaged."""
        return (formats.type_info(self.k).bits_per_value
                + formats.type_info(self.v).bits_per_value) / 2

    @property
    def ok(self) -> bool:
        return self.error is None and self.kld is not None and math.isfinite(self.kld)

    @property
    def measured_kld(self) -> float:
        """The KLD of an ok run, else inf (it sorts last and meets no bar)."""
        return self.kld if self.ok and self.kld is not None else math.inf

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ProbeRow":
        fields: dict[str, Any] = {k: d.get(k) for k in ("k", "v", "calibrated", "kld", "ppl",
                                                        "coherent", "coherence", "error")}
        return cls(**fields)


@dataclass(frozen=True)
class Choice:
    row: ProbeRow | None        # None: f16/f16, nothing probed met the level
    level: str
    threshold: float            # the KLD bar of the level, as measured
    reason: str

    @property
    def pair(self) -> tuple[str, str]:
        return self.row.pair if self.row else ("f16", "f16")

    @property
    def calibrated(self) -> bool:
        return bool(self.row and self.row.calibrated)


def anchor(rows: Sequence[ProbeRow], pair: tuple[str, str]) -> ProbeRow | None:
    """The uncalibrated probe row of an anchor pair, if it ran."""
    for r in rows:
        if r.pair == pair and not r.calibrated and r.ok:
            return r
    return None


def threshold(rows: Sequence[ProbeRow], level: str) -> float:
    """The KLD bar of a level, from the anchors in the probe; TqpatchError without them."""
    if level not in LEVELS:
        raise TqpatchError(f"unknown quality level {level!r}: choose from {', '.join(LEVELS)}")
    pair = formats.LOSSLESS_ANCHOR if level == "lossless" else formats.SMALL_ANCHOR
    a = anchor(rows, pair)
    if a is None:
        raise TqpatchError(f"the probe has no {pair[0]}/{pair[1]} result, which the "
                           f"{level!r} level is measured against")
    if level == "lossless":
        return a.measured_kld * LOSSLESS_SLACK
    return a.measured_kld * (BALANCED_FRACTION if level == "balanced" else 1.0)


def loosest_bar(rows: Sequence[ProbeRow]) -> float | None:
    """The highest KLD any level accepts (None without the anchors): a row above it
    cannot be chosen, whatever its coherence."""
    bars = []
    for level in LEVELS:
        try:
            bars.append(threshold(rows, level))
        except TqpatchError:
            pass
    return max(bars) if bars else None


def meets(row: ProbeRow, bar: float) -> bool:
    return row.ok and row.measured_kld <= bar and row.coherent is True


def order(rows: Sequence[ProbeRow]) -> list[ProbeRow]:
    """Most compressed first; of equal bits, lower KLD first (failed runs last)."""
    return sorted(rows, key=lambda r: (r.bits, r.measured_kld))


def choose(rows: Sequence[ProbeRow], level: str = DEFAULT_LEVEL) -> Choice:
    """The most compressed row that meets the level (see the module doc)."""
    bar = threshold(rows, level)
    for r in order(rows):
        if meets(r, bar):
            better = [o for o in order(rows) if o.bits < r.bits]
            why = f"the most compressed configuration with {LEVELS[level]} (KLD <= {bar:.4f})"
            if better:  # the closest smaller size, its best run (calibrated or not)
                top = max(o.bits for o in better)
                near = min((o for o in better if o.bits == top), key=lambda o: o.measured_kld)
                why += (f"; {near.label} ({near.bits:.2f} bits) is smaller but "
                        + _fails(near, bar))
            return Choice(r, level, bar, why)
    return Choice(None, level, bar, f"no probed configuration has {LEVELS[level]}: f16/f16")


def _fails(row: ProbeRow, bar: float) -> str:
    if not row.ok:
        return f"failed ({row.error or 'no KLD'})"
    if row.measured_kld > bar:
        return f"its KLD {row.measured_kld:.4f} is over the bar"
    return f"it is not coherent ({row.coherence or 'unchecked'})"
