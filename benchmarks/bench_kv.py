#!/usr/bin/env python3
"""`tqpatch bench` from a checkout, under its old name: the same options (see --help).

    python3 benchmarks/bench_kv.py --backend cuda --synth --out OUT \
        --json OUT/bench.json --markdown OUT/bench.md

The benchmarks live in tqpatch/bench/ (one module a part), the command in
tqpatch/commands/bench.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(_REPO))

from tqpatch.commands.bench import command  # noqa: E402

if __name__ == "__main__":
    command(prog_name="python3 benchmarks/bench_kv.py")
