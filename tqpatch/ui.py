"""The one way tqpatch runs programs and shows long work.

run()      runs a command (stdin closed or given as input=), echoes nothing by
           default, streams its output line by line to an optional log file
           and callbacks, merged (stdout and stderr in order) or kept apart
           (merge=False), and raises one TqpatchError (what failed, the exit
           status, the last lines, the log's path) when it fails, cannot start
           or runs past its timeout (with check=False a failure or a timeout
           is only reported in the Result; a program that cannot start always
           raises).
capture()  a probe's output, or None when the program cannot run, fails or hangs.
tail()     the last lines of a program's output, for every error message.
Steps      numbered steps of a long command ("[2/5] apply: ..."), the shape of
           pypa/vendoring's UI.task.
Progress   how far one long step is: a bar on a terminal, a line every ~10% otherwise.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import click

from .errors import TqpatchError

TAIL_LINES = 40

LineCallback = Callable[[str], None]


def quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./;-]+", arg) else repr(arg)


def tail(text: str | None, n: int = TAIL_LINES) -> str:
    """The last n lines of text, trailing blank lines left out."""
    return "\n".join((text or "").rstrip().splitlines()[-n:])


@dataclass
class Result:
    returncode: int
    stdout: str              # stdout and stderr merged in order, unless run(merge=False)
    stderr: str = ""         # only with merge=False
    timed_out: bool = False  # only seen with check=False (check=True raises)

    @property
    def output(self) -> str:
        """What the program printed: stderr after stdout when they were kept apart."""
        return self.stdout + self.stderr


def failure(what: str, returncode: int, output: str, log: Path | None = None) -> TqpatchError:
    """The error run() raises for a failed command (fakes of run() raise it too)."""
    return TqpatchError(f"{what} failed (exit {returncode})" + (f"; full log: {log}" if log else "")
                        + f"\n--- last lines ---\n{tail(output)}")


class _Log:
    """The optional log file, written from the reader threads."""

    def __init__(self, path: Path | None, quiet: bool):
        self.file = open(path, "a", errors="replace") if path is not None else None
        self.quiet = quiet
        self.lock = threading.Lock()

    def write(self, text: str, always: bool = False) -> None:
        if self.file is not None and (always or not self.quiet):
            with self.lock:
                self.file.write(text)
                self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _feed(data: str | bytes, stdin) -> None:
    try:
        if isinstance(data, bytes):
            stdin.buffer.write(data)
        else:
            stdin.write(data)
        stdin.close()
    except (BrokenPipeError, OSError, ValueError):
        pass  # the program stopped reading: its exit status tells the rest


def _read(stream, into: list[str], log: _Log, on_line: LineCallback | None) -> None:
    for line in stream:
        into.append(line)
        log.write(line)
        if on_line is not None:
            on_line(line)


def _kill(proc: subprocess.Popen) -> None:
    """Kill proc and what it started (run() gives it its own process group): a child
    left holding the output pipe would keep run() reading past a timeout or a Ctrl-C."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _kill_after(proc: subprocess.Popen, timeout: float | None
                ) -> tuple[threading.Event, threading.Timer | None]:
    """A running timer that kills proc after timeout seconds, and the event it sets then."""
    expired = threading.Event()
    if timeout is None:
        return expired, None

    def expire() -> None:
        if proc.poll() is None:  # one that exited just now did not time out
            expired.set()
        _kill(proc)
    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    return expired, timer


