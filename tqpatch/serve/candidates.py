"""The configurations `tqpatch serve` probes on a model: formats.PROBE_CONFIGS with
the calibration, formats.PROBE_UNCALIBRATED without, and the two anchors."""

from __future__ import annotations

from .. import formats
from ..errors import TqpatchError
from ..plan import ModelInfo, support
from ..quality import ProbeRow


def candidates(info: ModelInfo, calibrated: bool = True) -> list[ProbeRow]:
    """Unrun probe rows of every configuration this model's head sizes allow;
    TqpatchError naming the cache types that can serve it when no turbo one can."""
    rows = []
    if calibrated:
        rows += [ProbeRow(k, v, True) for k, v in formats.PROBE_CONFIGS]
    rows += [ProbeRow(k, v, False) for k, v in formats.PROBE_UNCALIBRATED]
    rows = [r for r in rows if support(info, r.k, r.v) is None]
    if not rows:
        heads = "/".join(map(str, sorted(set(info.k_head_sizes()) | set(info.v_head_sizes()))))
        usable = [t for t in formats.UPSTREAM_TYPES if support(info, t, t) is None]
        raise TqpatchError(
            f"{info.path}: no turbo cache type serves head size {heads} (their blocks: "
            + ", ".join(f"{f.name} {f.block}" for f in formats.TURBO_FORMATS.values())
            + f"); cache types that can: {', '.join(usable)} (run llama-server with -ctk/-ctv)")
    for pair in (formats.LOSSLESS_ANCHOR, formats.SMALL_ANCHOR):
        if support(info, *pair) is None:
            rows.append(ProbeRow(*pair, False))
    return rows
