"""The probe: each candidate configuration's KLD against the same build's f16 logits on
a short bundled text (tqpatch/data/probe.txt, PROBE_CHUNKS x 512 tokens), and the
coherence prompts (tqpatch.coherence), through tqpatch.eval on the serving build."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Sequence

from .. import build_record, quality
from .. import eval as ev
from ..backends.base import Backend
from ..errors import TqpatchError
from ..eval.config import Config
from ..eval.runner import check_coherence
from ..quality import ProbeRow

PROBE_TEXT = Path(__file__).resolve().parent.parent / "data" / "probe.txt"
PROBE_CHUNKS = 3
PROBE_CTX = 512
PROBE_VERSION = 1   # bump when what the probe measures changes: cached probes are redone


def fingerprint() -> dict:
    """What a cached probe must match to be reused (besides model and build)."""
    try:
        text = hashlib.sha256(PROBE_TEXT.read_bytes()).hexdigest()[:12]
    except OSError as exc:
        raise TqpatchError(f"{PROBE_TEXT}: the probe text is unreadable ({exc}); "
                           "reinstall tqpatch") from None
    return {"version": PROBE_VERSION, "text": text, "chunks": PROBE_CHUNKS, "ctx": PROBE_CTX}


def run(rows: Sequence[ProbeRow], *, model: Path, backend: Backend, build_of: Backend,
        build_dir: Path | None, calib: Path | None, threads: int | None = None,
        extra_args: Sequence[str] = (), say: Callable[[str], None] = lambda m: None
        ) -> list[ProbeRow]:
    """Measure every row on `backend`'s device of the `build_of` build (a copy of each
    row comes back, filled in)."""
    configs = [Config(r.k, r.v, calib=str(calib) if r.calibrated and calib else "")
               for r in rows]
    by_label = {c.label: r for c, r in zip(configs, rows)}
    if len(by_label) != len(rows):
        raise TqpatchError("the probe was given the same configuration twice")

    class Progress(ev.Progress):
        def start(self, index, total, config, what):
            say(f"[{index}/{total}] {what or config.label}")

        def coherence(self, label, result):
            say(f"coherence of {label}: {result.summary}")

    server = build_record.find_binary("llama-server", build_of, build_dir)
    binary = build_record.find_binary("llama-perplexity", build_of, build_dir)
    results = ev.evaluate(configs, model=model, text=PROBE_TEXT, backend=backend, binary=binary,
                          chunks=PROBE_CHUNKS, ctx=PROBE_CTX, threads=threads, kld=True,
                          extra_args=extra_args, progress=Progress())
    out = []
    for res in results:
        src = by_label[res.label]
        row = ProbeRow(src.k, src.v, src.calibrated)
        if res.ok:
            row.kld, row.ppl = res.kld_mean, res.ppl
        else:
            row.error = res.error or "failed"
        out.append(row)
    # Coherence only where a level could take the row: KLD no worse than the loosest bar
    # (quality.loosest_bar); the others are shown unchecked. It halves a cold probe.
    bar = quality.loosest_bar(out)
    todo = [res for res, row in zip(results, out) if row.ok and (bar is None or row.measured_kld <= bar)]
    say(f"coherence prompts on the {len(todo)} configurations a level could take")
    check_coherence(todo, server, Path(model), threads or os.cpu_count() or 1,
                    (*backend.e2e.tool_args, *extra_args), Progress())
    for res, row in zip(results, out):
        if res.coherence is not None:
            row.coherent, row.coherence = res.coherence.coherent, res.coherence.summary
    return out
