"""`tqpatch apply`: lay the glue patches and rendered kernels onto a llama.cpp tree."""

from __future__ import annotations

from pathlib import Path

import click

from .. import apply


@click.command("apply")
@click.option("--tree", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="llama.cpp tree to patch (default: the work tree in the cache, created "
                   "from the pristine tree if missing).")
@click.option("--create", is_flag=True,
              help="Make the --tree folder (a copy of the pristine tree) if it does not exist.")
@click.option("--force", is_flag=True, help="Overwrite files that were edited by hand.")
def command(tree, create, force):
    """Lay the turbo patches and rendered files onto a llama.cpp tree.

    Idempotent: a second run with the same patches and rendered files writes
    nothing. All or nothing: if any step fails, the tree is left as it was.
    """
    apply.apply(tree=tree, force=force, create=create)
