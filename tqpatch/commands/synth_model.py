"""`tqpatch synth-model`: write a random-weight GGUF with a chosen attention shape."""

from __future__ import annotations

from pathlib import Path

import click

from .. import fsutil
from ..errors import TqpatchError
from ..synth import SynthShape, synth_model

# The model's shape: (option, default, minimum, help), each a whole-number option.
_SHAPE_OPTIONS = (
    ("--layers", 8, 1, "Transformer blocks (every one global attention)."),
    ("--ff", 1024, 1, "Feed-forward width (small keeps the weights small)."),
    ("--vocab", 512, 1, "Vocabulary size (at least 260: <unk>, <s>, </s>, 256 byte tokens, 1 piece)."),
    ("--ctx-train", 65536, 1, "Trained context length written to the metadata."),
    ("--embd", 4096, 1, "n_embd."),
    ("--heads", 32, 1, "Query heads."),
    ("--kv-heads", 8, 1, "KV heads (GQA)."),
    ("--head-dim", 128, 2, "Head size of K and V."),
)


def _shape_options(command):
    for name, default, low, text in reversed(_SHAPE_OPTIONS):
        command = click.option(name, type=click.IntRange(min=low), default=default,
                               show_default=True, help=text)(command)
    return command


@click.command("synth-model")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@_shape_options
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same file).")
@click.option("--type", "wtype", type=click.Choice(["f16", "q8_0"]), default="f16",
              show_default=True, help="Weight type of the matrices (norms stay f32).")
def command(out, layers, ff, vocab, ctx_train, embd, heads, kv_heads, head_dim, seed, wtype):
    """Write a random-weight llama GGUF to OUT for speed benchmarks.

    \b
    The default attention shape is a mainstream 8B model's (32 query heads,
    8 KV heads, head size 128, n_embd 4096, RoPE, all layers global) with a
    small feed-forward and vocabulary, so that KV-cache bandwidth dominates
    decode at depth. Output text is meaningless; the numbers are real.
    """
    # GGUFWriter opens OUT itself: it would write through a link, into a device or FIFO
    fsutil.refuse_special(out)

    shape = SynthShape(layers=layers, n_embd=embd, n_head=heads, n_head_kv=kv_heads,
                       head_dim=head_dim, ff=ff, vocab=vocab, ctx_train=ctx_train)
    try:
        res = synth_model(out, shape, seed=seed, wtype=wtype)
    except OSError as e:  # a parent that is a file, a read-only folder, a full disk
        where = f" ({e.filename})" if e.filename and str(e.filename) != str(out) else ""
        raise TqpatchError(f"cannot write {out}: {e.strerror or e}{where}") from None
    for n in res["notes"]:
        click.echo(f"note: {n}")
    s = res["shape"]
    click.echo(f"wrote {res['path']}: {res['file_bytes'] / 2**20:.1f} MiB "
               f"({res['n_tensors']} tensors, {res['weight_type']} weights)")
    click.echo(f"shape: llama, {s.layers} layers, n_embd {s.n_embd}, {s.n_head} q heads, "
               f"{s.n_head_kv} kv heads, head size {s.head_dim}, ff {s.ff}, vocab {s.vocab}, "
               f"ctx_train {s.ctx_train}, seed {seed}")
