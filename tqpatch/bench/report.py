"""The bench's tables (text or Markdown) with PASS / MISS verdicts, and saved results merged (--load)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ..errors import TqpatchError
from .common import pair
from .fa_perf import fa_table, fa_targets
from .llama_bench import bench_lookup

SCHEMA = 1
PARTS = ("fa", "bench", "kv")


def _fmt(x, spec: str, empty: str = "-") -> str:
    return empty if x is None else format(x, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool,
           right: Sequence[bool] | None = None) -> list[str]:
    right = right or [i > 0 for i in range(len(header))]
    if markdown:
        out = ["| " + " | ".join(header) + " |",
               "|" + "|".join("---:" if r else "---" for r in right) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return out
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def fmt(cells):
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()
    return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


def render_fa(fa: dict, md: bool) -> list[str]:
    out = []
    h = "### " if md else ""
    out.append(f"{h}Flash-attention decode (test-backend-ops perf, {fa.get('device_name', '')}"
               f"{', ' + fa['device'] if fa.get('device') else ''})")
    out.append("")
    if fa.get("error"):
        out.append(f"FAILED: {fa['error']}")
        out.append("")
    heads = sorted({c["hsk"] for c in fa.get("cases", [])})
    for head in heads:
        c0 = next(c for c in fa["cases"] if c["hsk"] == head)
        nq = c0["nh"] * (c0["nr23"] or [1, 1])[0]
        out.append(f"head size {head}: kv={c0['kv']}, {c0['nh']} KV heads, {nq} query heads, "
                   f"{c0['nb']} query row; ratios are times (< 1 is faster)")
        out.append("")
        rows = []
        for r in fa_table(fa["cases"], head):
            us = _fmt(r["us"], ".2f") if r["supported"] else "not supported"
            rows.append([r["pair"], us, _fmt(r["gbps"], ".1f"), _fmt(r["vs_f16"], ".3f"),
                         _fmt(r["vs_q8_0"], ".3f"), r["target"] or "", r["verdict"] or ""])
        out += _table(["K/V", "us/run", "KV GB/s", "vs f16/f16", "vs q8_0/q8_0", "target", "PASS/MISS"],
                      rows, md, [False, True, True, True, True, False, False])
        out.append("")
        out.append("targets: " + "; ".join(
            f"{t['what']}: {t['verdict']}" + (f" ({t['ratio']:.3f})" if t["ratio"] is not None else "")
            for t in fa_targets(fa["cases"], head)))
        out.append("")
    return out


def _ratio(r: dict | None, base: dict | None) -> str:
    ts = r["avg_ts"] if r else None
    return _fmt(ts / base["avg_ts"] if ts and base and base["avg_ts"] else None, ".3f")


def render_bench(bench: dict, md: bool) -> list[str]:
    out = []
    h = "### " if md else ""
    for m in bench.get("models", []):
        gpu = next((r.get("gpu_info") or r.get("backends") for run in m["runs"]
                    for r in run.get("results", []) if r.get("gpu_info") or r.get("backends")), "")
        out.append(f"{h}llama-bench: {m['name']} ({gpu}; -fa 1 -ngl {bench.get('ngl')}, "
                   f"-r {bench.get('reps')}; t/s, ratio to q8_0/q8_0 and to f16/f16)")
        out.append("")
        for run in m["runs"]:
            if run.get("error"):
                out.append(f"FAILED {pair(run['type_k'], run['type_v'])}: {run['error']}")
        look = bench_lookup(m["runs"])
        depths = bench.get("depths", [])
        tests = [t for t, n in ((f"pp{bench.get('pp')}", bench.get("pp")),
                                (f"tg{bench.get('tg')}", bench.get("tg"))) if n]
        for test in tests:
            header = ["K/V"]
            for d in depths:
                header += [f"{test}@{d} t/s", "/q8_0", "/f16"]
            rows = []
            for run in m["runs"]:
                label = pair(run["type_k"], run["type_v"])
                cells = [label]
                for d in depths:
                    r = look.get((label, test, d))
                    ts = r["avg_ts"] if r else None
                    sd = r.get("stddev_ts") if r else None
                    cells.append("-" if ts is None else f"{ts:.1f} ± {sd or 0:.1f}")
                    cells.append(_ratio(r, look.get(("q8_0/q8_0", test, d))))
                    cells.append(_ratio(r, look.get(("f16/f16", test, d))))
                rows.append(cells)
            out += _table(header, rows, md)
            out.append("")
        if m.get("targets"):
            out += _table(["target", "ratio", "PASS/MISS"],
                          [[t["what"], _fmt(t["ratio"], ".3f"), t["verdict"]] for t in m["targets"]], md,
                          [False, True, False])
            out.append("")
    return out


def render_kv(kv: dict, md: bool) -> list[str]:
    out = []
    h = "### " if md else ""
    for m in kv.get("models", []):
        out.append(f"{h}KV cache size: {m['name']} at -c {kv.get('ctx')} (llama.cpp's "
                   "llama_kv_cache lines vs tqpatch plan; bpv = bits per value)")
        out.append("")
        rows = []
        for r in m["rows"]:
            if r.get("unsupported"):
                rows.append([r["pair"], f"{r['bpv_k']:.3f} / {r['bpv_v']:.3f}", "-", "-", "-", "-",
                             f"unsupported: {r['unsupported']}"])
                continue
            meas = ("-" if r["meas_bpv_k"] is None else f"{r['meas_bpv_k']:.3f} / {r['meas_bpv_v']:.3f}")
            rep = ("-" if r["rep_mib"] is None else
                   f"{r['rep_mib']:.2f} ({r['rep_k_mib']:.2f} + {r['rep_v_mib']:.2f})")
            pred = f"{r['pred_mib']:.2f} ({r['pred_k_mib']:.2f} + {r['pred_v_mib']:.2f})"
            diff = ("-" if r["rep_mib"] is None else
                    f"{r['rep_mib'] - r['pred_mib'] + 0.0:+.2f}".replace("-0.00", "+0.00"))
            verdict = ("FAILED" if r.get("error") else "yes" if r["match"] else "NO")
            rows.append([r["pair"], f"{r['bpv_k']:.3f} / {r['bpv_v']:.3f}", meas, rep, pred, diff, verdict])
        out += _table(["K/V", "format bpv K / V", "reported bpv K / V", "reported MiB (K + V)",
                       "predicted MiB (K + V)", "diff", "match"], rows, md,
                      [False, True, True, True, True, True, False])
        for e in m.get("errors", []):
            out.append(f"FAILED {e}")
        out.append("")
    return out


def render(results: dict, md: bool = False) -> str:
    """Every part's tables in results, as text (md=False) or Markdown with the commands run."""
    out = []
    meta = results.get("meta", {})
    if md:
        out.append(f"Backend {meta.get('backend')}, host {meta.get('host')}, {meta.get('date')}")
        out.append("")
    if "fa" in results:
        out += render_fa(results["fa"], md)
    if "bench" in results:
        out += render_bench(results["bench"], md)
    if "kv" in results:
        out += render_kv(results["kv"], md)
    if md and meta.get("commands"):
        out += ["Commands:", "", "```", *meta["commands"], "```", ""]
    return "\n".join(out).rstrip() + "\n"


def merge(files: Sequence[Path]) -> dict:
    """Saved result files combined: later files' parts replace earlier ones."""
    merged: dict = {"meta": {"commands": []}}
    for f in files:
        try:
            data = json.loads(Path(f).read_text())
        except (OSError, ValueError) as exc:
            raise TqpatchError(f"cannot read results {f}: {exc}") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise TqpatchError(f"{f} is not a bench results file (schema {SCHEMA})")
        meta = data.get("meta", {})
        cmds = merged["meta"]["commands"] + meta.get("commands", [])
        merged["meta"].update(meta)
        merged["meta"]["commands"] = cmds
        for part in PARTS:
            if part in data:
                merged[part] = data[part]
    merged["schema"] = SCHEMA
    return merged


def failed(results: dict) -> bool:
    """True when some part could not measure (a target MISS is a result, not a failure)."""
    if results.get("fa", {}).get("error"):
        return True
    for m in results.get("bench", {}).get("models", []):
        if any(r.get("error") for r in m["runs"]):
            return True
    return any(m.get("errors") for m in results.get("kv", {}).get("models", []))
