"""The one way tqpatch runs programs and shows long work.

run()      runs a command: echoes nothing by default, streams its merged output
           to an optional log file and line callback, and raises one
           TqpatchError (exit status, the last lines, the log's path) when it
           fails, cannot start or runs past its timeout.
capture()  a probe's output, or None when the program cannot run or fails.
Steps      numbered steps of a long command ("[2/5] apply: ..."), the shape of
           pypa/vendoring's UI.task.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import click

from .errors import TqpatchError

TAIL_LINES = 40


def quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./;-]+", arg) else repr(arg)


@dataclass
class Result:
    returncode: int
    stdout: str  # stdout and stderr, merged in order


def _tail(text: str, n: int = TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-n:])


def run(cmd: Sequence, *, log: Path | None = None, on_line: Callable[[str], None] | None = None,
        check: bool = True, timeout: float | None = None, env: dict | None = None,
        cwd: Path | None = None, quiet_log: bool = False, what: str | None = None) -> Result:
    """Run cmd (merged stdout+stderr); TqpatchError on failure when check.

    log: append the command line and its output (only the line when quiet_log);
    on_line: called with every output line as it arrives; env: added to os.environ.
    """
    argv = [str(c) for c in cmd]
    what = what or Path(argv[0]).name
    logf = open(log, "a", errors="replace") if log is not None else None
    lines: list[str] = []
    try:
        if logf:
            logf.write("$ " + " ".join(quote(a) for a in argv) + "\n")
            logf.flush()
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, errors="replace", bufsize=1, cwd=cwd,
                                    env={**os.environ, **(env or {})})
        except OSError as exc:
            raise TqpatchError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        timed_out = threading.Event()
        timer = None
        if timeout is not None:
            def _expire():
                timed_out.set()
                proc.kill()
            timer = threading.Timer(timeout, _expire)
            timer.daemon = True
            timer.start()
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                lines.append(line)
                if logf and not quiet_log:
                    logf.write(line)
                if on_line is not None:
                    on_line(line)
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if timed_out.is_set():
            raise TqpatchError(f"{what} did not finish within {timeout:g} s"
                               + (f"; log: {log}" if log else ""))
        if logf:
            logf.write(f"[exit {rc}]\n")
    finally:
        if logf:
            logf.close()
    out = "".join(lines)
    if check and rc != 0:
        raise TqpatchError(f"{what} failed (exit {rc})" + (f"; full log: {log}" if log else "")
                           + f"\n--- last lines ---\n{_tail(out)}")
    return Result(rc, out)


def capture(cmd: Sequence[str], timeout: float = 15) -> str | None:
    """stdout+stderr of cmd, or None when it cannot run, fails or hangs (for probes)."""
    try:
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                              timeout=timeout, errors="replace")
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return (proc.stdout or "") + (proc.stderr or "")


class Steps:
    """Numbered steps: `with steps.step("apply", "turbo patches on the tree"):`."""

    def __init__(self, total: int, echo: Callable[..., None] = click.echo):
        self.total = total
        self.n = 0
        self.echo = echo

    @contextlib.contextmanager
    def step(self, name: str, what: str = "") -> Iterator[None]:
        self.n += 1
        self.echo(f"[{self.n}/{self.total}] {name}" + (f": {what}" if what else ""))
        started = time.monotonic()
        yield
        took = time.monotonic() - started
        if took >= 30:
            self.echo(f"  ({name} took {took:.0f} s)")
