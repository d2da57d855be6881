"""Run llama-server in the foreground: wait for /health, send one greedy self-check,
then stream its log until it exits or we are stopped.

The server runs in a session of its own, so a terminal's Ctrl-C reaches only
tqpatch, which then stops it (SIGTERM, SIGKILL after STOP_TIMEOUT_S) and exits
0. On Linux the server also gets SIGTERM if tqpatch dies without cleaning up
(PR_SET_PDEATHSIG): nothing is left running in any case.
"""

from __future__ import annotations

import collections
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Callable, Mapping, Sequence

from .. import ui
from ..errors import TqpatchError

START_TIMEOUT_S = 600
STOP_TIMEOUT_S = 15
KEPT_LINES = 30          # of its log, for the error when it dies
SELF_CHECK_PROMPT = "The capital of France is"
SELF_CHECK_TOKENS = 16


def check_port(host: str, port: int) -> None:
    """TqpatchError when host:port cannot be listened on (in use, or not an address here)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TqpatchError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # as llama-server binds: a port in TIME_WAIT after a stopped server is free to it
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
            s.listen(1)
        except OSError as exc:
            what = "in use" if exc.errno in (98, 48, 10048) else (exc.strerror or str(exc))
            raise TqpatchError(f"cannot serve on {host}:{port}: {what}; pick another with "
                               "--port") from None


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


class Server:
    """One foreground llama-server; a context manager that always stops it."""

    def __init__(self, argv: Sequence[str], host: str, port: int,
                 env: Mapping[str, str] | None = None):
        self.argv = [str(a) for a in argv]
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
        if ":" in host and host != "::":
            self.url = f"http://[{host}]:{port}"
        elif host == "::":
            self.url = f"http://[::1]:{port}"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=KEPT_LINES)
        self._echo: Callable[[str], None] | None = None   # set once the log is streamed
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None

    def __enter__(self) -> "Server":
        try:  # not ui.run: a live server, streamed while it serves, signalled to stop
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        except OSError as exc:
            raise TqpatchError(f"cannot run {self.argv[0]}: {exc.strerror or exc}") from None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc and self.proc.stdout
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self.tail.append(line)
                echo = self._echo
            if echo:
                echo(line)

    @property
    def process(self) -> subprocess.Popen:
        """The server process; TqpatchError outside the `with` block that starts it."""
        if self.proc is None:
            raise TqpatchError("llama-server is not started (use Server in a with block)")
        return self.proc

    def stream(self, echo: Callable[[str], None]) -> None:
        """From now on every log line goes to echo."""
        with self._lock:
            self._echo = echo

    def crashed(self) -> TqpatchError:
        rc = self.proc.returncode if self.proc else None
        if self._reader:
            self._reader.join(timeout=2)
        tail = "\n".join(f"  | {line}" for line in ui.tail("\n".join(self.tail), 12).splitlines())
        return TqpatchError(f"llama-server exited with status {rc}; its last lines:\n{tail}")

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> float:
        """Seconds until /health answered 200; TqpatchError if the server died first."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise self.crashed()
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - started
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise TqpatchError(f"llama-server did not answer /health within {timeout:.0f} s")

    def self_check(self) -> str:
        """A greedy completion of SELF_CHECK_PROMPT: the text (TqpatchError if none)."""
        body = json.dumps({"prompt": SELF_CHECK_PROMPT, "n_predict": SELF_CHECK_TOKENS,
                           "temperature": 0, "top_k": 1, "cache_prompt": False}).encode()
        req = urllib.request.Request(self.url + "/completion", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                return str(json.loads(r.read()).get("content", ""))
        except (OSError, urllib.error.URLError, ValueError) as exc:
            if self.process.poll() is not None:
                raise self.crashed() from None
            raise TqpatchError(f"llama-server did not answer the self-check: {exc}") from None

    def wait(self) -> int:
        """Until the server exits: its status."""
        rc = self.process.wait()
        if self._reader:
            self._reader.join(timeout=5)
        return rc

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
            except KeyboardInterrupt:  # a second Ctrl-C while it stops: do not wait longer
                if sig == signal.SIGKILL:
                    raise
                continue
