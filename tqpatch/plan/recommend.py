"""The recommended K/V configuration for a model, with the llama-server flags."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .kv import (DEFAULT_OVERHEAD_MIB, GIB, boundary_env, budget_for_kv, fmt_bytes, kv_bytes,
                 max_ctx, support)
from .modelinfo import ModelInfo, weight_class

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
              unified: bool = True, boundary_k: int = 0, boundary_v: int = 0) -> Recommendation:
    """A K/V configuration following the asymmetric K/V findings, with the flags.

    boundary_k / boundary_v: the boundary layers the user runs with (sizes and
    flags account for them).
    """
    bkw = dict(boundary_k=boundary_k, boundary_v=boundary_v)
    ctx = ctx or info.ctx_train
    wclass = weight_class(info.file_type_name)
    budget = budget_for_kv(info, vram_gib, overhead_mib) if vram_gib is not None else None
    qwen = info.arch.startswith("qwen")

    def ok(k, v):
        return support(info, k, v) is None

    def need(k, v):
        return kv_bytes(info, ctx, k, v, parallel, unified=unified, **bkw)

    def fits(k, v):
        return budget is None or need(k, v) <= budget

    reasons = ["K precision dominates attention quality (softmax amplifies K error "
               "exponentially, V error only linearly): keep K at q8_0, compress V."]
    alternatives: list[str] = []

    if not ok("q8_0", "turbo4"):
        heads = "/".join(map(str, sorted(info.v_head_sizes())))
        reasons.append(
            f"head size {heads} is not a multiple of 64 (turbo4) or 128 (turbo3, turbo2): "
            "the turbo types cannot serve this model; upstream types that work are listed."
        )
        ladder = [c for c in (("q8_0", "q8_0"), ("q8_0", "q4_0"), ("f16", "f16")) if ok(*c)]
    else:
        if wclass == "high" and not qwen:
            ladder = [("q8_0", "turbo4"), ("q8_0", "turbo3"), ("turbo4", "turbo4"), ("turbo3", "turbo3")]
        else:
            ladder = [("q8_0", "turbo4"), ("q8_0", "turbo3"), ("q8_0", "turbo2")]
        ladder = [c for c in ladder if ok(*c)]
        if not ok("q8_0", "turbo3"):
            reasons.append(
                f"V head size {'/'.join(map(str, sorted(info.v_head_sizes())))} is not a multiple "
                "of 128: turbo3 and turbo2 cannot serve it, turbo4 (block 64) can."
            )
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
                "turbo4/turbo4 probably works at this weight precision, but validate PPL first "
                "(tqpatch eval)."
            )
        else:
            reasons.append(
                f"weights are {info.file_type_name}: symmetric turbo4/turbo4 also works at this "
                "weight precision (phi-4 Q8_0: +1.7% PPL) and saves more memory."
            )
        if qwen:
            reasons.append(
                "Qwen family: symmetric turbo K is catastrophic on Qwen2.5 and Qwen3 at Q4_K_M; "
                "use an asymmetric configuration only."
            )

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
        note = {
            ("q8_0", "turbo3"): "if memory is tight (+1-2% PPL)",
            ("q8_0", "turbo2"): "maximum V compression (+3-10% PPL)",
            ("q8_0", "turbo4"): "safest turbo configuration",
            ("turbo4", "turbo4"): "symmetric, Q8_0+ weights only",
            ("turbo3", "turbo3"): "symmetric, most compression; validate PPL first",
            ("q8_0", "q4_0"): "more V compression, upstream type",
            ("q8_0", "q8_0"): "upstream baseline",
            ("f16", "f16"): "uncompressed",
        }.get(c, "")
        alternatives.append(
            f"{_server_flags(info, ctx, c[0], c[1], parallel, unified, **bkw)}   # {note}".rstrip(" #")
        )
    return Recommendation(choice[0], choice[1],
                          _server_flags(info, ctx, choice[0], choice[1], parallel, unified, **bkw),
                          reasons, alternatives)

