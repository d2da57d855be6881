"""`tqpatch bench`: speed and KV size of the turbo cache types on a built llama.cpp, as tables."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import click
from click.core import ParameterSource

from .. import build_record, fsutil
from ..backends.base import Backend
from ..bench import report, suite
from ..bench.common import log, pair
from ..bench.fa_perf import FA_TYPES
from ..bench.kv_size import KV_CTX
from ..bench.llama_bench import (
    BENCH_CONFIGS,
    BENCH_DEPTHS,
    BENCH_PP,
    BENCH_REPS,
    BENCH_TG,
)
from ..errors import TqpatchError
from ..perf_cases import FA_DECODE
from .options import backend_option

EXIT_RUN_FAILED = 3  # a part could not measure (its rows say FAILED); a MISS is a result


def _given(ctx: click.Context) -> list[str]:
    """The options given on the command line, as they would be typed again (for the record)."""
    out: list[str] = []
    for p in ctx.command.params:
        if ctx.get_parameter_source(p.name) is not ParameterSource.COMMANDLINE:
            continue
        flag, value = p.opts[0], ctx.params[p.name]
        if getattr(p, "is_flag", False):
            out.append(flag)
            continue
        for v in value if p.multiple else [value]:
            out += [flag, v.name if isinstance(v, Backend) else str(v)]
    return out


def _check_writable(path: Path | None) -> None:
    """A --json / --markdown path refused before anything runs (not after a long measurement)."""
    if path is None:
        return
    fsutil.refuse_special(path)
    if not path.parent.is_dir():
        raise TqpatchError(f"cannot write {path}: {path.parent} is not a folder")


def _write(path: Path, text: str) -> None:
    try:
        fsutil.write_atomic(path, text.encode())
    except OSError as e:
        raise TqpatchError(f"cannot write {path}: {fsutil.write_failure(e, path.parent)}") from None
    log(f"wrote {path}")


@click.command("bench")
@backend_option("Backend of the build (its device for test-backend-ops, its end-to-end "
                "arguments; default: the backend built last).")
@click.option("--build-dir", type=click.Path(file_okay=False, path_type=Path),
              help="tqpatch build folder (default: tqpatch's for the backend).")
@click.option("--bin-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the binaries, for a build tqpatch did not record.")
@click.option("--device", help="test-backend-ops -b device (default the backend's first: CUDA0, CPU, ...).")
@click.option("--parts", default=",".join(report.PARTS), show_default=True,
              help="Comma list of fa, bench, kv.")
@click.option("--model", "models", multiple=True,
              help="GGUF to benchmark (repeatable; default the Gemma 3 270M test model).")
@click.option("--no-default-model", is_flag=True, help="No Gemma default when --model is not given.")
@click.option("--synth", is_flag=True, help="Also the synthetic 8B-attention model (written once).")
@click.option("--synth-path", help="Where the synthetic GGUF lives (default: the tqpatch models folder).")
@click.option("--fa-types", default=",".join(FA_TYPES), show_default=True, help="K/V types of the fa part.")
@click.option("--fa-heads", default=",".join(map(str, FA_DECODE.head_sizes)), show_default=True,
              help="Head sizes of the fa part.")
@click.option("--configs", default=",".join(pair(*c) for c in BENCH_CONFIGS), show_default=True,
              help="K/V pairs of the bench part.")
@click.option("--depths", default=",".join(map(str, BENCH_DEPTHS)), show_default=True,
              help="llama-bench -d list.")
@click.option("--pp", type=int, default=BENCH_PP, show_default=True, help="llama-bench -p (0: none).")
@click.option("--tg", type=int, default=BENCH_TG, show_default=True, help="llama-bench -n (0: none).")
@click.option("--reps", type=int, default=BENCH_REPS, show_default=True, help="llama-bench -r.")
@click.option("--ngl", type=int, default=99, show_default=True, help="-ngl for llama-bench and llama-cli.")
@click.option("--threads", type=int, help="-t for llama-bench and llama-cli (default theirs).")
@click.option("--kv-configs", help="K/V pairs of the kv part (default: tqpatch plan's list).")
@click.option("--kv-ctx", type=int, default=KV_CTX, show_default=True, help="-c of the kv part.")
@click.option("--timeout", type=float, default=suite.DEFAULT_TIMEOUT, show_default=True,
              help="Seconds per subprocess.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for raw outputs and results.json (rewritten after each run).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the results as JSON.")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the tables as Markdown.")
@click.option("--load", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Render saved --json files (repeatable, later parts win) instead of running.")
@click.pass_context
def command(ctx, backend, no_default_model, json_path, markdown, load, **opts):
    """Speed and size of the turbo KV-cache types on a built llama.cpp.

    \b
    Parts (--parts, default all three):
      fa     test-backend-ops perf on the patch's flash-attention decode cases
             (their shape: tqpatch/perf_cases.py FA_DECODE; every K/V pair of
             --fa-types at --fa-heads), one run: us per run, K+V GB/s, ratios
             to f16/f16 and q8_0/q8_0
      bench  llama-bench --pp / --tg at --depths (-fa 1), one run per model
             and K/V pair
      kv     the KV-cache size llama.cpp reports (llama-cli -lv 4) against
             `tqpatch plan`'s prediction and the formats' bits per value
    \b
    Models: --model (default the Gemma 3 270M test model) and --synth, a
    random-weight GGUF with an 8B model's attention. Tables go to stdout,
    progress to stderr; targets (issue 13) are marked PASS / MISS, n/a where
    not measured. Exit 0 when every part measured, 1 for a bad option or a
    missing binary or model (before anything runs), 3 when a run failed.
    \b
    Example:
      tqpatch bench --backend cuda --synth --out OUT --json OUT/r.json --markdown OUT/r.md
      tqpatch bench --load fa.json --load bench.json --markdown all.md
    """
    json_path = json_path.expanduser() if json_path else None
    markdown = markdown.expanduser() if markdown else None
    for path in (json_path, markdown):
        _check_writable(path)
    if load:
        results = report.merge(load)
    else:
        if backend is None and opts.get("bin_dir"):
            raise TqpatchError("--bin-dir needs --backend: which backend those binaries were built for")
        backend = backend or build_record.last_built(opts.get("build_dir"))
        opts = suite.options(backend, default_model=not no_default_model, **opts)
        results = suite.run_all(opts, " ".join([ctx.command_path, *map(shlex.quote, _given(ctx))]))
    click.echo(report.render(results), nl=False)
    if json_path:
        _write(json_path, json.dumps(results, indent=1) + "\n")
    if markdown:
        _write(markdown, report.render(results, md=True))
    if report.failed(results):
        ctx.exit(EXIT_RUN_FAILED)
