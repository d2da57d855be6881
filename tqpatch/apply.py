"""Lay the glue patches and the rendered kernel sources onto a llama.cpp tree.

The desired state is computed in memory first: every file a patch touches
starts from its PRISTINE content and gets the series applied in order; the
rendered files (rendered in memory, and refused when the committed generated/
differs, see render.load_rendered) are laid over that. Nothing is written until
all of it worked. Then only the files whose content differs are written, as one
crash-safe transaction (tqpatch.txn): a failure, Ctrl-C, SIGTERM or even
SIGKILL at any moment leaves the tree as it was, at once or at the next
tqpatch command on it, which rolls the interrupted one back and says so.
Every command here holds the tree's lock (tqpatch.lock), so two runs on one
tree wait for each other instead of interleaving.

What was done is recorded in <tree>/.tqpatch/state.json: the pin, the patches
(name, sha256) in order, the render versions, and per touched file its sha256
after apply, its origin (patched/rendered) and its pristine sha256 (null for
new files). That manifest is how `status` tells applied from drifted (a file
edited by hand since) and how `revert` undoes exactly what was done.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import click

from . import __version__, backends, fetch, fsutil, lock, paths, patchset, pin, render, testhook, txn
from .errors import TqpatchError

Echo = Callable[[str], None]
STATE_DIR = txn.STATE_DIR
STATE_FILE = "state.json"
MANIFEST_REL = f"{STATE_DIR}/{STATE_FILE}"
FORMAT = 1
NEXT_STEP = "tqpatch build --backend cpu"


def _echo(msg: str) -> None:
    click.echo(msg)


def _sha(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def _read(path: Path) -> bytes | None:
    if path.is_symlink() or path.exists():
        if path.is_dir():
            raise TqpatchError(f"{path} is a directory, but tqpatch manages a file there")
        return path.read_bytes()
    return None


# --------------------------------------------------------------------------- trees


def _resolve_tree(tree: Path | str | None) -> Path:
    lock.cache_dir()  # a broken cache (its locks live there) is the first thing to say
    tree = Path(tree).expanduser() if tree is not None else paths.default_work_tree()
    return tree.absolute()


def is_llama_tree(tree: Path) -> bool:
    return ((tree / "CMakeLists.txt").is_file() and (tree / "ggml" / "CMakeLists.txt").is_file()
            and (tree / "include" / "llama.h").is_file())


def _check_tree(tree: Path) -> None:
    if not tree.exists():
        raise TqpatchError(f"no tree at {tree}; `tqpatch apply` creates the default one")
    if not tree.is_dir() or not is_llama_tree(tree):
        raise TqpatchError(f"{tree} is not a llama.cpp tree (no CMakeLists.txt, "
                           "ggml/CMakeLists.txt and include/llama.h)")


def _is_pristine_path(tree: Path) -> bool:
    try:
        return tree.resolve() == paths.pristine_tree().resolve()
    except OSError:
        return False


def _refuse_pristine(tree: Path, what: str) -> None:
    if _is_pristine_path(tree):
        raise TqpatchError(f"{tree} is the pristine tree, which tqpatch never modifies; "
                           f"{what} a copy (default: {paths.default_work_tree()})")


def create_work_tree(tree: Path, echo: Echo = _echo) -> Path:
    """A copy of the pristine tree at `tree` (which must not exist yet)."""
    tree = Path(tree).absolute()
    with tree_lock(tree, echo):
        if tree.exists():
            raise TqpatchError(f"{tree} already exists")
        pristine = fetch.ensure_pristine()
        tree.parent.mkdir(parents=True, exist_ok=True)
        echo(f"creating work tree {tree} from {pristine}")
        tmp = Path(tempfile.mkdtemp(prefix=fsutil.temp_dir_prefix(tree.name), dir=tree.parent))
        try:
            # copy2 keeps mtimes, so builds from an earlier copy stay incremental.
            fsutil.copy_tree(pristine, tmp / "tree")  # a full disk: one line, the free space
            testhook.checkpoint()
            os.rename(tmp / "tree", tree)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return tree


@contextlib.contextmanager
def tree_lock(tree: Path, echo: Echo = _echo, shared: bool = False) -> Iterator[None]:
    """Hold the tree's lock; first roll back an interrupted command and sweep its leftovers."""
    tree = Path(tree)
    with lock.tree(tree, shared=shared) as held:
        # Copies of the pristine tree a killed `apply` left beside the tree.
        fsutil.sweep_temp_dirs(tree.parent, tree.name, kinds=("tmp",), echo=echo)
        if tree.is_dir() and txn.pending(tree):
            held.upgrade()
            message = txn.recover(tree)
            if message:
                echo(message)
        if tree.is_dir():
            txn.sweep(tree)  # only what dead processes left: safe under a shared hold too
        yield


