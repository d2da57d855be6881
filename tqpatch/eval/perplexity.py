"""One llama-perplexity run: its command line, running it, reading its log, judging it."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Sequence

from .. import ui
from ..errors import TqpatchError
from ..plan import parse_kv_sizes
from .config import Config
from .result import Result

TAIL_LINES = 15
# -lv 4 ("trace") is the lowest verbosity at which the pinned llama.cpp prints
# the llama_kv_cache size lines.
LOG_ARGS: tuple[str, ...] = ("-lv", "4")


# --------------------------------------------------------------------------
# parsing llama-perplexity output

_NUM = r"([-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|nan|-?inf))"
_PM = r"\s*(?:\+/-|±)\s*"
_RE_FINAL = re.compile(r"Final estimate: PPL = " + _NUM + _PM + _NUM, re.I)
_RE_MEAN_PPL_Q = re.compile(r"Mean PPL\(Q\)\s*:\s*" + _NUM + _PM + _NUM, re.I)
_RE_MEAN_PPL_BASE = re.compile(r"Mean PPL\(base\)\s*:\s*" + _NUM + _PM + _NUM, re.I)
_RE_MEAN_KLD = re.compile(r"Mean\s+KLD:\s*" + _NUM + _PM + _NUM, re.I)
_RE_P99_KLD = re.compile(r"99\.0%\s+KLD:\s*" + _NUM, re.I)
_RE_TOP1 = re.compile(r"Same top p:\s*" + _NUM + _PM + _NUM + r"\s*%", re.I)
# patch 0010: "llama_kv_cache: turbo boundary layers: K 0, V 2 -> q8_0 layers K none, V 0,1,16"
_RE_BOUNDARY = re.compile(r"turbo boundary layers: K (\d+), V (\d+) -> q8_0 layers K (\S+), V (\S+)")
# patch 0021: "llama_kv_cache: turbo K calibration from /path/m.calib.gguf" (and "turbo V ...")
_RE_CALIB = re.compile(r"turbo [KV] calibration from (\S+)")
# Log lines at error level ("0.01.234.567 E msg"), llama.cpp's "error: ..." and
# argument errors ("Error while handling argument ...: Unsupported cache type").
_RE_ERROR = re.compile(
    r"^(?:[\d.]+ E |error\b|.*\berror while\b|.*\bunsupported cache type\b|.*\bfailed to\b)",
    re.I,
)


def _f(s: str) -> float:
    return float(s)


def parse_perplexity_output(text: str) -> dict:
    """The numbers of one llama-perplexity log (stdout + stderr together).

    Keys (None where the log has no such line):
      ppl, ppl_err        "Mean PPL(Q) : x ± y" (KLD mode) or "Final estimate: PPL = x +/- y"
      ppl_base, ppl_base_err   "Mean PPL(base)" (KLD mode)
      kld_mean, kld_err   "Mean    KLD: x ± y"
      kld_p99             "99.0%   KLD: x"
      top1, top1_err      "Same top p: x ± y %" (percent)
      kv_mib, k_mib, v_mib   summed over all "llama_kv_cache: size = ..." lines
      k_type, v_type      the types those lines name
      kv_caches           number of such lines
      errors              list of error lines found
    """
    out: dict = {k: None for k in (
        "ppl", "ppl_err", "ppl_base", "ppl_base_err", "kld_mean", "kld_err", "kld_p99",
        "top1", "top1_err", "kv_mib", "k_mib", "v_mib", "k_type", "v_type")}
    m = _RE_MEAN_PPL_Q.search(text) or _RE_FINAL.search(text)
    if m:
        out["ppl"], out["ppl_err"] = _f(m.group(1)), _f(m.group(2))
    m = _RE_MEAN_PPL_BASE.search(text)
    if m:
        out["ppl_base"], out["ppl_base_err"] = _f(m.group(1)), _f(m.group(2))
    m = _RE_MEAN_KLD.search(text)
    if m:
        out["kld_mean"], out["kld_err"] = _f(m.group(1)), _f(m.group(2))
    m = _RE_P99_KLD.search(text)
    if m:
        out["kld_p99"] = _f(m.group(1))
    m = _RE_TOP1.search(text)
    if m:
        out["top1"], out["top1_err"] = _f(m.group(1)), _f(m.group(2))
    kv = parse_kv_sizes(text)
    out["kv_caches"] = len(kv)
    if kv:
        out["kv_mib"] = sum(c["size_mib"] for c in kv)
        out["k_mib"] = sum(c["k_mib"] for c in kv)
        out["v_mib"] = sum(c["v_mib"] for c in kv)
        out["k_type"], out["v_type"] = kv[0]["type_k"], kv[0]["type_v"]
    out["errors"] = [line.strip() for line in text.splitlines() if _RE_ERROR.match(line.strip())]
    return out


def delta_ppl_pct(ppl: float | None, base: float | None) -> float | None:
    """PPL change in percent against the base PPL: (ppl / base - 1) * 100."""
    if ppl is None or base is None or not base or not math.isfinite(ppl) or not math.isfinite(base):
        return None
    return (ppl / base - 1.0) * 100.0


# --------------------------------------------------------------------------
# results


def judge(result: Result, rc: int, text: str) -> Result:
    """Fill result from one run's exit code and log."""
    parsed = parse_perplexity_output(text)
    result.returncode = rc
    for key in ("ppl", "ppl_err", "kld_mean", "kld_err", "kld_p99", "top1", "top1_err",
                "kv_mib", "k_mib", "v_mib"):
        setattr(result, key, parsed[key])
    problem = None
    if rc != 0:
        problem = f"llama-perplexity exited with status {rc}"
    elif parsed["errors"]:
        problem = f"llama-perplexity reported an error: {parsed['errors'][0]}"
    elif parsed["ppl"] is None:
        problem = "llama-perplexity printed no PPL"
    elif not math.isfinite(parsed["ppl"]):
        problem = f"PPL is {parsed['ppl']} (the cache type produced garbage)"
    elif parsed["k_type"] and (parsed["k_type"], parsed["v_type"]) != (
            result.config.k, result.config.v):
        problem = (f"llama.cpp allocated a K ({parsed['k_type']}) / V ({parsed['v_type']}) "
                   f"cache, not the {result.config.label} that was asked for")
    elif result.config.has_boundary and _RE_BOUNDARY.search(text) is None:
        problem = ("llama.cpp did not report boundary layers (no 'turbo boundary layers' "
                   f"line) for {result.label}: this build lacks patch 0010; rebuild with "
                   "`tqpatch build`")
    elif result.config.calib and _RE_CALIB.search(text) is None:
        problem = ("llama.cpp did not report the calibration (no 'turbo K/V calibration' line) "
                   f"for {result.label}: this build lacks patch 0021; rebuild with `tqpatch build`")
    if problem:
        if parsed["errors"] and rc != 0:
            problem += f": {parsed['errors'][0]}"
        result.ok = False
        result.error = problem
        result.log_tail = ui.tail(text, TAIL_LINES)
    else:
        result.ok = True
    return result


