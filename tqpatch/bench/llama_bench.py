"""The bench part: llama-bench pp/tg at depth per model and K/V pair; its JSON parsed, ratios, targets."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .. import formats, ui
from .common import log, pair, save, slug, to_float
from .proc import command_line, run_split, tail

# the reported configurations, less the upstream anchor and those below 3 bits per value
# (their speed tells the same story as the 3-bit ones)
BENCH_CONFIGS = tuple(c for c in formats.KV_CONFIGS if formats.ANCHOR_TYPE not in c
                      and all(formats.type_info(t).bits_per_value >= 3 for t in c))
BENCH_DEPTHS = (0, 8192, 32768)
BENCH_PP = 512
BENCH_TG = 128
BENCH_REPS = 5
TARGET_DEPTH = 32768


def parse_llama_bench_json(text: str) -> list[dict]:
    """The test objects of `llama-bench -o json`; complete objects of a truncated run kept.

    llama-bench prints '[' first and each test as it finishes, so a run that
    dies midway leaves a valid prefix: every complete object is returned.
    """
    s = text.strip()
    if not s:
        return []
    try:
        data = json.loads(s)
        return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []
    except ValueError:
        pass
    start = s.find("[")
    if start < 0:
        return []
    dec = json.JSONDecoder()
    i, out = start + 1, []
    while True:
        while i < len(s) and s[i] in " \t\r\n,":
            i += 1
        if i >= len(s) or s[i] != "{":
            break
        try:
            obj, i = dec.raw_decode(s, i)
        except ValueError:
            break
        out.append(obj)
    return out


def bench_test_name(rec: dict) -> str:
    n_prompt, n_gen = rec.get("n_prompt", 0), rec.get("n_gen", 0)
    if n_prompt and n_gen:
        return f"pp{n_prompt}+tg{n_gen}"
    return f"pp{n_prompt}" if n_prompt else f"tg{n_gen}"


def bench_results(records: Iterable[dict]) -> list[dict]:
    """llama-bench's records reduced to what the tables and targets read."""
    out = []
    for r in records:
        out.append({
            "test": bench_test_name(r), "depth": int(r.get("n_depth", 0)),
            "type_k": r.get("type_k"), "type_v": r.get("type_v"),
            "avg_ts": to_float(r.get("avg_ts")), "stddev_ts": to_float(r.get("stddev_ts")),
            "samples_ts": [x for x in (to_float(v) for v in r.get("samples_ts") or []) if x is not None],
            "flash_attn": r.get("flash_attn"), "n_gpu_layers": r.get("n_gpu_layers"),
            "backends": r.get("backends"), "gpu_info": r.get("gpu_info"),
            "model_type": r.get("model_type"),
        })
    return out


def _progress(prefix: str) -> ui.LineCallback:
    """Echo llama-bench's --progress lines ("llama-bench: benchmark i/n: ...") under prefix."""
    def on_line(line: str) -> None:
        if line.startswith("llama-bench: benchmark"):
            log(f"  {prefix} {line[len('llama-bench: '):].rstrip()}")
    return on_line


def bench_command(binary: Path, model: Path, k: str, v: str, depths: Sequence[int], *, pp: int,
                  tg: int, reps: int, ngl: int, threads: int | None,
                  backend_args: Sequence[str] = ()) -> list[str]:
    """One llama-bench run of one K/V pair at every depth (-ctk/-ctv lists would be crossed)."""
    cmd = [str(binary), *backend_args, "-m", str(model), "-p", str(pp), "-n", str(tg),
           "-d", ",".join(str(d) for d in depths), "-ctk", k, "-ctv", v,
           "-fa", "1", "-ngl", str(ngl), "-r", str(reps), "-o", "json", "--progress"]
    if threads:
        cmd += ["-t", str(threads)]
    return cmd


def bench_lookup(runs: Sequence[dict]) -> dict:
    """{(K/V, test, depth): result} over a model's runs."""
    out = {}
    for run in runs:
        for r in run.get("results", []):
            out[(pair(r["type_k"], r["type_v"]), r["test"], r["depth"])] = r
    return out


