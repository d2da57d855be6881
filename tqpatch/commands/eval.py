"""`tqpatch eval`: PPL / KLD / top-1 agreement of K/V cache configurations on a model."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from .. import build_record, ui
from .. import eval as ev
from ..coherence import PROMPTS
from ..errors import TqpatchError
from ..plan.gguf_file import require_gguf
from .options import backend_option


def _configs(ctx, param, value):
    if value is None:
        return [ev.Config.parse(c) for c in ev.DEFAULT_CONFIGS]
    return ev.parse_configs(value)


class _CliProgress(ev.Progress):
    """One line per configuration as it starts and finishes (stderr), plus a bar on a TTY."""

    def __init__(self, total: int, tty: bool):
        self.total = total
        self.t0 = time.monotonic()
        self.bar = ui.Progress("eval", total, tty=tty, err=True, ticks=False, show_pos=True)
        self._line = self.bar.say

    @staticmethod
    def _tag(index: int, total: int) -> str:
        return "[base]" if index == 0 else f"[{index}/{total}]"

    def start(self, index, total, config, what):
        name = what or config.label
        env = "".join(f"{k}={v} " for k, v in config.env().items()) if config.label != config.pair else ""
        self._line(f"{self._tag(index, total)} {name}: running {env}llama-perplexity "
                   f"-ctk {config.k} -ctv {config.v} ...")

    def finish(self, index, total, result, what):
        name = what or result.label
        elapsed = f"{result.seconds:.1f} s"
        if result.ok:
            extra = f"PPL {result.ppl:.4f}"
            if result.kld_mean is not None:
                extra += f", mean KLD {result.kld_mean:.6f}"
            if result.top1 is not None:
                extra += f", top-1 {result.top1:.2f} %"
            self._line(f"{self._tag(index, total)} {name}: done in {elapsed} ({extra})")
        else:
            self._line(f"{self._tag(index, total)} {name}: FAILED after {elapsed}: {result.error}")
        self.bar.update(1)

    def warn(self, message):
        self._line(f"warning: {message}")

    def coherence(self, label, result):
        detail = result.error or ", ".join(
            f"{p.prompt} {'ok' if p.coherent else 'WRONG'}" for p in result.prompts)
        self._line(f"[coherence] {label}: {result.summary} ({detail})")

    def close(self) -> None:
        self.bar.close()


HELP = f"""Measure PPL / KLD of K/V cache configurations.

\b
Runs llama-perplexity (-fa on) once with f16/f16 K/V and --kl-divergence-base
to save the reference logits, then once per configuration with
--kl-divergence. For each configuration it reports: K, V, bits per value of
each, PPL ± its uncertainty, ΔPPL % against f16/f16, mean KLD, the 99th
percentile KLD, top-1 agreement with f16/f16 (%), coherence and the KV cache
size.
\b
Coherence: llama-server continues {len(PROMPTS)} prompts ({', '.join(repr(p.text) for p in PROMPTS)})
greedily under each configuration; `coherent` counts the continuations that
contain the expected answer (f16/f16 must pass them all first).
--no-coherence skips it (no llama-server needed).
\b
Defaults: the Gemma 3 270M Q4_K_M test model (`tqpatch model`), and the text
{ev.DEFAULT_TEXT_REL} of the pinned llama.cpp tree (~108 kB, ~27k tokens;
fetched with the tree if needed), {ev.DEFAULT_CHUNKS} chunks x {ev.DEFAULT_CTX} tokens, and the
configurations {', '.join(ev.DEFAULT_CONFIGS[:5])},
{', '.join(ev.DEFAULT_CONFIGS[5:])}.
\b
Boundary layers: `q8_0/turbo2:bv2` keeps the first and last 2 layers' V
cache at q8_0 (LLAMA_TURBO_BOUNDARY_V=2), `turbo3/turbo3:bk2:bv2` K and V;
their bits per value are the average over the model's layers.
A calibration per configuration: `turbo3/turbo3:cal=M.calib.gguf` (a file from
`tqpatch calibrate`; LLAMA_TURBO_CALIB for that run only), so one run can
compare a configuration with and without it.
\b
The base logits are large (about 512 KB per scored token with Gemma's 262k
vocabulary, ~2.7 GB for 20 x 512); they go to a temporary folder in the
tqpatch cache and are deleted afterwards. --no-kld runs plain PPL only.
A configuration that fails is reported FAILED with the end of its log; the
others still run, and the exit status is then 1.
\b
Examples:
  tqpatch eval
  tqpatch eval --configs f16/f16,q8_0/turbo3 --chunks 5 --markdown eval.md
  tqpatch eval --configs q8_0/turbo2,q8_0/turbo2:bv2,turbo3/turbo3:bk2:bv2
  tqpatch eval --configs turbo3/turbo3,turbo3/turbo3:cal=gemma.calib.gguf
  tqpatch eval --backend cuda --extra-arg=-ngl --extra-arg=99 --plot eval.png
