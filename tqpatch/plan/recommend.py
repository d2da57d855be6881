"""The recommended K/V configuration for a model, with the llama-server flags.

Policy, in order:
  1. K precision dominates attention quality (softmax amplifies K error
     exponentially, V error only linearly): K stays at SAFE_K (q8_0) and V takes
     a turbo type, the most bits first (DEFAULT, q8_0/turbo4, is what the
     README and `tqpatch --help` say); smaller V types when memory is tight.
  2. Symmetric turbo K/V only for Q8_0-or-better weights, and only where the
     coherence table (tqpatch.coherence) measured it coherent for the model's
     family.
  3. Never a configuration the coherence table shows incoherent for the
     family on any backend; for a family it has not measured, only SAFE_K
     configurations.

That policy holds while nothing was measured on the model itself. Where
`tqpatch serve` has cached a probe of this model (KLD against f16 and the
coherence prompts, calibrated and not, on this machine), the recommendation
is serve's own: the most compressed configuration that meets the quality
level (tqpatch.quality) and fits the memory, with the calibration it was
measured with (tqpatch.serve.store.cached_probe, recommend(probe=...)).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import coherence, formats, quality
from ..errors import TqpatchError
from .kv import (
    DEFAULT_OVERHEAD_MIB,
    GIB,
    boundary_env,
    budget_for_kv,
    fmt_bytes,
    is_turbo,
    kv_bytes,
    max_ctx,
    support,
)
from .modelinfo import ModelInfo, weight_class

SAFE_K = "q8_0"


def _bits(config: tuple[str, str]) -> float:
    return sum(formats.type_info(t).bits_per_value for t in config)


# q8_0 K with each turbo V, most bits first (formats.KV_CONFIGS order)
ASYMMETRIC = tuple(c for c in formats.KV_CONFIGS if c[0] == SAFE_K and is_turbo(c[1]))
SYMMETRIC = tuple(c for c in formats.KV_CONFIGS if is_turbo(c[0]) and c[0] == c[1])
# for heads no turbo block divides: upstream types only
UPSTREAM_LADDER = ((SAFE_K, SAFE_K), (SAFE_K, formats.ANCHOR_TYPE), coherence.REFERENCE)
DEFAULT = ASYMMETRIC[0]

# what a user does when plan has nothing measured on the model
PROBE_HINT = ("calibrated turbo K/V may be smaller at the same quality: `tqpatch serve {model}` "
              "measures it on this machine (a calibration and a short probe), and plan then "
              "recommends from those measurements.")


@dataclass
class Recommendation:
    type_k: str
    type_v: str
    flags: str
    reasons: list[str]
    alternatives: list[str]
    source: str = "policy"        # "policy" (module doc) or "probe" (serve's measurements)
    level: str | None = None      # the quality level a probe-based pick meets
    calibrated: bool = False      # the pick needs the model's calibration (--turbo-calib)
    calib: str | None = None      # that calibration file
    kld: float | None = None      # the pick's probe KLD

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Probe:
    """A probe `tqpatch serve` cached for this model (tqpatch.serve.store)."""

    path: str
    backend: str
    rows: list                    # tqpatch.quality.ProbeRow
    calib: str | None             # calib.gguf beside it, for a probe run with the calibration
    fingerprint: dict = field(default_factory=dict)

    @property
    def calib_exists(self) -> bool:
        return bool(self.calib and Path(self.calib).is_file())

    def row(self, k: str, v: str, calibrated: bool):
        return next((r for r in self.rows if r.pair == (k, v) and bool(r.calibrated) == calibrated),
                    None)

    def to_dict(self) -> dict:
        return {"path": self.path, "backend": self.backend, "calib": self.calib,
                "calib_exists": self.calib_exists, "fingerprint": self.fingerprint,
                "rows": [r.to_dict() for r in self.rows]}


def _server_flags(info: ModelInfo, ctx: int, k: str, v: str, parallel: int, unified: bool,
                  boundary_k: int = 0, boundary_v: int = 0, calib: str | None = None) -> str:
    env = boundary_env(k, v, boundary_k, boundary_v)
    flags = "".join(f"{name}={val} " for name, val in env.items())
    flags += f"llama-server -m {info.path} -c {ctx} -ctk {k} -ctv {v} -fa on"
    if calib:
        flags += f" --turbo-calib {calib}"
    if parallel > 1:
        flags += f" -np {parallel}" + (" -kvu" if unified else "")
    return flags


class _Memory:
    """The KV cache sizes of one request and the budget (--vram) they must fit."""

    def __init__(self, info: ModelInfo, ctx: int, parallel: int, vram_gib: float | None,
                 overhead_mib: float, unified: bool, bkw: dict):
        self.info, self.ctx, self.parallel, self.unified, self.bkw = info, ctx, parallel, unified, bkw
        self.vram_gib, self.overhead_mib = vram_gib, overhead_mib
        self.budget = budget_for_kv(info, vram_gib, overhead_mib) if vram_gib is not None else None

    def need(self, k: str, v: str) -> int:
        return kv_bytes(self.info, self.ctx, k, v, self.parallel, unified=self.unified, **self.bkw)

    def fits(self, k: str, v: str) -> bool:
        return self.budget is None or self.need(k, v) <= self.budget

    def flags(self, k: str, v: str, calib: str | None = None) -> str:
        return _server_flags(self.info, self.ctx, k, v, self.parallel, self.unified,
                             calib=calib, **self.bkw)

    def pick(self, ladder: list[tuple[str, str]]) -> tuple[tuple[str, str], list[str]]:
        """The first of ladder (in order of preference) that fits, and what memory did
        to the choice; the smallest, with the context that fits, when none does."""
        need, budget, ctx = self.need, self.budget, self.ctx
        if budget is None:  # no --vram: the first fits
            return ladder[0], []
        choice = next((c for c in ladder if self.fits(*c)), None)
        if choice is None and budget <= 0:
            return ladder[0], [
                f"the weights ({fmt_bytes(self.info.weight_bytes)}) plus the "
                f"{self.overhead_mib:.0f} MiB compute allowance already exceed "
                f"{self.vram_gib:g} GiB: no KV cache type makes this fit; offload fewer layers "
                "(-ngl) or use smaller weights."]
        if choice is None:
            choice = min(ladder, key=lambda c: need(*c))
            best = max_ctx(self.info, *choice, budget, self.parallel, unified=self.unified,
                           **self.bkw)
            return choice, [
                f"even {choice[0]}/{choice[1]} needs {need(*choice) / GIB:.2f} GiB of KV at "
                f"-c {ctx}, more than the {budget / GIB:.2f} GiB left after weights and compute; "
                + (f"the largest context that fits is -c {best}." if best else
                   "not even 256 tokens fit.")]
        if choice != ladder[0]:
            first = ladder[0]
            return choice, [
                f"{first[0]}/{first[1]} needs {need(*first) / GIB:.2f} GiB of KV at -c {ctx}, "
                f"more than the {budget / GIB:.2f} GiB left: memory is tight, so "
                f"{choice[0]}/{choice[1]}."]
        return choice, []


def recommend(info: ModelInfo, ctx: int | None = None, parallel: int = 1,
              vram_gib: float | None = None, overhead_mib: float = DEFAULT_OVERHEAD_MIB,
              unified: bool = True, boundary_k: int = 0, boundary_v: int = 0,
              table: dict | None = None, probe: Probe | None = None,
              level: str | None = None) -> Recommendation:
    """A K/V configuration with the flags: from `probe` (tqpatch.serve.store.cached_probe) at quality `level`
    (default: serve's) where it has one, else following the policy above.

    boundary_k / boundary_v: the boundary layers the user runs with (sizes and
    flags account for them). table: the coherence table (default: the measured one).
    """
    mem = _Memory(info, ctx or info.ctx_train, parallel, vram_gib, overhead_mib, unified,
                  dict(boundary_k=boundary_k, boundary_v=boundary_v))
    unusable = None
    if probe is not None:
        try:
            return _from_probe(mem, probe, level or quality.DEFAULT_LEVEL)
        except TqpatchError as exc:  # the probe lacks the level's anchor
            unusable = f"the cached probe {probe.path} cannot rank configurations: {exc.message}"
    rec = _from_policy(mem, table)
    if unusable:
        rec.reasons.append(unusable)
    if any(support(info, *c) is None for c in ASYMMETRIC):
        rec.reasons.append(PROBE_HINT.format(model=info.path))
    return rec


def _from_probe(mem: _Memory, probe: Probe, level: str) -> Recommendation:
    """serve's rule (tqpatch.quality) on the probe's rows, memory permitting: the most
    compressed that meets the level and fits."""
    choice = quality.choose(probe.rows, level)
    meeting = [r for r in quality.order(probe.rows)
               if quality.meets(r, choice.threshold) and support(mem.info, r.k, r.v) is None]
    if not meeting:  # choose's own last resort
        meeting = [quality.ProbeRow("f16", "f16", False, kld=0.0)]
    pair, mem_reasons = mem.pick([r.pair for r in meeting])
    pick = next(r for r in meeting if r.pair == pair)  # of a pair, the order's first (cal first)
    reasons = [f"measured on this model by `tqpatch serve`'s probe on {probe.backend} "
               f"({probe.path}): KLD against f16 and the coherence prompts.",
               f"--quality {level}: {choice.reason}."]
    reasons += mem_reasons
    calib = None
    if pick.calibrated:
        calib = probe.calib
        reasons.append(f"{pick.label} needs the calibration it was measured with: "
                       f"--turbo-calib {calib}"
                       + ("" if probe.calib_exists else
                          f" (missing now: `tqpatch serve {mem.info.path}` makes it again, "
                          f"or `tqpatch calibrate {mem.info.path} -o {calib}`)") + ".")
    alternatives = []
    seen = {(pick.pair, pick.calibrated)}
    for other in quality.LEVELS:  # what the other levels would pick
        c = quality.choose(probe.rows, other)
        key = (c.pair, c.calibrated)
        if other == level or key in seen:
            continue
        seen.add(key)
        what = (f"KLD {c.row.kld:.4f}, {c.row.bits:.2f} bits per value" if c.row
                else "nothing probed meets it")
        alternatives.append(f"{mem.flags(*c.pair, probe.calib if c.calibrated else None)}"
                            f"   # --quality {other}: {what}")
    return Recommendation(pick.k, pick.v, mem.flags(pick.k, pick.v, calib), reasons, alternatives,
                          source="probe", level=level, calibrated=pick.calibrated, calib=calib,
                          kld=pick.kld)


def _from_policy(mem: _Memory, table: dict | None) -> Recommendation:
    info = mem.info
    wclass = weight_class(info.file_type_name)

    def ok(k, v):
        return support(info, k, v) is None

    reasons = [f"K precision dominates attention quality (softmax amplifies K error "
               f"exponentially, V error only linearly): keep K at {SAFE_K}, compress V."]
    alternatives: list[str] = []

    if not any(ok(*c) for c in ASYMMETRIC):
        heads = "/".join(map(str, sorted(info.v_head_sizes())))
        blocks = ", ".join(f"{f.name} {f.block}" for f in formats.TURBO_FORMATS.values())
        reasons.append(
            f"head size {heads} is not a multiple of any turbo block ({blocks}): "
            "the turbo types cannot serve this model; upstream types that work are listed."
        )
        ladder = [c for c in UPSTREAM_LADDER if ok(*c)]
    else:
        ladder = list(ASYMMETRIC) + (list(SYMMETRIC) if wclass == "high" else [])
        unserved = [c for c in ladder if not ok(*c)]
        ladder = sorted((c for c in ladder if ok(*c)), key=_bits, reverse=True)
        if unserved:
            reasons.append("not for this model's head sizes: "
                           + "; ".join(f"{k}/{v} ({support(info, k, v)})" for k, v in unserved))
        if wclass in ("low", "unknown"):
            what = info.file_type_name if wclass == "low" else f"of unknown precision ({info.file_type_name})"
            reasons.append(
                f"weights are {what}: symmetric turbo K stacks on weight quantization error "
                "and is catastrophic on some families (Qwen2.5-7B Q4_K_M turbo3/turbo3: PPL 3556); "
                "asymmetric q8_0/turbo4 is +0.3-1.3% PPL on every model measured."
            )
        elif wclass == "mid":
            reasons.append(
                f"weights are {info.file_type_name}: asymmetric is the safe default; symmetric "
                "turbo K is not offered below Q8_0 weights (validate it with tqpatch eval)."
            )
        else:
            reasons.append(
                f"weights are {info.file_type_name}: symmetric turbo K/V is offered where the "
                "coherence table measured it coherent for this family (phi-4 Q8_0 "
                "turbo4/turbo4: +1.7% PPL)."
            )
    ladder, dropped = coherent_ladder(info.arch, ladder, table)
    reasons += dropped
    if not ladder:  # nothing quantized serves it; f16 always does
        ladder = [("f16", "f16")]
    choice, mem_reasons = mem.pick(ladder)
    reasons += mem_reasons
    for c in ladder:
        if c == choice:
            continue
        note = (f"{'smaller' if _bits(c) < _bits(choice) else 'larger'}: "
                f"{_bits(c) / 2:.2f} bits per value on average")
        if c == DEFAULT:
            note += ", the safe default"
        alternatives.append(f"{mem.flags(*c)}   # {note}")
    return Recommendation(choice[0], choice[1], mem.flags(*choice), reasons, alternatives)


def coherent_ladder(family: str, ladder: list[tuple[str, str]], table: dict | None = None
                    ) -> tuple[list[tuple[str, str]], list[str]]:
    """The ladder without what the coherence table rules out, and why each was dropped.

    Out: every configuration measured incoherent for the family on any backend;
    for a family (or a configuration) not measured, every one whose K is not
    SAFE_K or f16 (the reference).
    """
    keep, why = [], []
    measured = bool(coherence.measurements(family, table))
    for k, v in ladder:
        verdict = coherence.verdict(family, k, v, table)
        if verdict == "incoherent":
            where = ", ".join(coherence.incoherent_where(family, k, v, table))
            why.append(f"not {k}/{v}: greedy continuations go incoherent on {family} "
                       f"(coherent prompts: {where}; tqpatch.coherence)")
        elif verdict == "unmeasured" and k not in (SAFE_K, coherence.REFERENCE[0]):
            why.append(f"not {k}/{v}: its coherence is not measured for {family}"
                       + ("" if measured else " (no coherence measurement for this family: "
                          f"only {SAFE_K} K is recommended)"))
        else:
            keep.append((k, v))
    return keep, why
