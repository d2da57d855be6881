"""Small file-system helpers every stage shares: atomic writes and stale temporaries.

Every temporary file or folder tqpatch makes carries the pid of its maker in
its name (`.<name>.<pid>.tqpatch-tmp`, `.<name>.tmp-<pid>-XXXX`), so a later run
can tell a leftover of a killed process (pid no longer running) from the work
of a live one, and sweep only the former.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .testhook import checkpoint

TMP_SUFFIX = ".tqpatch-tmp"
_TMP_FILE_RE = re.compile(r"^\..+\.(\d+)" + re.escape(TMP_SUFFIX) + "$")


def default_file_mode() -> int:
    """The mode a plain open() gives a new file under the current umask (0644-ish)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def tmp_path(path: Path) -> Path:
    """The temporary sibling write_atomic uses for `path` in this process."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (renames, creations) durable; a no-op where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int | None = None, fsync: bool = False) -> None:
    """Replace `path` with `data` in one rename: readers see the old or the new bytes.

    mode: the new file's permission bits; None keeps those of the file it replaces,
    or the umask default for a new file. fsync: flush the data before the rename.
    """
    path = Path(path)
    tmp = tmp_path(path)
    if mode is None:
        try:
            mode = path.stat().st_mode
        except OSError:
            mode = None
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode & 0o7777)
        checkpoint()  # tests stop here to leave a temporary behind
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def stale_tmp_file(name: str) -> bool:
    """Whether `name` is a write_atomic temporary whose writer is gone."""
    m = _TMP_FILE_RE.match(name)
    return m is not None and not pid_alive(int(m.group(1)))


def sweep_tmp_files(folder: Path, recursive: bool = False) -> list[Path]:
    """Remove write_atomic temporaries of dead processes in `folder`; returns them."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    walker = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for dirpath, _dirs, files in walker:
        for name in files:
            if name.endswith(TMP_SUFFIX) and stale_tmp_file(name):
                p = Path(dirpath) / name
                try:
                    p.unlink()
                    removed.append(p)
                except OSError:
                    pass
    return removed


def temp_dir_prefix(name: str) -> str:
    """Prefix of the temporary folders made beside `name` by this process."""
    return f".{name}.tmp-{os.getpid()}-"


def _size(p: Path) -> int:
    if p.is_dir() and not p.is_symlink():
        total = 0
        for dirpath, _dirs, files in os.walk(p):
            for f in files:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_size
                except OSError:
                    pass
        return total
    try:
        return p.lstat().st_size
    except OSError:
        return 0


def sweep_temp_dirs(folder: Path, name: str, kinds: tuple[str, ...] = ("tmp", "old"),
                    echo=None) -> list[Path]:
    """Remove `.<name>.<kind>-<pid>-*` entries in `folder` whose maker is gone.

    Entries of an older tqpatch without a pid in the name count as stale: the
    caller holds the lock that every maker of such entries takes. echo: called
    with one line saying what was removed, if anything.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    size = 0
    for entry in sorted(folder.iterdir()):
        for kind in kinds:
            prefix = f".{name}.{kind}-"
            if not entry.name.startswith(prefix):
                continue
            m = re.match(r"(\d+)-", entry.name[len(prefix):])
            if m and pid_alive(int(m.group(1))):
                break
            size += _size(entry)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
            break
    if removed and echo is not None:
        echo(f"removed {len(removed)} temporary folder(s) an interrupted tqpatch left in "
             f"{folder} ({size / 1e6:.1f} MB)")
    return removed
