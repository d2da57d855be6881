"""`tqpatch fetch`: put the verified pinned llama.cpp in the cache."""

from __future__ import annotations

from pathlib import Path

import click

from .. import fetch, pin


@click.command("fetch")
@click.option("--source", type=click.Choice(["auto", "pypi", "git"]), default="auto", show_default=True,
              help="Where to get llama.cpp: auto tries the PyPI sdist, then git.")
@click.option("--from", "from_path", type=click.Path(path_type=Path),
              help="Use a local sdist, archive (.tar.gz/.zip) or directory instead of the network.")
@click.option("--force", is_flag=True, help="Fetch again even if a verified tree is there.")
def command(source, from_path, force):
    """Download and verify the pinned llama.cpp source (the pristine tree)."""
    target = fetch.fetch(source=source, from_path=from_path, force=force)
    click.echo(f"pristine tree: {target} (llama.cpp {pin.LLAMA_CPP_COMMIT})")
    click.echo("next: tqpatch apply")
