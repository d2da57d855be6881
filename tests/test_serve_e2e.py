"""`tqpatch serve` end to end on the CI build and the Gemma 3 270M test model: the
calibration, the probe, the choice, a server answering a chat and a /completion
request, Ctrl-C leaving nothing running, and a second start reusing the cache."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

import cpu_build as cpu

pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 3000  # cold: calibration + probe of 13 configurations on 2 cores


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    def __init__(self, model, port, *extra):
        cmd = [sys.executable, "-m", "tqpatch.cli", "serve", str(model), "--port", str(port),
               "--backend", "cpu", "--of-build", cpu.BUILD, *extra]
        self.port = port
        self.lines: list[str] = []
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self.q.put(line)
        self.q.put(None)

    def wait_for(self, text, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.q.get(timeout=5)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError("serve exited early:\n" + "\n".join(self.lines[-40:]))
            if text in line:
                return line
        raise AssertionError(f"no {text!r} in {timeout} s:\n" + "\n".join(self.lines[-40:]))

    def post(self, path, body):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.loads(r.read())

    def interrupt(self) -> int:
        os.killpg(self.proc.pid, signal.SIGINT)   # what a terminal's Ctrl-C sends
        return self.proc.wait(timeout=60)


def _servers_on(port) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "llama-server" in line and f"--port {port}" in line]


@pytest.fixture(scope="module")
def gemma():
    from tqpatch import model

    subprocess.run([sys.executable, "-m", "tqpatch.cli", "build", "--backend", cpu.BUILD],
                   check=True, capture_output=True, timeout=5000)
    return model.ensure_model()


def test_serve_picks_a_calibrated_turbo_cache_answers_and_restarts_from_the_cache(gemma):
    port = _port()
    t0 = time.monotonic()
    first = Serve(gemma, port, "--recalibrate")   # cold, whatever the cache holds
    try:
        first.wait_for("ready:", READY_TIMEOUT_S)
        cold = time.monotonic() - t0
        out = "\n".join(first.lines)
        assert "probe:" in out and "<- chosen" in out and "command: " in out, out
        chosen = next(line for line in first.lines if line.startswith("chosen: "))
        command = next(line for line in first.lines if line.startswith("command: "))
        assert "self-check:" in out
        chat = first.post("/v1/chat/completions", {
            "messages": [{"role": "user", "content": "Name the capital of France."}],
            "max_tokens": 16, "temperature": 0})
        assert chat["choices"][0]["message"]["content"].strip()
        done = first.post("/completion", {"prompt": "1, 2, 3, 4, 5,", "n_predict": 8,
                                          "temperature": 0})
        assert "6" in done["content"]
        assert first.interrupt() == 0
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
    assert not _servers_on(port), "llama-server left running after Ctrl-C"
    # the default level takes a calibrated turbo K on this model (docs/quality.md)
    assert "with the calibration" in chosen and "--turbo-calib" in command, chosen
    assert "-ctk turbo" in command, command

    t1 = time.monotonic()
    second = Serve(gemma, port)
    try:
        second.wait_for("ready:", 600)
        warm = time.monotonic() - t1
        out = "\n".join(second.lines)
        assert "calibration: reusing" in out and "probe: reusing" in out, out
        assert next(line for line in second.lines if line.startswith("chosen: ")) == chosen
        assert second.interrupt() == 0
    finally:
        if second.proc.poll() is None:
            second.proc.kill()
    assert not _servers_on(port)
    assert warm < cold / 2, (warm, cold)