def run(cmd: Sequence, *, log: Path | None = None, on_line: LineCallback | None = None,
        on_err_line: LineCallback | None = None, check: bool = True,
        timeout: float | None = None, env: dict | None = None, cwd: Path | None = None,
        input: str | bytes | None = None, merge: bool = True, quiet_log: bool = False,
        what: str | None = None) -> Result:
    """Run cmd; TqpatchError when it cannot start, and (check) when it fails or times out.

    log: append the command line, its output and its exit status (only the line
    and the status when quiet_log); on_line: called with every stdout line (every
    line when merged) as it arrives; on_err_line: every stderr line (merge=False);
    input: fed to its stdin (else stdin is closed); env: added to os.environ;
    what: names the command in errors (default: the program's name).
    """
    argv = [str(c) for c in cmd]
    what = what or Path(argv[0]).name
    logf = _Log(log, quiet_log)
    out: list[str] = []
    err: list[str] = []
    try:
        logf.write("$ " + " ".join(quote(a) for a in argv) + "\n", always=True)
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merge else subprocess.PIPE,
                text=True, errors="replace", bufsize=1, cwd=cwd, env={**os.environ, **(env or {})},
                start_new_session=True)
        except OSError as exc:
            raise TqpatchError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        helpers = []
        if input is not None:
            helpers.append(threading.Thread(target=_feed, args=(input, proc.stdin), daemon=True))
        failed: list[BaseException] = []  # a failing on_err_line, raised here once it stopped the program
        if not merge:
            def _read_err():
                try:
                    _read(proc.stderr, err, logf, on_err_line)
                except BaseException as exc:
                    failed.append(exc)
                    _kill(proc)
            helpers.append(threading.Thread(target=_read_err, daemon=True))
        timed_out, timer = _kill_after(proc, timeout)
        try:
            for t in helpers:
                t.start()
            _read(proc.stdout, out, logf, on_line)
            for t in helpers:
                t.join()
            rc = proc.wait()
            if failed:
                raise failed[0]
        except BaseException:  # Ctrl-C, SIGTERM (the CLI turns it into an exception), a callback
            _kill(proc)
            proc.wait()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        logf.write(f"[exit {rc}]\n", always=True)
    finally:
        logf.close()
    result = Result(rc, "".join(out), "".join(err), timed_out.is_set())
    if check and result.timed_out:
        last = tail(result.output)
        raise TqpatchError(f"{what} did not finish within {timeout:g} s"
                           + (f"; full log: {log}" if log else "")
                           + (f"\n--- last lines ---\n{last}" if last else ""))
    if check and rc != 0:
        raise failure(what, rc, result.stderr if result.stderr.strip() else result.stdout, log)
    return result


def capture(cmd: Sequence, timeout: float = 15, *, env: dict | None = None,
            cwd: Path | None = None) -> str | None:
    """stdout then stderr of cmd, or None when it cannot run, fails or hangs (for probes)."""
    try:
        result = run(cmd, check=False, timeout=timeout, env=env, cwd=cwd, merge=False)
    except TqpatchError:
        return None
    if result.returncode != 0 or result.timed_out:
        return None
    return result.output


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


class Progress:
    """How far one long step is: a click bar on a terminal, else a line every ~10%.

    update(n) advances by n, set(done, total) jumps there (ninja's "[12/345]"),
    say(message) prints a line above the bar; close() or the with block's end
    ends the bar. ticks=False: no percentage lines off a terminal; count=False:
    the lines leave out "(done/total)" (bytes of a download).
    """

    def __init__(self, label: str, total: int | None = None, *, echo: LineCallback | None = None,
                 tty: bool | None = None, err: bool = False, ticks: bool = True,
                 count: bool = True, show_pos: bool = False):
        self.label, self.total, self.done = label, total or 0, 0
        self.err, self.ticks, self.count, self.show_pos = err, ticks, count, show_pos
        self.file = sys.stderr if err else sys.stdout
        self.tty = self.file.isatty() if tty is None else tty
        self.echo = echo or (lambda message: click.echo(message, err=err))
        self._bar: Any = None  # a click progress bar on a terminal, once the total is known
        self._decile = -1
        self._ensure_bar()

    def _ensure_bar(self) -> None:
        if self.tty and self._bar is None and self.total:
            self._bar = click.progressbar(length=self.total, label=self.label, file=self.file,
                                          show_pos=self.show_pos, show_eta=not self.show_pos)
            self._bar.__enter__()

    def set(self, done: int, total: int | None = None) -> None:
        if total:
            self.total = total
        self._ensure_bar()
        if self._bar is not None:
            self._bar.length = self.total
            if done > self.done:
                self._bar.update(done - self.done)
        elif self.ticks and self.total:
            decile = 10 * done // self.total
            if decile > self._decile:
                self._decile = decile
                self.echo(f"  {self.label}: {100 * done // self.total}%"
                          + (f" ({done}/{self.total})" if self.count else ""))
        self.done = done

    def update(self, n: int = 1) -> None:
        self.set(self.done + n)

    def say(self, message: str) -> None:
        if self._bar is not None:
            click.echo("\r\033[K", nl=False, err=self.err)
            click.echo(message, err=self.err)
            self._bar.render_progress()
        else:
            self.echo(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
