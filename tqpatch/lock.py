"""Locks between tqpatch processes, kept beside the folder they guard.

One lock per thing that two runs must not change at once:
  tree   a llama.cpp work tree (apply, revert, status; build holds it shared
         while it compiles, so an apply waits for the build to finish)
  fetch  the pristine tree and the source downloads in the cache
  build  a build folder
Each lock file sits next to its folder, `.<name>.tqpatch.lock` in the folder's
parent (of the resolved path), so every tqpatch that touches the folder meets
the same lock whatever its $TQPATCH_CACHE; it is never removed (removing a
lock file while someone waits on it would hand out two locks). A lock file
that is a link or not a regular file is refused. Where the parent cannot be
written, a lock file that is already there is opened read-only (flock needs
no write access; the holder is just not recorded); with none there, a shared
hold goes ahead unlocked (no one can hold a lock that does not exist) and an
exclusive one is refused. Other locks (lock_file) live in the cache's locks/.
A process that wants a held lock says once who holds it ("waiting for another
tqpatch (pid N, `tqpatch build`) holding ...") and waits, up to
$TQPATCH_LOCK_TIMEOUT seconds (default 30 min), then gives up with a message
naming the holder. Locks are flock(2) locks: the kernel drops them when their
process ends, however it ends (kill -9 included), so a lock is never stale;
the holder's pid and command are written into the lock file for the message.
(filelock from PyPI truncates the file whenever a waiter opens it, which would
erase that record, hence the few lines of fcntl here.) Holding a lock twice in
one process is a no-op, so nested stages (build -> apply -> fetch) just work.
Locks are always taken in the order build -> tree -> fetch.

The cache root itself is checked here (the pristine tree's lock and locks/
live in it): a $TQPATCH_CACHE that is a file or cannot be written is one
clear error.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import stat
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import click

from . import paths
from .errors import TqpatchError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locking
    fcntl = None  # type: ignore[assignment]

ENV_TIMEOUT = "TQPATCH_LOCK_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
POLL_S = 0.1

# lock file -> [fd, shared, depth] for the locks this process holds
_held: dict[str, list] = {}


def _stderr(msg: str) -> None:
    click.echo(msg, err=True)


def cache_dir() -> Path:
    """The cache root, created if missing; a clear error if it is a file or unwritable."""
    root = paths.cache_root()
    named = "$TQPATCH_CACHE" if os.environ.get("TQPATCH_CACHE") else "the tqpatch cache"
    fix = "set TQPATCH_CACHE to a folder you can write"
    if root.exists() and not root.is_dir():
        raise TqpatchError(f"{named} {root} is a file, not a folder: move the file away or {fix}")
    try:
        (root / "locks").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TqpatchError(f"cannot create {named} {root} ({e.strerror or e}): {fix}") from None
    return root


def lock_file(kind: str, target: Path | str | None = None) -> Path:
    """locks/<kind>[-<name>-<hash of the resolved path>].lock in the cache."""
    name = kind
    if target is not None:
        resolved = str(Path(target).expanduser().absolute().resolve())
        label = re.sub(r"[^A-Za-z0-9._-]", "_", Path(resolved).name)[:40] or "root"
        name += f"-{label}-{hashlib.sha256(resolved.encode()).hexdigest()[:10]}"
    return cache_dir() / "locks" / f"{name}.lock"


def beside(folder: Path | str) -> Path:
    """The lock file of a folder: `.<name>.tqpatch.lock` next to it (its resolved path)."""
    resolved = Path(folder).expanduser().absolute().resolve()
    name = resolved.name or "root"
    return resolved.parent / f".{name}.tqpatch.lock"


def timeout_s() -> float:
    """$TQPATCH_LOCK_TIMEOUT in seconds: a finite number >= 0 (nan would wait forever)."""
    raw = os.environ.get(ENV_TIMEOUT)
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise TqpatchError(f"{ENV_TIMEOUT}={raw!r} is not a number of seconds: give a finite "
                           f"number >= 0 (default {DEFAULT_TIMEOUT_S:g})")
    return value


def _holder(path: Path) -> dict:
    try:
        data = json.loads(path.read_text() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _who(info: dict) -> str:
    parts = [f"pid {info['pid']}"] if info.get("pid") else []
    if info.get("command"):
        parts.append(f"`{info['command']}`")
    return "another tqpatch" + (f" ({', '.join(parts)})" if parts else "")


def command_line() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith(("cli.py", "__main__.py")):
        argv[0] = "tqpatch"
    else:
        argv[0:1] = [Path(argv[0]).name if argv else "tqpatch"]
    return " ".join(argv)[:200]


def _acquire(fd: int, path: Path, what: str, shared: bool, echo: Callable[[str], None]) -> None:
    flag = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        fcntl.flock(fd, flag | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    info = _holder(path)
    echo(f"waiting for {_who(info)} holding the lock on {what} ({path})...")
    limit = timeout_s()
    deadline = time.monotonic() + limit
    while True:
        try:
            fcntl.flock(fd, flag | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if time.monotonic() >= deadline:
            info = _holder(path) or info
            since = f" since {info['since']}" if info.get("since") else ""
            raise TqpatchError(
                f"gave up after {limit:g} s waiting for {_who(info)}, which holds the lock on "
                f"{what}{since} ({path}); let it finish or stop it, or set {ENV_TIMEOUT} to wait "
                "longer")
        time.sleep(POLL_S)


def _record(fd: int) -> None:
    data = json.dumps({"pid": os.getpid(), "command": command_line(),
                       "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode()
    with contextlib.suppress(OSError):  # read-only (another user's lock file): not recorded
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)


_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _open(path: Path, shared: bool) -> int | None:
    """An fd on the lock file (created if missing); None: a shared hold needs no lock."""
    flags = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    fix = f"remove {path} (tqpatch makes a new one)"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise TqpatchError(f"the lock file {path} is a symbolic link; {fix}") from None
        if e.errno not in _NOT_WRITABLE:
            raise TqpatchError(f"cannot open the lock file {path} ({e.strerror or e})") from None
        try:
            fd = os.open(path, os.O_RDONLY | flags)
        except FileNotFoundError:
            if shared:
                return None
            raise TqpatchError(f"cannot create the lock file {path} ({e.strerror or e}): tqpatch "
                               f"locks a folder with a file beside it; make {path.parent} "
                               "writable") from None
        except OSError as e2:
            raise TqpatchError(f"cannot open the lock file {path} ({e2.strerror or e2})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise TqpatchError(f"the lock file {path} is not a regular file; {fix}")
    return fd


class Held:
    """A held lock; upgrade() turns a shared hold into an exclusive one."""

    def __init__(self, path: Path, what: str, echo: Callable[[str], None]):
        self.path, self.what, self.echo = path, what, echo

    @property
    def shared(self) -> bool:
        entry = _held.get(str(self.path))
        return bool(entry and entry[1])

    def upgrade(self) -> None:
        entry = _held.get(str(self.path))
        if fcntl is None or entry is None or not entry[1]:
            return
        _acquire(entry[0], self.path, self.what, False, self.echo)
        _record(entry[0])
        entry[1] = False


@contextlib.contextmanager
def hold(path: Path, what: str, *, shared: bool = False,
         echo: Callable[[str], None] = _stderr) -> Iterator[Held]:
    """Hold the lock file `path` (exclusive, or shared) for the with-block."""
    key = str(path)
    held = Held(path, what, echo)
    timeout_s()  # a bad $TQPATCH_LOCK_TIMEOUT is refused at once, not only when waiting
    if fcntl is None:
        yield held
        return
    entry = _held.get(key)
    if entry is not None:  # this process holds it already
        if entry[1] and not shared:
            raise RuntimeError(f"lock {path} is held shared and cannot be taken exclusive inside")
        entry[2] += 1
        try:
            yield held
        finally:
            entry[2] -= 1
        return
    fd = _open(path, shared)
    if fd is None:
        yield held
        return
    try:
        _acquire(fd, path, what, shared, echo)
        _record(fd)
        _held[key] = [fd, shared, 1]
        try:
            yield held
        finally:
            del _held[key]
            if _holder(path).get("pid") == os.getpid():
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # drops the lock


def tree(tree_path: Path, *, shared: bool = False, echo: Callable[[str], None] = _stderr):
    return hold(beside(tree_path), f"the tree {tree_path}", shared=shared, echo=echo)


def fetch(echo: Callable[[str], None] = _stderr):
    cache_dir()
    return hold(beside(paths.pristine_tree()), f"the pristine sources in {paths.cache_root()}",
                echo=echo)


def build_dir(path: Path, echo: Callable[[str], None] = _stderr):
    return hold(beside(path), f"the build folder {path}", echo=echo)
