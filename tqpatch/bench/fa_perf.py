"""The fa part: test-backend-ops perf on the flash-attention decode cases; parsers, ratios, targets.

The cases are the patch's (tqpatch_turbo_perf_cases, rendered from
tqpatch.perf_cases.FA_DECODE): 8 KV heads x 4 query heads each, kv=16384, one
query row, head sizes 128 and 256, every K/V pair of formats.CACHE_TYPES. One
invocation, so every ratio compares cases of the same run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Sequence

from .. import formats
from ..errors import TqpatchError
from ..perf_cases import FA_DECODE, DecodeShape
from ..plan import row_size
from .common import log, pair, save, to_float, to_int
from .proc import command_line, run_tool, tail

FA_TYPES = formats.CACHE_TYPES
# (K, V, baseline K/V, max time ratio): the decode targets (issue 13; q8_0/turbo4 from issue 4)
FA_TARGETS = (
    ("turbo3", "turbo3", ("f16", "f16"), 0.5),
    ("turbo4", "turbo4", ("f16", "f16"), 0.5),
    ("q8_0", "turbo3", ("q8_0", "q8_0"), 0.8),
    ("q8_0", "turbo4", ("q8_0", "q8_0"), 1.0),
)


def fa_filter(head_sizes: Sequence[int] | None = None, types: Sequence[str] = FA_TYPES,
              shape: DecodeShape = FA_DECODE) -> str:
    """The -p regex (std::regex_search over the case's vars()) selecting the decode cases.

    vars() of test_flash_attn_ext at the pin reads
    'hsk=128,hsv=128,nh=8,nr23=[4,1],kv=16384,nb=1,mask=1,...,type_K=f16,type_V=f16,...'.
    """
    d = shape
    hs = "|".join(str(h) for h in (head_sizes or d.head_sizes))
    ts = "|".join(re.escape(t) for t in types)
    return (rf"^hsk=({hs}),hsv=({hs}),nh={d.n_kv_heads},nr23=\[{d.nr23[0]},{d.nr23[1]}\],kv={d.kv},"
            rf"nb={d.nb},mask={int(d.mask)},sinks={int(d.sinks)},.*,type_K=({ts}),type_V=({ts}),")


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
    """Rows of `test-backend-ops ... --output sql` (INSERT statements; other lines skipped) as dicts."""
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
            supported=r.get("supported") == "1", time_us=to_float(r.get("time_us")),
            n_runs=to_int(r.get("n_runs")), memory_kb=to_int(r.get("memory_kb")),
            flops=to_float(r.get("flops")), backend=r.get("backend_name", ""),
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
    the bench itself runs --output sql, whose numbers are not rounded)."""
    rows = []
    for line in _ANSI.sub("", text).splitlines():
        m = _CONSOLE_CASE.match(line)
        if not m:
            continue
        kb = _CONSOLE_KB.search(m["rest"] or "")
        rows.append(_tbo_row(
            op=m["op"], params=m["params"], supported=not m["unsup"],
            time_us=to_float(m["us"]), n_runs=to_int(m["runs"]),
            memory_kb=int(kb.group(1)) if kb else None, flops=None, backend="", device="",
        ))
    return rows


def _tbo_row(*, op, params, supported, time_us, n_runs, memory_kb, flops, backend, device) -> dict:
    p = parse_op_params(params)
    row = {"op": op, "params": params, "supported": bool(supported),
           "time_us": time_us if supported else None, "n_runs": n_runs,
           "memory_kb": memory_kb, "flops": flops, "backend": backend, "device": device}
    for key in ("hsk", "hsv", "nh", "kv", "nb"):
        row[key] = to_int(p.get(key))
    nr = re.fullmatch(r"\[(\d+),(\d+)\]", p.get("nr23", ""))
    row["nr23"] = [int(nr.group(1)), int(nr.group(2))] if nr else None
    row["type_k"] = p.get("type_K")
    row["type_v"] = p.get("type_V")
    return row


def fa_kv_bytes(hsk: int, hsv: int, nh: int, kv: int, type_k: str, type_v: str, nr3: int = 1) -> int:
    """Bytes of K and V one decode case reads: kv rows x nh heads of each, in their types."""
    return kv * nh * nr3 * (row_size(type_k, hsk) + row_size(type_v, hsv))


def fa_cases(rows: Iterable[dict]) -> list[dict]:
    """The decode cases of a run, one per (head size, K, V); duplicates averaged.

    Upstream's own perf list has an identical f16/f16 case (same vars()) for each
    head size, so f16/f16 usually appears twice: both times are kept in `samples`.
    """
    groups: dict[tuple, dict] = {}
    for r in rows:
        if r["op"] != "FLASH_ATTN_EXT" or r["nb"] != FA_DECODE.nb or r["hsk"] is None:
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


def _verdict(row: dict | None, base: tuple[str, str], mx: float) -> tuple[float | None, str]:
    """(time ratio to the target's baseline, PASS / MISS / n/a)."""
    ratio = None
    if row:
        ratio = row["vs_f16"] if base == ("f16", "f16") else row["vs_q8_0"]
    return ratio, "n/a" if ratio is None else ("PASS" if ratio <= mx else "MISS")


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
            row["verdict"] = _verdict(row, base, mx)[1]
        rows.append(row)
    return rows


def fa_targets(cases: Sequence[dict], head: int) -> list[dict]:
    """Every decode target for one head size, 'n/a' where a pair was not measured."""
    rows = {r["pair"]: r for r in fa_table(cases, head)}
    out = []
    for k, v, base, mx in FA_TARGETS:
        ratio, verdict = _verdict(rows.get(pair(k, v)), base, mx)
        out.append({"what": f"{pair(k, v)} <= {mx:g}x {pair(*base)}", "ratio": ratio, "verdict": verdict})
    return out


def fa_command(binary: Path, device: str, heads: Sequence[int], types: Sequence[str]) -> list[str]:
    return [str(binary), "perf", "-o", "FLASH_ATTN_EXT", "-b", device, "--output", "sql",
            "-p", fa_filter(heads, types)]


def run_fa(binary: Path, device: str, heads: Sequence[int], types: Sequence[str], timeout: float,
           out_dir: Path | None) -> dict:
    """The fa part's one test-backend-ops run, as the results' "fa" entry."""
    cmd = fa_command(binary, device, heads, types)
    log(f"[fa] {len(heads) * len(types) ** 2} decode cases (+ upstream's identical f16/f16 ones) "
        f"on {device}, at least 1 s each: {command_line(cmd)}")
    run = run_tool(cmd, timeout)
    save(out_dir, "fa_test-backend-ops.log", run.out)
    rows = parse_tbo_sql(run.out)
    cases = fa_cases(rows)
    result = {"command": command_line(cmd), "device_name": device, "rc": run.rc,
              "seconds": round(run.seconds, 1), "cases": cases, "error": None,
              "device": next((c["device"] for c in cases if c["device"]), "")}
    if run.timed_out:
        result["error"] = f"timed out after {timeout:g} s"
    elif run.rc != 0:
        result["error"] = f"exit code {run.rc}: {tail(run.out)}"
    elif not cases:
        result["error"] = (f"no FLASH_ATTN_EXT decode case ran: the build has no device named {device} "
                           "(test-backend-ops skips unknown names silently; see --device) or its perf "
                           "list lacks the turbo decode cases (tree not patched?)")
    if result["error"]:
        log(f"[fa] FAILED: {result['error']}")
    else:
        log(f"[fa] {len(rows)} cases in {run.seconds:.0f} s")
    return result
