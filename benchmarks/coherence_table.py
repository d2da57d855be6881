"""Measure tqpatch.coherence's check for every K/V configuration and record it.

Runs the check (greedy continuations of tqpatch.coherence.PROMPTS through
llama-server, f16/f16 first) for formats.KV_CONFIGS on a model, prints the
table, and merges the measurement, with its provenance (model and sha256,
backend, date, machine, command), into tqpatch/data/coherence.json under the
model's family (GGUF general.architecture), which `tqpatch plan` consults.

  python benchmarks/coherence_table.py --backend cpu --threads 2 --extra-arg=-nr
  python benchmarks/coherence_table.py --backend cuda --extra-arg=-ngl --extra-arg=99
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from tqpatch import build, coherence, formats, plan
from tqpatch.backends import BACKENDS
from tqpatch.errors import TqpatchError
from tqpatch.eval import check_model
from tqpatch.model import sha256_file


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="cpu", choices=list(BACKENDS))
    ap.add_argument("--model", type=Path, default=None, help="GGUF (default: the Gemma 3 270M test model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--extra-arg", action="append", default=[], help="extra llama-server argument")
    ap.add_argument("--out", type=Path, default=coherence.TABLE_PATH, help="table to merge into")
    ap.add_argument("--dry-run", action="store_true", help="print only, record nothing")
    args = ap.parse_args(argv)
    try:
        model = check_model(args.model)
        family = plan.read_model(model).arch
        server = build.find_binary("llama-server", args.backend)
        extra = [*BACKENDS[args.backend].e2e.tool_args, *args.extra_arg]
        configs = [(f"{k}/{v}", k, v, {}) for k, v in formats.KV_CONFIGS]
        t0 = time.monotonic()

        def show(label, result):
            texts = " | ".join(repr(p.text) for p in result.prompts) or result.error
            print(f"{time.monotonic() - t0:7.1f} s  {label:15s} {result.summary:6s} {texts}",
                  flush=True)

        reference, results = coherence.check(configs, server, model, threads=args.threads,
                                             extra_args=extra, on_result=show)
    except TqpatchError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    command = shlex.join([sys.executable, *sys.argv])
    entry = coherence.measurement(
        results, reference, model=model.name, model_sha256=sha256_file(model),
        backend=args.backend, date=dt.date.today().isoformat(),
        machine=f"{cpu_name()}, {os.cpu_count()} CPUs, {platform.system()}; "
                f"{args.threads} threads, llama-server {shlex.join(extra)}", command=command)
    if not args.dry_run:
        print(f"recorded under {family!r} in {coherence.record(entry, family, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
