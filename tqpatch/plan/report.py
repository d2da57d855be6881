"""The plan: one row per K/V configuration (bits, bytes, largest context that
fits, and what `tqpatch serve`'s probe measured on the model where it has),
and the plan as text or JSON."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from .. import coherence, formats
from ..formats import type_info
from .kv import (BOUNDARY_TYPE, DEFAULT_OVERHEAD_MIB, ENV_BOUNDARY_K, ENV_BOUNDARY_V, MIB,
                 boundary_suffix, budget_for_kv, effective_bpv, fmt_bytes, is_turbo, kv_bytes,
                 kv_caches, max_ctx, support)
from .modelinfo import ModelInfo
from .recommend import Probe, Recommendation

# The K/V configurations every plan shows, in this order; then, with the model's
# calibration, the ones `tqpatch serve` probes with it.
CONFIGS: tuple[tuple[str, str], ...] = formats.KV_CONFIGS
CALIBRATED: tuple[tuple[str, str], ...] = formats.PROBE_CONFIGS


@dataclass
class ConfigRow:
    type_k: str
    type_v: str
    bpv_k: float
    bpv_v: float
    supported: bool
    reason: str | None = None
    kv_bytes: int | None = None
    compression: float | None = None      # f16 KV bytes / these KV bytes
    max_ctx: int | None = None            # with --vram: largest -c that fits
    boundary_k: int = 0                   # boundary layers kept at q8_0 (turbo types only)
    boundary_v: int = 0
    coherence: str = "unmeasured"         # the coherence table's verdict for the model family
    incoherent_on: list[str] | None = None  # where it was measured incoherent ("cpu 1/3")
    calibrated: bool = False              # with the model's calibration (--turbo-calib)
    measured: dict | None = None          # the probe's row for it (ProbeRow.to_dict), if any

    @property
    def label(self) -> str:
        return (f"{self.type_k}/{self.type_v}"
                + boundary_suffix(self.type_k, self.type_v, self.boundary_k, self.boundary_v)
                + (" cal" if self.calibrated else ""))  # ProbeRow.label's mark

    @property
    def kv_mib(self) -> float | None:
        return None if self.kv_bytes is None else self.kv_bytes / MIB


def plan_rows(info: ModelInfo, ctx: int, parallel: int = 1, vram_gib: float | None = None,
              overhead_mib: float = DEFAULT_OVERHEAD_MIB, configs=CONFIGS, table: dict | None = None,
              calibrated=(), probe: Probe | None = None, **kw) -> list[ConfigRow]:
    """One row per configuration: (K, V) pairs take the boundary_k / boundary_v of kw,
    (K, V, boundary K, boundary V) their own. table: the coherence table. calibrated:
    (K, V) pairs listed again, after configs, as run with the model's calibration.
    probe: what serve measured (tqpatch.serve.store.cached_probe), attached to the rows it has."""
    f16 = kv_bytes(info, ctx, "f16", "f16", parallel, **kw)
    budget = budget_for_kv(info, vram_gib, overhead_mib) if vram_gib is not None else None
    rows = []
    for config, cal in [(c, False) for c in configs] + [(c, True) for c in calibrated]:
        k, v, bk, bv = config if len(config) == 4 else (
            *config, kw.get("boundary_k", 0), kw.get("boundary_v", 0))
        row_kw = {**kw, "boundary_k": bk, "boundary_v": bv}
        row = ConfigRow(k, v, type_info(k).bits_per_value, type_info(v).bits_per_value, True,
                        boundary_k=bk if is_turbo(k) else 0, boundary_v=bv if is_turbo(v) else 0,
                        calibrated=cal)
        if not cal:  # the coherence table measured the caches without a calibration
            row.coherence = coherence.verdict(info.arch, k, v, table)
            row.incoherent_on = coherence.incoherent_where(info.arch, k, v, table) or None
        # the probe ran without boundary layers: its figures are for rows without them
        measured = probe.row(k, v, cal) if probe and not (row.boundary_k or row.boundary_v) \
            else None
        row.measured = measured.to_dict() if measured else None
        reason = support(info, k, v)
        if reason:
            row.supported, row.reason = False, reason
        else:
            row.bpv_k, row.bpv_v = effective_bpv(info, ctx, k, v, parallel, **row_kw)
            row.kv_bytes = kv_bytes(info, ctx, k, v, parallel, **row_kw)
            row.compression = f16 / row.kv_bytes if row.kv_bytes else None
            if budget is not None:
                row.max_ctx = max_ctx(info, k, v, budget, parallel, **row_kw) if budget > 0 else 0
        rows.append(row)
    return rows


def plan_warnings(info: ModelInfo, ctx: int) -> list[str]:
    """What the user should know about the request itself."""
    if ctx > info.ctx_train:
        return [f"-c {ctx} is beyond the model's trained context of {info.ctx_train} "
                f"({info.arch}.context_length): llama.cpp runs it, but past {info.ctx_train} "
                "tokens the model sees positions it never learned (quality drops unless it "
                "was made for RoPE scaling); max ctx stays at the trained context"]
    return []


def _coherence_cell(row: ConfigRow) -> str:
    if row.coherence == "incoherent":
        return "NO (" + ", ".join(row.incoherent_on or []) + ")"
    return {"coherent": "yes", "unmeasured": "-"}[row.coherence]


NOT_PROBED = "probe with tqpatch serve"


def _measured_cells(row: ConfigRow) -> tuple[str, str]:
    """(KLD, coherent) as serve's probe measured them on the model."""
    m = row.measured
    if m is None:
        return ("ref" if (row.type_k, row.type_v) == coherence.REFERENCE else "-"), "-"
    if m.get("error") or m.get("kld") is None:
        return "failed", "-"
    coh = {True: "yes", False: "NO", None: "-"}[m.get("coherent")]
    return f"{m['kld']:.4f}", (coh + (f" {m['coherence']}" if m.get("coherence") else "")).strip()


