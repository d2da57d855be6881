"""Configure and build a patched llama.cpp tree for one backend (cmake + Ninja).

A build is a short list of named steps, each shown as it runs:

  check    toolchain and backend requirements (one error naming what to install)
  apply    make sure the tree carries the turbo patches (tqpatch.apply)
  config   cmake -G Ninja, only when the cmake arguments changed (kept in the build dir)
  compile  cmake --build --target ..., ninja's [n/m] lines shown as a progress bar
  record   tqpatch-build.json in the build dir: what was built, how, with what

The full output goes to <build-dir>/tqpatch-build.log; on failure the last lines
and the log's path are printed. Later stages read the record and find the
binaries through build_record.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, TextIO

import click

from . import __version__, apply, lock, toolchain
from .backends.base import Backend
from .backends.cmake import configure_args
from .build_record import RECORD_NAME, build_dir_of, exe
from .errors import TqpatchError

LOG_NAME = "tqpatch-build.log"
ARGS_NAME = "tqpatch-cmake-args.json"

DEFAULT_TARGETS: tuple[str, ...] = (
    "llama-server", "llama-cli", "llama-perplexity", "llama-bench",
    "test-backend-ops", "test-quantize-fns", "tqpatch-verify", "tqpatch-capture",
)
# Targets a tree may lack: skipped with a note instead of failing the build.
OPTIONAL_TARGETS = frozenset({"tqpatch-verify", "tqpatch-capture"})

TAIL_LINES = 40
_PROGRESS_RE = re.compile(r"^\s*\[(\d+)/(\d+)\]")


# --------------------------------------------------------------------------
# pure pieces (unit-tested)


def parse_progress(line: str) -> tuple[int, int] | None:
    """ninja's '[12/345] Building CXX object ...' -> (12, 345); None for other lines."""
    m = _PROGRESS_RE.match(line)
    if not m:
        return None
    done, total = int(m.group(1)), int(m.group(2))
    return (done, total) if total > 0 else None


def parse_targets(text: str) -> set[str]:
    """Names from `ninja -t targets all` ('bin/llama-cli: CXX_EXECUTABLE_LINKER...')."""
    names = set()
    for line in text.splitlines():
        if ": " in line:
            names.add(line.rsplit(": ", 1)[0].strip())
    return names


def _args_file(build_dir: Path) -> Path:
    return build_dir / ARGS_NAME


def _configured_with(tree: Path, args: Sequence[str]) -> dict:
    return {"tree": str(Path(tree).resolve()), "args": list(args)}


def needs_configure(build_dir: Path, tree: Path, args: Sequence[str]) -> bool:
    """True unless build_dir was configured from this tree with exactly these args."""
    build_dir = Path(build_dir)
    if not (build_dir / "CMakeCache.txt").is_file() or not (build_dir / "build.ninja").is_file():
        return True
    try:
        stored = json.loads(_args_file(build_dir).read_text())
    except (OSError, ValueError):
        return True
    return stored != _configured_with(tree, args)


def remember_configure(build_dir: Path, tree: Path, args: Sequence[str]) -> None:
    _args_file(build_dir).write_text(json.dumps(_configured_with(tree, args), indent=2) + "\n")


# --------------------------------------------------------------------------
# progress


class BuildProgress:
    """Feed it output lines; shows a click bar on a TTY, a line every ~10% otherwise."""

    def __init__(self, label: str = "compile", tty: bool | None = None,
                 echo: Callable[[str], None] = click.echo):
        self.label = label
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.echo = echo
        self.done = 0
        self.total = 0
        self._bar = None
        self._last_decile = -1

    def feed(self, line: str) -> None:
        parsed = parse_progress(line)
        if parsed is None:
            return
        done, total = parsed
        if self.tty:
            if self._bar is None:
                self._bar = click.progressbar(length=total, label=self.label)
                self._bar.__enter__()
            self._bar.length = total
            if done > self.done:
                self._bar.update(done - self.done)
        else:
            decile = 10 * done // total
            if decile > self._last_decile:
                self._last_decile = decile
                self.echo(f"  {self.label}: {100 * done // total}% ({done}/{total})")
        self.done, self.total = done, total

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


# --------------------------------------------------------------------------
# running commands (tests replace _stream and _capture)


def _stream(cmd: Sequence[str], log: TextIO, on_line: Callable[[str], None] | None = None,
            env: dict | None = None) -> int:
    """Run cmd, copying its merged output to log line by line; the exit status."""
    log.write("$ " + " ".join(_quote(c) for c in cmd) + "\n")
    log.flush()
    try:
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", bufsize=1,
                                env={**os.environ, **(env or {})})
    except OSError as exc:
        log.write(f"cannot run {cmd[0]}: {exc}\n")
        return 127
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            log.write(line)
            if on_line is not None:
                on_line(line)
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # e.g. unshare, which ignores SIGTERM
            proc.kill()
            proc.wait()
        raise
    rc = proc.wait()
    log.write(f"[exit {rc}]\n")
    log.flush()
    return rc


