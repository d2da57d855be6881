"""All-or-nothing file writes in a tree that survive a kill at any moment.

A transaction sets a group of files in a tree to new bytes (or removes them):
  1. stage   .tqpatch/.journal.tmp-<pid>-*/ gets, for every file about to
             change, a hard link to its current inode (a copy where a link is
             impossible) and journal.json (the command, pid, and per file its
             path, old and new sha256; the folders the writes create), fsynced;
  2. arm     the staging folder is renamed to .tqpatch/journal in one step:
             from here on a transaction is in flight;
  3. write   each file: temporary sibling, fsync, rename over (or unlink);
  4. retire  .tqpatch/journal is renamed away, then deleted.
A failure or a caught signal during step 3 rolls back at once. A process killed
outright (SIGKILL, a crash, power loss) leaves .tqpatch/journal behind, and the
next tqpatch command on the tree (apply, revert, status, build), holding the
tree lock, rolls it back with `recover`. Every write renames a new inode over
the old one, so the linked old inodes still hold the exact previous bytes, mode
and times: rolling back renames them back into place and needs no new disk
space (a full disk cannot block it). Rolling back, never forward, keeps one
recovery path for every kill point; the interrupted command can simply be run
again.

Every step passes a testhook.checkpoint(), where crash-safety tests stop it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import fsutil
from .testhook import checkpoint
from .errors import TqpatchError

STATE_DIR = ".tqpatch"
JOURNAL = "journal"
JOURNAL_FILE = "journal.json"
FORMAT = 1


def _sha(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def _sha_of(path: Path) -> str | None:
    if path.is_symlink() or path.is_file():
        return _sha(path.read_bytes())
    return None


# --------------------------------------------------------------------------- paths


def state_dir(tree: Path) -> Path:
    return Path(tree) / STATE_DIR


def journal_dir(tree: Path) -> Path:
    return state_dir(tree) / JOURNAL


def pending(tree: Path) -> bool:
    """Whether an interrupted transaction waits to be rolled back in `tree`.

    A .tqpatch that is a link (or not a folder) is refused: journals, saved
    copies and sweeps must never reach outside the tree through it.
    """
    sdir = state_dir(tree)
    if sdir.is_symlink() or (sdir.exists() and not sdir.is_dir()):
        raise TqpatchError(f"{sdir} is {'a symbolic link' if sdir.is_symlink() else 'not a folder'}; "
                           "tqpatch keeps its state in a real folder there: remove it (for an applied "
                           "tree, with its manifest: then `tqpatch apply --force`)")
    return journal_dir(tree).is_dir()


def missing_dirs(tree: Path, rels) -> list[str]:
    """The folders writing the files `rels` in `tree` would create (tree-relative)."""
    out = set()
    for rel in rels:
        parent = (tree / rel).parent
        while parent != tree and not parent.exists():
            out.add(parent.relative_to(tree).as_posix())
            parent = parent.parent
    return sorted(out)


def _keep_old(path: Path, slot: Path) -> bool:
    """Link (or copy) the current file at `path` to `slot`; False if there is none."""
    if not (path.is_symlink() or path.exists()):
        return False
    if path.is_dir() and not path.is_symlink():
        raise TqpatchError(f"{path} is a folder, but tqpatch manages a file there")
    try:
        os.link(path, slot, follow_symlinks=False)
    except OSError:  # another file system, or no hard links there: copy it
        shutil.copy2(path, slot, follow_symlinks=False)
    return True


def _disarm(tree: Path) -> Path:
    """Rename the journal away: from here on the transaction is over (done or undone)."""
    gone = state_dir(tree) / f".{JOURNAL}.old-{os.getpid()}-{int(time.time() * 1e6)}"
    os.rename(journal_dir(tree), gone)
    fsutil.fsync_dir(state_dir(tree))
    return gone


def _retire(tree: Path) -> None:
    gone = _disarm(tree)
    checkpoint()
    shutil.rmtree(gone, ignore_errors=True)


def _tidy_state_dir(tree: Path) -> None:
    try:
        state_dir(tree).rmdir()  # only when empty: nothing applied, nothing pending
    except OSError:
        pass


# --------------------------------------------------------------------------- commit


@dataclass
class Journal:
    op: str
    files: list[dict]
    created_dirs: list[str]
    remove_dirs: list[str]
    pid: int
    started: str
    command: str


def commit(tree: Path, writes: dict[str, bytes | None], op: str, *,
           remove_dirs: list[str] | tuple = (), command: str = "",
           on_done: Callable[[], None] | None = None) -> None:
    """Set every file in `writes` (tree-relative path -> bytes, None: remove) or none.

    remove_dirs: folders removed (when empty) after the writes, deepest first.
    on_done: called the moment the transaction is complete (the journal retired),
    so a caller stopped after it can say the work had been done.
    On any failure the tree is rolled back and the error re-raised; if even that
    fails, the journal stays for the next command and the error says so.
    """
    tree = Path(tree)
    sdir = state_dir(tree)
    for rel in [*writes, *remove_dirs]:  # callers check too; nothing outside the tree, ever
        fsutil.inside(tree, rel, f"{op}: the path")
    fsutil.inside(tree, f"{STATE_DIR}/{JOURNAL}", f"{op}: the journal")
    if pending(tree):  # callers recover first; never stack two journals
        raise TqpatchError(f"{journal_dir(tree)} holds an unfinished transaction; "
                           "run `tqpatch status` to roll it back")
    made_state_dir = not sdir.exists()
    sdir.mkdir(exist_ok=True)
    created = missing_dirs(tree, [r for r, d in writes.items() if d is not None])
    staging = Path(tempfile.mkdtemp(prefix=f".{JOURNAL}.tmp-{os.getpid()}-", dir=sdir))
    armed = done = False
    try:
        (staging / "old").mkdir()
        files = []
        for n, (rel, data) in enumerate(writes.items()):
            slot = f"old/{n}"
            path = tree / rel
            old_sha = _sha_of(path) if (path.is_symlink() or path.exists()) else None
            kept = _keep_old(path, staging / slot)
            files.append({"path": rel, "old": slot if kept else None, "old_sha256": old_sha,
                          "new_sha256": _sha(data)})
            checkpoint()
        record = {"format": FORMAT, "op": op, "command": command, "pid": os.getpid(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": files,
                  "created_dirs": created, "remove_dirs": list(remove_dirs)}
        fsutil.write_atomic(staging / JOURNAL_FILE, json.dumps(record, indent=1).encode(),
                            fsync=True)
        fsutil.fsync_dir(staging / "old")
        fsutil.fsync_dir(staging)
        checkpoint()
        os.rename(staging, journal_dir(tree))
        armed = True
        fsutil.fsync_dir(sdir)
        checkpoint()

        touched_dirs = set()
        for rel, data in writes.items():
            path = tree / rel
            if data is None:
                if path.is_symlink() or path.exists():
                    path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                if path.is_symlink():
                    path.unlink()  # replace the link itself, never write through it
                fsutil.write_atomic(path, data, fsync=True)
            touched_dirs.add(path.parent)
            checkpoint()
        for rel in sorted(remove_dirs, key=lambda r: -r.count("/")):
            try:
                (tree / rel).rmdir()
            except OSError:
                pass
        for d in touched_dirs:
            if d.is_dir():
                fsutil.fsync_dir(d)
        checkpoint()
        gone = _disarm(tree)
        done = True
        if on_done is not None:
            on_done()
        checkpoint()
        shutil.rmtree(gone, ignore_errors=True)
    except BaseException as e:
        if done:  # complete: only the journal's deletion was cut short (swept later)
            raise
        armed = armed or not staging.exists()  # a signal right after the arming rename
        if not armed:
            shutil.rmtree(staging, ignore_errors=True)
            if made_state_dir:
                _tidy_state_dir(tree)
            raise
        try:
            failed = _rollback(tree)
        except BaseException:
            raise e  # a second signal mid-rollback: the journal stays for the next command
        if failed:
            raise TqpatchError(
                f"{op} failed ({_describe(e)}), and rolling back failed too for:\n  "
                + "\n  ".join(failed)
                + f"\nthe journal in {journal_dir(tree)} is kept: fix the cause, then any tqpatch "
                  "command on this tree rolls back the rest") from e
        _tidy_state_dir(tree)
        raise
    _tidy_state_dir(tree)  # a revert leaves it empty


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError):
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return f"{e.strerror or e}{where}"
    if isinstance(e, TqpatchError):
        return e.message
    return type(e).__name__


# --------------------------------------------------------------------------- rollback


def read_journal(tree: Path) -> Journal | None:
    """The armed journal, or None; every path in it checked to stay in the tree (its saved
    copies in the journal), else a TqpatchError naming the entry and nothing is touched."""
    jdir = journal_dir(tree)
    jfile = jdir / JOURNAL_FILE
    if not jfile.is_file():
        return None
    try:
        data = json.loads(jfile.read_text())
        journal = Journal(op=data["op"], files=list(data["files"]),
                          created_dirs=list(data.get("created_dirs", [])),
                          remove_dirs=list(data.get("remove_dirs", [])), pid=int(data.get("pid", 0)),
                          started=str(data.get("started", "?")), command=str(data.get("command", "")))
        if not all(isinstance(ent, dict) for ent in journal.files):
            raise ValueError("a file entry is not a table")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TqpatchError(f"{jfile} is unreadable ({e}): an interrupted tqpatch left it; "
                           f"inspect {jdir} or remove the tree and apply again") from None
    what = f"{jfile} lists"
    for ent in journal.files:
        fsutil.inside(tree, ent.get("path"), what)
        if ent.get("old") is not None:
            fsutil.inside(jdir, ent["old"], what + " the saved copy")
    for rel in journal.created_dirs:
        fsutil.inside(tree, rel, what + " the folder")
    return journal


def _rollback(tree: Path) -> list[str]:
    """Put every journaled file back; returns the ones that could not be (journal kept)."""
    jdir = journal_dir(tree)
    journal = read_journal(tree)
    if journal is None:
        # Armed but journal.json missing cannot happen (it is written before the
        # arming rename); an empty journal folder means nothing was changed.
        _retire(tree)
        return []
    failed = []
    for ent in reversed(journal.files):  # read_journal checked every path
        path = tree / ent["path"]
        for stale in path.parent.glob(f".{path.name}.*{fsutil.TMP_SUFFIX}") if path.parent.is_dir() else []:
            stale.unlink(missing_ok=True)
        try:
            if ent.get("old") is None:
                if path.is_symlink() or path.is_file():
                    path.unlink()
            else:
                slot = jdir / ent["old"]
                if slot.is_symlink() or slot.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(slot, path)
                elif _sha_of(path) != ent.get("old_sha256"):
                    failed.append(f"{path}: its saved copy {slot} is missing")
        except OSError as e:
            failed.append(f"{path}: {e.strerror or e}")
        checkpoint()
    for rel in sorted(journal.created_dirs, key=lambda r: -r.count("/")):
        try:
            (tree / rel).rmdir()
        except OSError:
            pass
    if failed:
        return failed
    _retire(tree)
    return []


def recover(tree: Path) -> str | None:
    """Roll back an interrupted transaction in `tree`; one line saying so, or None.

    The caller holds the tree lock exclusively.
    """
    tree = Path(tree)
    if not pending(tree):
        return None
    journal = read_journal(tree)
    failed = _rollback(tree)
    if failed:
        raise TqpatchError("could not roll back an interrupted tqpatch in "
                           f"{tree}:\n  " + "\n  ".join(failed)
                           + f"\nfix the cause and run the command again (journal: {journal_dir(tree)})")
    _tidy_state_dir(tree)
    if journal is None:
        return f"removed an empty journal an interrupted tqpatch left in {tree}"
    restored = sum(1 for e in journal.files if e.get("old") is not None)
    removed = len(journal.files) - restored
    who = f"`{journal.command}`" if journal.command else f"tqpatch {journal.op}"
    return (f"rolled back an interrupted {who} (pid {journal.pid}, started {journal.started}) "
            f"in {tree}: {restored} files put back, {removed} removed; it is as before that command")


def sweep(tree: Path) -> None:
    """Remove temporaries of dead tqpatch processes in <tree>/.tqpatch (none pending)."""
    sdir = state_dir(tree)
    if not sdir.is_dir() or pending(tree):
        return
    fsutil.sweep_temp_dirs(sdir, JOURNAL, kinds=("tmp", "old"))
    fsutil.sweep_tmp_files(sdir)
    _tidy_state_dir(tree)
