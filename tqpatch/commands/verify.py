"""`tqpatch verify`: run the built kernels of one backend against the NumPy reference."""

from __future__ import annotations

from pathlib import Path

import click

from .. import verify as verify_mod
from ..formats import TURBO_FORMATS
from .options import backend_option, of_build_option


def _split_types(ctx, param, value):
    names = [t.strip() for v in value or () for t in v.replace(";", ",").split(",") if t.strip()]
    if not names:
        return tuple(TURBO_FORMATS)
    bad = [t for t in names if t not in TURBO_FORMATS]
    if bad:
        raise click.BadParameter(f"{', '.join(bad)}: choose from {', '.join(TURBO_FORMATS)}")
    return tuple(dict.fromkeys(names))


@click.command("verify")
@backend_option(help="Which built backend to verify (default: the one built last).")
@click.option("--build-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Build directory (default: the tqpatch cache's build/<backend>).")
@of_build_option(
              help="Verify the backend inside another backend's build: every build holds the "
                   "CPU backend, e.g. --backend cpu --of-build vulkan.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print the machine-readable report.")
@click.option("--quick", is_flag=True, help="Head size 128 only and fewer rows (a smoke test).")
@click.option("--types", "types", multiple=True, callback=_split_types, metavar="T[,T...]",
              help="Turbo types to verify (default: all of them).")
def command(backend, build_dir, of_build, seed, as_json, quick, types):
    """Check built kernels against the NumPy reference.

    \b
    Runs SET_ROWS (quantize), GET_ROWS and CPY (dequantize), MUL_MAT (vec_dot)
    and FLASH_ATTN_EXT (every K type with every V type in f16, q8_0, turbo*)
    through ggml on the backend's device, with seeded random and adversarial
    inputs, and compares with tqpatch.reference: quantized bytes equal up to
    counted decision-boundary cases and 1-ulp scales, dequantization bit-exact,
    dot products and attention within float32-accumulation bounds.
    Exits 1 if any case fails. Only the backend named is verified. Without a
    Mac, --backend metal runs the rendered Metal kernels host-emulated (no
    build needed; the report says so; docs/metal.md).
    \b
    Examples:
      tqpatch verify                 # what `tqpatch build` built last
      tqpatch verify --backend cpu
      tqpatch verify --backend cuda --quick --types turbo3
      tqpatch verify --backend cpu --of-build vulkan
    """
    if of_build and backend is None:
        raise click.UsageError("--of-build needs --backend: the backend to verify inside that build")
    report = verify_mod.verify(backend, build_dir=build_dir, seed=seed, quick=quick, types=types,
                               of_build=of_build)
    click.echo(report.to_json() if as_json else verify_mod.render_table(report), nl=False)
    if as_json:
        click.echo()
    if not report.passed:
        raise SystemExit(1)