def _capture(cmd: Sequence[str]) -> tuple[int, str]:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, errors="replace")
    except OSError as exc:
        return 127, str(exc)
    return proc.returncode, proc.stdout + proc.stderr


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./;-]+", arg) else repr(arg)


def _tail(path: Path, n: int = TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def _fail(step: str, log: TextIO, log_path: Path, rc: int,
          echo: Callable[..., None]) -> TqpatchError:
    log.flush()
    echo(f"--- last {TAIL_LINES} lines of {log_path} ---", err=True)
    echo(_tail(log_path), err=True)
    echo("---", err=True)
    return TqpatchError(f"{step} failed (exit {rc}); full log: {log_path}")


def _cache_value(build_dir: Path, key: str) -> str | None:
    try:
        text = (build_dir / "CMakeCache.txt").read_text(errors="replace")
    except OSError:
        return None
    m = re.search(rf"^{re.escape(key)}:[A-Z]+=(.*)$", text, re.M)
    return m.group(1).strip() if m else None


def available_targets(build_dir: Path, ninja: str,
                      wrap: Callable[[list[str]], list[str]] = list) -> set[str] | None:
    """Targets of a configured build dir (None when ninja cannot list them)."""
    program = _cache_value(build_dir, "CMAKE_MAKE_PROGRAM") or ninja
    rc, out = _capture(wrap([program, "-C", str(build_dir), "-t", "targets", "all"]))
    return parse_targets(out) if rc == 0 else None


# --------------------------------------------------------------------------
# the build


@dataclass
class BuildRequest:
    backend: Backend
    arch: str | None = None
    targets: Sequence[str] | None = None
    jobs: int | None = None
    build_dir: Path | None = None
    build_type: str = "Release"
    tree: Path | None = None
    options: dict = field(default_factory=dict)  # backend-specific build options, parsed
    extra_cmake_args: Sequence[str] = field(default_factory=tuple)
    boundary_k: int = 0  # build-time default of LLAMA_TURBO_BOUNDARY_K / _V (patch 0010)
    boundary_v: int = 0


def _check(backend: Backend, echo) -> tuple[toolchain.Toolchain, list[toolchain.Probe]]:
    reason = backend.unsupported_reason()
    if reason:
        raise TqpatchError(f"cannot build the {backend.name} backend here: {reason}")
    tc = toolchain.find_toolchain()
    reqs = backend.requirements()
    probes = [r.probe() for r in reqs]
    if any(p.blocking for p in probes):
        raise TqpatchError(toolchain.missing_message(
            probes, f"{backend.name} build requirements", reqs))
    for note in backend.notes():
        echo(f"warning: {note}", err=True)
    return tc, probes


def build(req: BuildRequest, echo: Callable[..., None] = click.echo) -> dict:
    """Run the whole build; returns the record written to <build-dir>/tqpatch-build.json.

    Holds the build folder's lock throughout, and the tree's lock shared from
    apply to the record, so no apply or revert changes the sources mid-build.
    """
    build_dir = build_dir_of(req.backend, req.build_dir)
    with contextlib.ExitStack() as held:
        held.enter_context(lock.build_dir(build_dir))
        return _build(req, echo, held)


def _build(req: BuildRequest, echo: Callable[..., None], held: contextlib.ExitStack) -> dict:
    started = time.monotonic()
    backend = req.backend
    arch = backend.normalize_arch(req.arch)  # reject a bad --arch before any work
    targets = list(dict.fromkeys(req.targets or DEFAULT_TARGETS))
    jobs = req.jobs or os.cpu_count() or 1
    build_dir = build_dir_of(backend, req.build_dir)

    echo(f"[1/5] check: toolchain and {backend.name} requirements")
    effective_arch = arch if arch is not None else backend.default_arch()
    elsewhere = backend.build_environment(req.options)  # e.g. HIP's Debian sid root
    if elsewhere is None:
        tc, backend_probes = _check(backend, echo)
        cmake, ninja, ccache = tc.cmake.path or "cmake", tc.ninja.path or "ninja", tc.ccache.ok
        tools = {p.name: {"path": p.path, "version": p.version}
                 for p in [*tc.all(), *backend_probes] if p.path}
    else:
        backend.cmake_args(effective_arch, req.options)  # a missing --arch fails before the root is made
        offered = elsewhere.prepare(echo)
        echo(f"  toolchain {elsewhere.name}: {offered}")
        cmake, ninja, ccache = "cmake", "ninja", False
        tools = {elsewhere.name: {"path": None, "version": offered}}

    echo("[2/5] apply: turbo patches on the llama.cpp tree")
    tree = Path(apply.ensure_applied(req.tree)).resolve()
    held.enter_context(lock.tree(tree, shared=True))
    echo(f"  tree: {tree}")

    def wrap(argv: list[str], env: dict | None = None) -> list[str]:
        """argv as it runs here, or in the build environment with the tree and build dir."""
        return list(argv) if elsewhere is None else elsewhere.wrap(argv, [tree, build_dir], env)

    args = configure_args(backend, effective_arch, build_type=req.build_type,
                          options=req.options, ccache=ccache,
                          extra=tuple(req.extra_cmake_args),
                          boundary_k=req.boundary_k, boundary_v=req.boundary_v)
    build_dir.mkdir(parents=True, exist_ok=True)
    log_path = build_dir / LOG_NAME
    with open(log_path, "w", errors="replace") as log:
        log.write(f"tqpatch {__version__} build --backend {backend.name} "
                  f"({_dt.datetime.now().isoformat(timespec='seconds')})\n")
        if needs_configure(build_dir, tree, args):
            echo(f"[3/5] config: cmake {' '.join(args)}")
            (build_dir / "CMakeCache.txt").unlink(missing_ok=True)  # changed args: start fresh
            _args_file(build_dir).unlink(missing_ok=True)
            rc = _stream(wrap([cmake, "-S", str(tree), "-B", str(build_dir), *args]), log)
            if rc != 0:
                raise _fail("cmake configure", log, log_path, rc, echo)
            remember_configure(build_dir, tree, args)
        else:
            echo("[3/5] config: up to date (cmake arguments unchanged)")
            # The tree's CMakeLists may have changed since (a new patch): let ninja
            # re-run cmake now so the target list below is current.
            rc = _stream(wrap([cmake, "--build", str(build_dir), "--target", "build.ninja"]), log)
            if rc != 0:
                raise _fail("cmake regenerate", log, log_path, rc, echo)

        known = available_targets(build_dir, ninja, wrap)
        skipped: list[str] = []
        if known is not None:
            unknown = [t for t in targets if t not in known]
            for t in unknown:
                if t in OPTIONAL_TARGETS:
                    echo(f"  note: this tree has no {t} target; skipping it")
                    skipped.append(t)
            bad = [t for t in unknown if t not in OPTIONAL_TARGETS]
            if bad:
                hints = []
                for t in bad:
                    close = difflib.get_close_matches(t, sorted(known), n=3)
                    hints.append(f"{t}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
                raise TqpatchError(f"unknown build target(s) in {build_dir}: {'; '.join(hints)}")
            targets = [t for t in targets if t not in skipped]
        if not targets:
            raise TqpatchError("nothing to build: every requested target was skipped")

        echo(f"[4/5] compile: {', '.join(targets)} with {jobs} jobs")
        progress = BuildProgress("compile", echo=echo)
        status = {"NINJA_STATUS": "[%f/%t] "}
        try:
            rc = _stream(wrap([cmake, "--build", str(build_dir), "--target", *targets,
                               "-j", str(jobs)], status), log, progress.feed, env=status)
        finally:
            progress.close()
        if rc != 0:
            raise _fail("build", log, log_path, rc, echo)

    seconds = round(time.monotonic() - started, 1)
    record = {
        "inputs": apply.tree_inputs(tree),
        "backend": backend.name,
        "ggml_backend_name": backend.ggml_backend_name,
        "arch": effective_arch,
        "build_type": req.build_type,
        "tree": str(tree),
        "build_dir": str(build_dir),
        "bin_dir": str(build_dir / "bin"),
        "targets": targets,
        "skipped_targets": skipped,
        "cmake_args": args,
        "tools": tools,
        "seconds": seconds,
        "finished": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "tqpatch_version": __version__,
    }
    echo("[5/5] record: " + str(build_dir / RECORD_NAME))
    (build_dir / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")

    bin_dir = build_dir / "bin"
    built = [t for t in targets if exe(bin_dir / t).exists()]
    echo(f"built in {seconds:.0f} s; binaries in {bin_dir}:")
    for t in built:
        echo(f"  {exe(bin_dir / t)}")
    extra = "" if build_dir == build_dir_of(backend) else f" --build-dir {build_dir}"
    echo(f"next: tqpatch verify --backend {backend.name}{extra}")
    return record
