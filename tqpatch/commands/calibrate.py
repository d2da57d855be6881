"""`tqpatch calibrate`: fit a turbo cache's calibration to a model (LLAMA_TURBO_CALIB)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from ..errors import TqpatchError


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
def command(model, out, rows, text, chunks, serve_ctx, threads):
    """Fit the calibration of a turbo KV cache to MODEL.

    \b
    Runs MODEL on a text with the tqpatch-capture tool (built with `tqpatch
    build --targets tqpatch-capture`), records every layer's K, V and Q as the
    cache sees them, and fits per layer a change of basis for K (a mean and
    per-channel scales, with 1/scale on Q) and per-channel scales for V
    (with 1/scale on the attention output). Attention is unchanged by it in
    exact arithmetic; a turbo cache stores K and V where its blocks lose
    least (docs/block-design.md). Use the file with LLAMA_TURBO_CALIB=FILE
    when running llama.cpp with a turbo -ctk and/or -ctv: the K part applies
    to a turbo K cache, the V part to a turbo V cache (q8_0/turbo2 too).
    """
    from .. import calibrate, capture

    out = out or model.with_name(model.name + ".turbo-calib.gguf")
    with tempfile.TemporaryDirectory(prefix="tqpatch-calib-") as tmp:
        if rows is None:
            click.echo(f"running {model.name} on {text or capture.DEFAULT_TEXT_REL} ({chunks} x 512 tokens)")
            rows = capture.run(model, Path(tmp) / "rows.bin", text=text, chunks=chunks, threads=threads)
        data = capture.read(rows)
        if not capture.layers(data, "q"):
            raise TqpatchError(f"{rows}: no query rows; record it with tqpatch-capture --queries")
        cal = calibrate.fit(data, serve_ctx, source=str(text or capture.DEFAULT_TEXT_REL),
                            progress=lambda c: click.echo("  " + calibrate.Calibration([c], 0).summary()[0]))
    calibrate.write(cal, out, model.name)
    click.echo(f"wrote {out} (valid up to {cal.ctx} tokens of context)")
    click.echo(f"use it: LLAMA_TURBO_CALIB={out} llama-server -m {model} -ctk turbo3 -ctv turbo3 ...")