"""


@click.command("eval", help=HELP)
@click.option("--model", "-m", "model", type=click.Path(path_type=Path), default=None,
              help="GGUF model (default: the Gemma 3 270M test model, fetched if needed).")
@click.option("--text", "-f", "text", type=click.Path(path_type=Path), default=None,
              help=f"Text to score (default: {ev.DEFAULT_TEXT_REL} of the pinned llama.cpp tree).")
@click.option("--configs", "configs", callback=_configs, default=None, metavar="K/V[:bkN][:bvN][:cal=FILE],...",
              help="Comma-separated K/V cache type pairs, optionally with boundary layers "
                   "(:bkN / :bvN: the first and last N layers' K / V at q8_0; :cal=FILE: a calibration "
                   "from `tqpatch calibrate`) (default: "
                   + ",".join(ev.DEFAULT_CONFIGS) + ").")
@backend_option(default="cpu", help="Which build's llama-perplexity to run (default: cpu).")
@click.option("--build-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Build directory of that backend (default: the tqpatch cache's build/<backend>).")
@click.option("--chunks", type=click.IntRange(min=1), default=ev.DEFAULT_CHUNKS,
              show_default=True, help="Number of chunks of the text to score.")
@click.option("--ctx", "-c", type=click.IntRange(min=16), default=ev.DEFAULT_CTX,
              show_default=True, help="Context size (tokens per chunk).")
@click.option("--threads", "-t", type=click.IntRange(min=1), default=None,
              help="CPU threads (default: all CPUs).")
@click.option("--no-kld", is_flag=True, help="Plain PPL runs only: no base logits, no KLD / top-1.")
@click.option("--no-coherence", is_flag=True,
              help="Skip the coherence check (greedy continuations through llama-server).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of a table.")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="OUT.md", help="Also write a Markdown report (table, commands, sha256s, machine).")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="OUT.png",
              help="Also plot mean KLD and ΔPPL against bits per value (needs matplotlib: "
                   "pip install 'tqpatch[plot]').")
@click.option("--extra-arg", "extra_args", multiple=True, metavar="X",
              help="Extra llama-perplexity argument, repeatable, e.g. --extra-arg=-ngl --extra-arg=99.")
def command(model, text, configs, backend, build_dir, chunks, ctx, threads, no_kld, no_coherence,
            as_json, markdown, plot_out, extra_args):
    threads = threads or os.cpu_count() or 1
    # Resolve inputs first so that errors come before any run.
    model_path = ev.check_model(model)
    require_gguf(model_path)  # a wrong file is named before "not built" can be
    text_path = ev.check_text(text)
    binary = build_record.find_binary("llama-perplexity", backend, build_dir)
    server = None if no_coherence else _server(backend, build_dir)

    total = len(configs) + (0 if no_kld else 1)
    progress = _CliProgress(total, tty=sys.stderr.isatty())
    click.echo(f"eval: {len(configs)} configuration(s), {chunks} chunks x {ctx} tokens, "
               f"{threads} threads, model {model_path.name}, text {text_path.name}"
               + ("" if not no_kld else " (no KLD)")
               + ("" if server else " (no coherence check)"), err=True)
    t0 = time.monotonic()
    try:
        results = ev.evaluate(configs, model=model_path, text=text_path, backend=backend,
                              binary=binary, chunks=chunks, ctx=ctx, threads=threads,
                              kld=not no_kld, extra_args=extra_args, progress=progress,
                              server=server)
    finally:
        progress.close()
    click.echo(f"eval: finished in {time.monotonic() - t0:.0f} s", err=True)

    meta = None
    if as_json or markdown:
        meta = ev.make_meta(model=model_path, text=text_path, binary=binary, backend=backend.name,
                            chunks=chunks, ctx=ctx, threads=threads, kld=not no_kld)
        meta["commands"] = ev.command_lines(results)
    if as_json:
        click.echo(json.dumps(ev.to_json(results, meta), indent=2, ensure_ascii=False))
    else:
        click.echo(ev.render_table(results))
    if markdown:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(ev.render_markdown(results, meta), encoding="utf-8")
        click.echo(f"wrote {markdown}", err=True)

    problems = []
    if plot_out:
        try:
            ev.plot(results, plot_out)
            click.echo(f"wrote {plot_out}", err=True)
        except TqpatchError as exc:
            problems.append(f"no plot: {exc.message}")
    failed = [r.label for r in results if not r.ok]
    if failed:
        problems.insert(0, f"{len(failed)} of {len(results)} configuration(s) failed: "
                           + ", ".join(failed))
    if problems:
        raise TqpatchError("; ".join(problems))



def _server(backend, build_dir):
    """The build's llama-server for the coherence check."""
    try:
        return build_record.find_binary("llama-server", backend, build_dir)
    except TqpatchError as exc:
        raise TqpatchError(f"{exc.message} (llama-server runs the coherence check; "
                           "--no-coherence skips it)") from None
