"""Eval results as a terminal table, Markdown, JSON and a plot."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path
from typing import Sequence

from ..coherence import N_PREDICT, PROMPTS
from ..errors import TqpatchError
from ..model import sha256_file
from .config import Config
from .result import Result, command_line

# --------------------------------------------------------------------------
# reports


def _fmt(value: float | None, spec: str, empty: str = "-") -> str:
    if value is None:
        return empty
    return format(value, spec)


def _ppl(r: Result) -> str:
    if r.ppl is None:
        return "-"
    return f"{r.ppl:.4f} ± {r.ppl_err:.4f}" if r.ppl_err is not None else f"{r.ppl:.4f}"


def _kld(r: Result) -> str:
    if r.kld_mean is None:
        return "-"
    return f"{r.kld_mean:.6f}"


HEADERS = ("K", "V", "bpv K", "bpv V", "PPL", "ΔPPL %", "mean KLD", "KLD p99",
           "top-1 %", "coherent", "KV MiB", "time s")


def _variant(cfg: Config) -> str:
    """The variant part of a label (':bk2:bv2', ':cal=m.calib.gguf'), shown after V in tables."""
    return cfg.label[len(cfg.pair):]


def table_rows(results: Sequence[Result]) -> list[list[str]]:
    rows = []
    for r in results:
        base = [r.k, r.v + _variant(r.config), f"{r.eff_bpv_k:.3f}", f"{r.eff_bpv_v:.3f}"]
        coherent = r.coherence.summary if r.coherence else "-"
        if not r.ok:
            rows.append(base + ["FAILED", "-", "-", "-", "-", coherent, "-", f"{r.seconds:.1f}"])
            continue
        rows.append(base + [
            _ppl(r), _fmt(r.delta_ppl_pct, "+.2f"), _kld(r), _fmt(r.kld_p99, ".5f"),
            _fmt(r.top1, ".2f"), coherent, _fmt(r.kv_mib, ".2f"), f"{r.seconds:.1f}",
        ])
    return rows


def render_table(results: Sequence[Result]) -> str:
    """A plain-text table for the terminal, then the log tail of every failed config."""
    rows = [list(HEADERS)] + table_rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    left = {0, 1}
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    for r in results:
        if not r.ok:
            lines.append("")
            lines.append(f"{r.label} FAILED: {r.error}")
            if r.log_tail:
                lines.extend("  | " + line for line in r.log_tail.splitlines())
    return "\n".join(lines)


def machine_meta() -> dict:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def make_meta(*, model: Path, text: Path, binary: Path | None, backend: str, chunks: int,
              ctx: int, threads: int, kld: bool) -> dict:
    """Everything a report needs to be reproduced: inputs with sha256, settings, machine."""
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "model": str(model), "model_sha256": sha256_file(Path(model)),
        "text": str(text), "text_sha256": sha256_file(Path(text)),
        "binary": str(binary) if binary else None, "backend": backend,
        "chunks": chunks, "ctx": ctx, "threads": threads, "kld": kld,
        "machine": machine_meta(),
    }


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def render_markdown(results: Sequence[Result], meta: dict) -> str:
    """A Markdown report: the table, the exact command lines, inputs with sha256, machine, date."""
    out = ["# tqpatch eval: K/V cache quality", ""]
    date = meta.get("date")
    if date:
        out += [f"Date: {date}", ""]
    out.append("| " + " | ".join(HEADERS) + " |")
    out.append("|" + "|".join(["---", "---"] + ["---:"] * (len(HEADERS) - 2)) + "|")
    for row in table_rows(results):
        out.append("| " + " | ".join(_md_escape(c) for c in row) + " |")
    out.append("")
    kld = meta.get("kld", any(r.kld_mean is not None for r in results))
    notes = ["bpv: bits per value of the cache type (with boundary layers :bkN / :bvN, the "
             "first and last N layers' K / V at q8_0, the average over all layers)",
             "ΔPPL %: PPL change against f16/f16"]
    if kld:
        notes += ["mean KLD / KLD p99: KL divergence of the token distribution from the "
                  "f16/f16 run (mean, 99th percentile)",
                  "top-1 %: how often the most likely token equals f16/f16's (\"Same top p\")"]
    if any(r.coherence for r in results):
        notes.append(f"coherent: of {len(PROMPTS)} prompts, how many greedy continuations "
                     f"({N_PREDICT} tokens, llama-server) contain the expected answer: "
                     + "; ".join(f"{p.text!r} -> /{p.expect}/" for p in PROMPTS)
                     + " (tqpatch.coherence; 'failed': the server did not answer)")
    notes.append("KV MiB: KV cache llama-perplexity allocated (all caches summed)")
    if kld:
        notes.append("the --kl-divergence-base file lived in a temporary folder that was "
                     "deleted after the runs")
    out += [f"- {n}" for n in notes]
    failed = [r for r in results if not r.ok]
    if failed:
        out += ["", "## Failed configurations", ""]
        for r in failed:
            out += [f"### {r.label}", "", f"{r.error}", ""]
            if r.log_tail:
                out += ["```", r.log_tail, "```", ""]
    out += ["", "## Inputs", ""]
    for key, label in (("model", "Model"), ("text", "Text")):
        if meta.get(key):
            sha = meta.get(f"{key}_sha256")
            out.append(f"- {label}: `{meta[key]}`" + (f" (sha256 `{sha}`)" if sha else ""))
    settings = [f"{k} {meta[k]}" for k in ("backend", "chunks", "ctx", "threads") if k in meta]
    if settings:
        out.append("- Settings: " + ", ".join(settings))
    if meta.get("binary"):
        out.append(f"- Binary: `{meta['binary']}`")
    machine = meta.get("machine") or {}
    if machine:
        out += ["", "## Machine", ""]
        out.append(f"- Platform: {machine.get('platform')}")
        out.append(f"- CPUs: {machine.get('cpu_count')}")
        if machine.get("processor"):
            out.append(f"- Processor: {machine['processor']}")
    commands = meta.get("commands")
    if commands is None:
        commands = command_lines(results)
    if commands:
        out += ["", "## Commands", "", "```sh"]
        out += list(commands)
        out += ["```"]
    return "\n".join(out) + "\n"


def command_lines(results: Sequence[Result]) -> list[str]:
    """The exact command lines that were run, in order (base-logits run first), once each."""
    out: list[str] = []
    for r in results:
        for cmd, env in ((r.base_command, None), (r.command, r.env)):
            if cmd:
                line = command_line(cmd, env)
                if line not in out:
                    out.append(line)
    return out


def to_json(results: Sequence[Result], meta: dict | None = None) -> dict:
    return {"meta": meta or {}, "results": [r.to_dict() for r in results]}


PLOT_INSTALL_HINT = ("matplotlib is not installed: `pip install 'tqpatch[plot]'` "
                     "(or `pip install matplotlib`) to get --plot")


def plot(results: Sequence[Result], out: Path | str) -> Path:
    """Mean KLD (log scale) and ΔPPL % against average bits per value; TqpatchError without matplotlib."""
    try:  # deferred: matplotlib is optional (the [plot] extra) and slow to import
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TqpatchError(PLOT_INSTALL_HINT) from None
    ok = [r for r in results if r.ok]
    points = {"kld": [(r, r.kld_mean) for r in ok if r.kld_mean is not None and r.kld_mean > 0],
              "dppl": [(r, r.delta_ppl_pct) for r in ok if r.delta_ppl_pct is not None]}
    panels = []
    if points["kld"]:
        panels.append(("mean KLD vs f16/f16", "kld"))
    panels.append(("ΔPPL % vs f16/f16", "dppl"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (title, kind) in zip(axes[0], panels):
        rows = [r for r, _ in points[kind]]
        xs = [r.avg_bpv for r in rows]
        ys = [y for _, y in points[kind]]
        ax.scatter(xs, ys, color=["tab:red" if "turbo" in r.label else "tab:blue" for r in rows])
        for x, y, r in zip(xs, ys, rows):
            ax.annotate(r.label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if kind == "kld":
            ax.set_yscale("log")
        else:
            ax.axhline(0.0, color="grey", linewidth=0.8)
            if ys and max(abs(y) for y in ys) > 100:
                ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xlabel("average KV bits per value ((bpv K + bpv V) / 2)")
        ax.set_ylabel(title)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out

