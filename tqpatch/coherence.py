"""Does a K/V cache configuration keep a model coherent? Greedy continuations vs f16.

The check: llama-server (in every default build) continues each of PROMPTS
greedily for N_PREDICT tokens. A continuation is coherent when it contains
the prompt's expected answer: the count goes on " 6, 7, 8", the capital
sentence stays on its subject (Paris, France or French), the function gets a
`return`. A configuration is coherent when every prompt is. The f16/f16
continuations (the reference) must pass first, or the check says so instead
of judging: a model that fails them with an exact cache proves nothing. A
configuration that fails to load or answer is incoherent on every prompt,
with the reason. How many leading tokens equal the reference's is reported
beside each verdict.

Why not "the first k tokens equal f16's": on Gemma 3 270M (2-core CPU) even
upstream q8_0/q8_0 leaves f16's wording after 4 tokens of the capital
prompt (" the capital of the United Kingdom. It is the largest city in
France ..."), fluent and on its subject, while turbo4/turbo4 stays on f16's
first 4 tokens and then loops (" the capital of the world. It is the capital
of the world ..."). What decides coherence is the content, not the wording.

The measured table (tqpatch/data/coherence.json) holds what this check found
per model family (GGUF general.architecture) and backend, with provenance;
`tqpatch plan` consults it (verdict()), `tqpatch eval` runs the check beside
PPL / KLD, and benchmarks/coherence_table.py records a new measurement.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from . import ui
from .errors import TqpatchError

REFERENCE = ("f16", "f16")
N_PREDICT = 24
SERVER_CTX = 512          # prompt + continuation fit many times over
START_TIMEOUT_S = 300     # loading the model on a busy 2-core machine
ANSWER_TIMEOUT_S = 300
TABLE_PATH = Path(__file__).resolve().parent / "data" / "coherence.json"


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str
    expect: str  # regular expression a coherent continuation contains

    def answered(self, continuation: str) -> bool:
        return re.search(self.expect, continuation) is not None


PROMPTS: tuple[Prompt, ...] = (
    Prompt("count", "1, 2, 3, 4, 5,", r" 6, 7, 8\b"),
    Prompt("capital", "The capital of France is", r"\b(?:Paris|France|French)\b"),
    Prompt("code", "def fibonacci(n):", r"\breturn\b"),
)


@dataclass
class Continuation:
    prompt: str
    tokens: list[int]
    text: str


@dataclass
class PromptVerdict:
    prompt: str
    coherent: bool
    matched: int          # leading tokens equal to the reference's (up to N_PREDICT)
    text: str


@dataclass
class Coherence:
    """The check's result for one configuration."""

    config: str
    prompts: list[PromptVerdict] = field(default_factory=list)
    error: str | None = None      # the run failed: incoherent on every prompt

    @property
    def n_coherent(self) -> int:
        return sum(p.coherent for p in self.prompts)

    @property
    def n_prompts(self) -> int:
        return len(PROMPTS)

    @property
    def coherent(self) -> bool:
        return self.error is None and self.n_coherent == self.n_prompts

    @property
    def summary(self) -> str:
        """'3/3', '1/3', or 'failed'."""
        return "failed" if self.error else f"{self.n_coherent}/{self.n_prompts}"

    def to_dict(self) -> dict:
        return {"coherent": self.coherent, "n_coherent": self.n_coherent,
                "n_prompts": self.n_prompts, "error": self.error,
                "prompts": {p.prompt: {"coherent": p.coherent, "matched": p.matched,
                                       "text": p.text} for p in self.prompts}}


# --------------------------------------------------------------------------
# the rule


class ReferenceIncoherent(TqpatchError):
    """The f16/f16 continuations fail the check: it cannot judge this model."""


def check_reference(reference: Sequence[Continuation]) -> None:
    """ReferenceIncoherent unless every f16 continuation contains its expected answer."""
    for prompt, cont in zip(PROMPTS, reference):
        if not prompt.answered(cont.text):
            raise ReferenceIncoherent(
                f"coherence check: the f16/f16 continuation of {prompt.text!r} is "
                f"{cont.text!r}, without /{prompt.expect}/: the check cannot judge this model")


