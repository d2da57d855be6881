"""`tqpatch codebook`: generate, regenerate or check Lloyd-Max codebooks."""

from __future__ import annotations

import os
from pathlib import Path

import click

from .. import codebook as cbmod
from .. import paths
from .. import fsutil
from ..errors import TqpatchError

HELP = f"""Generate or check Lloyd-Max codebooks.

\b
A codebook is the minimum-MSE scalar quantizer with 2**BITS levels for one
coordinate of a block of DIM values, computed deterministically (quadrature
on a fixed grid, no random numbers): the same arguments give the same bytes
on any machine.

\b
Distributions (--dist):
  sphere    one coordinate of a random unit vector in DIM dimensions,
            density ~ (1-t^2)^((DIM-3)/2) on [-1, 1] (TurboQuant-MSE,
            blocks scaled by their norm)
  gaussian  N(0, 1/DIM), the large-DIM approximation of sphere
  absmax    x_i / max|x| for a Gaussian block of DIM values, including the
            point masses 1/(2 DIM) at +-1 (the maximum itself)

\b
The turbo types scale each block by its absolute maximum and use:
  turbo2 -> absmax-d128-b2   turbo3 -> absmax-d128-b3   turbo4 -> absmax-d64-b4

\b
Allowed: --bits {', '.join(map(str, cbmod.BITS))}; --dim {', '.join(map(str, cbmod.DIMS))}.
Shipped in the package: every dist x dim {', '.join(map(str, cbmod.SHIPPED_DIMS))} x bits 1-4.

\b
Examples:
  tqpatch codebook --dist absmax --dim 128 --bits 3       # write into the package
  tqpatch codebook --dist sphere --dim 64 --bits 2 --out cb.json
  tqpatch codebook --all      # regenerate every shipped codebook
  tqpatch codebook --check    # fail if a shipped file differs from a regeneration
"""


def _atomic_write(path: Path, text: str) -> None:
    """Write text to path through a temporary file in the same folder + rename.

    The file gets the mode a plain write would (umask default, 0644-ish), not
    a private temp file's 0600.
    """
    folder = path.parent
    if not folder.is_dir():
        raise TqpatchError(f"cannot write {path}: folder {folder} does not exist")
    try:
        fsutil.write_atomic(path, text.encode("utf-8"), mode=fsutil.default_file_mode())
    except OSError as e:
        raise TqpatchError(f"cannot write {path}: {e.strerror or e}") from None


def _out_path(out: str, cid: str) -> Path:
    """--out: a folder (existing, or named with a trailing slash) gets <id>.json."""
    path = Path(out).expanduser()
    if out.endswith(("/", os.sep)) or path.is_dir():
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TqpatchError(f"cannot create the folder {path}: {e.strerror or e}") from None
        return path / f"{cid}.json"
    return path


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"


def _summary(cb: cbmod.Codebook, where: Path) -> str:
    return (f"{cb.id}: {cb.levels} levels, {cb.iterations} Lloyd-Max iterations\n"
            f"  centroids:    {_fmt(cb.centroids)}\n"
            f"  boundaries:   {_fmt(cb.boundaries)}\n"
            f"  mse:          {cb.mse:.6g}   relative MSE: {cb.relative_mse:.6g}\n"
            f"  written to:   {where}")


def _check_ids() -> tuple[list[str], list[str]]:
    """Ids to check (required + other valid ids present) and stray json names."""
    ids = list(cbmod.all_shipped())
    strays = []
    for name in cbmod.shipped_ids():
        if name in ids:
            continue
        try:
            cbmod.parse_id(name)
        except TqpatchError:
            strays.append(name)
            continue
        ids.append(name)
    return ids, strays


def _run_check() -> None:
    ids, strays = _check_ids()
    problems = []
    for cid in ids:
        path = cbmod.path_for(cid)
        want = cbmod.to_json(cbmod.generate(*cbmod.parse_id(cid))).encode()
        if not path.is_file():
            problems.append(f"missing: {path}")
        elif path.read_bytes() != want:
            problems.append(f"differs: {path}")
    for name in strays:
        problems.append(f"not a codebook id: {cbmod.codebooks_dir() / (name + '.json')}")
    if problems:
        raise TqpatchError(
            f"{len(problems)} of {len(ids) + len(strays)} codebook files do not match a "
            "regeneration:\n  " + "\n  ".join(problems)
            + "\nRegenerate them with `tqpatch codebook --all` (and re-render).")
    click.echo(f"ok: {len(ids)} codebooks in {cbmod.codebooks_dir()} match a regeneration")


def _run_all() -> None:
    books = [cbmod.generate(*cbmod.parse_id(cid)) for cid in cbmod.all_shipped()]
    folder = cbmod.codebooks_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for cb in books:
        path = cbmod.path_for(cb.id)
        _atomic_write(path, cbmod.to_json(cb))
        click.echo(f"{cb.id}: relative MSE {cb.relative_mse:.6g}, "
                   f"{cb.iterations} iterations -> {path}")
    click.echo(f"wrote {len(books)} codebooks into {folder}")


@click.command(help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bits", type=int, metavar="N", help="Index bits per value (1-4): 2**N levels.")
@click.option("--dim", type=int, metavar="D",
              help="Block size / dimension (32, 64, 128, 256 or 512).")
@click.option("--dist", type=click.Choice(cbmod.DISTRIBUTIONS), help="Distribution to fit.")
@click.option("--out", type=click.Path(dir_okay=True), metavar="PATH",
              help="Where to write: a file, or a folder (existing, or given with a trailing "
                   "/) that gets <id>.json; default: the package codebooks folder.")
@click.option("--all", "all_", is_flag=True, help="Regenerate every shipped codebook.")
@click.option("--check", is_flag=True,
              help="Regenerate every shipped codebook in memory; exit nonzero listing "
                   "files that are missing or differ byte-for-byte. Writes nothing.")
def command(bits, dim, dist, out, all_, check):
    if all_ and check:
        raise TqpatchError("--all and --check exclude each other")
    if all_ or check:
        given = [name for name, v in (("--bits", bits), ("--dim", dim), ("--dist", dist),
                                      ("--out", out)) if v is not None]
        if given:
            raise TqpatchError(f"{'--all' if all_ else '--check'} takes no "
                               f"{', '.join(given)}")
        if check:
            _run_check()
        else:
            paths.require_checkout("tqpatch codebook --all", "--bits/--dim/--dist with --out")
            _run_all()
        return

    missing = [name for name, v in (("--bits", bits), ("--dim", dim), ("--dist", dist))
               if v is None]
    if missing:
        raise TqpatchError(f"missing {', '.join(missing)} (or use --all / --check); "
                           "see `tqpatch codebook --help`")
    cb = cbmod.generate(dist, dim, bits)
    if out is None:
        paths.require_checkout("tqpatch codebook without --out")
        path = cbmod.path_for(cb.id)
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        path = _out_path(out, cb.id)
    _atomic_write(path, cbmod.to_json(cb))
    click.echo(_summary(cb, path))
