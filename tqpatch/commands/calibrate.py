"""`tqpatch calibrate`: fit a turbo cache's calibration to a model (--turbo-calib FILE)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from .. import build_record, calibrate, capture, fsutil
from ..errors import TqpatchError
from ..plan import read_model
from ..plan.gguf_file import require_gguf
from .options import backend_option


def _check_out(out: Path) -> None:
    fsutil.refuse_special(out)  # write() renames over the path: a FIFO or link there would go
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK | os.X_OK):
        raise TqpatchError(f"cannot write {out}: folder {out.parent} does not exist or is not writable")


@click.command("calibrate")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Calibration file to write (default: MODEL's name + .turbo-calib.gguf beside it).")
@click.option("--rows", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Use this tqpatch-capture file (recorded with --queries) instead of running the model.")
@click.option("-f", "--text", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Text to run (default: docs/build.md of the pinned llama.cpp tree, not the text "
                   "`tqpatch eval` scores).")
@click.option("--chunks", type=click.IntRange(min=1), default=4, show_default=True,
              help="Chunks of 512 tokens to run.")
@click.option("--ctx", "serve_ctx", type=click.IntRange(min=1),
              help="Longest context the calibration must serve (default: the model's training "
                   "context): K's mean is kept only in RoPE pairs that turn less than a radian "
                   "over it.")
@click.option("--threads", type=click.IntRange(min=1), help="Threads for the model run.")
@backend_option(
              help="Whose build's tqpatch-capture runs the model (default: the backend built "
                   "last). Any build works: the capture runs on the CPU backend every build "
                   "holds, so a GPU build needs no CPU build.")
@click.option("--build-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Build directory (default: the tqpatch cache's build/<backend>).")
def command(model, out, rows, text, chunks, serve_ctx, threads, backend, build_dir):
    """Fit the calibration of a turbo KV cache to MODEL.

    \b
    Runs MODEL on a text with the tqpatch-capture tool of a build (a default
    target of `tqpatch build`), records every layer's K, V and Q as the cache
    sees them, and fits per layer a change of basis for K (a mean and
    per-channel scales, with 1/scale on Q) and per-channel scales for V
    (with 1/scale on the attention output). Attention is unchanged by it in
    exact arithmetic; a turbo cache stores K and V where its blocks lose
    least (docs/block-design.md). Use the file with `--turbo-calib FILE`
    (or LLAMA_TURBO_CALIB=FILE) when running llama.cpp with a turbo -ctk
    and/or -ctv: the K part applies to a turbo K cache, the V part to a
    turbo V cache (q8_0/turbo2 too). `tqpatch serve` calibrates by itself.
    \b
    Examples:
      tqpatch calibrate gemma.gguf                  # -> gemma.gguf.turbo-calib.gguf
      tqpatch calibrate gemma.gguf --backend cuda   # with the CUDA build's capture tool
    """
    require_gguf(model)
    n_layer = read_model(model).n_layer  # the capture's layers must be the model's
    out = out or model.with_name(model.name + ".turbo-calib.gguf")
    _check_out(out)  # before the run: a bad -o is said at once, not after minutes
    source = str(text or capture.DEFAULT_TEXT_REL)
    show = lambda c: click.echo("  " + calibrate.Calibration([c], 0).summary()[0])  # noqa: E731
    if rows is not None:
        cal = calibrate.fit_rows(rows, serve_ctx, source, progress=show, n_layer=n_layer)
        calibrate.write(cal, out, model.name)
    else:
        backend = backend or build_record.last_built(build_dir)
        click.echo(f"running {model.name} on {source} ({chunks} x 512 tokens) with the "
                   f"{backend.name} build's tqpatch-capture")
        cal = calibrate.calibrate_model(model, out, backend=backend, build_dir=build_dir,
                                        text=text, chunks=chunks, serve_ctx=serve_ctx,
                                        threads=threads, progress=show, n_layer=n_layer)
    click.echo(f"wrote {out} (valid up to {cal.ctx} tokens of context)")
    click.echo(f"use it: llama-server -m {model} -ctk turbo3 -ctv turbo3 -fa on --turbo-calib {out}")
