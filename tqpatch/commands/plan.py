"""`tqpatch plan`: KV-cache memory per K/V configuration for a GGUF model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from .. import plan
from ..eval import parse_configs
from ..plan import CONFIGS, DEFAULT_OVERHEAD_MIB, MAX_BOUNDARY
from ..plan.kv import MAX_OVERHEAD_MIB, MAX_VRAM_GIB
from ..plan.modelinfo import MAX_CTX
from ..quality import DEFAULT_LEVEL, LEVELS
from ..serve import store


class FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses nan and inf (FloatRange lets them through)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


@click.command("plan")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-c", "--ctx", type=click.IntRange(min=0, max=MAX_CTX), required=True,
              help="Context size, as llama.cpp's -c, an int32 (0 = the model's trained context).")
@click.option("--vram", type=FiniteFloat(min=0, min_open=True, max=MAX_VRAM_GIB), default=None,
              metavar="GiB", help="GPU memory budget: also show the largest context that fits.")
@click.option("-np", "--parallel", type=click.IntRange(min=1, max=256), default=1, show_default=True,
              help="Parallel sequences (llama-server slots), as llama.cpp's -np.")
@click.option("--kv-unified/--no-kv-unified", "unified", default=True, show_default=True,
              help="One KV buffer shared by all slots (llama.cpp -kvu) or one stream per slot.")
@click.option("--overhead", type=FiniteFloat(min=0, max=MAX_OVERHEAD_MIB), default=DEFAULT_OVERHEAD_MIB,
              show_default=True, metavar="MiB",
              help="Fixed allowance for compute buffers and context with --vram.")
@click.option("--boundary-k", type=click.IntRange(min=0, max=MAX_BOUNDARY), default=0,
              show_default=True, metavar="N",
              help="Keep the first and last N layers of a turbo K cache at q8_0 "
                   "(LLAMA_TURBO_BOUNDARY_K=N).")
@click.option("--boundary-v", type=click.IntRange(min=0, max=MAX_BOUNDARY), default=0,
              show_default=True, metavar="N",
              help="Keep the first and last N layers of a turbo V cache at q8_0 "
                   "(LLAMA_TURBO_BOUNDARY_V=N).")
@click.option("--configs", "configs", default=None, metavar="K/V[:bkN][:bvN],...",
              help="K/V configurations to size, any cache type llama.cpp takes (default: "
                   "the standard set); :bkN / :bvN give one its own boundary layers.")
@click.option("--quality", type=click.Choice(tuple(LEVELS)), default=DEFAULT_LEVEL,
              show_default=True,
              help="With a probe from `tqpatch serve`: the level the recommendation meets, as "
                   "serve's --quality (" + "; ".join(f"{k}: {v}" for k, v in LEVELS.items())
                   + ").")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def command(model, ctx, vram, parallel, unified, overhead, boundary_k, boundary_v, configs,
            quality, as_json):
    """KV-cache memory of MODEL (a GGUF) at -c CTX for each K/V cache type.

    \b
    Sizes are computed exactly as the pinned llama.cpp allocates them
    (cell counts padded to 256, sliding-window layers in their own smaller
    cache, flash attention on), for each configuration plain and, marked
    `cal`, with the model's calibration (`tqpatch calibrate`, then
    llama-server --turbo-calib FILE), then a recommendation.
    Where `tqpatch serve` has probed this model (its cache), the rows show
    the probe's KLD and coherence, and the recommendation is serve's: the
    most compressed configuration that meets --quality and fits --vram
    (a calibrated turbo K where it measures so, with its --turbo-calib).
    Without a probe: keep K at q8_0 and compress V (-ctk q8_0 -ctv turbo4
    by default), since K precision dominates attention quality; never a
    configuration measured incoherent for the model's family (the
    `coherent` column), and for a family not measured only q8_0 K.
    With --vram the budget is: weights (all layers on the GPU) + KV cache
    + a fixed compute allowance (--overhead, default 1024 MiB).
    With --boundary-k/--boundary-v the turbo rows count the first and last
    N layers at q8_0 (bits per value: the average over all layers).
    """
    info = plan.read_model(model)
    bkw = dict(boundary_k=boundary_k, boundary_v=boundary_v)
    probe = store.cached_probe(model)
    rows = plan.plan_rows(info, ctx, parallel, vram, overhead, unified=unified,
                          configs=_configs(configs),
                          calibrated=plan.CALIBRATED if configs is None else (),
                          probe=probe, **bkw)
    rec = plan.recommend(info, ctx, parallel, vram, overhead, unified=unified, probe=probe,
                         level=quality, **bkw)
    if as_json:
        click.echo(json.dumps(plan.plan_json(info, ctx, rows, rec, parallel, vram, overhead, unified,
                                             probe=probe, level=quality, **bkw), indent=2))
    else:
        click.echo(plan.render_text(info, ctx, rows, rec, parallel, vram, overhead, unified,
                                    probe=probe, **bkw))


def _configs(text: str | None):
    """(K, V) pairs, or (K, V, bk, bv) for a configuration with its own boundary layers."""
    if text is None:
        return CONFIGS
    return [(c.k, c.v) if c.label == c.pair else (c.k, c.v, c.bk, c.bv)
            for c in parse_configs(text)]