def fill_deltas(results: Sequence[Result], base_ppl: float | None = None) -> float | None:
    """Set delta_ppl_pct on each result against f16/f16 (its own row, else base_ppl)."""
    for r in results:
        if r.config.is_baseline and r.ok and r.ppl is not None:
            base_ppl = r.ppl
            break
    for r in results:
        r.delta_ppl_pct = delta_ppl_pct(r.ppl, base_ppl) if r.ok else None
    return base_ppl



def build_command(binary: Path, model: Path, text: Path, config: Config, *, ctx: int,
                  chunks: int, threads: int, extra_args: Sequence[str] = (),
                  kld_base: Path | None = None, kld: bool = False) -> list[str]:
    cmd = [str(binary), "-m", str(model), "-f", str(text), "-c", str(ctx),
           "--chunks", str(chunks), "-fa", "on", "-ctk", config.k, "-ctv", config.v,
           "-t", str(threads), *LOG_ARGS]
    if kld_base is not None:
        cmd += ["--kl-divergence-base", str(kld_base)]
        if kld:
            cmd.append("--kl-divergence")
    return cmd + list(extra_args)


def run_logged(cmd: Sequence[str], env: dict[str, str] | None = None) -> tuple[int, str, float]:
    """(exit status, merged output, seconds) of one run; status 127 when it cannot start."""
    t0 = time.monotonic()
    try:
        result = ui.run(cmd, env=env, check=False)
    except TqpatchError as exc:
        return 127, exc.message, time.monotonic() - t0
    return result.returncode, result.stdout, time.monotonic() - t0
