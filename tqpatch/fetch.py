"""Fetch the pinned llama.cpp into the pristine tree, and prove it is the pin.

Sources, in the order `auto` tries them:
  pypi  the llama-cpp-python sdist (pin.SDIST_URL): downloaded into downloads/,
        checked against the pinned size and sha256, then only pin.SDIST_SUBDIR
        is extracted;
  git   a checkout of pin.LLAMA_CPP_COMMIT_FULL from pin.GIT_URL;
and `--from PATH`: a local sdist, any .tar.gz/.tgz/.tar/.zip holding the tree,
or a directory holding it. `.git` entries of archives and directories are not
copied: the sdist's is a submodule link to a git dir it lacks, which breaks every
git command run inside the tree (a git source keeps its real .git).

Whatever the source, the tree is then checked against pin.TREE_FINGERPRINT
(see pin.py for what it covers). Work happens in a temp dir beside the target
that is renamed into place only when everything checked out; any failure,
Ctrl-C included, removes the temp dir and any partial download. A fetch holds
the pristine tree's lock (tqpatch.lock), so a second one waits; a kill -9 leaves
its temp dir behind, and the next fetch sweeps it (its maker's pid is in the
name and no longer runs). A stamp file beside the tree caches the verification
so a second `fetch` is instant; with it goes a scan of every covered file's
size, times and inode (tree_scan, no contents read), compared on every use: a
file edited, deleted or added in the pristine tree since moves it, and the tree
is hashed in full again (naming the file that differs) before anything uses it.
A full disk is one line: the first path that failed and the free space. Archives are unpacked with tarfile's "data"
extraction filter, which refuses absolute paths, paths and links leaving the
tree, and device files.
"""

from __future__ import annotations

import base64
import errno
import functools
import hashlib
import json
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Callable

import click

from . import __version__, fsutil, lock, paths, pin, testhook, ui
from .errors import TqpatchError

Echo = Callable[[str], None]
SOURCES = ("auto", "pypi", "git")
# Names skipped everywhere when fingerprinting or copying a directory source.
IGNORED_NAMES = {"__pycache__", ".DS_Store", ".git"}
CHUNK = 1 << 20


def _echo(msg: str) -> None:
    click.echo(msg)


def _quiet(msg: str) -> None:
    pass


# --------------------------------------------------------------------------- fingerprint


def _scope_files(root: Path):
    """(tree-relative posix path, full path as str) of every file the fingerprint covers."""
    root_s = os.fspath(Path(root))
    cut = len(root_s) + 1
    for top in sorted(pin.TREE_SCOPE):
        start = os.path.join(root_s, top)
        if os.path.isfile(start):
            yield top, start
            continue
        if not os.path.isdir(start):
            continue
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_NAMES)
            rel_dir = dirpath[cut:].replace(os.sep, "/")
            for name in sorted(filenames):
                if name in IGNORED_NAMES or name.endswith(".pyc"):
                    continue
                yield f"{rel_dir}/{name}", os.path.join(dirpath, name)


def tree_index(root: Path) -> dict[str, str]:
    """{tree-relative posix path: sha256 hex} of every file the fingerprint covers."""
    return dict(sorted((rel, _sha256_file(full)) for rel, full in _scope_files(root)))