# --------------------------------------------------------------------------- manifest


def manifest_path(tree: Path) -> Path:
    return Path(tree) / STATE_DIR / STATE_FILE


def read_manifest(tree: Path) -> dict | None:
    path = manifest_path(tree)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            raise ValueError("no 'files' table")
        if not all(isinstance(ent, dict) for ent in data["files"].values()):
            raise ValueError("a 'files' entry is not a table")
    except (OSError, ValueError) as e:
        raise TqpatchError(f"{path} is unreadable ({e}); restore it, or remove the tree "
                           "and run `tqpatch apply` to start from pristine") from None
    if data.get("format") != FORMAT:
        raise TqpatchError(f"{path} has format {data.get('format')!r}; this tqpatch reads {FORMAT}")
    # Every path in it is written or removed by apply/revert: all must stay in the tree.
    created = data.get("created_dirs", [])
    if not isinstance(created, list):
        raise TqpatchError(f"{path} is unreadable ('created_dirs' is not a list); restore it, or "
                           "remove the tree and run `tqpatch apply` to start from pristine")
    for rel in [*data["files"], *created]:
        _check_rel(rel, f"{path} lists", tree)
    return data


def placed_files(tree: Path) -> frozenset[str]:
    """Tree-relative paths the patches and the render placed in an applied tree."""
    manifest = read_manifest(Path(tree))
    if manifest is None:
        raise TqpatchError(f"{tree} carries no tqpatch manifest: run `tqpatch apply`")
    return frozenset(manifest["files"])


def _inputs_record(inputs: "Inputs") -> dict:
    return {
        "pin": pin.LLAMA_CPP_COMMIT,
        "patches": [{"name": p.name, "sha256": p.sha256} for p in inputs.patches],
        "render": dict(inputs.rendered.versions),
        "rendered_files": {rel: _sha(d) for rel, d in sorted(inputs.rendered.files.items())},
    }


def _inputs_of(manifest: dict) -> dict:
    return {k: manifest.get(k) for k in ("pin", "patches", "render", "rendered_files")}


def inputs_digest(inputs_record: dict) -> str:
    """One digest of what a tree was made from (pin, patches, rendered files)."""
    return hashlib.sha256(json.dumps(_inputs_of(inputs_record), sort_keys=True).encode()).hexdigest()[:16]


def current_inputs_digest() -> str:
    """The digest a tree applied now from this tqpatch would have."""
    return inputs_digest(_inputs_record(load_inputs()))


def tree_inputs(tree: Path) -> dict:
    """{digest, render versions} of an applied tree (from its manifest)."""
    manifest = read_manifest(Path(tree))
    if manifest is None:
        raise TqpatchError(f"{tree} carries no tqpatch manifest: run `tqpatch apply`")
    return {"digest": inputs_digest(manifest), "render": manifest.get("render") or {}}


def _versions_text(manifest_or_record: dict) -> str:
    parts = [f"llama.cpp {manifest_or_record.get('pin')}",
             f"{len(manifest_or_record.get('patches') or [])} patches"]
    for k, v in sorted((manifest_or_record.get("render") or {}).items()):
        parts.append(f"{k} {v}")
    return ", ".join(parts)


# --------------------------------------------------------------------------- inputs / plan


@dataclass
class Inputs:
    patches: list[patchset.Patch]
    rendered: render.RenderResult


def load_inputs() -> Inputs:
    patches = patchset.load_series(paths.patches_dir())
    rendered = render.load_rendered(backends.all_backends())
    for rel in rendered.files:
        _check_rel(rel, "rendered file path")
    return Inputs(patches, rendered)


def _check_rel(rel: str, what: str, tree: Path | None = None) -> None:
    """A path apply may write: inside the tree (checked against `tree`'s links when
    given, fsutil.inside), and not in tqpatch's own .tqpatch/."""
    if tree is None:
        fsutil.check_rel(rel, what)
    else:
        fsutil.inside(tree, rel, what)
    if rel.split("/")[0] == STATE_DIR:
        raise TqpatchError(f"{what} {rel!r}: inside tqpatch's own {STATE_DIR}/; refusing it")


