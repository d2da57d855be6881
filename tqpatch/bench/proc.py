"""How the bench parts run their binaries: tqpatch.ui.run with the boundary layers off, a timeout kept as a result."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from typing import Sequence

from .. import plan, ui

TAIL_LINES = 12

# Patch 0010 (boundary layers) reads these; every run sets them to 0 so the
# caller's environment cannot change what a K/V label means.
BOUNDARY_ENV = {plan.ENV_BOUNDARY_K: "0", plan.ENV_BOUNDARY_V: "0"}


@dataclass
class Run:
    rc: int
    out: str          # stdout, with stderr merged in unless run_split
    err: str          # stderr of run_split ("" otherwise)
    timed_out: bool
    seconds: float


def command_line(cmd: Sequence[str]) -> str:
    """The command as a shell line, with the environment every run sets."""
    env = " ".join(f"{k}={v}" for k, v in BOUNDARY_ENV.items())
    return f"{env} {shlex.join(str(c) for c in cmd)}"


def _run(cmd: Sequence[str], timeout: float, merge: bool,
         on_err_line: ui.LineCallback | None = None) -> Run:
    t0 = time.monotonic()
    res = ui.run(cmd, check=False, timeout=timeout, env=BOUNDARY_ENV, merge=merge,
                 on_err_line=on_err_line)
    return Run(res.returncode, res.stdout, res.stderr, res.timed_out, time.monotonic() - t0)


def run_tool(cmd: Sequence[str], timeout: float) -> Run:
    """cmd through ui.run (stdout and stderr merged); a run past timeout is a result, not an
    error. TqpatchError only when cmd cannot start."""
    return _run(cmd, timeout, merge=True)


def run_split(cmd: Sequence[str], timeout: float, on_err_line: ui.LineCallback | None = None) -> Run:
    """cmd with stdout and stderr apart (llama-bench's JSON is its stdout alone); on_err_line
    sees each stderr line as it comes (llama-bench's --progress)."""
    return _run(cmd, timeout, merge=False, on_err_line=on_err_line)


def tail(text: str, n: int = TAIL_LINES) -> str:
    """The last n non-blank lines on one line (for a table's FAILED row)."""
    lines = ui.tail("\n".join(ln for ln in (text or "").splitlines() if ln.strip()), n)
    return lines.replace("\n", " | ") if lines else "(no output)"