def tree_scan(root: Path) -> str:
    """A digest of every covered file's path, size, mtime, ctime and inode.

    Reads no contents (a few ms for the pinned tree), yet changes when a file is
    edited, deleted, added or replaced: the stamp keeps it, and a tree whose
    scan moved is hashed in full again before it is used.
    """
    h = hashlib.sha256()
    for rel, full in _scope_files(root):
        try:
            st = os.stat(full)
            line = f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\n"
        except OSError:
            line = f"{rel}\0unreadable\n"
        h.update(line.encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def fingerprint(index: dict[str, str]) -> str:
    """sha256 over the sorted lines `path NUL sha256(content) LF`."""
    h = hashlib.sha256()
    for rel in sorted(index):
        h.update(rel.encode("utf-8") + b"\0" + index[rel].encode("ascii") + b"\n")
    return h.hexdigest()


def encode_index(index: dict[str, str]) -> str:
    """Compact per-file table (pin.TREE_INDEX_FILE): paths + first 4 bytes of each sha256.

    Only used to *name* the first differing file; acceptance rests on the full
    TREE_FINGERPRINT.
    """
    names = sorted(index)
    blob = "\n".join(names).encode("utf-8") + b"\0" + b"".join(bytes.fromhex(index[n][:8]) for n in names)
    return base64.b85encode(zlib.compress(blob, 9)).decode("ascii")


@functools.lru_cache(maxsize=4)
def decode_index(encoded: str) -> dict[str, str]:
    """Inverse of encode_index: {path: first 8 hex digits of sha256}."""
    if not encoded:
        return {}
    blob = zlib.decompress(base64.b85decode(encoded))
    names_raw, digests = blob.split(b"\0", 1)
    names = names_raw.decode("utf-8").split("\n")
    return {n: digests[4 * k:4 * k + 4].hex() for k, n in enumerate(names)}


def pinned_index() -> dict[str, str]:
    return decode_index(pin.tree_index_text())


def pin_values(root: Path) -> tuple[str, str]:
    """(the pin.py lines, the TREE_INDEX_FILE text) of a tree, for maintainers moving the pin."""
    index = tree_index(root)
    lines = f'TREE_FINGERPRINT = "{fingerprint(index)}"\nTREE_FILE_COUNT = {len(index)}\n'
    return lines, encode_index(index) + "\n"


def write_pin_values(root: Path) -> str:
    """Write the index data file into the package; returns the pin.py lines to paste."""
    lines, index_text = pin_values(root)
    target = Path(str(resources.files(pin.__package__).joinpath(pin.TREE_INDEX_FILE)))
    fsutil.write_atomic(target, index_text.encode("ascii"))
    return lines


def tree_differences(index: dict[str, str], limit: int = 5) -> list[str]:
    """Human descriptions of how `index` differs from the pinned table, in path order."""
    pinned = pinned_index()
    diffs = []
    for rel in sorted(set(pinned) | set(index)):
        if rel not in index:
            diffs.append(f"{rel} is missing")
        elif rel not in pinned:
            diffs.append(f"{rel} is extra (not in the pinned tree)")
        elif index[rel][:8] != pinned[rel]:
            diffs.append(f"{rel} differs")
        if len(diffs) > limit:
            break
    return diffs


def verify_tree(root: Path, what: str | None = None) -> str:
    """Check a tree against the pinned fingerprint; returns it, or raises naming a file."""
    root = Path(root)
    what = what or str(root)
    index = tree_index(root)
    got = fingerprint(index)
    if got == pin.TREE_FINGERPRINT:
        return got
    diffs = tree_differences(index)
    if diffs:
        first, rest = diffs[0], diffs[1:]
        more = ""
        if rest:
            more = "; also " + ", ".join(rest[:4]) + (" and more" if len(rest) > 4 else "")
        detail = f"first difference: {first}{more}"
    else:
        detail = (f"fingerprint {got[:16]}... != pinned {pin.TREE_FINGERPRINT[:16]}..., "
                  "though no single file could be named")
    raise TqpatchError(
        f"{what} is not llama.cpp {pin.LLAMA_CPP_COMMIT} ({len(index)} files checked, "
        f"{pin.TREE_FILE_COUNT} pinned): {detail}"
    )


def read_pristine(rel: str, root: Path | None = None) -> bytes | None:
    """Contents of one pristine file (None if the pinned tree has no such file).

    Files the fingerprint covers are checked against the pinned table, so a
    pristine tree edited after fetch is caught before anything is built on it.
    """
    root = Path(root) if root is not None else paths.pristine_tree()
    path = root / rel
    pinned = pinned_index()
    if not path.is_file():
        if rel in pinned:
            raise TqpatchError(f"pristine tree {root} lacks {rel}; run `tqpatch fetch --force`")
        return None
    data = path.read_bytes()
    if rel in pinned and hashlib.sha256(data).hexdigest()[:8] != pinned[rel]:
        raise TqpatchError(f"pristine file {path} was modified after fetch; "
                           "run `tqpatch fetch --force` to restore the pinned tree")
    return data


# --------------------------------------------------------------------------- stamp


def _stamp_path(target: Path) -> Path:
    return target.parent / (target.name + ".verified.json")


def _read_stamp(target: Path) -> dict | None:
    """The stamp of a verified pin (None: none, unreadable, or for another pin)."""
    stamp = _stamp_path(target)
    if not target.is_dir() or not stamp.is_file():
        return None
    try:
        data = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("fingerprint") != pin.TREE_FINGERPRINT \
            or data.get("commit") != pin.LLAMA_CPP_COMMIT:
        return None
    return data


def _stamp_ok(target: Path) -> bool:
    """Verified, and no covered file changed since (size, times, inode: tree_scan)."""
    data = _read_stamp(target)
    return data is not None and data.get("scan") == tree_scan(target)


def _write_stamp(target: Path, source: str, scan: str) -> None:
    """scan: tree_scan of the tree taken before it was hashed (a file changed while
    hashing then moves the scan, and the next use hashes it again)."""
    stamp = _stamp_path(target)
    data = {"commit": pin.LLAMA_CPP_COMMIT, "fingerprint": pin.TREE_FINGERPRINT,
            "source": source, "verified_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "tqpatch": __version__, "scan": scan}
    fsutil.write_atomic(stamp, (json.dumps(data, indent=2) + "\n").encode())


def is_verified(target: Path | None = None) -> bool:
    return _stamp_ok(Path(target) if target else paths.pristine_tree())


# --------------------------------------------------------------------------- download


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _urlopen(url: str):
    req = urllib.request.Request(url, headers={"User-Agent": f"tqpatch/{__version__}"})
    return urllib.request.urlopen(req, timeout=60)


def _mismatch(what: str, got_sha: str, got_size: int) -> str:
    return (f"{what} does not match the pin: expected sha256 {pin.SDIST_SHA256}, "
            f"size {pin.SDIST_SIZE} bytes; got sha256 {got_sha}, size {got_size} bytes")


def download_sdist(echo: Echo = _echo) -> Path:
    """The verified sdist in downloads/ (downloaded if missing or wrong)."""
    dest = paths.downloads_dir() / pin.SDIST_NAME
    if dest.is_file():
        got_size = dest.stat().st_size
        got_sha = _sha256_file(dest)
        if got_size == pin.SDIST_SIZE and got_sha == pin.SDIST_SHA256:
            echo(f"using verified {dest}")
            return dest
        echo(f"removing {dest}: " + _mismatch("cached file", got_sha, got_size))
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    url = pin.SDIST_URL
    echo(f"downloading {url} ({pin.SDIST_SIZE / 1e6:.1f} MB)")
    try:
        h = hashlib.sha256()
        size = 0
        try:
            resp = _urlopen(url)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise TqpatchError(f"could not download {url}: {getattr(e, 'reason', e)}") from None
        with resp, open(part, "wb") as out, ui.Progress(
                pin.SDIST_NAME, pin.SDIST_SIZE, err=True, count=False) as bar:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except OSError as e:
                    raise TqpatchError(f"download of {url} broke off after {size} bytes: {e}") from None
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as e:  # a full disk: say which file (the fetch loop adds the space)
                    e.filename = e.filename or str(part)
                    raise
                h.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
                if size > pin.SDIST_SIZE:
                    raise TqpatchError(f"download of {url} is larger than the pinned "
                                       f"{pin.SDIST_SIZE} bytes; refusing it")
        if size != pin.SDIST_SIZE or h.hexdigest() != pin.SDIST_SHA256:
            raise TqpatchError(_mismatch(f"download of {url}", h.hexdigest(), size)
                               + "; it was deleted (try again, or use --source git / --from)")
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    echo(f"verified sha256 {pin.SDIST_SHA256[:16]}... ({size} bytes)")
    return dest


# --------------------------------------------------------------------------- archives


def _check_member(name: str, archive: Path) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or name.startswith("\\") or (p.parts and ":" in p.parts[0]):
        raise TqpatchError(f"{archive} holds an unsafe path {name!r}; refusing it")
    return p


def _strip(p: PurePosixPath, prefix: PurePosixPath | None) -> PurePosixPath | None:
    if prefix is None:
        return p
    if p == prefix:
        return PurePosixPath(".")
    try:
        return p.relative_to(prefix)
    except ValueError:
        return None


def _safe_link(dest_root: Path, link_rel: PurePosixPath, target: str, archive: Path) -> None:
    resolved = os.path.normpath(os.path.join(os.path.dirname(str(link_rel)), target))
    if os.path.isabs(target) or resolved.startswith(".."):
        raise TqpatchError(f"{archive}: link {link_rel} -> {target} leaves the tree; refusing it")


def _refusal(archive: Path, member: tarfile.TarInfo, e: tarfile.FilterError) -> TqpatchError:
    if isinstance(e, (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError)):
        why = f"link {member.name} -> {member.linkname} leaves the tree"
    elif isinstance(e, (tarfile.AbsolutePathError, tarfile.OutsideDestinationError)):
        why = f"holds an unsafe path {member.name!r} (outside the tree)"
    elif isinstance(e, tarfile.SpecialFileError):
        why = f"{member.name} is not a file, directory or link"
    else:
        why = f"{member.name}: {e}"
    return TqpatchError(f"{archive} {why}; refusing it")


def _io_error(e: OSError, archive: Path, dest: Path, writing: Path | None = None) -> TqpatchError:
    """A write failure (full disk, read-only folder) said as one, not as 'cannot read'.

    writing: the file being written, named when the error itself names none."""
    if not getattr(e, "filename", None) and writing is not None:
        e.filename = str(writing)
    name = str(getattr(e, "filename", "") or "")
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM) \
            or name.startswith(str(dest)):
        return TqpatchError(f"cannot write the tree from {archive} under {dest.parent}: "
                            + fsutil.write_failure(e, dest.parent))
    return TqpatchError(f"cannot read {archive}: {e}")


def _extract_tar(archive: Path, dest: Path, prefix: str | None) -> int:
    """Unpack the archive's files under `prefix` (all of them without one) into dest.

    The same file listed twice is accepted: the later entry wins, as with tar,
    and GNU tar's repeat of an already stored file (a hard link to itself) is
    skipped.
    """
    if not hasattr(tarfile, "data_filter"):
        raise TqpatchError(f"Python {sys.version.split()[0]} lacks tarfile's extraction filters; "
                           "use Python 3.10.12+, 3.11.4+ or 3.12+")
    pre = PurePosixPath(prefix) if prefix else None
    count = 0
    extracted: set[PurePosixPath] = set()

    writing: list[Path] = []  # the last member let through: what a failed write was writing

    def keep(member: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo | None:
        nonlocal count
        if member.name.startswith("/"):  # the filter would strip the slash; refuse instead
            raise TqpatchError(f"{archive} holds an unsafe path {member.name!r} (absolute); "
                               "refusing it")
        rel = _strip(PurePosixPath(member.name), pre)
        if rel is None or rel == PurePosixPath(".") or ".git" in rel.parts:
            return None
        linkname = member.linkname
        if member.islnk():
            target = _strip(PurePosixPath(member.linkname), pre)
            if target is None or (target != rel and target not in extracted):
                raise TqpatchError(f"{archive}: hard link {member.name} -> {member.linkname} "
                                   "points outside what is extracted; refusing it")
            if target == rel:
                return None  # a file listed twice: the copy already extracted stands
            linkname = target.as_posix()
        try:
            kept = tarfile.data_filter(member.replace(name=rel.as_posix(), linkname=linkname,
                                                      deep=False), dest_path)
        except tarfile.FilterError as e:
            raise _refusal(archive, member, e) from None
        if kept.isfile() or kept.islnk():
            count += 1
            extracted.add(rel)
        writing[:] = [dest / rel]
        return kept

    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tf:
            tf.extractall(dest, filter=keep)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        # tarfile's ReadError lists every method it tried, one per line: the first says it
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TqpatchError(f"cannot read {archive}: not a tar archive tqpatch can open ({why})") from None
    except OSError as e:
        raise _io_error(e, archive, dest, writing[0] if writing else None) from None
    return count


def _extract_zip(archive: Path, dest: Path, prefix: str | None) -> int:
    pre = PurePosixPath(prefix) if prefix else None
    count = 0
    out = None
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                p = _check_member(info.filename.rstrip("/"), archive)
                rel = _strip(p, pre)
                if rel is None or ".git" in rel.parts:
                    continue
                out = dest / rel
                mode = info.external_attr >> 16
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                if stat.S_ISLNK(mode):
                    target = zf.read(info).decode("utf-8")
                    _safe_link(dest, rel, target, archive)
                    os.symlink(target, out)
                    continue
                with zf.open(info) as src, open(out, "wb") as f:
                    shutil.copyfileobj(src, f, CHUNK)
                os.chmod(out, 0o755 if mode & 0o111 else 0o644)
                t = time.mktime(info.date_time + (0, 0, -1))
                os.utime(out, (t, t))
                count += 1
    except (zipfile.BadZipFile, EOFError, UnicodeDecodeError, zlib.error) as e:
        raise TqpatchError(f"cannot read {archive}: {e}") from None
    except OSError as e:
        raise _io_error(e, archive, dest, out) from None
    return count


def _looks_like_tree(d: Path) -> bool:
    return ((d / "CMakeLists.txt").is_file() and (d / "ggml" / "CMakeLists.txt").is_file()
            and (d / "include" / "llama.h").is_file())


def find_tree_root(d: Path, depth: int = 4) -> Path | None:
    """The shallowest directory under d (d included) that looks like llama.cpp."""
    level = [Path(d)]
    for _ in range(depth + 1):
        for cand in level:
            if _looks_like_tree(cand):
                return cand
        level = [c for cand in level for c in sorted(cand.iterdir())
                 if c.is_dir() and not c.is_symlink() and c.name not in IGNORED_NAMES]
        if not level:
            break
    return None


def _is_archive(p: Path) -> str | None:
    name = p.name.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar", ".tar.xz", ".tar.bz2")):
        return "tar"
    if name.endswith(".zip"):
        return "zip"
    return None


# --------------------------------------------------------------------------- sources


def _from_pypi(tmp: Path, echo: Echo) -> tuple[Path, str]:
    sdist = download_sdist(echo)
    echo(f"extracting {pin.SDIST_SUBDIR}")
    n = _extract_tar(sdist, tmp / "tree", pin.SDIST_SUBDIR)
    if n == 0:
        raise TqpatchError(f"{sdist} has nothing under {pin.SDIST_SUBDIR}")
    return tmp / "tree", f"pypi:{pin.SDIST_NAME}"


def _git(args: list[str], cwd: Path | None = None) -> ui.Result:
    return ui.run(["git", *args], cwd=cwd, env={"GIT_TERMINAL_PROMPT": "0"}, check=False,
                  merge=False)


def _from_git(tmp: Path, echo: Echo) -> tuple[Path, str]:
    if shutil.which("git") is None:
        raise TqpatchError("git is not installed (needed for --source git); "
                           "use --source pypi or --from PATH instead")
    dest = tmp / "tree"
    commit = pin.LLAMA_CPP_COMMIT_FULL
    echo(f"fetching {pin.GIT_URL} at {pin.LLAMA_CPP_COMMIT} with git")

    def run(args, what):
        r = _git(args, cwd=dest)
        if r.returncode != 0:
            raise TqpatchError(f"git {what} failed: "
                               + ui.tail((r.stderr or r.stdout).strip(), 3).replace("\n", " | "))
        return r

    dest.mkdir(parents=True)
    run(["init", "-q"], "init")
    run(["config", "core.autocrlf", "false"], "config")
    run(["remote", "add", "origin", pin.GIT_URL], "remote add")
    # A shallow fetch of exactly the pinned commit; servers that refuse fetching
    # by id get a full fetch instead.
    r = _git(["fetch", "-q", "--depth", "1", "origin", commit], cwd=dest)
    if r.returncode != 0:
        echo("shallow fetch by commit refused; fetching the full history")
        run(["fetch", "-q", "origin"], f"fetch of {pin.GIT_URL}")
    run(["-c", "advice.detachedHead=false", "checkout", "-q", commit], f"checkout of {commit}")
    head = run(["rev-parse", "HEAD"], "rev-parse").stdout.strip()
    if head != commit:
        raise TqpatchError(f"git checked out {head}, not the pinned {commit}")
    return dest, f"git:{commit}"


def _from_path(src: Path, tmp: Path, echo: Echo) -> tuple[Path, str]:
    src = Path(src).expanduser()
    if not src.exists():
        raise TqpatchError(f"--from {src}: no such file or directory")
    if src.is_dir():
        root = find_tree_root(src)
        if root is None:
            raise TqpatchError(f"--from {src}: no llama.cpp tree found in it "
                               "(looked for CMakeLists.txt, ggml/ and include/llama.h)")
        echo(f"copying {root}")
        fsutil.copy_tree(root, tmp / "tree", ignore=shutil.ignore_patterns(*IGNORED_NAMES, "*.pyc"))
        return tmp / "tree", f"dir:{root}"
    kind = _is_archive(src)
    if kind is None:
        raise TqpatchError(f"--from {src}: not a directory or a .tar.gz/.tgz/.tar/.zip archive")
    prefix = None
    if src.name == pin.SDIST_NAME:
        # It claims to be the pinned sdist: hold it to the pinned size and hash.
        got_size, got_sha = src.stat().st_size, _sha256_file(src)
        if got_size != pin.SDIST_SIZE or got_sha != pin.SDIST_SHA256:
            raise TqpatchError(_mismatch(f"--from {src}", got_sha, got_size))
        echo(f"verified {src} (sha256 {got_sha[:16]}...)")
        prefix = pin.SDIST_SUBDIR
    echo(f"extracting {src}")
    out = tmp / "x"
    n = (_extract_tar if kind == "tar" else _extract_zip)(src, out, prefix)
    if n == 0:
        raise TqpatchError(f"--from {src}: the archive has no files"
                           + (f" under {prefix}" if prefix else ""))
    root = out if prefix else find_tree_root(out)
    if root is None:
        raise TqpatchError(f"--from {src}: no llama.cpp tree found in the archive")
    return root, f"archive:{src}"


# --------------------------------------------------------------------------- fetch


def _install(root: Path, target: Path) -> None:
    """Rename a verified tree into place (replacing an old one, if any)."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-", dir=target.parent))
        os.rename(target, old / "tree")
    try:
        os.rename(root, target)
    except BaseException:
        if old is not None:
            os.rename(old / "tree", target)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _sweep(target: Path, echo: Echo) -> None:
    """Leftovers of a fetch that was killed (we hold the fetch lock: none is live)."""
    fsutil.sweep_temp_dirs(target.parent, target.name, kinds=("tmp", "old"), echo=echo)
    fsutil.sweep_tmp_files(target.parent)
    (paths.downloads_dir() / (pin.SDIST_NAME + ".part")).unlink(missing_ok=True)


def fetch(source: str = "auto", from_path: Path | str | None = None, force: bool = False,
          echo: Echo = _echo) -> Path:
    """Put the verified pinned llama.cpp at paths.pristine_tree(); return its path."""
    if source not in SOURCES:
        raise TqpatchError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    if from_path is not None and source != "auto":
        raise TqpatchError("give either --source or --from, not both")
    with lock.fetch():
        target = paths.pristine_tree()
        _sweep(target, echo)
        return _fetch_locked(target, source, from_path, force, echo)


def _fetch_locked(target: Path, source: str, from_path, force: bool, echo: Echo) -> Path:
    if target.exists() and not force:
        if _stamp_ok(target):
            echo(f"llama.cpp {pin.LLAMA_CPP_COMMIT} is already fetched and verified at {target}; "
                 "nothing to do")
            return target
        if not target.is_dir():
            raise TqpatchError(f"{target} exists but is not a directory; remove it")
        old = _read_stamp(target)
        if old is not None and old.get("scan"):
            echo(f"files in {target} changed since it was verified; checking it again")
        else:
            echo(f"checking the existing tree at {target}")
        scan = tree_scan(target)
        try:
            verify_tree(target)
        except TqpatchError as e:
            raise TqpatchError(f"{e.message}; run `tqpatch fetch --force` to replace it") from None
        try:
            _write_stamp(target, (old or {}).get("source", "existing"), scan)
        except OSError:
            pass  # a read-only cache: the tree is fine, the next use checks it again
        echo(f"{target} matches llama.cpp {pin.LLAMA_CPP_COMMIT}; nothing to do")
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    if from_path is not None:
        attempts = [("--from", lambda tmp: _from_path(Path(from_path), tmp, echo))]
    else:
        order = {"auto": ["pypi", "git"], "pypi": ["pypi"], "git": ["git"]}[source]
        makers = {"pypi": lambda tmp: _from_pypi(tmp, echo), "git": lambda tmp: _from_git(tmp, echo)}
        attempts = [(name, makers[name]) for name in order]

    errors = []
    for name, make in attempts:
        tmp = Path(tempfile.mkdtemp(prefix=fsutil.temp_dir_prefix(target.name), dir=target.parent))
        try:
            root, origin = make(tmp)
            testhook.checkpoint()
            echo(f"checking the tree against the pinned fingerprint ({pin.TREE_FILE_COUNT} files)")
            scan = tree_scan(root)  # the same once renamed into place (paths are relative)
            verify_tree(root, what=f"the tree from {name}")
            _stamp_path(target).unlink(missing_ok=True)
            _install(root, target)
            _write_stamp(target, origin, scan)
        except TqpatchError as e:
            errors.append((name, e.message))
            if len(attempts) > 1 and name != attempts[-1][0]:
                echo(f"{name} source failed: {e.message}")
                echo("trying the next source")
            continue
        except OSError as e:
            errors.append((name, f"cannot write under {target.parent}: "
                                 + fsutil.write_failure(e, target.parent)))
            continue
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        echo(f"llama.cpp {pin.LLAMA_CPP_COMMIT} verified and placed at {target}")
        return target
    if len(errors) == 1:
        raise TqpatchError(errors[0][1])
    raise TqpatchError("could not fetch llama.cpp from any source:\n"
                       + "\n".join(f"  {n}: {m}" for n, m in errors))


def ensure_pristine() -> Path:
    """The verified pristine tree, fetched first if it is not there yet."""
    target = paths.pristine_tree()
    if _stamp_ok(target):
        return target
    return fetch()