@dataclass
class Entry:
    content: bytes | None  # None: the file must not exist
    origin: str  # patched | rendered | restored
    pristine: bytes | None


def desired_state(inputs: Inputs, pristine_root: Path | None = None) -> dict[str, Entry]:
    """Every touched file's content after apply, computed from pristine (no disk writes)."""
    cache: dict[str, bytes | None] = {}

    def read(rel: str) -> bytes | None:
        if rel not in cache:
            cache[rel] = fetch.read_pristine(rel, pristine_root)
        return cache[rel]

    patched = patchset.apply_series(inputs.patches, read)
    state = {rel: Entry(data, "patched", read(rel)) for rel, data in patched.items()}
    for rel, data in inputs.rendered.files.items():
        state[rel] = Entry(data, "rendered", read(rel))
    return dict(sorted(state.items()))


def _refuse_drift(tree: Path, manifest: dict, force: bool, advice: str) -> list:
    """The drifted files; an error naming the hand-edited ones unless --force.

    Only real edits are refused: a file that is gone, or back to its pristine
    bytes, loses nothing when tqpatch writes it again.
    """
    drifted = _drift(tree, manifest)
    edited = [(r, o, how) for r, o, how in drifted if how in ("edited", "reappeared")]
    if edited and not force:
        raise TqpatchError(
            f"files tqpatch placed in {tree} were edited by hand since apply:\n"
            + _format_paths([f"{r} ({o}, {how})" for r, o, how in edited])
            + "\n" + advice
        )
    return drifted


def _drift(tree: Path, manifest: dict) -> list[tuple[str, str, str]]:
    """(path, origin, how) for every manifest file whose disk content changed since apply.

    how: deleted, edited, reappeared (a file apply removed is back), or pristine
    (edited back to the pristine bytes).
    """
    out = []
    for rel, ent in sorted(manifest["files"].items()):
        sha = _sha(_read(tree / rel))
        if sha == ent.get("sha256"):
            continue
        if sha is None:
            how = "deleted"
        elif sha == ent.get("pristine_sha256"):
            how = "pristine"
        else:
            how = "reappeared" if ent.get("sha256") is None else "edited"
        out.append((rel, ent.get("origin", "?"), how))
    return out


def _not_pristine(tree: Path, touched: dict[str, bytes | None]) -> list[str]:
    """Paths whose content in `tree` differs from pristine (never-applied trees)."""
    return [rel for rel, pristine in sorted(touched.items()) if _read(tree / rel) != pristine]


def _format_paths(items: list[str], limit: int = 10) -> str:
    shown = "\n".join(f"  {x}" for x in items[:limit])
    return shown + (f"\n  ... and {len(items) - limit} more" if len(items) > limit else "")


# --------------------------------------------------------------------------- transaction


@contextlib.contextmanager
def _finish_noted(what: str, tree: Path, outcome: str) -> Iterator[Callable[[], None]]:
    """Yield the on_done callback for txn.commit; when Ctrl-C or SIGTERM stops the
    command after its transaction completed, say so (the CLI says only "stopped")."""
    done: list[bool] = []
    try:
        yield lambda: done.append(True)
    except KeyboardInterrupt:
        if done:
            _stderr(f"{what} had finished when it was stopped: {tree} is {outcome}")
        raise


def _commit(tree: Path, writes: dict[str, bytes | None], what: str,
            remove_dirs: list[str] | tuple = (), on_done: Callable[[], None] | None = None) -> None:
    """Write all or nothing (tqpatch.txn); an OSError becomes one line saying the tree is unchanged."""
    try:
        txn.commit(tree, writes, what, remove_dirs=remove_dirs, command=lock.command_line(),
                   on_done=on_done)
    except OSError as e:
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        raise TqpatchError(f"{what} failed writing{where}: {e.strerror or e}; "
                           "the tree was restored unchanged") from e


