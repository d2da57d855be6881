"""How the bench parts run their binaries: tqpatch.ui.run with the boundary layers off, a timeout kept as a result."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from typing import Sequence

from .. import ui
from ..errors import TqpatchError

TAIL_LINES = 12

# Patch 0010 (boundary layers) reads these; every run sets them to 0 so the
# caller's environment cannot change what a K/V label means.
BOUNDARY_ENV = {"LLAMA_TURBO_BOUNDARY_K": "0", "LLAMA_TURBO_BOUNDARY_V": "0"}


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


def run_tool(cmd: Sequence[str], timeout: float) -> Run:
    """cmd through ui.run (stdout and stderr merged); a run past timeout is a result, not an error.

    TqpatchError only when cmd cannot start.
    """
    lines: list[str] = []
    t0 = time.monotonic()
    try:
        res = ui.run(cmd, check=False, timeout=timeout, env=BOUNDARY_ENV, on_line=lines.append)
    except TqpatchError:
        if time.monotonic() - t0 < timeout:  # it could not start
            raise
        return Run(-9, "".join(lines), "", True, time.monotonic() - t0)
    return Run(res.returncode, res.stdout, "", False, time.monotonic() - t0)


def run_split(cmd: Sequence[str], timeout: float) -> Run:
    """cmd with stdout and stderr apart (llama-bench's JSON is its stdout alone)."""
    # TODO(ui.run merge=False): ui.run merges stderr into stdout; move this onto it then
    # (and show llama-bench's --progress lines through on_line again).
    t0 = time.monotonic()
    try:
        p = subprocess.run([str(c) for c in cmd], stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, errors="replace", timeout=timeout,
                           env={**os.environ, **BOUNDARY_ENV})
    except subprocess.TimeoutExpired as exc:  # POSIX: what it wrote before the kill, as bytes
        return Run(-9, _text(exc.stdout), _text(exc.stderr), True, time.monotonic() - t0)
    except OSError as exc:
        raise TqpatchError(f"cannot run {cmd[0]}: {exc.strerror or exc}") from None
    return Run(p.returncode, p.stdout, p.stderr, False, time.monotonic() - t0)


def _text(data) -> str:
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else (data or "")


def tail(text: str, n: int = TAIL_LINES) -> str:
    """The last n non-blank lines on one line (for a table's FAILED row)."""
    lines = ui._tail("\n".join(ln for ln in (text or "").splitlines() if ln.strip()), n)
    return lines.replace("\n", " | ") if lines else "(no output)"