def judge(config: str, reference: Sequence[Continuation],
          got: Sequence[Continuation]) -> Coherence:
    """Per prompt: coherent when it contains the expected answer; tokens shared with f16."""
    out = Coherence(config)
    for prompt, ref, cont in zip(PROMPTS, reference, got):
        matched = 0
        for a, b in zip(ref.tokens, cont.tokens):
            if a != b:
                break
            matched += 1
        out.prompts.append(PromptVerdict(prompt.name, prompt.answered(cont.text), matched,
                                         cont.text))
    return out


# --------------------------------------------------------------------------
# the runner: one llama-server per configuration, every prompt through it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: Path) -> str:
    """The server log's last lines on one line, for an error message."""
    try:
        return ui.tail(path.read_text(errors="replace"), 12).replace("\n", " | ")
    except OSError:
        return ""


class Server:
    """A llama-server for one K/V configuration (a context manager)."""

    def __init__(self, binary: Path, model: Path, type_k: str, type_v: str, *,
                 threads: int, env: dict[str, str] | None = None,
                 extra_args: Sequence[str] = ()):
        self.port = _free_port()
        fd, log = tempfile.mkstemp(prefix="tqpatch-server-", suffix=".log")
        os.close(fd)
        self.log = Path(log)
        self.cmd = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                    "-ctk", type_k, "-ctv", type_v, "-fa", "on", "-c", str(SERVER_CTX),
                    "-np", "1", "-t", str(threads), "--no-warmup", *extra_args]
        self.env = env
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Server":
        try:
            return self._start()
        except BaseException:
            self.__exit__()  # a server that never became ready is stopped all the same
            raise

    def _start(self) -> "Server":
        with open(self.log, "w") as log:
            # not ui.run: a live server, asked over HTTP while it runs, then stopped
            try:
                self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL,
                                             env={**os.environ, **(self.env or {})})
            except OSError as exc:
                raise TqpatchError(f"cannot run {self.cmd[0]}: {exc.strerror or exc}") from None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TqpatchError(f"llama-server exited with status {self.proc.returncode}: "
                                   + _log_tail(self.log))
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise TqpatchError(f"llama-server did not become ready within {START_TIMEOUT_S} s")

    def complete(self, prompt: Prompt, n_predict: int = N_PREDICT) -> Continuation:
        body = json.dumps({"prompt": prompt.text, "n_predict": n_predict, "temperature": 0,
                           "top_k": 1, "return_tokens": True, "cache_prompt": False}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/completion", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=ANSWER_TIMEOUT_S) as r:
                res = json.loads(r.read())
        except (OSError, urllib.error.URLError, ValueError) as exc:
            raise TqpatchError(f"llama-server gave no completion for {prompt.text!r}: {exc}; "
                               + _log_tail(self.log)) from None
        return Continuation(prompt.name, [int(t) for t in res.get("tokens", [])],
                            str(res.get("content", "")))

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.unlink(missing_ok=True)


def continuations(binary: Path, model: Path, type_k: str, type_v: str, *, threads: int,
                  env: dict[str, str] | None = None,
                  extra_args: Sequence[str] = ()) -> list[Continuation]:
    """Greedy continuations of every prompt under one configuration."""
    with Server(binary, model, type_k, type_v, threads=threads, env=env,
                extra_args=extra_args) as server:
        return [server.complete(p) for p in PROMPTS]


def check(configs: Sequence[tuple[str, str, str, dict[str, str]]], binary: Path, model: Path,
          *, threads: int, extra_args: Sequence[str] = (),
          on_result=None) -> tuple[list[Continuation], dict[str, Coherence]]:
    """Run the check for configurations given as (label, K, V, env).

    Returns the f16 reference continuations and label -> Coherence. The f16
    reference run failing raises TqpatchError, its continuations failing the
    check ReferenceIncoherent; a configuration failing is recorded as such.
    on_result(label, Coherence) is called as each one finishes.
    """
    reference = continuations(binary, model, *REFERENCE, threads=threads, extra_args=extra_args)
    check_reference(reference)
    out: dict[str, Coherence] = {}
    for label, k, v, env in configs:
        if (k, v) == REFERENCE and not env:
            got = reference
        else:
            try:
                got = continuations(binary, model, k, v, threads=threads, env=env,
                                    extra_args=extra_args)
            except TqpatchError as exc:
                out[label] = Coherence(label, error=exc.message)
                if on_result:
                    on_result(label, out[label])
                continue
        out[label] = judge(label, reference, got)
        if on_result:
            on_result(label, out[label])
    return reference, out


# --------------------------------------------------------------------------
# the measured table


@lru_cache(maxsize=None)
def _table(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise TqpatchError(f"{path}: unreadable coherence table ({exc}); reinstall tqpatch") from None


def load_table(path: Path | None = None) -> dict:
    return _table(str(path or TABLE_PATH))


def measurements(family: str, table: dict | None = None) -> list[dict]:
    """Every recorded measurement of a model family (GGUF general.architecture)."""
    table = load_table() if table is None else table
    return table.get("families", {}).get(family, [])


def verdict(family: str, type_k: str, type_v: str, table: dict | None = None) -> str:
    """'incoherent' if any measurement of the family found the configuration incoherent
    on any prompt, 'coherent' if at least one measured it coherent on all, else 'unmeasured'."""
    seen = []
    for m in measurements(family, table):
        r = m.get("results", {}).get(f"{type_k}/{type_v}")
        if r is not None:
            seen.append(r["n_coherent"] == r["n_prompts"])
    if not seen:
        return "unmeasured"
    return "coherent" if all(seen) else "incoherent"


def incoherent_where(family: str, type_k: str, type_v: str, table: dict | None = None) -> list[str]:
    """'cuda 1/3' for each measurement that found the configuration incoherent."""
    out = []
    for m in measurements(family, table):
        r = m.get("results", {}).get(f"{type_k}/{type_v}")
        if r is not None and r["n_coherent"] < r["n_prompts"]:
            out.append(f"{m['backend']} {r['n_coherent']}/{r['n_prompts']}")
    return out


def measurement(results: dict[str, Coherence], reference: Sequence[Continuation], *,
                model: str, model_sha256: str | None, backend: str, date: str,
                machine: str, command: str) -> dict:
    """One measurement for the table, with its provenance."""
    return {
        "backend": backend, "date": date, "model": model, "model_sha256": model_sha256,
        "machine": machine, "source": "measured by tqpatch.coherence", "command": command,
        "rule": {"n_predict": N_PREDICT,
                 "prompts": {p.name: {"text": p.text, "expect": p.expect} for p in PROMPTS}},
        "reference": {c.prompt: c.text for c in reference},
        "results": {label: {"n_coherent": c.n_coherent, "n_prompts": c.n_prompts,
                            "error": c.error,
                            "prompts": {p.prompt: {"matched": p.matched, "text": p.text}
                                        for p in c.prompts}}
                    for label, c in results.items()},
    }


def record(entry: dict, family: str, path: Path | None = None) -> Path:
    """Merge one measurement into the table file: it replaces an earlier one of the same
    family, backend, source and model; others stay."""
    path = Path(path or TABLE_PATH)
    table = json.loads(path.read_text()) if path.is_file() else {}
    table.setdefault("about", TABLE_ABOUT)
    runs = table.setdefault("families", {}).setdefault(family, [])
    key = (entry["backend"], entry["source"], entry.get("model_sha256"))
    runs[:] = [m for m in runs if (m["backend"], m["source"], m.get("model_sha256")) != key]
    runs.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n")
    _table.cache_clear()
    return path


TABLE_ABOUT = ("Coherence of K/V cache configurations per model family (GGUF "
               "general.architecture) and backend: tqpatch.coherence's check (greedy "
               "continuations of its prompts; n_coherent of n_prompts contain the expected "
               "answer). Written by benchmarks/coherence_table.py; read by `tqpatch plan`.")
