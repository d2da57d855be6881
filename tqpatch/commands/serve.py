"""`tqpatch serve`: the most compressed KV cache that keeps this model's quality, measured
here, and a llama-server running with it."""

from __future__ import annotations

from pathlib import Path

import click

from ..plan.modelinfo import MAX_CTX
from ..quality import LEVELS
from ..serve import session
from .options import backend_option, of_build_option


def _ctx(ctx, param, value):
    if value is None or value == "max":
        return None
    try:
        n = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: a number of tokens, or max") from None
    if n < 256:
        raise click.BadParameter(f"{n}: at least 256 tokens")
    if n > MAX_CTX:
        raise click.BadParameter(f"{n}: llama.cpp takes at most {MAX_CTX} (an int32)")
    return n


@click.command("serve", context_settings={"ignore_unknown_options": True})
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--ctx", "ctx", callback=_ctx, default=None, metavar="N|max",
              help="Context to serve (refused, with the largest that fits, if it does not "
                   "fit). Default: the largest that fits the device's free memory with the "
                   "chosen cache and the weights, at most the model's trained context.")
@click.option("--quality", "level", type=click.Choice(list(LEVELS)), default="balanced",
              show_default=True,
              help="lossless: KLD within q8_0/q8_0's; balanced: at most half of q4_0/q4_0's; "
                   "small: no worse than q4_0/q4_0's; all measured in the same probe, and "
                   "coherent.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--no-calib", is_flag=True, help="Probe and serve without the calibration.")
@click.option("--recalibrate", is_flag=True, help="Calibrate and probe again (ignore the cache).")
@backend_option(
              help="The device to serve on (default: this machine's GPU, else the CPU, as "
                   "`tqpatch build` picks).")
@of_build_option(
              help="Serve on --backend's device inside another backend's build (every build "
                   "holds the CPU), e.g. --backend cpu --of-build vulkan.")
@click.option("--build-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Build directory (default: the tqpatch cache's build/<backend>).")
@click.option("--threads", "-t", type=click.IntRange(min=1), default=None,
              help="CPU threads of the probe runs (default: all).")
@click.argument("server_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- LLAMA_SERVER_ARGS]")
def command(model, ctx, level, port, host, no_calib, recalibrate, backend, of_build, build_dir,
            threads, server_args):
    """Serve MODEL with the most compressed KV cache that keeps its quality.

    \b
    1. builds and verifies llama.cpp for this machine's GPU if needed;
    2. calibrates the turbo cache to MODEL once (cached by its sha256);
    3. probes the candidate K/V configurations, calibrated and not, on this
       build: KLD against f16 on a short bundled text, and coherence prompts;
    4. picks the most compressed one that meets --quality, and the largest
       context that fits free device memory;
    5. runs llama-server in the foreground (Ctrl-C stops it).
    A second start reuses the calibration and the probe.
    \b
    Examples:
      tqpatch serve model.gguf
      tqpatch serve model.gguf --quality lossless --ctx 8192 --port 9000
      tqpatch serve model.gguf -- --parallel 4 --api-key secret
    """
    extra = list(server_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    req = session.Request(model=Path(model).expanduser(), ctx=ctx, level=level, host=host,
                          port=port, extra=extra, calibrate=not no_calib,
                          recalibrate=recalibrate, backend=backend, build_of=of_build,
                          build_dir=build_dir, threads=threads)
    raise SystemExit(session.run(req))