# ----------------------------------------------------------------------------
# text and JSON


def describe_model(info: ModelInfo) -> list[str]:
    hk = sorted({h for h in info.n_head_kv})
    hq = sorted(set(info.n_head))
    lines = [f"model: {os.path.basename(info.path)}" + (f" ({info.name})" if info.name else "")]
    layers = f"{info.n_layer} layers"
    if info.uses_swa:
        kind = "chunked-attention" if info.swa_type == "chunked" else "sliding-window"
        layers += (f" ({info.n_swa_layers} {kind} of {info.n_swa} tokens, "
                   f"{info.n_layer - info.n_swa_layers} global)")
    else:
        layers += " (all global)"
    heads = f"heads {'/'.join(map(str, hq))} q, {'/'.join(map(str, hk))} kv"
    hs = f"head size K {info.head_k} V {info.head_v}"
    if info.uses_swa and (info.head_k_swa, info.head_v_swa) != (info.head_k, info.head_v):
        hs += f" (SWA layers K {info.head_k_swa} V {info.head_v_swa})"
    lines.append(f"  arch {info.arch}, {layers}, {heads}, {hs}")
    lines.append(f"  weights {info.file_type_name}, {fmt_bytes(info.weight_bytes)} in "
                 f"{info.n_tensors} tensors; trained context {info.ctx_train}")
    for n in info.notes:
        lines.append(f"  note: {n}")
    return lines


