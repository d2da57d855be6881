"""A finished build as later stages see it: its tqpatch-build.json, its binaries, its freshness.

`tqpatch build` writes the record (build.py); verify, eval, calibrate, serve and
the benches read it here, so none of them imports the build itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import apply, backends, paths
from .backends.base import Backend
from .errors import TqpatchError

RECORD_NAME = "tqpatch-build.json"


def exe(path: Path) -> Path:
    """A binary's path as this platform names it (.exe on Windows)."""
    if sys.platform == "win32" and not path.suffix:
        return path.with_suffix(".exe")
    return path


def build_dir_of(backend: Backend, build_dir: Path | None = None) -> Path:
    """The build folder in use: `build_dir` if given, else the backend's default one."""
    return Path(build_dir or paths.default_build_dir(backend.name)).expanduser().resolve()


def build_hint(backend: Backend, build_dir: Path, target: str | None = None) -> str:
    """The `tqpatch build` command line that makes (or completes) this build."""
    cmd = f"tqpatch build --backend {backend.name}"
    if build_dir != build_dir_of(backend):
        cmd += f" --build-dir {build_dir}"
    if target:
        cmd += f" --targets {target}"
    return f"`{cmd}`"


def _not_readable(path: Path, exc: OSError) -> TqpatchError:
    return TqpatchError(f"cannot read {path} ({exc.strerror or exc}): run tqpatch as the user "
                        "who built it, or point TQPATCH_CACHE (or --build-dir) at a build you "
                        "can read")


def _record_file(build_dir: Path) -> Path | None:
    """build_dir's tqpatch-build.json if there is one; a folder tqpatch may not read
    (another user's cache) is one line saying so, not a PermissionError."""
    path = Path(build_dir) / RECORD_NAME
    try:
        return path if path.is_file() else None
    except OSError as exc:
        raise _not_readable(path, exc) from None


def _read_record(path: Path, again: str) -> dict:
    """A parsed build record; unreadable (permissions, not JSON, not a table) is one line."""
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON table")
        return record
    except PermissionError as exc:
        raise _not_readable(path, exc) from None
    except (OSError, ValueError) as exc:
        raise TqpatchError(f"{path} is unreadable ({exc}): {again}") from None


def load_record(backend: Backend, build_dir: Path | None = None) -> dict:
    """The tqpatch-build.json of a finished build; TqpatchError saying how to make one."""
    build_dir = build_dir_of(backend, build_dir)
    record_path = _record_file(build_dir)
    if record_path is None:
        raise TqpatchError(f"{backend.name} not built: no finished {backend.name} build in "
                           f"{build_dir}: run {build_hint(backend, build_dir)} first")
    record = _read_record(record_path, f"run {build_hint(backend, build_dir)} again")
    if record.get("backend") != backend.name:
        raise TqpatchError(f"{build_dir} holds a {record.get('backend')!r} build, not "
                           f"{backend.name}: run {build_hint(backend, build_dir)} or pass the "
                           "right --build-dir")
    return record


def find_binary(name: str, backend: Backend, build_dir: Path | None = None) -> Path:
    """Path of a built binary (e.g. 'llama-perplexity') for backend; clear error if absent."""
    build_dir = build_dir_of(backend, build_dir)
    record = load_record(backend, build_dir)
    path = exe(build_dir / "bin" / name)
    if not path.is_file():
        built = ", ".join(record.get("targets") or []) or "none"
        skipped = record.get("skipped_targets") or []
        why = (f"the tree had no {name} target when it was built (apply the patches that add it)"
               if name in skipped else f"it was not built (built: {built})")
        raise TqpatchError(f"{path} is missing: {why}; run "
                           f"{build_hint(backend, build_dir, name)}")
    return path


def check_fresh(record: dict) -> None:
    """TqpatchError 'stale build: rebuild' when the build was made from other kernels
    (patches, templates or codebooks) than this tqpatch renders now."""
    built = (record.get("inputs") or {}).get("digest")
    now = apply.current_inputs_digest()
    if built != now:
        backend = record.get("backend", "?")
        versions = (record.get("inputs") or {}).get("render") or {}
        was = ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) or "an unrecorded render"
        raise TqpatchError(
            f"stale build: the {backend} binaries in {record.get('build_dir')} were built from "
            f"other patches or kernels ({was}) than this tqpatch renders now; rebuild with "
            f"`tqpatch build --backend {backend}` before verifying")


def last_built(build_dir: Path | None = None) -> Backend:
    """The backend of the most recent finished build (the one in build_dir, if given)."""
    if build_dir is not None:
        path = _record_file(Path(build_dir).expanduser())
        record = _read_record(path, "run `tqpatch build` again") if path is not None else {}
        if not isinstance(record.get("backend"), str):
            raise TqpatchError(f"no finished build in {build_dir}: run `tqpatch build`")
        return backends.get(record["backend"])
    done = []
    for backend in built_backends():
        path = build_dir_of(backend) / RECORD_NAME
        try:
            done.append((path.stat().st_mtime, backend.name))
        except OSError:  # gone since built_backends looked: not built
            pass
    if not done:
        raise TqpatchError("nothing built yet: run `tqpatch build` (it picks this machine's GPU, "
                           "else the CPU) or name one with --backend")
    return backends.get(max(done)[1])


def built_backends(among: list[Backend] | None = None) -> list[Backend]:
    """Backends (of `among`, default all) with a finished build in their default build dir."""
    return [b for b in (among if among is not None else backends.all_backends())
            if _record_file(build_dir_of(b)) is not None]
