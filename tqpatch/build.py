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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import click

from . import __version__, apply, lock, toolchain, ui
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
# running commands (tests replace ui.run and ui.capture)


def _progress_feed(progress: ui.Progress) -> Callable[[str], None]:
    """A line callback moving progress to ninja's [n/m]."""
    def feed(line: str) -> None:
        parsed = parse_progress(line)
        if parsed is not None:
            progress.set(*parsed)
    return feed


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
    out = ui.capture(wrap([program, "-C", str(build_dir), "-t", "targets", "all"]), timeout=120)
    return parse_targets(out) if out is not None else None


def _known_targets(targets: list[str], known: set[str] | None, build_dir: Path,
                   echo: Callable[..., None]) -> tuple[list[str], list[str]]:
    """(targets to build, optional ones this tree lacks); an unknown target is an error."""
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
    return targets, skipped


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
    steps = ui.Steps(5, echo)

    with steps.step("check", f"toolchain and {backend.name} requirements"):
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

    with steps.step("apply", "turbo patches on the llama.cpp tree"):
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
    log = build_dir / LOG_NAME
    log.write_text(f"tqpatch {__version__} build --backend {backend.name} "
                   f"({_dt.datetime.now().isoformat(timespec='seconds')})\n", errors="replace")
    configure = needs_configure(build_dir, tree, args)
    with steps.step("config", f"cmake {' '.join(args)}" if configure
                    else "up to date (cmake arguments unchanged)"):
        if configure:
            (build_dir / "CMakeCache.txt").unlink(missing_ok=True)  # changed args: start fresh
            _args_file(build_dir).unlink(missing_ok=True)
            ui.run(wrap([cmake, "-S", str(tree), "-B", str(build_dir), *args]), log=log,
                   what="cmake configure")
            remember_configure(build_dir, tree, args)
        else:
            # The tree's CMakeLists may have changed since (a new patch): let ninja
            # re-run cmake now so the target list below is current.
            ui.run(wrap([cmake, "--build", str(build_dir), "--target", "build.ninja"]), log=log,
                   what="cmake regenerate")
        targets, skipped = _known_targets(targets, available_targets(build_dir, ninja, wrap),
                                          build_dir, echo)

    with steps.step("compile", f"{', '.join(targets)} with {jobs} jobs"):
        status = {"NINJA_STATUS": "[%f/%t] "}
        with ui.Progress("compile", echo=echo) as progress:
            ui.run(wrap([cmake, "--build", str(build_dir), "--target", *targets, "-j", str(jobs)],
                        status), log=log, on_line=_progress_feed(progress), env=status, what="build")

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
    with steps.step("record", str(build_dir / RECORD_NAME)):
        (build_dir / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")

    bin_dir = build_dir / "bin"
    built = [t for t in targets if exe(bin_dir / t).exists()]
    echo(f"built in {seconds:.0f} s; binaries in {bin_dir}:")
    for t in built:
        echo(f"  {exe(bin_dir / t)}")
    extra = "" if build_dir == build_dir_of(backend) else f" --build-dir {build_dir}"
    echo(f"next: tqpatch verify --backend {backend.name}{extra}")
    return record
