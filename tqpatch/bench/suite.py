"""What one `tqpatch bench` runs together: the options checked, binaries and models found first, the parts in order, results."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from .. import formats, pin, plan
from ..backends.base import Backend
from ..build_record import exe, find_binary
from ..errors import TqpatchError
from ..perf_cases import FA_DECODE
from .common import parse_config_list, parse_int_list
from .fa_perf import FA_TYPES, run_fa
from .kv_size import KV_CTX, run_kv
from .llama_bench import (
    BENCH_CONFIGS,
    BENCH_DEPTHS,
    BENCH_PP,
    BENCH_REPS,
    BENCH_TG,
    run_bench,
)
from .model import resolve_models
from .report import PARTS, SCHEMA

DEFAULT_TIMEOUT = 300  # seconds per subprocess (one llama-bench invocation takes < 1 min on an H100)
BINARIES = {"fa": "test-backend-ops", "bench": "llama-bench", "kv": "llama-cli"}


@dataclass
class Options:
    """One run's settings, checked (see options()); the command's options map onto these."""

    backend: Backend
    parts: list[str] = field(default_factory=lambda: list(PARTS))
    build_dir: Path | None = None
    bin_dir: Path | None = None
    device: str | None = None           # test-backend-ops -b (default the backend's first device)
    models: list[str] = field(default_factory=list)
    default_model: bool = True
    synth: bool = False
    synth_path: str | None = None
    fa_types: list[str] = field(default_factory=lambda: list(FA_TYPES))
    fa_heads: list[int] = field(default_factory=lambda: list(FA_DECODE.head_sizes))
    configs: list[tuple[str, str]] = field(default_factory=lambda: list(BENCH_CONFIGS))
    depths: list[int] = field(default_factory=lambda: list(BENCH_DEPTHS))
    pp: int = BENCH_PP
    tg: int = BENCH_TG
    reps: int = BENCH_REPS
    ngl: int = 99
    threads: int | None = None
    kv_configs: list[tuple[str, str]] = field(default_factory=lambda: list(plan.CONFIGS))
    kv_ctx: int = KV_CTX
    timeout: float = DEFAULT_TIMEOUT
    out: Path | None = None


def options(backend: Backend, *, parts: str, fa_types: str, fa_heads: str, configs: str, depths: str,
            kv_configs: str | None, **rest) -> Options:
    """Options from the command's text values; TqpatchError naming the bad one."""
    part_list = [x.strip() for x in parts.split(",") if x.strip()]
    bad = [x for x in part_list if x not in PARTS]
    if bad or not part_list:
        raise TqpatchError(f"--parts takes a comma list of {', '.join(PARTS)} (got {','.join(bad) or 'none'})")
    types = [t.strip() for t in fa_types.split(",") if t.strip()]
    for t in types:
        formats.type_info(t)
    opts = Options(backend=backend, parts=part_list, fa_types=types,
                   fa_heads=parse_int_list(fa_heads, "--fa-heads"), configs=parse_config_list(configs),
                   depths=parse_int_list(depths, "--depths"),
                   kv_configs=parse_config_list(kv_configs) if kv_configs else list(plan.CONFIGS), **rest)
    for name, val in (("--pp", opts.pp), ("--tg", opts.tg)):
        if val < 0:
            raise TqpatchError(f"{name} must be >= 0")
    if opts.pp == 0 and opts.tg == 0:
        raise TqpatchError("--pp and --tg are both 0: nothing to measure")
    if opts.reps < 1 or opts.kv_ctx < 1 or opts.timeout <= 0:
        raise TqpatchError("--reps, --kv-ctx and --timeout must be positive")
    return opts


def find_bin(name: str, opts: Options) -> Path:
    """A binary of the build (--bin-dir, else tqpatch's build record); TqpatchError if absent."""
    if opts.bin_dir:
        p = exe(Path(opts.bin_dir).expanduser() / name)
        if not p.is_file():
            raise TqpatchError(f"{p} is missing: build {name} into --bin-dir {opts.bin_dir}")
        return p
    return find_binary(name, opts.backend, Path(opts.build_dir).expanduser() if opts.build_dir else None)


class _RunArgs(TypedDict):
    """The arguments the bench and kv parts share."""

    ngl: int
    threads: int | None
    timeout: float
    out_dir: Path | None


def meta_info(opts: Options, command: str) -> dict:
    return {
        "backend": opts.backend.name, "host": platform.node(), "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "llama_cpp_commit": pin.LLAMA_CPP_COMMIT, "commands": [command],
    }


def run_all(opts: Options, command: str) -> dict:
    """Every part of opts.parts, in order; results saved to OUT/results.json after each run."""
    # the output folder and everything to run first: a missing binary or model fails
    # before anything runs
    out_dir = None
    if opts.out:
        out_dir = Path(opts.out).expanduser()
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TqpatchError(f"cannot make --out {out_dir}: {e.strerror or e}") from None
    bins = {part: find_bin(BINARIES[part], opts) for part in PARTS if part in opts.parts}
    models = []
    if {"bench", "kv"} & set(opts.parts):
        models = resolve_models(opts.models, default_model=opts.default_model, synth=opts.synth,
                                synth_path=opts.synth_path)
    results: dict = {"schema": SCHEMA, "meta": meta_info(opts, command)}
    results["meta"]["models"] = models
    results["meta"]["binaries"] = {k: str(v) for k, v in bins.items()}

    def checkpoint(name: str):
        # results so far in OUT/results.json after every run: a killed session keeps them
        def write(part: dict) -> None:
            results[name] = part
            if out_dir is not None:
                (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        return write

    e2e = opts.backend.e2e
    common = _RunArgs(ngl=opts.ngl, threads=opts.threads, timeout=opts.timeout, out_dir=out_dir)
    if "fa" in opts.parts:
        checkpoint("fa")(run_fa(bins["fa"], opts.device or opts.backend.ggml_backend_name, opts.fa_heads,
                                opts.fa_types, opts.timeout, out_dir))
    if "bench" in opts.parts:
        checkpoint("bench")(run_bench(bins["bench"], models, opts.configs, depths=opts.depths, pp=opts.pp,
                                      tg=opts.tg, reps=opts.reps, backend_args=e2e.bench_args,
                                      checkpoint=checkpoint("bench"), **common))
    if "kv" in opts.parts:
        checkpoint("kv")(run_kv(bins["kv"], models, opts.kv_configs, ctx=opts.kv_ctx,
                                backend_args=e2e.tool_args, checkpoint=checkpoint("kv"), **common))
    return results
