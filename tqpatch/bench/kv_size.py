"""The kv part: the KV-cache size llama.cpp reports (llama-cli -lv 4) against tqpatch.plan's prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from .. import formats, plan
from .common import log, pair, save, slug
from .proc import command_line, run_tool, tail

KV_CTX = 32768


def kv_command(binary: Path, model: Path, ctx: int, k: str, v: str, ngl: int,
               threads: int | None, backend_args: Sequence[str] = ()) -> list[str]:
    # the backend's own tool arguments first: the explicit -ngl below wins over theirs
    cmd = [str(binary), *backend_args, "-m", str(model), "-c", str(ctx), "-ctk", k, "-ctv", v, "-fa", "on",
           "-ngl", str(ngl), "-fit", "off", "-n", "1", "-p", "Hello", "-st", "--no-warmup",
           "-lv", "4"]
    if threads:
        cmd += ["-t", str(threads)]
    return cmd


def kv_row(info, ctx: int, k: str, v: str, reported: Sequence[dict] | None) -> dict:
    """Reported (llama.cpp) vs predicted (tqpatch.plan) KV size and bits per value of one pair."""
    MIB = plan.MIB
    row = {"pair": pair(k, v), "type_k": k, "type_v": v,
           "bpv_k": formats.type_info(k).bits_per_value, "bpv_v": formats.type_info(v).bits_per_value,
           "pred_k_mib": None, "pred_v_mib": None, "pred_mib": None,
           "rep_k_mib": None, "rep_v_mib": None, "rep_mib": None,
           "meas_bpv_k": None, "meas_bpv_v": None, "match": None, "caches": None,
           "unsupported": plan.support(info, k, v)}
    if row["unsupported"]:
        return row
    caches = plan.kv_caches(info, ctx, k, v)
    f16 = plan.kv_caches(info, ctx, "f16", "f16")
    pred_k, pred_v = sum(c.k_bytes for c in caches) / MIB, sum(c.v_bytes for c in caches) / MIB
    row.update(pred_k_mib=pred_k, pred_v_mib=pred_v, pred_mib=pred_k + pred_v)
    if reported is None:
        return row
    # the last len(caches) size lines belong to this context (Gemma 3: global, then SWA)
    got = list(reported)[-len(caches):] if len(reported) >= len(caches) else list(reported)
    rep_k, rep_v = sum(g["k_mib"] for g in got), sum(g["v_mib"] for g in got)
    row.update(caches=got, rep_k_mib=rep_k, rep_v_mib=rep_v, rep_mib=sum(g["size_mib"] for g in got))
    k16 = sum(c.k_bytes for c in f16) / MIB
    v16 = sum(c.v_bytes for c in f16) / MIB
    row["meas_bpv_k"] = 16.0 * rep_k / k16 if k16 else None
    row["meas_bpv_v"] = 16.0 * rep_v / v16 if v16 else None
    # llama.cpp prints MiB with 2 decimals: allow half a unit per printed number
    ok = len(got) == len(caches)
    for g, c in zip(got, caches):
        ok &= (g["type_k"], g["type_v"], g["cells"], g["layers"]) == (k, v, c.cells, c.layers)
        ok &= abs(g["k_mib"] - c.k_bytes / MIB) <= 0.0051 and abs(g["v_mib"] - c.v_bytes / MIB) <= 0.0051
    row["match"] = bool(ok)
    return row


def run_kv(binary: Path, models: Sequence[dict], configs: Sequence[tuple[str, str]], *, ctx: int,
           ngl: int, threads: int | None, backend_args: Sequence[str], timeout: float,
           out_dir: Path | None, checkpoint: Callable[[dict], None] = lambda part: None) -> dict:
    """The kv part: one llama-cli run per model and supported K/V pair, as the results' "kv" entry."""
    entries: list[dict] = []
    res = {"ctx": ctx, "ngl": ngl, "models": entries}
    total = len(models) * len(configs)
    idx = 0
    for m in models:
        info = plan.read_model(m["path"])
        entry = {"name": m["name"], "path": m["path"], "role": m["role"], "rows": [], "errors": []}
        entries.append(entry)
        for k, v in configs:
            idx += 1
            unsupported = plan.support(info, k, v)
            if unsupported:
                entry["rows"].append(kv_row(info, ctx, k, v, None))
                log(f"[kv {idx}/{total}] {m['name']} {pair(k, v)}: skipped ({unsupported})")
                continue
            cmd = kv_command(binary, Path(m["path"]), ctx, k, v, ngl, threads, backend_args)
            log(f"[kv {idx}/{total}] {m['name']} {pair(k, v)}: {command_line(cmd)}")
            r = run_tool(cmd, timeout)
            save(out_dir, f"kv_{slug(m['name'])}_{k}_{v}.log", r.out)
            reported = plan.parse_kv_sizes(r.out)
            row = kv_row(info, ctx, k, v, reported if reported else None)
            if r.timed_out or r.rc != 0 or not reported:
                why = (f"timed out after {timeout:g} s" if r.timed_out else
                       f"exit code {r.rc}" if r.rc != 0 else "no llama_kv_cache size line in the log")
                row["error"] = f"{why}: {tail(r.out)}"
                entry["errors"].append(f"{pair(k, v)}: {row['error']}")
                log(f"[kv {idx}/{total}] FAILED: {why}")
            entry["rows"].append(row)
            checkpoint(res)
    return res
