"""Small file-system helpers every stage shares: atomic writes, stale temporaries,
and keeping paths read from files (manifests, journals, records, patches) inside
the folder they belong to.

Every temporary file or folder tqpatch makes carries the pid of its maker in
its name (`.<name>.<pid>.tqpatch-tmp`, `.<name>.tmp-<pid>-XXXX`), so a later run
can tell a leftover of a killed process (pid no longer running) from the work
of a live one, and sweep only the former.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from pathlib import Path

from .errors import TqpatchError
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


# --------------------------------------------------------------------------- containment


def check_rel(rel, what: str) -> str:
    """`rel` if it is a plain relative posix path (no `..`, `.`, empty parts, NUL); else
    a one-line TqpatchError naming `what` and the entry."""
    why = None
    if not isinstance(rel, str) or not rel:
        why = "empty, or not a path"
    elif rel.startswith("/"):
        why = "an absolute path"
    elif "\0" in rel:
        why = "holds a NUL byte"
    else:
        parts = rel.split("/")
        if ".." in parts:
            why = "climbs out with '..'"
        elif "." in parts or "" in parts:
            why = "has empty or '.' parts"
    if why is not None:
        raise TqpatchError(f"{what} {rel!r}: {why}; refusing it")
    return rel


def inside(root: Path, rel, what: str) -> Path:
    """root/rel, refused unless it stays inside root: every path tqpatch writes or
    deletes from a manifest, journal, record or patch goes through here.

    Refused (one line naming `what` and the entry): anything check_rel refuses,
    and a path whose folders lead out of root through a symbolic link. The last
    part itself may be a link: tqpatch replaces or removes a link, never writes
    through it.
    """
    check_rel(rel, what)
    root = Path(root)
    path = root / rel
    try:
        real_root = root.resolve()
        real_parent = path.parent.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop, an unreadable folder
        raise TqpatchError(f"{what} {rel!r}: cannot resolve it under {root} ({e}); refusing it") from None
    if real_parent != real_root and real_root not in real_parent.parents:
        raise TqpatchError(f"{what} {rel!r}: leads out of {root} through a symbolic link "
                           f"(to {real_parent}); refusing it")
    return path


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words (None for a regular file)."""
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def refuse_special(path: Path, advice: str = "give another path") -> None:
    """A one-line TqpatchError unless `path` is missing or a regular file (no link
    followed): tqpatch replaces regular files, never links, FIFOs, devices or folders."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        raise TqpatchError(f"cannot write {path}: {e.strerror or e}") from None
    kind = _kind(mode)
    if kind is not None:
        raise TqpatchError(f"cannot write {path}: it is {kind}, and tqpatch writes only "
                           f"regular files; {advice}")


# --------------------------------------------------------------------------- writing


def _open_new(tmp: Path):
    """A fresh temporary file for writing: never a file or link that was already there."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, 0o666)
    except FileExistsError:  # left by a killed process whose pid this one reuses
        os.unlink(tmp)
        fd = os.open(tmp, flags, 0o666)
    return os.fdopen(fd, "wb")


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
        with _open_new(tmp) as f:
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


def free_space(folder: Path) -> str:
    """The free space of the file system holding `folder` (its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return f"{shutil.disk_usage(folder).free / 1e6:.1f} MB free"
    except OSError:
        return "free space unknown"


def write_failure(e: OSError, folder: Path) -> str:
    """A failed write said in one line: why, the first path it failed on, the free space."""
    name = getattr(e, "filename", None)
    where = f" ({name})" if name else ""
    space = f"; {free_space(folder)} in {folder}" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return f"{e.strerror or e}{where}{space}"


class _CopyStopped(Exception):
    """The first failure of copy_tree, carried past shutil's list of every later one."""


def copy_tree(src: Path, dst: Path, ignore=None) -> None:
    """shutil.copytree (links kept, mtimes kept) that stops at the first failure.

    shutil.copytree goes on after a failed file and raises one error listing
    every file (on a full disk: all of them); this raises a one-line TqpatchError
    naming the first, with the free space when the disk is full.
    """
    def copy(s, d):
        try:
            return shutil.copy2(s, d)
        except OSError as e:
            if not getattr(e, "filename", None):
                e.filename = d
            raise _CopyStopped(e) from None

    try:
        shutil.copytree(src, dst, symlinks=True, ignore=ignore, copy_function=copy)
    except _CopyStopped as stop:
        e = stop.args[0]
    except shutil.Error as err:  # a link or folder that failed: the first one is enough
        first = err.args[0][0] if err.args and isinstance(err.args[0], list) and err.args[0] else None
        why = str(first[2]) if first else str(err)
        code = re.match(r"\[Errno (\d+)\] ([^:]*)", why)
        e = OSError(int(code.group(1)), code.group(2)) if code else OSError(why)
        e.filename = first[1] if first else None
    except OSError as e_:
        e = e_
    else:
        return
    raise TqpatchError(f"cannot copy {src} to {dst}: {write_failure(e, Path(dst).parent)}") from None


def stale_tmp_file(name: str) -> bool:
    """Whether `name` is a write_atomic temporary whose writer is gone."""
    m = _TMP_FILE_RE.match(name)
    return m is not None and not pid_alive(int(m.group(1)))


def sweep_tmp_files(folder: Path, recursive: bool = False) -> list[Path]:
    """Remove write_atomic temporaries of dead processes in `folder`; returns them."""
    folder = Path(folder)
    removed: list[Path] = []
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