def render_text(info: ModelInfo, ctx: int, rows: list[ConfigRow], rec: Recommendation,
                parallel: int, vram_gib: float | None, overhead_mib: float,
                unified: bool, boundary_k: int = 0, boundary_v: int = 0,
                probe: Probe | None = None) -> str:
    ctx = ctx or info.ctx_train
    out = describe_model(info)
    out += [f"warning: {w}" for w in plan_warnings(info, ctx)]
    caches = kv_caches(info, ctx, "f16", "f16", parallel, unified=unified)
    layout = ", ".join(
        f"{c.kind} layers {c.cells} cells" + (f" x {c.n_stream} streams" if c.n_stream > 1 else "")
        for c in caches
    )
    out.append("")
    out.append(f"KV cache at -c {ctx} -np {parallel} "
               f"({'unified' if unified or parallel == 1 else 'one stream per slot'}, "
               f"flash attention): {layout}")
    if boundary_k or boundary_v:
        out.append(f"boundary layers: the first and last {boundary_k} (K) / {boundary_v} (V) "
                   f"layers of a turbo cache at {BOUNDARY_TYPE} ({ENV_BOUNDARY_K}={boundary_k} "
                   f"{ENV_BOUNDARY_V}={boundary_v}); bpv is the average over all layers")
    w = max([15] + [len(r.label) for r in rows])
    wc = max(len("coherent"), *(len(_coherence_cell(r)) for r in rows))
    cells = {id(r): _measured_cells(r) for r in rows}
    wp = max([len("probe")] + [len(c[1]) for c in cells.values()])
    header = (f"  {'K/V':<{w}} {'K bpv':>6} {'V bpv':>6} {'KV MiB':>10} {'vs f16':>7}"
              f"  {'coherent':<{wc}}")
    if vram_gib is not None:
        header += f"  {'max ctx':>9}{'':7}"
    if probe is not None:
        header += f"  {'KLD':>8}  {'probe':<{wp}}"
    out.append(header.rstrip())
    for i, r in enumerate(rows):
        if r.calibrated and not (i and rows[i - 1].calibrated):  # the calibrated rows' heading
            out.append(f"  with the model's calibration (`tqpatch calibrate`, then "
                       f"llama-server --turbo-calib FILE; the same memory):")
        if not r.supported:
            out.append(f"  {r.label:<{w}} {r.bpv_k:>6.3f} {r.bpv_v:>6.3f}  unsupported: {r.reason}")
            continue
        line = (f"  {r.label:<{w}} {r.bpv_k:>6.3f} {r.bpv_v:>6.3f} {r.kv_mib:>10.2f} "
                f"{r.compression:>6.2f}x  {_coherence_cell(r):<{wc}}")
        if vram_gib is not None:
            mc = r.max_ctx or 0
            line += f"  {mc:>9}" + (" (full)" if mc >= info.ctx_train else "       ")
        if probe is not None:
            kld, coh = cells[id(r)]
            line += f"  {kld:>8}  {coh:<{wp}}"
        elif r.calibrated:
            line += f"  {NOT_PROBED}"
        out.append(line.rstrip())
    out.append(f"  coherent: tqpatch.coherence's check on this model family ({info.arch}) as "
               "measured (yes / NO with the backend and prompts passed / - not measured), "
               "without a calibration")
    if probe is not None:
        fp = probe.fingerprint
        size = f" on {fp['chunks']} x {fp['ctx']} tokens" if {"chunks", "ctx"} <= set(fp) else ""
        out.append(f"  KLD, probe: measured on this model by `tqpatch serve`'s probe on "
                   f"{probe.backend} ({probe.path}): mean KLD against the same build's f16 "
                   f"logits{size}, and the coherence prompts kept; - not probed, ref: the "
                   "reference")
    elif any(r.calibrated for r in rows):
        out.append(f"  cal: needs this model's calibration; its quality is not measured here: "
                   f"`tqpatch serve {info.path}` probes every configuration on this machine "
                   "and plan then shows the figures")
    if vram_gib is not None:
        budget = budget_for_kv(info, vram_gib, overhead_mib)
        out.append(
            f"  max ctx: largest -c (multiple of 256, up to the trained {info.ctx_train}) with "
            f"weights {fmt_bytes(info.weight_bytes)} + KV + {overhead_mib:.0f} MiB compute "
            f"allowance <= {vram_gib:g} GiB ({fmt_bytes(max(budget, 0))} left for KV); "
            "all layers on the GPU"
        )
    out.append("")
    out.append(f"recommendation: -ctk {rec.type_k} -ctv {rec.type_v}"
               + (f" --turbo-calib {rec.calib}" if rec.calibrated else "")
               + (f" (--quality {rec.level}, measured)" if rec.source == "probe" else ""))
    for reason in rec.reasons:
        out.append(f"  - {reason}")
    out.append(f"  {rec.flags}")
    if rec.alternatives:
        out.append("alternatives:")
        for a in rec.alternatives:
            out.append(f"  {a}")
    return "\n".join(out)


def plan_json(info: ModelInfo, ctx: int, rows: list[ConfigRow], rec: Recommendation,
              parallel: int, vram_gib: float | None, overhead_mib: float, unified: bool,
              boundary_k: int = 0, boundary_v: int = 0, probe: Probe | None = None,
              level: str | None = None) -> dict:
    ctx = ctx or info.ctx_train
    caches = kv_caches(info, ctx, "f16", "f16", parallel, unified=unified)
    return {
        "model": info.to_dict(),
        "ctx": ctx,
        "warnings": plan_warnings(info, ctx),
        "parallel": parallel,
        "unified": unified,
        "boundary_k": boundary_k,
        "boundary_v": boundary_v,
        "cells": {c.kind: c.cells for c in caches},
        "n_stream": caches[0].n_stream,
        "vram_gib": vram_gib,
        "overhead_mib": overhead_mib if vram_gib is not None else None,
        "configs": [
            {**asdict(r), "label": r.label, "kv_mib": r.kv_mib} for r in rows
        ],
        "recommendation": rec.to_dict(),
        "quality": level,
        "probe": probe.to_dict() if probe else None,   # serve's cached probe of the model
    }
