"""Quality of K/V cache configurations on a real model: PPL, KLD, top-1 agreement.

One `llama-perplexity` run per K/V configuration, all on the same model, text,
context size and number of chunks:

  base     f16/f16 with --kl-divergence-base FILE: saves the reference logits
           (FILE holds chunks x (ctx-1-ctx/2) x n_vocab x 2 bytes: about 512 KB
           per scored token for Gemma 3's 262k vocabulary, so ~2.7 GB for the
           default 20 x 512; it lives in a temporary folder under the tqpatch
           cache and is deleted afterwards)
  configs  each K/V pair with --kl-divergence-base FILE --kl-divergence:
           PPL(Q), mean / 99th percentile KLD against the base, "Same top p"
           (how often the top-1 token agrees with f16's)

With kld=False (`--no-kld`) every configuration is a plain PPL run and no base
file is written. Every run gets `-lv 4` so that llama.cpp logs the size of the
KV cache it allocated (`llama_kv_cache: size = ... K (q8_0): x MiB, V (turbo3):
y MiB`, one line per cache; Gemma 3 has a sliding-window and a global one and
they are summed).

A configuration whose run fails (nonzero exit, an error line, no PPL, or a
non-finite PPL) is reported FAILED with the last lines of its log; the others
still run.

Boundary-layer variants (patch 0010) are written after the pair:
`q8_0/turbo2:bv2` keeps the first and last 2 layers' V cache at q8_0,
`turbo3/turbo3:bk2:bv2` does so for K and V. Every run of a configuration with
a turbo type sets LLAMA_TURBO_BOUNDARY_K and LLAMA_TURBO_BOUNDARY_V explicitly
(0 where the label names none), so neither the caller's environment nor a
build-time default changes what a label means; the command lines show them.
Bits per value of a variant are the average over the model's layers as the
pinned llama.cpp allocates them (tqpatch.plan's layer model, SWA layers
included), for the run's context.

The default text is `tools/server/README.md` of the pinned llama.cpp tree
(commit 0c1e57098, 107,765 bytes, ~27k Gemma 3 tokens): it ships with every
copy of the pin, so any two machines measure the same tokens. 20 chunks of 512
tokens use the first ~10k of them.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from . import formats
from .errors import TqpatchError

BASELINE_TYPE = "f16"
DEFAULT_CONFIGS: tuple[str, ...] = tuple(f"{k}/{v}" for k, v in formats.KV_CONFIGS)
DEFAULT_TEXT_REL = "tools/server/README.md"
DEFAULT_CHUNKS = 20
DEFAULT_CTX = 512
BASE_FILE_WARN_BYTES = 4 * 1024**3
GEMMA3_VOCAB = 262144  # used when the model's vocabulary cannot be read
TAIL_LINES = 15
# -lv 4 ("trace") is the lowest verbosity at which the pinned llama.cpp prints
# the llama_kv_cache size lines.
LOG_ARGS: tuple[str, ...] = ("-lv", "4")


# --------------------------------------------------------------------------
# configurations


def known_types() -> tuple[str, ...]:
    """Cache types eval accepts (every type llama.cpp takes as a cache type): the cache
    types tqpatch pairs first, then the other upstream ones."""
    return tuple(dict.fromkeys([*formats.CACHE_TYPES, *formats.ALL_TYPES]))


_RE_VARIANT = re.compile(r"(bk|bv)(\d+)")
VARIANT_HINT = ("write :bkN / :bvN after the pair to keep the first and last N layers' "
                "K / V cache at q8_0, e.g. q8_0/turbo2:bv2 or turbo3/turbo3:bk2:bv2")


@dataclass(frozen=True)
class Config:
    """One K/V cache type pair, written K/V as in `q8_0/turbo3`, with optional
    boundary layers (`q8_0/turbo2:bv2`: the first and last 2 layers' V at q8_0)."""

    k: str
    v: str
    bk: int = 0
    bv: int = 0

    @classmethod
    def parse(cls, text: str) -> "Config":
        from .plan import MAX_BOUNDARY, is_turbo

        raw = text
        text = text.strip().lower()
        text, *variants = text.split(":")
        parts = text.split("/")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise TqpatchError(
                f"malformed configuration {raw!r}: write K/V, e.g. q8_0/turbo3 "
                "(several separated by commas: f16/f16,q8_0/turbo3)"
            )
        k, v = (p.strip() for p in parts)
        known = known_types()
        for role, name in (("K", k), ("V", v)):
            if name not in known:
                raise TqpatchError(
                    f"unknown cache type {name!r} for {role} in {raw!r}; known cache types: "
                    + ", ".join(known)
                )
        bound = {}
        for var in (x.strip() for x in variants):
            m = _RE_VARIANT.fullmatch(var)
            if not m:
                raise TqpatchError(f"unknown variant {var!r} in {raw!r}: {VARIANT_HINT}")
            side, n = m.group(1), int(m.group(2))
            if side in bound:
                raise TqpatchError(f"{side} given twice in {raw!r}: {VARIANT_HINT}")
            if n > MAX_BOUNDARY:
                raise TqpatchError(f"{var} in {raw!r}: at most {MAX_BOUNDARY} boundary layers")
            typ = k if side == "bk" else v
            if n and not is_turbo(typ):
                raise TqpatchError(
                    f"{var} in {raw!r}: boundary layers apply to turbo2/turbo3/turbo4 caches "
                    f"only, and {'K' if side == 'bk' else 'V'} is {typ}")
            bound[side] = n
        return cls(k, v, bound.get("bk", 0), bound.get("bv", 0))

    @property
    def label(self) -> str:
        from .plan import boundary_suffix

        return f"{self.k}/{self.v}" + boundary_suffix(self.k, self.v, self.bk, self.bv)

    @property
    def pair(self) -> str:
        return f"{self.k}/{self.v}"

    @property
    def has_turbo(self) -> bool:
        from .plan import is_turbo

        return is_turbo(self.k) or is_turbo(self.v)

    def env(self) -> dict[str, str]:
        """Environment of this configuration's run: both boundary switches, explicit,
        for any configuration with a turbo type (none otherwise)."""
        from .plan import ENV_BOUNDARY_K, ENV_BOUNDARY_V

        if not self.has_turbo:
            return {}
        return {ENV_BOUNDARY_K: str(self.bk), ENV_BOUNDARY_V: str(self.bv)}

    def layer_bpv(self, info, ctx: int, parallel: int = 1, **kw) -> tuple[float, float]:
        """(bpv K, bpv V) over all layers of a tqpatch.plan ModelInfo at this context."""
        from .plan import effective_bpv

        return effective_bpv(info, ctx, self.k, self.v, parallel, boundary_k=self.bk,
                             boundary_v=self.bv, **kw)

    def __str__(self) -> str:
        return self.label

    @property
    def bpv_k(self) -> float:
        """Bits per value of the K type (without boundary layers; see layer_bpv)."""
        return formats.type_info(self.k).bits_per_value

    @property
    def bpv_v(self) -> float:
        return formats.type_info(self.v).bits_per_value

    @property
    def avg_bpv(self) -> float:
        return (self.bpv_k + self.bpv_v) / 2

    @property
    def is_baseline(self) -> bool:
        return self.k == BASELINE_TYPE and self.v == BASELINE_TYPE


BASELINE = Config(BASELINE_TYPE, BASELINE_TYPE)


def parse_configs(text: str | Iterable[str]) -> list[Config]:
    """'f16/f16,q8_0/turbo3' (or a list of such strings) -> Configs, duplicates dropped."""
    items = text.split(",") if isinstance(text, str) else [
        part for chunk in text for part in chunk.split(",")]
    items = [i for i in items if i.strip()]
    if not items:
        raise TqpatchError("no configuration given: write K/V pairs separated by commas, "
                           "e.g. --configs f16/f16,q8_0/turbo3")
    out: list[Config] = []
    for item in items:
        cfg = Config.parse(item)
        if cfg not in out:
            out.append(cfg)
    return out


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
# src/llama-kv-cache.cpp at the pin:
# "%s: size = %7.2f MiB (%6u cells, %3d layers, %2u/%u seqs), K (%s): %7.2f MiB, V (%s): %7.2f MiB"
_RE_KV = re.compile(
    r"llama_kv_cache: size =\s*" + _NUM + r" MiB \(.*?\), K \((\w+)\):\s*" + _NUM
    + r" MiB, V \((\w+)\):\s*" + _NUM + r" MiB"
)
# patch 0010: "llama_kv_cache: turbo boundary layers: K 0, V 2 -> q8_0 layers K none, V 0,1,16"
_RE_BOUNDARY = re.compile(r"turbo boundary layers: K (\d+), V (\d+) -> q8_0 layers K (\S+), V (\S+)")
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
    kv = _RE_KV.findall(text)
    out["kv_caches"] = len(kv)
    if kv:
        out["kv_mib"] = sum(_f(t[0]) for t in kv)
        out["k_mib"] = sum(_f(t[2]) for t in kv)
        out["v_mib"] = sum(_f(t[4]) for t in kv)
        out["k_type"], out["v_type"] = kv[0][1], kv[0][3]
    out["errors"] = [line.strip() for line in text.splitlines() if _RE_ERROR.match(line.strip())]
    return out


def delta_ppl_pct(ppl: float | None, base: float | None) -> float | None:
    """PPL change in percent against the base PPL: (ppl / base - 1) * 100."""
    if ppl is None or base is None or not base or not math.isfinite(ppl) or not math.isfinite(base):
        return None
    return (ppl / base - 1.0) * 100.0


def tail(text: str, n: int = TAIL_LINES) -> str:
    lines = [line for line in text.rstrip().splitlines()]
    return "\n".join(lines[-n:])


# --------------------------------------------------------------------------
# results


@dataclass
class Result:
    config: Config
    ok: bool = False
    ppl: float | None = None
    ppl_err: float | None = None
    delta_ppl_pct: float | None = None
    kld_mean: float | None = None
    kld_err: float | None = None
    kld_p99: float | None = None
    top1: float | None = None
    top1_err: float | None = None
    kv_mib: float | None = None
    k_mib: float | None = None
    v_mib: float | None = None
    seconds: float = 0.0
    returncode: int | None = None
    command: list[str] = field(default_factory=list)
    base_command: list[str] | None = None  # the f16 base-logits run this one compared against
    error: str | None = None
    log_tail: str = ""
    env: dict[str, str] = field(default_factory=dict)  # environment settings of the run
    bpv_k: float | None = None  # over all layers (boundary layers included); None: the type's
    bpv_v: float | None = None

    @property
    def k(self) -> str:
        return self.config.k

    @property
    def v(self) -> str:
        return self.config.v

    @property
    def label(self) -> str:
        return self.config.label

    @property
    def eff_bpv_k(self) -> float:
        return self.config.bpv_k if self.bpv_k is None else self.bpv_k

    @property
    def eff_bpv_v(self) -> float:
        return self.config.bpv_v if self.bpv_v is None else self.bpv_v

    @property
    def avg_bpv(self) -> float:
        return (self.eff_bpv_k + self.eff_bpv_v) / 2

    def to_dict(self) -> dict:
        return {
            "config": self.label, "k": self.k, "v": self.v,
            "boundary_k": self.config.bk, "boundary_v": self.config.bv,
            "bpv_k": self.eff_bpv_k, "bpv_v": self.eff_bpv_v,
            "avg_bpv": self.avg_bpv,
            "ok": self.ok, "ppl": self.ppl, "ppl_err": self.ppl_err,
            "delta_ppl_pct": self.delta_ppl_pct,
            "kld_mean": self.kld_mean, "kld_err": self.kld_err, "kld_p99": self.kld_p99,
            "top1_pct": self.top1, "top1_err": self.top1_err,
            "kv_mib": self.kv_mib, "k_mib": self.k_mib, "v_mib": self.v_mib,
            "seconds": round(self.seconds, 2), "returncode": self.returncode,
            "command": command_line(self.command, self.env) if self.command else None,
            "env": dict(self.env) or None,
            "base_command": shlex.join(self.base_command) if self.base_command else None,
            "error": self.error, "log_tail": self.log_tail if not self.ok else None,
        }


def _judge(result: Result, rc: int, text: str) -> Result:
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
    elif result.label != result.config.pair and _RE_BOUNDARY.search(text) is None:
        problem = ("llama.cpp did not report boundary layers (no 'turbo boundary layers' "
                   f"line) for {result.label}: this build lacks patch 0010; rebuild with "
                   "`tqpatch build`")
    if problem:
        if parsed["errors"] and rc != 0:
            problem += f": {parsed['errors'][0]}"
        result.ok = False
        result.error = problem
        result.log_tail = tail(text)
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


# --------------------------------------------------------------------------
# inputs


def default_text() -> Path:
    """tools/server/README.md of the pinned llama.cpp tree (fetched if not there yet)."""
    from . import paths

    path = paths.pristine_tree() / DEFAULT_TEXT_REL
    try:
        from . import fetch
    except ImportError:  # the fetch stage is not installed: use the tree if it is there
        fetch = None
    if fetch is not None:
        if not path.is_file():
            fetch.ensure_pristine()
        fetch.read_pristine(DEFAULT_TEXT_REL)  # checks it against the pin
    if not path.is_file():
        raise TqpatchError(f"{path} is missing: run `tqpatch fetch` or pass --text FILE")
    return path


def model_vocab_size(model: Path) -> int | None:
    """Number of tokens in a GGUF's vocabulary; None if it cannot be read."""
    try:
        import gguf  # type: ignore

        reader = gguf.GGUFReader(str(model))
        field_ = reader.fields.get("tokenizer.ggml.tokens")
        if field_ is None:
            return None
        return len(field_.data)
    except Exception:  # any unreadable file: fall back to an estimate
        return None


def base_file_bytes(chunks: int, ctx: int, n_vocab: int) -> int:
    """Size of llama-perplexity's --kl-divergence-base file (upper bound: the text may be shorter).

    Per chunk it scores the tokens after the first half (ctx - 1 - ctx/2 of them)
    and stores nv = 2*((n_vocab+1)/2) + 4 uint16 values for each.
    """
    nv = 2 * ((n_vocab + 1) // 2) + 4
    return chunks * (ctx - 1 - ctx // 2) * nv * 2


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


def command_line(cmd: Sequence[str], env: dict[str, str] | None = None) -> str:
    """A shell line: the environment settings, then the command."""
    pre = "".join(f"{k}={shlex.quote(v)} " for k, v in (env or {}).items())
    return pre + shlex.join(cmd)


def _run(cmd: Sequence[str], env: dict[str, str] | None = None) -> tuple[int, str, float]:
    t0 = time.monotonic()
    full_env = {**os.environ, **env} if env else None
    try:
        proc = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace", stdin=subprocess.DEVNULL,
                              env=full_env)
    except OSError as exc:
        return 127, f"cannot run {cmd[0]}: {exc}", time.monotonic() - t0
    return proc.returncode, proc.stdout or "", time.monotonic() - t0


# --------------------------------------------------------------------------
# the evaluation


class Progress:
    """Receives events from evaluate(); the CLI prints them. The default is silent.

    index runs 1..total over the configurations; the f16 base-logits run (KLD
    mode) comes first with index 0.
    """

    def start(self, index: int, total: int, config: Config, what: str) -> None:
        pass

    def finish(self, index: int, total: int, result: Result, what: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass


def evaluate(
    configs: Sequence[Config | str] | str = DEFAULT_CONFIGS,
    *,
    model: Path | str | None = None,
    text: Path | str | None = None,
    backend: str = "cpu",
    build_dir: Path | str | None = None,
    binary: Path | str | None = None,
    chunks: int = DEFAULT_CHUNKS,
    ctx: int = DEFAULT_CTX,
    threads: int | None = None,
    kld: bool = True,
    extra_args: Sequence[str] = (),
    progress: Progress | None = None,
    workdir: Path | str | None = None,
) -> list[Result]:
    """Run llama-perplexity for each configuration; one Result per configuration, in order.

    binary: a llama-perplexity to use (default: find_binary for backend / build_dir).
    model / text default to the Gemma 3 270M test model and the pinned text.
    workdir: where the temporary folder for the base logits goes (default: the cache).
    Failing configurations come back with ok=False; nothing is raised for them.
    """
    progress = progress or Progress()
    if isinstance(configs, str):
        configs = parse_configs(configs)
    configs = [c if isinstance(c, Config) else Config.parse(c) for c in configs]
    if not configs:
        raise TqpatchError("no configuration to evaluate")
    if chunks < 1 or ctx < 16:
        raise TqpatchError("--chunks must be >= 1 and --ctx >= 16")
    threads = threads or os.cpu_count() or 1

    model = check_model(model)
    text = check_text(text)
    if binary is None:
        from . import build  # may still be landing: import only when needed

        binary = build.find_binary("llama-perplexity", backend,
                                   Path(build_dir) if build_dir else None)
    binary = Path(binary)
    if not binary.is_file():
        raise TqpatchError(f"{binary} is missing: build it with "
                           f"`tqpatch build --backend {backend}`")

    common = dict(ctx=ctx, chunks=chunks, threads=threads, extra_args=extra_args)
    bpv = layer_bpvs(configs, model, ctx)
    results: list[Result] = []
    if not kld:
        for i, cfg in enumerate(configs, 1):
            results.append(_one(binary, model, text, cfg, i, len(configs), progress, common,
                                bpv=bpv.get(cfg)))
        fill_deltas(results)
        return results

    from . import paths

    root = Path(workdir) if workdir else paths.cache_root() / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    n_vocab = model_vocab_size(model) or GEMMA3_VOCAB
    size = base_file_bytes(chunks, ctx, n_vocab)
    if size > BASE_FILE_WARN_BYTES:
        progress.warn(
            f"the f16 base logits for {chunks} chunks x {ctx} tokens take up to "
            f"{size / 1024**3:.1f} GiB in {root} (n_vocab {n_vocab}); lower --chunks or "
            "--ctx, or use --no-kld, if that is too much")
    free = shutil.disk_usage(root).free
    if size > free:
        raise TqpatchError(
            f"the f16 base logits need up to {size / 1024**3:.1f} GiB but {root} has "
            f"{free / 1024**3:.1f} GiB free: lower --chunks or --ctx, point TQPATCH_CACHE "
            "at a larger disk, or use --no-kld")
    tmp = Path(tempfile.mkdtemp(prefix="eval-", dir=root))
    try:
        base_file = tmp / "f16-base.kld"
        total = len(configs)
        base = _one(binary, model, text, BASELINE, 0, total, progress,
                    {**common, "kld_base": base_file}, what="f16/f16 base logits")
        if not base.ok:
            for cfg in configs:
                results.append(Result(cfg, ok=False, returncode=base.returncode,
                                      error=f"the f16/f16 base run failed ({base.error})",
                                      log_tail=base.log_tail, base_command=base.command))
            return results
        for i, cfg in enumerate(configs, 1):
            r = _one(binary, model, text, cfg, i, total, progress,
                     {**common, "kld_base": base_file, "kld": True}, bpv=bpv.get(cfg))
            r.base_command = base.command
            results.append(r)
        fill_deltas(results, base_ppl=base.ppl)
        return results
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def perplexity_layout(ctx: int, n_batch: int = 2048) -> tuple[int, int]:
    """(n_ctx, n_parallel) of a llama-perplexity PPL/KLD run at -c ctx: it scores
    n_batch // ctx chunks at once, one sequence (stream) each."""
    n_par = max(1, n_batch // ctx)
    return n_par * ctx, n_par


def layer_bpvs(configs: Sequence[Config], model: Path, ctx: int) -> dict:
    """Config -> (bpv K, bpv V) over the model's layers, for the configurations with
    boundary layers; {} where the model cannot be read (then the types' bpv stand)."""
    todo = [c for c in configs if c.label != c.pair]
    if not todo:
        return {}
    from . import plan

    try:
        info = plan.read_model(model)
        n_ctx, n_par = perplexity_layout(ctx)
        return {c: c.layer_bpv(info, n_ctx, n_par, unified=False) for c in todo}
    except TqpatchError:
        return {}


def _one(binary: Path, model: Path, text: Path, cfg: Config, index: int, total: int,
         progress: Progress, opts: dict, what: str = "",
         bpv: tuple[float, float] | None = None) -> Result:
    cmd = build_command(binary, model, text, cfg, **opts)
    env = cfg.env()
    progress.start(index, total, cfg, what)
    rc, out, seconds = _run(cmd, env)
    result = _judge(Result(cfg, command=cmd, env=env), rc, out)
    result.seconds = seconds
    if bpv is not None:
        result.bpv_k, result.bpv_v = bpv
    progress.finish(index, total, result, what)
    return result


def check_model(model: Path | str | None) -> Path:
    if model is None:
        from . import model as model_mod

        return model_mod.ensure_model()
    path = Path(model).expanduser()
    if not path.is_file():
        raise TqpatchError(f"model file {path} not found: pass an existing .gguf with --model, "
                           "or leave --model out to use the Gemma 3 270M test model")
    return path


def check_text(text: Path | str | None) -> Path:
    if text is None:
        return default_text()
    path = Path(text).expanduser()
    if not path.is_file():
        raise TqpatchError(f"text file {path} not found: pass an existing file with --text, "
                           f"or leave --text out to use the pinned {DEFAULT_TEXT_REL}")
    return path


# --------------------------------------------------------------------------
# reports


def _fmt(value: float | None, spec: str, empty: str = "-") -> str:
    if value is None:
        return empty
    return format(value, spec)


def _ppl(r: Result) -> str:
    if r.ppl is None:
        return "-"
    return f"{r.ppl:.4f} ± {r.ppl_err:.4f}" if r.ppl_err is not None else f"{r.ppl:.4f}"


def _kld(r: Result) -> str:
    if r.kld_mean is None:
        return "-"
    return f"{r.kld_mean:.6f}"


HEADERS = ("K", "V", "bpv K", "bpv V", "PPL", "ΔPPL %", "mean KLD", "KLD p99",
           "top-1 %", "KV MiB", "time s")


def _variant(cfg: Config) -> str:
    """The boundary part of a label (':bk2:bv2'), shown after V in tables."""
    return cfg.label[len(cfg.pair):]


def table_rows(results: Sequence[Result]) -> list[list[str]]:
    rows = []
    for r in results:
        base = [r.k, r.v + _variant(r.config), f"{r.eff_bpv_k:.3f}", f"{r.eff_bpv_v:.3f}"]
        if not r.ok:
            rows.append(base + ["FAILED", "-", "-", "-", "-", "-", f"{r.seconds:.1f}"])
            continue
        rows.append(base + [
            _ppl(r), _fmt(r.delta_ppl_pct, "+.2f"), _kld(r), _fmt(r.kld_p99, ".5f"),
            _fmt(r.top1, ".2f"), _fmt(r.kv_mib, ".2f"), f"{r.seconds:.1f}",
        ])
    return rows


def render_table(results: Sequence[Result]) -> str:
    """A plain-text table for the terminal, then the log tail of every failed config."""
    rows = [list(HEADERS)] + table_rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    left = {0, 1}
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    for r in results:
        if not r.ok:
            lines.append("")
            lines.append(f"{r.label} FAILED: {r.error}")
            if r.log_tail:
                lines.extend("  | " + line for line in r.log_tail.splitlines())
    return "\n".join(lines)


def machine_meta() -> dict:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def make_meta(*, model: Path, text: Path, binary: Path | None, backend: str, chunks: int,
              ctx: int, threads: int, kld: bool) -> dict:
    """Everything a report needs to be reproduced: inputs with sha256, settings, machine."""
    from .model import sha256_file

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "model": str(model), "model_sha256": sha256_file(Path(model)),
        "text": str(text), "text_sha256": sha256_file(Path(text)),
        "binary": str(binary) if binary else None, "backend": backend,
        "chunks": chunks, "ctx": ctx, "threads": threads, "kld": kld,
        "machine": machine_meta(),
    }


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def render_markdown(results: Sequence[Result], meta: dict) -> str:
    """A Markdown report: the table, the exact command lines, inputs with sha256, machine, date."""
    out = ["# tqpatch eval: K/V cache quality", ""]
    date = meta.get("date")
    if date:
        out += [f"Date: {date}", ""]
    out.append("| " + " | ".join(HEADERS) + " |")
    out.append("|" + "|".join(["---", "---"] + ["---:"] * (len(HEADERS) - 2)) + "|")
    for row in table_rows(results):
        out.append("| " + " | ".join(_md_escape(c) for c in row) + " |")
    out.append("")
    kld = meta.get("kld", any(r.kld_mean is not None for r in results))
    notes = ["bpv: bits per value of the cache type (with boundary layers :bkN / :bvN, the "
             "first and last N layers' K / V at q8_0, the average over all layers)",
             "ΔPPL %: PPL change against f16/f16"]
    if kld:
        notes += ["mean KLD / KLD p99: KL divergence of the token distribution from the "
                  "f16/f16 run (mean, 99th percentile)",
                  "top-1 %: how often the most likely token equals f16/f16's (\"Same top p\")"]
    notes.append("KV MiB: KV cache llama-perplexity allocated (all caches summed)")
    if kld:
        notes.append("the --kl-divergence-base file lived in a temporary folder that was "
                     "deleted after the runs")
    out += [f"- {n}" for n in notes]
    failed = [r for r in results if not r.ok]
    if failed:
        out += ["", "## Failed configurations", ""]
        for r in failed:
            out += [f"### {r.label}", "", f"{r.error}", ""]
            if r.log_tail:
                out += ["```", r.log_tail, "```", ""]
    out += ["", "## Inputs", ""]
    for key, label in (("model", "Model"), ("text", "Text")):
        if meta.get(key):
            sha = meta.get(f"{key}_sha256")
            out.append(f"- {label}: `{meta[key]}`" + (f" (sha256 `{sha}`)" if sha else ""))
    settings = [f"{k} {meta[k]}" for k in ("backend", "chunks", "ctx", "threads") if k in meta]
    if settings:
        out.append("- Settings: " + ", ".join(settings))
    if meta.get("binary"):
        out.append(f"- Binary: `{meta['binary']}`")
    machine = meta.get("machine") or {}
    if machine:
        out += ["", "## Machine", ""]
        out.append(f"- Platform: {machine.get('platform')}")
        out.append(f"- CPUs: {machine.get('cpu_count')}")
        if machine.get("processor"):
            out.append(f"- Processor: {machine['processor']}")
    commands = meta.get("commands")
    if commands is None:
        commands = command_lines(results)
    if commands:
        out += ["", "## Commands", "", "```sh"]
        out += list(commands)
        out += ["```"]
    return "\n".join(out) + "\n"


def command_lines(results: Sequence[Result]) -> list[str]:
    """The exact command lines that were run, in order (base-logits run first), once each."""
    out: list[str] = []
    for r in results:
        for cmd, env in ((r.base_command, None), (r.command, r.env)):
            if cmd:
                line = command_line(cmd, env)
                if line not in out:
                    out.append(line)
    return out


def to_json(results: Sequence[Result], meta: dict | None = None) -> dict:
    return {"meta": meta or {}, "results": [r.to_dict() for r in results]}


PLOT_INSTALL_HINT = ("matplotlib is not installed: `pip install 'tqpatch[plot]'` "
                     "(or `pip install matplotlib`) to get --plot")


def plot(results: Sequence[Result], out: Path | str) -> Path:
    """Mean KLD (log scale) and ΔPPL % against average bits per value; TqpatchError without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TqpatchError(PLOT_INSTALL_HINT) from None
    ok = [r for r in results if r.ok]
    with_kld = [r for r in ok if r.kld_mean is not None and r.kld_mean > 0]
    with_dppl = [r for r in ok if r.delta_ppl_pct is not None]
    panels = []
    if with_kld:
        panels.append(("mean KLD vs f16/f16", "kld"))
    panels.append(("ΔPPL % vs f16/f16", "dppl"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (title, kind) in zip(axes[0], panels):
        rows = with_kld if kind == "kld" else with_dppl
        xs = [r.avg_bpv for r in rows]
        ys = [r.kld_mean if kind == "kld" else r.delta_ppl_pct for r in rows]
        ax.scatter(xs, ys, color=["tab:red" if "turbo" in r.label else "tab:blue" for r in rows])
        for x, y, r in zip(xs, ys, rows):
            ax.annotate(r.label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if kind == "kld":
            ax.set_yscale("log")
        else:
            ax.axhline(0.0, color="grey", linewidth=0.8)
            if ys and max(abs(y) for y in ys) > 100:
                ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xlabel("average KV bits per value ((bpv K + bpv V) / 2)")
        ax.set_ylabel(title)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out

