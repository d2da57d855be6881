#!/usr/bin/env python3
"""Speed and size of the turbo KV-cache types on a built llama.cpp: three parts, tables.

    python3 benchmarks/bench_kv.py --backend cuda --synth --out OUT \
        --json OUT/bench.json --markdown OUT/bench.md

Parts (``--parts fa,bench,kv``, default all three):

  fa     flash-attention decode microbenchmark: ``test-backend-ops perf -o
         FLASH_ATTN_EXT`` restricted (``-p`` regex over the case parameters)
         to the decode cases the patch adds (tqpatch_turbo_perf_cases in
         templates/tests/test-backend-ops-turbo.inc.j2: 8 KV heads x 4 query
         heads each, kv=16384, one query row, head sizes 128 and 256, every
         K/V pair of f16, q8_0, turbo2, turbo3, turbo4). One invocation, so
         every ratio compares cases of the same run. Time per run (us) and the
         K+V bytes the case reads per second (GB/s).
  bench  llama-bench pp512 and tg128 at depths 0, 8192, 32768 with -fa 1
         -ngl 99 for f16/f16, q8_0/q8_0, q8_0/turbo4, q8_0/turbo3,
         turbo4/turbo4, turbo3/turbo3, one invocation per model and K/V pair
         (-ctk/-ctv lists would be crossed), -o json.
  kv     KV-cache size llama.cpp reports (its ``llama_kv_cache: size = ...``
         lines, from llama-cli -lv 4) for each configuration of ``tqpatch
         plan``, against tqpatch.plan's prediction and the formats' bits per
         value.

Models: --model M.gguf (repeatable; default the Gemma 3 270M test model) and
--synth, a random-weight GGUF with the attention of a mainstream 8B model
(tqpatch.synth, the code behind `tqpatch synth-model`), written once into
the tqpatch models folder. Tables go to stdout, progress to stderr; --json and
--markdown write the results; --load re-renders saved JSON files (several
merge: e.g. one file per part) without running anything.

Targets (issue 13, decode speed) are marked PASS / MISS; a target whose numbers were not
measured (part, type, depth or model not run) shows "n/a".
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(_REPO))

from tqpatch import formats  # noqa: E402
from tqpatch.errors import TqpatchError  # noqa: E402

SCHEMA = 1
PARTS = ("fa", "bench", "kv")

# --- part 1: flash-attention decode microbenchmark -------------------------
FA_TYPES = formats.CACHE_TYPES
FA_HEAD_SIZES = (128, 256)
FA_KV = 16384          # the perf cases' KV length (the template fixes it)
FA_NH = 8              # KV heads; nr23=[4,1]: 4 query heads per KV head
FA_NR = (4, 1)
FA_NB = 1              # one query row: decode
# (K, V, baseline K/V, max time ratio): the decode targets (issue 13; q8_0/turbo4 from issue 4)
FA_TARGETS = (
    ("turbo3", "turbo3", ("f16", "f16"), 0.5),
    ("turbo4", "turbo4", ("f16", "f16"), 0.5),
    ("q8_0", "turbo3", ("q8_0", "q8_0"), 0.8),
    ("q8_0", "turbo4", ("q8_0", "q8_0"), 1.0),
)
# test-backend-ops device name of each backend's first device
DEVICE_NAMES = {"cuda": "CUDA0", "hip": "ROCm0", "vulkan": "Vulkan0", "metal": "MTL0", "cpu": "CPU"}

# --- part 2: llama-bench ----------------------------------------------------
# the reported configurations, less the upstream anchor and those below 3 bits per value
# (their speed tells the same story as the 3-bit ones)
BENCH_CONFIGS = tuple(c for c in formats.KV_CONFIGS if formats.ANCHOR_TYPE not in c
                      and all(formats.type_info(t).bits_per_value >= 3 for t in c))
BENCH_DEPTHS = (0, 8192, 32768)
BENCH_PP = 512
BENCH_TG = 128
BENCH_REPS = 5
TARGET_DEPTH = 32768

# The synthetic model: the attention of a mainstream 8B model (32 query heads,
# 8 KV heads of 128, n_embd 4096, every layer global) with 8 layers, a
# 1024-wide feed-forward, a 512-token vocabulary and q8_0 weights: 58 MB of
# weights per layer against 128 MiB of f16 K+V per layer at depth 32768, so KV
# bandwidth dominates decode at depth (70% of the bytes a token reads with an
# f16 cache); 446 MiB in all, written in ~10 s with NumPy, loaded in < 1 s.
SYNTH_SHAPE = dict(layers=8, n_embd=4096, n_head=32, n_head_kv=8, head_dim=128,
                   ff=1024, vocab=512, ctx_train=65536)
SYNTH_WTYPE = "q8_0"
SYNTH_SEED = 0
SYNTH_FILENAME = "synth-llama-8l-32q-8kv-hd128-q8_0.gguf"

# --- part 3: KV cache size --------------------------------------------------
KV_CTX = 32768

DEFAULT_TIMEOUT = 300  # seconds per subprocess (one llama-bench invocation takes < 1 min on an H100)
TAIL_LINES = 12

# Patch 0010 (boundary layers) reads these; every run sets them to 0 so the
# caller's environment cannot change what a K/V label means.
BOUNDARY_ENV = {"LLAMA_TURBO_BOUNDARY_K": "0", "LLAMA_TURBO_BOUNDARY_V": "0"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pair(k: str, v: str) -> str:
    return f"{k}/{v}"


def parse_config_list(text: str) -> list[tuple[str, str]]:
    out = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        k, sep, v = item.partition("/")
        if not sep or not k or not v:
            raise TqpatchError(f"malformed K/V pair {item!r}: write K/V, e.g. q8_0/turbo3")
        for t in (k, v):
            formats.type_info(t)  # TqpatchError naming the known types
        out.append((k, v))
    if not out:
        raise TqpatchError("no K/V pair given")
    return out


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TqpatchError(f"{what} must be comma-separated whole numbers (got {text!r})") from None
    if not vals or any(v < 0 for v in vals):
        raise TqpatchError(f"{what} must be comma-separated whole numbers >= 0 (got {text!r})")
    return vals


# ============================================================================
# part 1: test-backend-ops perf


def fa_filter(head_sizes: Sequence[int] = FA_HEAD_SIZES, types: Sequence[str] = FA_TYPES,
              kv: int = FA_KV) -> str:
    """The -p regex (std::regex_search over the case's vars()) selecting the decode cases.

    vars() of test_flash_attn_ext at the pin reads
    'hsk=128,hsv=128,nh=8,nr23=[4,1],kv=16384,nb=1,mask=1,...,type_K=f16,type_V=f16,...'.
    """
    hs = "|".join(str(h) for h in head_sizes)
    ts = "|".join(re.escape(t) for t in types)
    return (rf"^hsk=({hs}),hsv=({hs}),nh={FA_NH},nr23=\[{FA_NR[0]},{FA_NR[1]}\],kv={kv},"
            rf"nb={FA_NB},mask=1,sinks=0,.*,type_K=({ts}),type_V=({ts}),")


def parse_op_params(text: str) -> dict[str, str]:
    """'a=1,b=[4,1],c=f16' -> {'a': '1', 'b': '[4,1]', 'c': 'f16'} (commas inside [] kept)."""
    out, depth, cur = {}, 0, ""
    for ch in text + ",":
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            if "=" in cur:
                key, _, val = cur.partition("=")
                out[key.strip()] = val.strip()
            cur = ""
        else:
            cur += ch
    return out


_SQL_INSERT = re.compile(r"^INSERT INTO test_backend_ops \((?P<cols>[^)]*)\) VALUES \((?P<vals>.*)\);\s*$")
_SQL_VALUE = re.compile(r"'((?:[^']|'')*)'")


def parse_tbo_sql(text: str) -> list[dict]:
    """Rows of `test-backend-ops ... --output sql` (INSERT statements) as dicts."""
    rows = []
    for line in text.splitlines():
        m = _SQL_INSERT.match(line.strip())
        if not m:
            continue
        cols = [c.strip() for c in m["cols"].split(",")]
        vals = [v.replace("''", "'") for v in _SQL_VALUE.findall(m["vals"])]
        if len(cols) != len(vals):
            continue
        r = dict(zip(cols, vals))
        rows.append(_tbo_row(
            op=r.get("op_name", ""), params=r.get("op_params", ""),
            supported=r.get("supported") == "1", time_us=_float(r.get("time_us")),
            n_runs=_int(r.get("n_runs")), memory_kb=_int(r.get("memory_kb")),
            flops=_float(r.get("flops")), backend=r.get("backend_name", ""),
            device=r.get("device_description", ""),
        ))
    return rows


_CONSOLE_CASE = re.compile(
    r"^\s*(?P<op>[A-Z0-9_]+)\((?P<params>.*)\):\s+(?:(?P<runs>\d+)\s+runs\s+-\s+"
    r"(?P<us>[\d.]+)\s+us/run\b(?P<rest>.*)|(?P<unsup>not supported))\s*$")
_CONSOLE_KB = re.compile(r"(\d+)\s+kB/run")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def parse_tbo_console(text: str) -> list[dict]:
    """Rows of the default (console) output of `test-backend-ops perf` (for saved logs;
    the script itself runs --output sql, whose numbers are not rounded)."""
    rows = []
    for line in _ANSI.sub("", text).splitlines():
        m = _CONSOLE_CASE.match(line)
        if not m:
            continue
        kb = _CONSOLE_KB.search(m["rest"] or "")
        rows.append(_tbo_row(
            op=m["op"], params=m["params"], supported=not m["unsup"],
            time_us=_float(m["us"]), n_runs=_int(m["runs"]),
            memory_kb=int(kb.group(1)) if kb else None, flops=None, backend="", device="",
        ))
    return rows


def _float(s) -> float | None:
    try:
        v = float(s)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _int(s) -> int | None:
    try:
        return int(s)
    except (TypeError, ValueError):
        return None


def _tbo_row(*, op, params, supported, time_us, n_runs, memory_kb, flops, backend, device) -> dict:
    p = parse_op_params(params)
    row = {"op": op, "params": params, "supported": bool(supported),
           "time_us": time_us if supported else None, "n_runs": n_runs,
           "memory_kb": memory_kb, "flops": flops, "backend": backend, "device": device}
    for key in ("hsk", "hsv", "nh", "kv", "nb"):
        row[key] = _int(p.get(key))
    nr = re.fullmatch(r"\[(\d+),(\d+)\]", p.get("nr23", ""))
    row["nr23"] = [int(nr.group(1)), int(nr.group(2))] if nr else None
    row["type_k"] = p.get("type_K")
    row["type_v"] = p.get("type_V")
    return row


def fa_kv_bytes(hsk: int, hsv: int, nh: int, kv: int, type_k: str, type_v: str, nr3: int = 1) -> int:
    """Bytes of K and V one decode case reads: kv rows x nh heads of each, in their types."""
    from tqpatch.plan import row_size

    return kv * nh * nr3 * (row_size(type_k, hsk) + row_size(type_v, hsv))


def fa_cases(rows: Iterable[dict]) -> list[dict]:
    """The decode cases of a run, one per (head size, K, V); duplicates averaged.

    Upstream's own perf list has an identical f16/f16 case (same vars()) for each
    head size, so f16/f16 usually appears twice: both times are kept in `samples`.
    """
    groups: dict[tuple, dict] = {}
    for r in rows:
        if r["op"] != "FLASH_ATTN_EXT" or r["nb"] != FA_NB or r["hsk"] is None:
            continue
        key = (r["hsk"], r["hsv"], r["nh"], tuple(r["nr23"] or ()), r["kv"], r["type_k"], r["type_v"])
        g = groups.setdefault(key, {
            "hsk": r["hsk"], "hsv": r["hsv"], "nh": r["nh"], "nr23": r["nr23"], "kv": r["kv"],
            "nb": r["nb"], "type_k": r["type_k"], "type_v": r["type_v"],
            "samples": [], "supported": False, "device": r.get("device") or "",
        })
        if r["supported"] and r["time_us"] is not None:
            g["supported"] = True
            g["samples"].append(r["time_us"])
    out = []
    for g in groups.values():
        g["us"] = sum(g["samples"]) / len(g["samples"]) if g["samples"] else None
        try:
            nr3 = (g["nr23"] or [1, 1])[1]
            g["kv_bytes"] = fa_kv_bytes(g["hsk"], g["hsv"], g["nh"], g["kv"], g["type_k"], g["type_v"], nr3)
        except TqpatchError:
            g["kv_bytes"] = None
        g["gbps"] = g["kv_bytes"] / (g["us"] * 1e3) if g["us"] and g["kv_bytes"] else None
        out.append(g)
    order = {t: i for i, t in enumerate(FA_TYPES)}
    out.sort(key=lambda g: (g["hsk"], order.get(g["type_k"], 99), order.get(g["type_v"], 99)))
    return out


def fa_table(cases: Sequence[dict], head: int) -> list[dict]:
    """Rows for one head size: us, GB/s, ratio to f16/f16 and to q8_0/q8_0, target verdict."""
    mine = [c for c in cases if c["hsk"] == head]
    by = {(c["type_k"], c["type_v"]): c for c in mine}
    f16 = (by.get(("f16", "f16")) or {}).get("us")
    q8 = (by.get(("q8_0", "q8_0")) or {}).get("us")
    targets = {(k, v): (base, mx) for k, v, base, mx in FA_TARGETS}
    rows = []
    for c in mine:
        us = c["us"]
        row = {"pair": pair(c["type_k"], c["type_v"]), "us": us, "gbps": c["gbps"],
               "n": len(c["samples"]), "supported": c["supported"],
               "vs_f16": us / f16 if us and f16 else None,
               "vs_q8_0": us / q8 if us and q8 else None, "target": None, "verdict": None}
        t = targets.get((c["type_k"], c["type_v"]))
        if t:
            base, mx = t
            row["target"] = f"<= {mx:g}x {pair(*base)}"
            ratio = row["vs_f16"] if base == ("f16", "f16") else row["vs_q8_0"]
            row["verdict"] = "n/a" if ratio is None else ("PASS" if ratio <= mx else "MISS")
        rows.append(row)
    return rows


def fa_targets(cases: Sequence[dict], head: int) -> list[dict]:
    """Every decode target for one head size, 'n/a' where a pair was not measured."""
    rows = {r["pair"]: r for r in fa_table(cases, head)}
    out = []
    for k, v, base, mx in FA_TARGETS:
        r = rows.get(pair(k, v))
        ratio = None
        if r:
            ratio = r["vs_f16"] if base == ("f16", "f16") else r["vs_q8_0"]
        out.append({"what": f"{pair(k, v)} <= {mx:g}x {pair(*base)}", "ratio": ratio,
                    "verdict": "n/a" if ratio is None else ("PASS" if ratio <= mx else "MISS")})
    return out


def run_fa(args, bin_path: Path, out_dir: Path | None) -> dict:
    device = args.device or DEVICE_NAMES.get(args.backend, "CPU")
    rx = fa_filter(args.fa_heads, args.fa_types)
    cmd = [str(bin_path), "perf", "-o", "FLASH_ATTN_EXT", "-b", device, "--output", "sql", "-p", rx]
    n = len(args.fa_heads) * len(args.fa_types) ** 2
    log(f"[fa] {n} decode cases (+ upstream's identical f16/f16 ones) on {device}, "
        f"at least 1 s each: {command_line(cmd)}")
    t0 = time.time()
    rc, out, err, timed_out = run_cmd(cmd, args.timeout, None)
    seconds = time.time() - t0
    save(out_dir, "fa_test-backend-ops.sql", out)
    save(out_dir, "fa_test-backend-ops.stderr.log", err)
    rows = parse_tbo_sql(out)
    result = {"command": command_line(cmd), "device_name": device, "rc": rc, "seconds": round(seconds, 1),
              "cases": fa_cases(rows), "error": None, "device": ""}
    if result["cases"]:
        result["device"] = next((c["device"] for c in result["cases"] if c["device"]), "")
    if timed_out:
        result["error"] = f"timed out after {args.timeout} s"
    elif rc != 0:
        result["error"] = f"exit code {rc}: {tail(err or out)}"
    elif not result["cases"]:
        result["error"] = (f"no FLASH_ATTN_EXT decode case ran: the build has no device named {device} "
                           "(test-backend-ops skips unknown names silently; see --device) or its perf "
                           "list lacks the turbo decode cases (tree not patched?)")
    if result["error"]:
        log(f"[fa] FAILED: {result['error']}")
    else:
        log(f"[fa] {len(rows)} cases in {seconds:.0f} s")
    return result


# ============================================================================
# part 2: llama-bench


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
    out = []
    for r in records:
        out.append({
            "test": bench_test_name(r), "depth": int(r.get("n_depth", 0)),
            "type_k": r.get("type_k"), "type_v": r.get("type_v"),
            "avg_ts": _float(r.get("avg_ts")), "stddev_ts": _float(r.get("stddev_ts")),
            "samples_ts": [x for x in (_float(v) for v in r.get("samples_ts") or []) if x is not None],
            "flash_attn": r.get("flash_attn"), "n_gpu_layers": r.get("n_gpu_layers"),
            "backends": r.get("backends"), "gpu_info": r.get("gpu_info"),
            "model_type": r.get("model_type"),
        })
    return out


def _e2e(args):
    """The backend's end-to-end parameters (e.g. the CPU's AMX workaround)."""
    from tqpatch import backends

    return backends.get(args.backend).e2e


def bench_command(binary: Path, model: Path, k: str, v: str, depths: Sequence[int], *, pp: int,
                  tg: int, reps: int, ngl: int, threads: int | None,
                  backend_args: Sequence[str] = ()) -> list[str]:
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


def run_bench(args, binary: Path, models: Sequence[dict], out_dir: Path | None,
              checkpoint: Callable[[dict], None] = lambda part: None) -> dict:
    res = {"pp": args.pp, "tg": args.tg, "depths": list(args.depths), "reps": args.reps,
           "ngl": args.ngl, "models": []}
    total = len(models) * len(args.configs)
    idx = 0
    t_all = time.time()
    for m in models:
        entry = {"name": m["name"], "path": m["path"], "role": m["role"], "runs": []}
        res["models"].append(entry)
        for k, v in args.configs:
            idx += 1
            cmd = bench_command(binary, Path(m["path"]), k, v, args.depths, pp=args.pp, tg=args.tg,
                                reps=args.reps, ngl=args.ngl, threads=args.threads,
                                backend_args=_e2e(args).bench_args)
            log(f"[bench {idx}/{total}] {m['name']} {pair(k, v)}: {command_line(cmd)}")
            t0 = time.time()
            rc, out, err, timed_out = run_cmd(cmd, args.timeout, _progress_filter(f"[bench {idx}/{total}]"))
            seconds = time.time() - t0
            stem = f"bench_{_slug(m['name'])}_{k}_{v}"
            save(out_dir, stem + ".json", out)
            save(out_dir, stem + ".stderr.log", err)
            results = bench_results(parse_llama_bench_json(out))
            run = {"type_k": k, "type_v": v, "command": command_line(cmd), "rc": rc,
                   "seconds": round(seconds, 1), "results": results, "error": None}
            expected = len(args.depths) * ((args.pp > 0) + (args.tg > 0))
            if timed_out:
                run["error"] = f"timed out after {args.timeout} s ({len(results)}/{expected} tests done)"
            elif rc != 0:
                run["error"] = f"exit code {rc} ({len(results)}/{expected} tests done): {tail(err or out)}"
            elif len(results) < expected:
                run["error"] = f"only {len(results)}/{expected} tests reported: {tail(err or out)}"
            entry["runs"].append(run)
            state = f"FAILED: {run['error']}" if run["error"] else "done"
            log(f"[bench {idx}/{total}] {state} in {seconds:.0f} s (total {time.time() - t_all:.0f} s)")
            entry["targets"] = bench_targets(m["role"], entry["runs"], args.pp, args.tg, args.depths)
            checkpoint(res)
    return res


def _progress_filter(prefix: str) -> Callable[[str], None]:
    def on_line(line: str) -> None:
        if line.startswith("llama-bench: benchmark"):
            log(f"  {prefix} {line[len('llama-bench: '):].rstrip()}")
    return on_line


# ============================================================================
# part 3: KV cache size


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
    from tqpatch import plan

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
    row["pred_k_mib"] = sum(c.k_bytes for c in caches) / MIB
    row["pred_v_mib"] = sum(c.v_bytes for c in caches) / MIB
    row["pred_mib"] = row["pred_k_mib"] + row["pred_v_mib"]
    if reported is None:
        return row
    # the last len(caches) size lines belong to this context (Gemma 3: global, then SWA)
    got = list(reported)[-len(caches):] if len(reported) >= len(caches) else list(reported)
    row["caches"] = got
    row["rep_k_mib"] = sum(g["k_mib"] for g in got)
    row["rep_v_mib"] = sum(g["v_mib"] for g in got)
    row["rep_mib"] = sum(g["size_mib"] for g in got)
    k16 = sum(c.k_bytes for c in f16) / MIB
    v16 = sum(c.v_bytes for c in f16) / MIB
    row["meas_bpv_k"] = 16.0 * row["rep_k_mib"] / k16 if k16 else None
    row["meas_bpv_v"] = 16.0 * row["rep_v_mib"] / v16 if v16 else None
    # llama.cpp prints MiB with 2 decimals: allow half a unit per printed number
    ok = len(got) == len(caches)
    for g, c in zip(got, caches):
        ok &= (g["type_k"], g["type_v"], g["cells"], g["layers"]) == (k, v, c.cells, c.layers)
        ok &= abs(g["k_mib"] - c.k_bytes / MIB) <= 0.0051 and abs(g["v_mib"] - c.v_bytes / MIB) <= 0.0051
    row["match"] = bool(ok)
    return row


def run_kv(args, binary: Path, models: Sequence[dict], out_dir: Path | None,
           checkpoint: Callable[[dict], None] = lambda part: None) -> dict:
    from tqpatch import plan

    res = {"ctx": args.kv_ctx, "ngl": args.ngl, "models": []}
    total = len(models) * len(args.kv_configs)
    idx = 0
    for m in models:
        info = plan.read_model(m["path"])
        entry = {"name": m["name"], "path": m["path"], "role": m["role"], "rows": [], "errors": []}
        res["models"].append(entry)
        for k, v in args.kv_configs:
            idx += 1
            if plan.support(info, k, v):
                entry["rows"].append(kv_row(info, args.kv_ctx, k, v, None))
                log(f"[kv {idx}/{total}] {m['name']} {pair(k, v)}: skipped ({plan.support(info, k, v)})")
                continue
            cmd = kv_command(binary, Path(m["path"]), args.kv_ctx, k, v, args.ngl, args.threads,
                             _e2e(args).tool_args)
            log(f"[kv {idx}/{total}] {m['name']} {pair(k, v)}: {command_line(cmd)}")
            rc, out, err, timed_out = run_cmd(cmd, args.timeout, None)
            text = out + "\n" + err
            save(out_dir, f"kv_{_slug(m['name'])}_{k}_{v}.log", text)
            reported = plan.parse_kv_sizes(text)
            row = kv_row(info, args.kv_ctx, k, v, reported if reported else None)
            if timed_out or rc != 0 or not reported:
                why = (f"timed out after {args.timeout} s" if timed_out else
                       f"exit code {rc}" if rc != 0 else "no llama_kv_cache size line in the log")
                row["error"] = f"{why}: {tail(text)}"
                entry["errors"].append(f"{pair(k, v)}: {row['error']}")
                log(f"[kv {idx}/{total}] FAILED: {why}")
            entry["rows"].append(row)
            checkpoint(res)
    return res


# ============================================================================
# models


def model_entry(path: Path, role: str | None = None) -> dict:
    from tqpatch import plan

    info = plan.read_model(path)
    if role is None:
        role = "gemma" if info.arch == "gemma3" else "other"
    name = "synthetic-8B-attn" if role == "synth" else (path.stem)
    return {"name": name, "path": str(path), "role": role, "arch": info.arch,
            "layers": info.n_layer, "heads": sorted(set(info.n_head)),
            "kv_heads": sorted(set(info.n_head_kv)), "head_k": info.head_k,
            "swa": info.uses_swa, "file_bytes": path.stat().st_size}


def ensure_synth(path: Path) -> Path:
    """The synthetic 8B-attention GGUF at path, written (deterministic) unless it is there."""
    from tqpatch import plan
    from tqpatch.synth import SynthShape, synth_model

    s = SynthShape(**SYNTH_SHAPE)
    if path.is_file():
        try:
            info = plan.read_model(path)
            if (info.n_layer, set(info.n_head), set(info.n_head_kv), info.head_k, info.n_embd) == \
                    (s.layers, {s.n_head}, {s.n_head_kv}, s.head_dim, s.n_embd):
                log(f"[synth] reusing {path}")
                return path
        except TqpatchError:
            pass
    log(f"[synth] writing {path} (= tqpatch synth-model {path} --layers {s.layers} --ff {s.ff} "
        f"--vocab {s.vocab} --ctx-train {s.ctx_train} --type {SYNTH_WTYPE} --seed {SYNTH_SEED})")
    t0 = time.time()
    tmp = path.with_name(path.name + ".part")
    info = synth_model(tmp, s, seed=SYNTH_SEED, wtype=SYNTH_WTYPE)
    os.replace(tmp, path)
    for note in info.get("notes", []):
        log(f"[synth] note: {note}")
    log(f"[synth] {info['file_bytes'] / 2**20:.0f} MiB in {time.time() - t0:.0f} s")
    return path


def resolve_models(args) -> list[dict]:
    from tqpatch import model as tq_model

    paths_ = [Path(p).expanduser() for p in (args.model or [])]
    if not paths_ and not args.no_default_model:
        paths_ = [tq_model.default_model_path()]
        if not paths_[0].is_file():
            raise TqpatchError(f"the default test model {paths_[0]} is missing: run `tqpatch model` "
                               "(or pass --model M.gguf, or --no-default-model with --synth)")
    out = []
    for p in paths_:
        if not p.is_file():
            raise TqpatchError(f"model {p} does not exist")
        out.append(model_entry(p))
    if args.synth:
        from tqpatch import paths

        sp = Path(args.synth_path).expanduser() if args.synth_path else paths.models_dir() / SYNTH_FILENAME
        sp.parent.mkdir(parents=True, exist_ok=True)
        out.append(model_entry(ensure_synth(sp), role="synth"))
    if not out:
        raise TqpatchError("no model: pass --model M.gguf and/or --synth")
    return out


# ============================================================================
# subprocesses


def command_line(cmd: Sequence[str]) -> str:
    env = " ".join(f"{k}={v}" for k, v in BOUNDARY_ENV.items())
    return f"{env} {shlex.join(cmd)}"


def run_cmd(cmd: Sequence[str], timeout: float, on_err_line: Callable[[str], None] | None
            ) -> tuple[int, str, str, bool]:
    """Run cmd (stdin closed), collect stdout and stderr; kill it after timeout seconds.

    Returns (returncode, stdout, stderr, timed_out). on_err_line sees each stderr line
    as it arrives (progress).
    """
    env = {**os.environ, **BOUNDARY_ENV}
    try:
        proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
    except OSError as exc:
        raise TqpatchError(f"cannot run {cmd[0]}: {exc}") from None
    out_chunks: list[bytes] = []
    err_lines: list[str] = []

    def read_out():
        for chunk in iter(lambda: proc.stdout.read(65536), b""):
            out_chunks.append(chunk)

    def read_err():
        for raw in iter(proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace")
            err_lines.append(line)
            if on_err_line:
                try:
                    on_err_line(line)
                except Exception:  # progress display must never stop a run
                    pass

    threads = [threading.Thread(target=read_out, daemon=True), threading.Thread(target=read_err, daemon=True)]
    for t in threads:
        t.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        proc.wait()
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()
        raise
    for t in threads:
        t.join(timeout=5)
    out = b"".join(out_chunks).decode("utf-8", "replace")
    return proc.returncode, out, "".join(err_lines), timed_out


def tail(text: str, n: int = TAIL_LINES) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) if lines else "(no output)"


def save(out_dir: Path | None, name: str, text: str) -> None:
    if out_dir is not None:
        (out_dir / name).write_text(text)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-") or "model"


def find_bin(name: str, args) -> Path:
    if args.bin_dir:
        p = Path(args.bin_dir).expanduser() / name
        if not p.is_file():
            raise TqpatchError(f"{p} is missing: build {name} into --bin-dir {args.bin_dir}")
        return p
    from tqpatch.build import find_binary

    return find_binary(name, args.backend, Path(args.build_dir).expanduser() if args.build_dir else None)


# ============================================================================
# rendering


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
        tests = [t for t, n in ((f"pp{bench.get('pp')}", bench.get("pp")), (f"tg{bench.get('tg')}", bench.get("tg"))) if n]
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
                    q8 = look.get(("q8_0/q8_0", test, d))
                    f16 = look.get(("f16/f16", test, d))
                    ts = r["avg_ts"] if r else None
                    sd = r.get("stddev_ts") if r else None
                    cells.append("-" if ts is None else f"{ts:.1f} ± {sd or 0:.1f}")
                    cells.append(_fmt(ts / q8["avg_ts"] if ts and q8 and q8["avg_ts"] else None, ".3f"))
                    cells.append(_fmt(ts / f16["avg_ts"] if ts and f16 and f16["avg_ts"] else None, ".3f"))
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
            diff = "-" if r["rep_mib"] is None else f"{r['rep_mib'] - r['pred_mib'] + 0.0:+.2f}".replace("-0.00", "+0.00")
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
        out.append("Commands:")
        out.append("")
        out.append("```")
        out += meta["commands"]
        out.append("```")
        out.append("")
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
            raise TqpatchError(f"{f} is not a bench_kv.py results file (schema {SCHEMA})")
        meta = data.get("meta", {})
        cmds = merged["meta"]["commands"] + meta.get("commands", [])
        merged["meta"].update(meta)
        merged["meta"]["commands"] = cmds
        for part in PARTS:
            if part in data:
                merged[part] = data[part]
    merged["schema"] = SCHEMA
    return merged


# ============================================================================
# main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_kv.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="cuda", help="backend of the build (cuda, cpu, ...): default cuda")
    p.add_argument("--build-dir", help="tqpatch build dir (default: tqpatch's for the backend)")
    p.add_argument("--bin-dir", help="folder of the binaries, for a build tqpatch did not record")
    p.add_argument("--device", help="test-backend-ops -b device name (default CUDA0 for cuda, CPU for cpu)")
    p.add_argument("--parts", default=",".join(PARTS), help="comma list of fa,bench,kv (default all)")
    p.add_argument("--model", action="append", help="GGUF to benchmark (repeatable; default the Gemma 3 270M test model)")
    p.add_argument("--no-default-model", action="store_true", help="no Gemma default when --model is not given")
    p.add_argument("--synth", action="store_true", help="also the synthetic 8B-attention model (written once)")
    p.add_argument("--synth-path", help="where the synthetic GGUF lives (default: tqpatch models folder)")
    p.add_argument("--fa-types", default=",".join(FA_TYPES), help="K/V types of the fa part")
    p.add_argument("--fa-heads", default=",".join(map(str, FA_HEAD_SIZES)), help="head sizes of the fa part (128,256)")
    p.add_argument("--configs", default=",".join(pair(*c) for c in BENCH_CONFIGS), help="K/V pairs of the bench part")
    p.add_argument("--depths", default=",".join(map(str, BENCH_DEPTHS)), help="llama-bench -d list")
    p.add_argument("--pp", type=int, default=BENCH_PP, help="llama-bench -p (0: none)")
    p.add_argument("--tg", type=int, default=BENCH_TG, help="llama-bench -n (0: none)")
    p.add_argument("--reps", type=int, default=BENCH_REPS, help="llama-bench -r")
    p.add_argument("--ngl", type=int, default=99, help="-ngl for llama-bench and llama-cli")
    p.add_argument("--threads", type=int, help="-t for llama-bench and llama-cli (default theirs)")
    p.add_argument("--kv-configs", help="K/V pairs of the kv part (default: tqpatch plan's list)")
    p.add_argument("--kv-ctx", type=int, default=KV_CTX, help="-c of the kv part")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per subprocess")
    p.add_argument("--out", help="folder for raw outputs (test-backend-ops SQL, llama-bench JSON, logs)")
    p.add_argument("--json", help="write the results as JSON")
    p.add_argument("--markdown", help="write the tables as Markdown")
    p.add_argument("--load", action="append", help="render saved --json files (repeatable) instead of running")
    return p


def normalize_args(args) -> None:
    from tqpatch import backends, plan

    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    bad = [x for x in args.parts if x not in PARTS]
    if bad or not args.parts:
        raise TqpatchError(f"--parts takes a comma list of {', '.join(PARTS)} (got {','.join(bad) or 'none'})")
    backends.get(args.backend)
    args.fa_types = [t.strip() for t in args.fa_types.split(",") if t.strip()]
    for t in args.fa_types:
        formats.type_info(t)
    args.fa_heads = parse_int_list(args.fa_heads, "--fa-heads")
    args.configs = parse_config_list(args.configs)
    args.depths = parse_int_list(args.depths, "--depths")
    args.kv_configs = parse_config_list(args.kv_configs) if args.kv_configs else list(plan.CONFIGS)
    for name, val in (("--pp", args.pp), ("--tg", args.tg)):
        if val < 0:
            raise TqpatchError(f"{name} must be >= 0")
    if args.pp == 0 and args.tg == 0:
        raise TqpatchError("--pp and --tg are both 0: nothing to measure")
    if args.reps < 1 or args.kv_ctx < 1 or args.timeout <= 0:
        raise TqpatchError("--reps, --kv-ctx and --timeout must be positive")


def meta_info(args, argv: Sequence[str]) -> dict:
    from tqpatch import pin

    return {
        "backend": args.backend, "host": platform.node(), "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "llama_cpp_commit": getattr(pin, "LLAMA_CPP_COMMIT", None),
        "commands": ["python3 benchmarks/bench_kv.py " + shlex.join(argv)],
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.load:
            results = merge([Path(f) for f in args.load])
        else:
            normalize_args(args)
            results = run_all(args, argv)
        text = render(results)
        sys.stdout.write(text)
        sys.stdout.flush()
        if args.json:
            Path(args.json).expanduser().write_text(json.dumps(results, indent=1) + "\n")
            log(f"wrote {args.json}")
        if args.markdown:
            Path(args.markdown).expanduser().write_text(render(results, md=True))
            log(f"wrote {args.markdown}")
    except TqpatchError as exc:
        log(f"error: {exc.message}")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    return 0 if not failed(results) else 1


def failed(results: dict) -> bool:
    """True when some part could not measure (a target MISS is a result, not a failure)."""
    if results.get("fa", {}).get("error"):
        return True
    for m in results.get("bench", {}).get("models", []):
        if any(r.get("error") for r in m["runs"]):
            return True
    for m in results.get("kv", {}).get("models", []):
        if m.get("errors"):
            return True
    return False


def run_all(args, argv: Sequence[str]) -> dict:
    # find everything first: a missing binary or model fails before anything runs
    bins = {}
    if "fa" in args.parts:
        bins["fa"] = find_bin("test-backend-ops", args)
    if "bench" in args.parts:
        bins["bench"] = find_bin("llama-bench", args)
    if "kv" in args.parts:
        bins["kv"] = find_bin("llama-cli", args)
    models = resolve_models(args) if {"bench", "kv"} & set(args.parts) else []
    out_dir = None
    if args.out:
        out_dir = Path(args.out).expanduser()
        out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {"schema": SCHEMA, "meta": meta_info(args, argv)}
    results["meta"]["models"] = models
    results["meta"]["binaries"] = {k: str(v) for k, v in bins.items()}

    def checkpoint(name: str):
        # results so far in OUT/results.json after every run: a killed session keeps them
        def write(part: dict) -> None:
            results[name] = part
            if out_dir is not None:
                (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        return write

    if "fa" in args.parts:
        checkpoint("fa")(run_fa(args, bins["fa"], out_dir))
    if "bench" in args.parts:
        checkpoint("bench")(run_bench(args, bins["bench"], models, out_dir, checkpoint("bench")))
    if "kv" in args.parts:
        checkpoint("kv")(run_kv(args, bins["kv"], models, out_dir, checkpoint("kv")))
    return results


if __name__ == "__main__":
    sys.exit(main())