def _manifest_bytes(record: dict, files: dict[str, Entry], created_dirs: list[str]) -> bytes:
    data = {
        "format": FORMAT,
        "tool": f"tqpatch {__version__}",
        **record,
        "files": {
            rel: {"sha256": _sha(e.content), "origin": e.origin, "pristine_sha256": _sha(e.pristine)}
            for rel, e in sorted(files.items())
        },
        "created_dirs": sorted(created_dirs),
        "applied_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return (json.dumps(data, indent=2, sort_keys=False) + "\n").encode()


# --------------------------------------------------------------------------- apply


@dataclass
class ApplyResult:
    tree: Path
    changed: bool
    written: list[str] = field(default_factory=list)
    patched: int = 0  # files the patches touch
    rendered: int = 0  # rendered files placed
    versions: str = ""


def apply(tree: Path | str | None = None, force: bool = False, echo: Echo = _echo,
          create: bool = False) -> ApplyResult:
    """Bring `tree` (default: the work tree) to pristine + patches + rendered files.

    A missing tree is made from the pristine tree: the default work tree always,
    any other only with create=True (`--create`), so a mistyped --tree never
    turns into a fresh copy of llama.cpp somewhere.
    """
    tree = _resolve_tree(tree)
    _refuse_pristine(tree, "apply to")
    if not create and not tree.exists() and tree != _resolve_tree(None):
        raise TqpatchError(f"no tree at {tree}: give an existing llama.cpp tree, or add --create "
                           f"to make one there (a copy of pristine llama.cpp {pin.LLAMA_CPP_COMMIT})")
    inputs = load_inputs()  # before anything else: no series / stale render is a clear error
    with _finish_noted("apply", tree, "applied") as on_done, tree_lock(tree, echo):
        return _apply_locked(tree, inputs, force, echo, on_done)


def _apply_locked(tree: Path, inputs: Inputs, force: bool, echo: Echo,
                  on_done: Callable[[], None]) -> ApplyResult:
    pristine_root = fetch.ensure_pristine()
    if not tree.exists():
        create_work_tree(tree, echo)
    _check_tree(tree)
    manifest = read_manifest(tree)
    record = _inputs_record(inputs)

    desired = desired_state(inputs, pristine_root)  # may raise: nothing written yet
    targets = {rel: e.content for rel, e in desired.items()}
    drifted = []
    if manifest is not None:
        drifted = _refuse_drift(tree, manifest, force,
                                "keep your edits elsewhere, or re-run with --force to overwrite them")
        # Files an older apply touched that the current inputs no longer do go back to pristine.
        for rel in manifest["files"]:  # read_manifest checked every path
            if rel not in targets:
                targets[rel] = fetch.read_pristine(rel, pristine_root)
    else:
        changed = _not_pristine(tree, {rel: e.pristine for rel, e in desired.items()})
        if changed and not force:
            raise TqpatchError(
                f"{tree} was not applied by tqpatch, but files the patches touch differ from "
                f"pristine llama.cpp {pin.LLAMA_CPP_COMMIT}:\n" + _format_paths(changed)
                + "\nuse a clean copy (remove the tree and re-run), or --force to overwrite them"
            )

    writes = {rel: data for rel, data in targets.items() if _read(tree / rel) != data}
    n_patched = sum(1 for e in desired.values() if e.origin == "patched")
    n_rendered = len(desired) - n_patched
    versions = _versions_text(record)
    result = ApplyResult(tree, bool(writes), sorted(writes), n_patched, n_rendered, versions)
    if not writes and manifest is not None and _inputs_of(manifest) == record \
            and set(manifest["files"]) == set(desired):
        echo(f"already applied ({versions}); nothing to do")
        return result

    if manifest is None:
        echo(f"applying {len(inputs.patches)} patches and {n_rendered} rendered files to {tree}")
    elif _inputs_of(manifest) != record:
        echo(f"inputs changed since the last apply; re-applying from pristine to {tree}")
    else:
        deleted = sum(1 for _r, _o, how in drifted if how == "deleted")
        echo(f"restoring {len(writes)} files in {tree}"
             + (f" ({deleted} deleted since apply)" if deleted else ""))
    created = sorted(set(txn.missing_dirs(tree, [r for r, d in writes.items() if d is not None]))
                     | set((manifest or {}).get("created_dirs", [])))
    writes[MANIFEST_REL] = _manifest_bytes(record, desired, created)
    _commit(tree, writes, "apply", on_done=on_done)

    n_written_p = sum(1 for r in result.written if r in desired and desired[r].origin == "patched")
    n_written_r = sum(1 for r in result.written if r in desired and desired[r].origin == "rendered")
    n_restored = len(result.written) - n_written_p - n_written_r
    echo(f"applied: {n_patched} files patched ({n_written_p} written), "
         f"{n_rendered} rendered files placed ({n_written_r} written)"
         + (f", {n_restored} restored to pristine" if n_restored else ""))
    echo(f"  {versions}")
    echo(f"tree: {tree}")
    echo(f"next: {NEXT_STEP}" + ("" if tree == _resolve_tree(None) else f" --tree {tree}"))
    return result


def ensure_applied(tree: Path | str | None = None, create: bool = False) -> Path:
    """For the build stage: fetch, create and apply as needed; quiet when up to date.

    A missing tree other than the default one is created only with create=True.
    """
    tree = _resolve_tree(tree)
    if tree.exists():
        st = status(tree)
        if st.state == "applied" and not st.out_of_date:
            return tree
    elif not create and tree != _resolve_tree(None):
        raise TqpatchError(f"no tree at {tree}: give an existing llama.cpp tree, or make one "
                           f"with `tqpatch apply --tree {tree} --create`")
    apply(tree, create=True)
    return tree


# --------------------------------------------------------------------------- status


@dataclass
class Status:
    tree: Path
    state: str  # pristine | applied | drifted | modified | missing | not-a-tree | unknown
    message: str
    pin: str | None = None
    versions: dict = field(default_factory=dict)
    patches: list[str] = field(default_factory=list)
    out_of_date: bool = False
    reasons: list[str] = field(default_factory=list)  # why out of date
    drifted: list[dict] = field(default_factory=list)  # {path, origin, how}
    modified: list[str] = field(default_factory=list)  # never-applied tree: differs from pristine
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.state in ("pristine", "applied")

    def to_dict(self) -> dict:
        return {
            "tree": str(self.tree), "state": self.state, "ok": self.ok, "message": self.message,
            "pin": self.pin, "versions": self.versions, "patches": self.patches,
            "out_of_date": self.out_of_date, "reasons": self.reasons, "drifted": self.drifted,
            "modified": self.modified, "notes": self.notes,
        }


def _out_of_date(manifest: dict, inputs: Inputs) -> list[str]:
    reasons = []
    now = _inputs_record(inputs)
    if manifest.get("pin") != now["pin"]:
        reasons.append(f"pin moved: {manifest.get('pin')} -> {now['pin']}")
    if manifest.get("patches") != now["patches"]:
        old = {p["name"]: p["sha256"] for p in manifest.get("patches") or []}
        new = {p["name"]: p["sha256"] for p in now["patches"]}
        changed = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
        reasons.append("patches changed: " + (", ".join(changed) if changed else "order"))
    if manifest.get("render") != now["render"] or manifest.get("rendered_files") != now["rendered_files"]:
        old = manifest.get("rendered_files") or {}
        new = now["rendered_files"]
        changed = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
        reasons.append("rendered files changed"
                       + (": " + ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
                          if changed else f" (versions {manifest.get('render')} -> {now['render']})"))
    return reasons


def _stderr(msg: str) -> None:
    click.echo(msg, err=True)


def status(tree: Path | str | None = None, echo: Echo = _stderr) -> Status:
    """The tree's state; first rolls back an interrupted command on it (said through echo)."""
    tree = _resolve_tree(tree)
    if not tree.exists():
        return Status(tree, "missing", f"no tree at {tree}; `tqpatch apply` creates it")
    with tree_lock(tree, echo, shared=True):
        return _status_locked(tree)


def _status_locked(tree: Path) -> Status:
    if not tree.is_dir() or not is_llama_tree(tree):
        return Status(tree, "not-a-tree", f"{tree} is not a llama.cpp tree "
                      "(no CMakeLists.txt, ggml/CMakeLists.txt and include/llama.h)")
    try:
        manifest = read_manifest(tree)
    except TqpatchError as e:
        return Status(tree, "unknown", e.message)

    inputs, why_not = None, None
    try:
        inputs = load_inputs()
    except TqpatchError as e:
        why_not = e.message

    if manifest is not None:
        st = Status(tree, "applied", "", pin=manifest.get("pin"), versions=manifest.get("render") or {},
                    patches=[p["name"] for p in manifest.get("patches") or []])
        drifted = _drift(tree, manifest)
        if drifted:
            st.state = "drifted"
            st.drifted = [{"path": r, "origin": o, "how": how} for r, o, how in drifted]
            st.message = (f"{len(drifted)} file(s) changed since `tqpatch apply`:\n"
                          + _format_paths([f"{r} ({o}, {how})" for r, o, how in drifted]))
            return st
        if inputs is None:
            st.notes.append(f"cannot tell whether it is up to date: {why_not}")
        else:
            st.reasons = _out_of_date(manifest, inputs)
            st.out_of_date = bool(st.reasons)
        st.message = (f"applied ({_versions_text(manifest)}); {len(manifest['files'])} files managed"
                      + ("; OUT OF DATE: " + "; ".join(st.reasons) + " (run `tqpatch apply`)"
                         if st.out_of_date else ""))
        return st

    # Never applied: compare the files the patches/rendered files touch with pristine.
    if _is_pristine_path(tree):
        return Status(tree, "pristine", f"{tree} is the pristine tree (tqpatch never modifies it)",
                      pin=pin.LLAMA_CPP_COMMIT)
    if inputs is None:
        return Status(tree, "unknown", f"no tqpatch manifest in {tree}, and the patches cannot be "
                      f"read to compare with pristine: {why_not}")
    if not fetch.is_verified():
        return Status(tree, "unknown", f"no tqpatch manifest in {tree}; to compare it with pristine "
                      "llama.cpp, run `tqpatch fetch` first")
    try:
        desired = desired_state(inputs)
    except TqpatchError as e:
        return Status(tree, "unknown", f"cannot compare {tree} with pristine: {e.message}")
    changed = _not_pristine(tree, {rel: e.pristine for rel, e in desired.items()})
    if changed:
        return Status(tree, "modified", f"{tree} was not applied by tqpatch, but files the patches "
                      "touch differ from pristine:\n" + _format_paths(changed),
                      pin=pin.LLAMA_CPP_COMMIT, modified=changed)
    return Status(tree, "pristine", f"pristine llama.cpp {pin.LLAMA_CPP_COMMIT} "
                  f"({len(desired)} files the patches touch are unmodified)", pin=pin.LLAMA_CPP_COMMIT)


# --------------------------------------------------------------------------- revert


@dataclass
class RevertResult:
    tree: Path
    changed: bool
    written: list[str] = field(default_factory=list)


def revert(tree: Path | str | None = None, force: bool = False, echo: Echo = _echo) -> RevertResult:
    """Undo apply: pristine contents back, created files removed, manifest removed."""
    tree = _resolve_tree(tree)
    _refuse_pristine(tree, "revert")
    if not tree.exists():
        _check_tree(tree)
    with _finish_noted("revert", tree, "reverted to pristine") as on_done, tree_lock(tree, echo):
        return _revert_locked(tree, force, echo, on_done)


def _revert_locked(tree: Path, force: bool, echo: Echo, on_done: Callable[[], None]) -> RevertResult:
    _check_tree(tree)
    manifest = read_manifest(tree)
    if manifest is None:
        try:
            inputs = load_inputs()
        except TqpatchError as e:
            echo(f"{tree} has no tqpatch manifest: nothing tqpatch applied there to revert "
                 f"(and the patches cannot be read to compare it with pristine: {e.message})")
            return RevertResult(tree, False)
        pristine_root = fetch.ensure_pristine()
        desired = desired_state(inputs, pristine_root)
        touched = {rel: e.pristine for rel, e in desired.items()}
        changed = _not_pristine(tree, touched)
        if not changed:
            echo(f"{tree} is already pristine; nothing to revert")
            return RevertResult(tree, False)
        if not force:
            raise TqpatchError(f"{tree} has no tqpatch manifest, but files the patches touch differ "
                               "from pristine:\n" + _format_paths(changed)
                               + "\nre-run with --force to restore them to pristine")
        writes = {rel: touched[rel] for rel in changed}
    else:
        _refuse_drift(tree, manifest, force,
                      "save your edits elsewhere, or re-run with --force to discard them")
        pristine_root = fetch.ensure_pristine()
        writes = {}
        for rel, ent in sorted(manifest["files"].items()):  # read_manifest checked every path
            data = fetch.read_pristine(rel, pristine_root)
            if _sha(data) != ent.get("pristine_sha256"):
                raise TqpatchError(f"pristine {rel} does not match what apply recorded "
                                   f"(sha256 {ent.get('pristine_sha256')}); was the pin moved? "
                                   "remove the tree and run `tqpatch apply` instead")
            if _read(tree / rel) != data:
                writes[rel] = data
        writes[MANIFEST_REL] = None
    written = sorted(r for r in writes if r != MANIFEST_REL)
    # The folders apply created go too (when empty), inside the same transaction.
    _commit(tree, writes, "revert", remove_dirs=(manifest or {}).get("created_dirs", []),
            on_done=on_done)
    restored = sum(1 for r in written if writes[r] is not None)
    removed = len(written) - restored
    echo(f"reverted {tree}: {restored} files restored to pristine, {removed} files removed")
    return RevertResult(tree, True, written)
