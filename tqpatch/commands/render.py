"""`tqpatch render`: templates + codebooks -> generated/ (committed)."""

from pathlib import Path

import click

from .. import backends, paths, render


@click.command("render")
@click.option("--check", is_flag=True,
              help="Render in memory and fail if anything differs from generated/ (for CI).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Where to write (default: the repository's generated/).")
def command(check, out_dir):
    """Render the kernel sources from templates/ and the shipped codebooks.

    Each template templates/<path>.j2 becomes generated/<path>, the file that
    `tqpatch apply` places at <path> in the llama.cpp tree. Rendering is
    deterministic; every output starts with a header naming its template and
    the codebook digest. After changing a codebook or a template run
    `tqpatch render`, then `tqpatch apply` and `tqpatch build`.
    """
    if not check and out_dir is None:
        paths.require_checkout("tqpatch render")
    target = Path(out_dir) if out_dir else paths.generated_dir()
    result = render.render_all(backends.all_backends())
    if check:
        stale = render.diff_against_disk(result, target)
        if stale:
            raise click.ClickException(
                "rendered sources are out of date (run `tqpatch render`):\n  " + "\n  ".join(stale))
        click.echo(f"{len(result.files)} rendered files up to date "
                   f"(codebooks {result.versions['codebooks']}, templates {result.versions['templates']})")
        return
    changed = render.write(result, target, echo=click.echo)
    for rel in changed:
        click.echo(f"  wrote {rel}")
    click.echo(f"{len(result.files)} files rendered into {target} ({len(changed)} changed); "
               "next: `tqpatch apply`")
