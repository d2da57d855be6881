"""`tqpatch codebook`: generate, regenerate or check Lloyd-Max codebooks."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click

from .. import build_record, calibrate, capture, codebook_fit, fsutil, paths
from .. import codebook as cbmod
from ..backends.base import Backend
from ..errors import TqpatchError
from ..plan.gguf_file import require_gguf
from .options import backend_option

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
The turbo types scale each block by its absolute maximum and use (tqpatch.formats):
  turbo2 -> absmax-d64-b2   turbo3 -> absmax-d64-b3   turbo4 -> absmax-d32-b4
  (block variants: absmax-d96-* and absmax-d32-*)

\b
Allowed: --bits {', '.join(map(str, cbmod.BITS))}; --dim {', '.join(map(str, cbmod.DIMS))}.
Shipped in the package: every dist x dim {', '.join(map(str, cbmod.SHIPPED_DIMS))} x bits 1-4.

\b
Fitted to a model (--fit): Lloyd's iteration on the real encoder and the
model's own rotated K/V rows, one codebook per turbo type its head sizes use,
written as <type>.json into the --out folder; set TQPATCH_CODEBOOKS to that
folder for render, apply, build and verify (a build made without it is
refused by verify as stale).

Examples:
  tqpatch codebook --fit model.gguf --out fitted/          # run the model, fit, write fitted/<type>.json
  TQPATCH_CODEBOOKS=fitted tqpatch build && TQPATCH_CODEBOOKS=fitted tqpatch verify
  tqpatch codebook --dist absmax --dim 128 --bits 3       # write into the package
  tqpatch codebook --dist sphere --dim 64 --bits 2 --out cb.json
  tqpatch codebook --all      # regenerate every shipped codebook
  tqpatch codebook --check    # fail if a shipped file differs from a regeneration
"""


def _atomic_write(path: Path, text: str) -> None:
    """Write text to path through a temporary file in the same folder + rename.

    Only a regular file (or nothing) may be at path: links, FIFOs, devices and
    folders are refused, never replaced. The file gets the mode a plain write would (umask default, 0644-ish), not
    a private temp file's 0600.
    """
    fsutil.refuse_special(path)  # a rename over /dev/full or a FIFO would replace it
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


def _run_fit(src: Path, folder: Path, calib: Path | None, backend: Backend | None) -> None:
    if src.suffix == ".gguf":  # a wrong model file is named before "not built" can be
        require_gguf(src)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TqpatchError(f"cannot create the folder {folder}: {e.strerror or e}") from None
    with tempfile.TemporaryDirectory(prefix="tqpatch-fit-") as tmp:
        rows_path = src
        if src.suffix == ".gguf":
            backend = backend or build_record.last_built()
            click.echo(f"running {src.name} on {capture.DEFAULT_TEXT_REL} through the {backend.name} "
                       "build's tqpatch-capture to record its K/V rows")
            rows_path = capture.run(src, Path(tmp) / "rows.bin", queries=False, backend=backend)
        rows = capture.read(rows_path)
        results = codebook_fit.fit_all(rows, calibrate.read(calib) if calib else None,
                                       source=f"{src.name}" + (f" through {calib.name}" if calib else ""))
    for r in results:
        path = folder / f"{r.name}.json"
        _atomic_write(path, cbmod.to_json(r.book))
        click.echo(codebook_fit.gain_line(r) + f" -> {path}")
    click.echo(f"use them: export TQPATCH_CODEBOOKS={folder} (render, apply, build and verify all read it)")


@click.command(help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bits", type=int, metavar="N", help="Index bits per value (1-4): 2**N levels.")
@click.option("--dim", type=int, metavar="D",
              help=f"Block size / dimension ({', '.join(map(str, cbmod.DIMS))}).")
@click.option("--dist", type=click.Choice(cbmod.DISTRIBUTIONS), help="Distribution to fit.")
@click.option("--out", type=click.Path(dir_okay=True), metavar="PATH",
              help="Where to write: a file, or a folder (existing, or given with a trailing "
                   "/) that gets <id>.json; default: the package codebooks folder.")
@click.option("--all", "all_", is_flag=True, help="Regenerate every shipped codebook.")
@click.option("--check", is_flag=True,
              help="Regenerate every shipped codebook in memory; exit nonzero listing "
                   "files that are missing or differ byte-for-byte. Writes nothing.")
@click.option("--fit", "fit_src", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              metavar="MODEL.gguf|ROWS.bin",
              help="Fit codebooks to a model's K/V rows (a GGUF model is run with tqpatch-capture; "
                   "a .bin is a tqpatch-capture file); needs --out FOLDER.")
@click.option("--calib", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --fit: a calibration file (tqpatch calibrate): fit K and V as a calibrated cache stores them.")
@backend_option(help="With --fit MODEL.gguf: whose build's tqpatch-capture runs the model "
                    "(default: the backend built last; any build works, the capture runs on "
                    "the CPU backend every build holds).")
def command(bits, dim, dist, out, all_, check, fit_src, calib, backend):
    if fit_src is not None:
        given = [name for name, v in (("--bits", bits), ("--dim", dim), ("--dist", dist)) if v is not None]
        if given or all_ or check:
            raise TqpatchError(f"--fit takes no {', '.join(given) or ('--all' if all_ else '--check')}")
        if out is None:
            raise TqpatchError("--fit needs --out FOLDER (then TQPATCH_CODEBOOKS=FOLDER for render, "
                               "build and verify)")
        _run_fit(fit_src, Path(out).expanduser(), calib, backend)
        return
    if calib is not None:
        raise TqpatchError("--calib goes with --fit")
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
