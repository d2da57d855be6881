"""`tqpatch status`: is a tree pristine, applied (and up to date) or drifted?"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .. import apply


@click.command("status")
@click.option("--tree", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="llama.cpp tree to inspect (default: the work tree in the cache).")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def command(tree, as_json):
    """Say whether a tree is pristine, applied or drifted.

    Exit status 0 for pristine or applied trees, 1 for drifted, modified,
    missing or unreadable ones.
    """
    st = apply.status(tree)
    if as_json:
        click.echo(json.dumps(st.to_dict(), indent=2))
    else:
        click.echo(f"{st.tree}: {st.state}")
        click.echo(f"  {st.message}".replace("\n", "\n  "))
        for note in st.notes:
            click.echo(f"  note: {note}")
        if st.state == "drifted":
            if any(d["how"] in ("edited", "reappeared") for d in st.drifted):
                click.echo("  `tqpatch apply --force` re-applies over the edits; "
                           "`tqpatch revert --force` discards them")
            else:
                click.echo("  nothing was edited: `tqpatch apply` puts the files back")
    sys.exit(0 if st.ok else 1)
