"""`tqpatch revert`: undo `tqpatch apply` on a tree."""

from __future__ import annotations

from pathlib import Path

import click

from .. import apply


@click.command("revert")
@click.option("--tree", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="llama.cpp tree to revert (default: the work tree in the cache).")
@click.option("--force", is_flag=True, help="Discard hand edits to files tqpatch placed.")
def command(tree, force):
    """Restore pristine contents, remove the files apply created and its manifest."""
    apply.revert(tree=tree, force=force)
