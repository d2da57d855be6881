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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .. import coherence, formats
from .kv import (DEFAULT_OVERHEAD_MIB, GIB, boundary_env, budget_for_kv, fmt_bytes, is_turbo,
                 kv_bytes, max_ctx, support)
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

@dataclass
class Recommendation:
    type_k: str
    type_v: str
    flags: str
    reasons: list[str]
    alternatives: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def _server_flags(info: ModelInfo, ctx: int, k: str, v: str, parallel: int, unified: bool,
                  boundary_k: int = 0, boundary_v: int = 0) -> str:
    env = boundary_env(k, v, boundary_k, boundary_v)
    flags = "".join(f"{name}={val} " for name, val in env.items())
    flags += f"llama-server -m {info.path} -c {ctx} -ctk {k} -ctv {v} -fa on"
    if parallel > 1:
        flags += f" -np {parallel}" + (" -kvu" if unified else "")
    return flags


def recommend(info: ModelInfo, ctx: int | None = None, parallel: int = 1,
              vram_gib: float | None = None, overhead_mib: float = DEFAULT_OVERHEAD_MIB,
              unified: bool = True, boundary_k: int = 0, boundary_v: int = 0,
              table: dict | None = None) -> Recommendation:
    """A K/V configuration following the policy above, with the flags.

    boundary_k / boundary_v: the boundary layers the user runs with (sizes and
    flags account for them). table: the coherence table (default: the measured one).
    """
    bkw = dict(boundary_k=boundary_k, boundary_v=boundary_v)
    ctx = ctx or info.ctx_train
    wclass = weight_class(info.file_type_name)
    budget = budget_for_kv(info, vram_gib, overhead_mib) if vram_gib is not None else None

    def ok(k, v):
        return support(info, k, v) is None

    def need(k, v):
        return kv_bytes(info, ctx, k, v, parallel, unified=unified, **bkw)

    def fits(k, v):
        return budget is None or need(k, v) <= budget

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
    choice = next((c for c in ladder if fits(*c)), None)
    if choice is None and budget <= 0:
        choice = ladder[0]
        reasons.append(
            f"the weights ({fmt_bytes(info.weight_bytes)}) plus the {overhead_mib:.0f} MiB compute "
            f"allowance already exceed {vram_gib:g} GiB: no KV cache type makes this fit; offload "
            "fewer layers (-ngl) or use smaller weights."
        )
    elif choice is None:
        choice = ladder[-1]
        best = max_ctx(info, *choice, budget, parallel, unified=unified, **bkw)
        reasons.append(
            f"even {choice[0]}/{choice[1]} needs {need(*choice) / GIB:.2f} GiB of KV at -c {ctx}, "
            f"more than the {budget / GIB:.2f} GiB left after weights and compute; "
            + (f"the largest context that fits is -c {best}." if best else
               "not even 256 tokens fit.")
        )
    elif choice != ladder[0]:
        first = ladder[0]
        reasons.append(
            f"{first[0]}/{first[1]} needs {need(*first) / GIB:.2f} GiB of KV at -c {ctx}, more than "
            f"the {budget / GIB:.2f} GiB left: memory is tight, so {choice[0]}/{choice[1]}."
        )
    for c in ladder:
        if c == choice:
            continue
        note = (f"{'smaller' if _bits(c) < _bits(choice) else 'larger'}: "
                f"{_bits(c) / 2:.2f} bits per value on average")
        if c == DEFAULT:
            note += ", the safe default"
        alternatives.append(f"{_server_flags(info, ctx, c[0], c[1], parallel, unified, **bkw)}"
                            f"   # {note}")
    return Recommendation(choice[0], choice[1],
                          _server_flags(info, ctx, choice[0], choice[1], parallel, unified, **bkw),
                          reasons, alternatives)



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