def bench_targets(role: str, runs: Sequence[dict], pp: int = BENCH_PP, tg: int = BENCH_TG,
                  depths: Sequence[int] = BENCH_DEPTHS) -> list[dict]:
    """The llama-bench targets (issue 13) for a model of this role ('gemma' or 'synth')."""
    look = bench_lookup(runs)
    turbo_cfgs = [pair(*c) for c in BENCH_CONFIGS if any(t in formats.TURBO_TYPES for t in c)]
    specs = []
    if role == "gemma":
        specs.append(("turbo3/turbo3", f"tg{tg}", TARGET_DEPTH, "q8_0/q8_0", 0.95))
        specs.append(("q8_0/turbo3", f"tg{tg}", TARGET_DEPTH, "q8_0/q8_0", 1.0))
        # no turbo configuration below 0.9x q8_0/q8_0 on an empty cache (a per-token cost)
        specs += [(cfg, f"tg{tg}", 0, "q8_0/q8_0", 0.9) for cfg in turbo_cfgs]
    elif role == "synth":
        specs.append(("turbo3/turbo3", f"tg{tg}", TARGET_DEPTH, "f16/f16", 1.0))
        specs.append(("q8_0/turbo4", f"tg{tg}", TARGET_DEPTH, "f16/f16", 1.0))
    if role in ("gemma", "synth"):
        # "pp512 at depth": every depth > 0 that was run (8192 and 32768 by default), every turbo configuration
        for d in [d for d in depths if d > 0] or [TARGET_DEPTH]:
            specs += [(cfg, f"pp{pp}", d, "q8_0/q8_0", 0.95) for cfg in turbo_cfgs]
    out = []
    for cfg, test, depth, base, mn in specs:
        a, b = look.get((cfg, test, depth)), look.get((base, test, depth))
        ratio = (a["avg_ts"] / b["avg_ts"]) if a and b and a["avg_ts"] and b["avg_ts"] else None
        out.append({
            "what": f"{test}@{depth} {cfg} >= {mn:g}x {base}", "config": cfg, "test": test,
            "depth": depth, "baseline": base, "min_ratio": mn, "ratio": ratio,
            "verdict": "n/a" if ratio is None else ("PASS" if ratio >= mn else "MISS"),
        })
    return out


def run_bench(binary: Path, models: Sequence[dict], configs: Sequence[tuple[str, str]], *,
              depths: Sequence[int], pp: int, tg: int, reps: int, ngl: int, threads: int | None,
              backend_args: Sequence[str], timeout: float, out_dir: Path | None,
              checkpoint: Callable[[dict], None] = lambda part: None) -> dict:
    """The bench part: one llama-bench run per model and K/V pair, as the results' "bench" entry."""
    entries: list[dict] = []
    res = {"pp": pp, "tg": tg, "depths": list(depths), "reps": reps, "ngl": ngl, "models": entries}
    total = len(models) * len(configs)
    expected = len(depths) * ((pp > 0) + (tg > 0))
    idx = 0
    t_all = time.time()
    for m in models:
        entry = {"name": m["name"], "path": m["path"], "role": m["role"], "runs": []}
        entries.append(entry)
        for k, v in configs:
            idx += 1
            cmd = bench_command(binary, Path(m["path"]), k, v, depths, pp=pp, tg=tg, reps=reps,
                                ngl=ngl, threads=threads, backend_args=backend_args)
            log(f"[bench {idx}/{total}] {m['name']} {pair(k, v)}: {command_line(cmd)}")
            r = run_split(cmd, timeout, _progress(f"[bench {idx}/{total}]"))
            stem = f"bench_{slug(m['name'])}_{k}_{v}"
            save(out_dir, stem + ".json", r.out)
            save(out_dir, stem + ".stderr.log", r.err)
            results = bench_results(parse_llama_bench_json(r.out))
            run = {"type_k": k, "type_v": v, "command": command_line(cmd), "rc": r.rc,
                   "seconds": round(r.seconds, 1), "results": results, "error": None}
            done = f"{len(results)}/{expected} tests"
            if r.timed_out:
                run["error"] = f"timed out after {timeout:g} s ({done} done)"
            elif r.rc != 0:
                run["error"] = f"exit code {r.rc} ({done} done): {tail(r.err or r.out)}"
            elif len(results) < expected:
                run["error"] = f"only {done} reported: {tail(r.err or r.out)}"
            entry["runs"].append(run)
            state = f"FAILED: {run['error']}" if run["error"] else "done"
            log(f"[bench {idx}/{total}] {state} in {r.seconds:.0f} s (total {time.time() - t_all:.0f} s)")
            entry["targets"] = bench_targets(m["role"], entry["runs"], pp, tg, depths)
            checkpoint(res)
    return res
