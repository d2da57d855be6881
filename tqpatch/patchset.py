"""The patch engine: read patches/series, parse unified diffs, apply them in memory.

Patches are git format-patch style unified diffs (an optional mail header, then
one `diff --git` section per file). Supported per file: modification, creation
(`--- /dev/null`), deletion (`+++ /dev/null`), several hunks, and
`\\ No newline at end of file`. Renames, copies and binary diffs are refused with
a clear message; file modes are ignored (contents only).

Application is exact: every context and removed line must match byte for byte
(no fuzz). A hunk may sit at an offset from the line its header states; it is
searched outward from that line (nearest position first), after the previous
hunk of the same file. Nothing touches the disk here: callers hand in file
contents and get new contents back.

`make_patch` writes the same format from (old, new) contents, for tests and for
maintainers writing new glue patches.

Why this engine and not `git apply` or GNU `patch` (weighed for issue 10):
apply's promise is all-or-nothing over the whole series plus the rendered
files, and a drift report that names patch, file, hunk, the nearest match and
the first line that differs. `git apply` checks each invocation before writing,
but a series is one invocation per patch (or `git am` in a repository the sdist
tree is not), so series-level atomicity would still need our own staging of
every touched file; its failure says "patch failed: file:line" without the
differing line. GNU `patch` applies with fuzz 2 by default, writes .orig/.rej
files and leaves half-patched files unless run twice (--dry-run first); it is
missing from slim images. Computing every file in memory from the pristine
bytes gives atomicity for free (nothing is written until the whole series
applied; tqpatch.txn then writes crash-safely) and the exact report, in ~300
lines that accept only what `git format-patch` writes and refuse the rest in
words. It is held to `git apply`'s result on the real series (test_patchset.py).
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from . import fsutil, paths
from .errors import TqpatchError

SERIES = "series"
NO_NEWLINE = b"\\ No newline at end of file"
_HUNK_RE = re.compile(rb"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


class PatchError(TqpatchError):
    """A patch that cannot be parsed or applied (names patch, file and hunk)."""


@dataclass
class Hunk:
    old_start: int
    old_len: int
    new_start: int
    new_len: int
    header: str  # the @@ line, as written
    lines: list[tuple[str, bytes]] = field(default_factory=list)  # (' '|'-'|'+', line)

    @property
    def old_lines(self) -> list[bytes]:
        return [text for op, text in self.lines if op in " -"]

    @property
    def new_lines(self) -> list[bytes]:
        return [text for op, text in self.lines if op in " +"]


@dataclass
class FilePatch:
    old_path: str | None  # None: the file is created (--- /dev/null)
    new_path: str | None  # None: the file is deleted (+++ /dev/null)
    hunks: list[Hunk] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.new_path if self.new_path is not None else self.old_path  # type: ignore[return-value]

    @property
    def is_new(self) -> bool:
        return self.old_path is None

    @property
    def is_delete(self) -> bool:
        return self.new_path is None


@dataclass
class Patch:
    name: str
    files: list[FilePatch]
    sha256: str

    @property
    def paths(self) -> list[str]:
        return [fp.path for fp in self.files]


# --------------------------------------------------------------------------- lines


def split_lines(data: bytes) -> list[bytes]:
    """Split on b"\\n" only, keeping line ends; a last line may lack one."""
    if not data:
        return []
    parts = data.split(b"\n")
    lines = [p + b"\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _to_bytes(data: bytes | str | None) -> bytes | None:
    if data is None or isinstance(data, bytes):
        return data
    return data.encode("utf-8")


def _show(line: bytes | None) -> str:
    if line is None:
        return "<end of file>"
    text = line.rstrip(b"\n").decode("utf-8", "replace")
    if len(text) > 120:
        text = text[:117] + "..."
    return repr(text)


# --------------------------------------------------------------------------- parsing


def _safe_path(raw: bytes, strip: bool, name: str) -> str:
    text = raw.decode("utf-8", "surrogateescape").split("\t")[0].rstrip()
    if text.startswith('"'):
        raise PatchError(f"{name}: quoted path {text} is not supported; use plain ASCII file names")
    if strip:
        text = text.split("/", 1)[1] if "/" in text else text
    try:
        fsutil.check_rel(text, f"{name}: unsafe target path")  # txn.commit checks the tree's links
    except TqpatchError as e:
        raise PatchError(e.message) from None
    if text.split("/")[0] == ".tqpatch":
        raise PatchError(f"{name}: unsafe target path {text!r}: inside tqpatch's own .tqpatch/; "
                         "refusing it")
    return text


def parse_patch(text: bytes | str, name: str = "<patch>") -> Patch:
    """Parse one patch file (unified diff, git format-patch style)."""
    data = _to_bytes(text) or b""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    files: list[FilePatch] = []
    i = 0
    git_header: dict | None = None

    def finish_git_header():
        # A `diff --git` section without ---/+++ lines: an empty new or deleted file,
        # or a pure mode change (ignored).
        nonlocal git_header
        if git_header is None:
            return
        if git_header.get("binary"):
            raise PatchError(f"{name}: binary diff for {git_header['path']} is not supported")
        if git_header.get("rename"):
            raise PatchError(f"{name}: rename/copy of {git_header['path']} is not supported; "
                             "write it as a deletion plus a new file")
        if git_header.get("new"):
            files.append(FilePatch(None, git_header["path"]))
        elif git_header.get("deleted"):
            files.append(FilePatch(git_header["path"], None))
        git_header = None

    while i < len(lines):
        line = lines[i]
        if line.startswith(b"diff --git "):
            finish_git_header()
            m = re.match(rb"^diff --git a/(\S+) b/(\S+)$", line)
            if not m:
                raise PatchError(f"{name}, line {i + 1}: cannot read {_show(line)}")
            git_header = {"path": _safe_path(m.group(2), False, name)}
            i += 1
            continue
        if git_header is not None:
            if line.startswith(b"new file mode"):
                git_header["new"] = True
            elif line.startswith(b"deleted file mode"):
                git_header["deleted"] = True
            elif line.startswith((b"rename from", b"rename to", b"copy from", b"copy to")):
                git_header["rename"] = True
            elif line.startswith(b"Binary files") or line.startswith(b"GIT binary patch"):
                git_header["binary"] = True
        if line.startswith(b"--- ") and i + 1 < len(lines) and lines[i + 1].startswith(b"+++ "):
            old_raw, new_raw = line[4:], lines[i + 1][4:]
            strip = old_raw.startswith(b"a/") or new_raw.startswith(b"b/")
            old = None if old_raw.split(b"\t")[0].rstrip() == b"/dev/null" else _safe_path(old_raw, strip, name)
            new = None if new_raw.split(b"\t")[0].rstrip() == b"/dev/null" else _safe_path(new_raw, strip, name)
            if old is None and new is None:
                raise PatchError(f"{name}, line {i + 1}: both sides are /dev/null")
            if old is not None and new is not None and old != new:
                raise PatchError(f"{name}: rename {old} -> {new} is not supported; "
                                 "write it as a deletion plus a new file")
            git_header = None
            fp = FilePatch(old, new)
            files.append(fp)
            i += 2
            while i < len(lines) and lines[i].startswith(b"@@"):
                hunk, i = _parse_hunk(lines, i, name, fp.path, len(fp.hunks) + 1)
                fp.hunks.append(hunk)
            if not fp.hunks:
                raise PatchError(f"{name}: {fp.path} has a ---/+++ header but no hunks")
            if fp.is_new and any(h.old_len for h in fp.hunks):
                raise PatchError(f"{name}: new file {fp.path} has hunks with old lines")
            if fp.is_delete and any(h.new_len for h in fp.hunks):
                raise PatchError(f"{name}: deleted file {fp.path} has hunks with new lines")
            continue
        i += 1
    finish_git_header()
    if not files:
        raise PatchError(f"{name}: contains no file diffs (is it a unified diff?)")
    seen = set()
    for fp in files:
        if fp.path in seen:
            raise PatchError(f"{name}: {fp.path} appears twice; put all its hunks in one section")
        seen.add(fp.path)
    return Patch(name=name, files=files, sha256=hashlib.sha256(data).hexdigest())


def _parse_hunk(lines: list[bytes], i: int, name: str, path: str, number: int) -> tuple[Hunk, int]:
    header = lines[i]
    m = _HUNK_RE.match(header)
    if not m:
        raise PatchError(f"{name}: {path}: hunk #{number} has a malformed header {_show(header)}")
    old_start, new_start = int(m.group(1)), int(m.group(3))
    old_len = int(m.group(2)) if m.group(2) is not None else 1
    new_len = int(m.group(4)) if m.group(4) is not None else 1
    hunk = Hunk(old_start, old_len, new_start, new_len, header.decode("utf-8", "replace"))
    i += 1
    n_old = n_new = 0
    while n_old < old_len or n_new < new_len:
        if i >= len(lines):
            raise PatchError(f"{name}: {path}: hunk #{number} ({hunk.header}) is truncated: "
                             f"expected {old_len} old / {new_len} new lines, "
                             f"got {n_old} / {n_new}")
        line = lines[i]
        if line.startswith(NO_NEWLINE[:2]) and hunk.lines:
            _drop_newline(hunk)
            i += 1
            continue
        op = chr(line[0]) if line else " "  # an empty line is blank context
        body = line[1:] + b"\n"
        if op == " ":
            n_old += 1
            n_new += 1
        elif op == "-":
            n_old += 1
        elif op == "+":
            n_new += 1
        else:
            raise PatchError(f"{name}: {path}: hunk #{number} ({hunk.header}) has an unexpected "
                             f"line {_show(line)}; the line counts in its header may be wrong")
        if n_old > old_len or n_new > new_len:
            raise PatchError(f"{name}: {path}: hunk #{number} ({hunk.header}) has more lines "
                             "than its header says")
        hunk.lines.append((op, body))
        i += 1
    if i < len(lines) and lines[i].startswith(NO_NEWLINE[:2]):
        _drop_newline(hunk)
        i += 1
    return hunk, i


def _drop_newline(hunk: Hunk) -> None:
    op, body = hunk.lines[-1]
    hunk.lines[-1] = (op, body[:-1] if body.endswith(b"\n") else body)


# --------------------------------------------------------------------------- series


def series_path(patches_dir: Path) -> Path:
    return patches_dir / SERIES


def read_series(patches_dir: Path | None = None) -> list[str]:
    """Names of the patches in order (comments, blank lines and `-p1` ignored)."""
    if patches_dir is None:
        patches_dir = paths.patches_dir()
    series = series_path(patches_dir)
    if not series.is_file():
        raise TqpatchError(
            f"no patch series at {series}: the llama.cpp glue patches are not there yet "
            "(patches/series lists the patch files in order, one per line)"
        )
    names = []
    for n, raw in enumerate(series.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, *opts = line.split()
        if opts and opts != ["-p1"]:
            raise TqpatchError(f"{series}, line {n}: unsupported options {' '.join(opts)} "
                               "(only -p1 patches are supported)")
        fsutil.check_rel(name.replace("\\", "/"), f"{series}, line {n}: patch name")
        if name in names:
            raise TqpatchError(f"{series}, line {n}: {name} is listed twice")
        names.append(name)
    return names


def load_series(patches_dir: Path | None = None) -> list[Patch]:
    """Read and parse every patch listed in patches/series, in order."""
    if patches_dir is None:
        patches_dir = paths.patches_dir()
    patches = []
    for name in read_series(patches_dir):
        path = patches_dir / name
        if not path.is_file():
            raise TqpatchError(f"{series_path(patches_dir)} lists {name}, but {path} does not exist")
        patches.append(parse_patch(path.read_bytes(), name))
    return patches


# --------------------------------------------------------------------------- applying


def apply_file_patch(fp: FilePatch, content: bytes | str | None, patch_name: str = "<patch>") -> bytes | None:
    """New contents of one file (None: deleted). `content` None: the file does not exist."""
    content = _to_bytes(content)
    where = f"patch {patch_name} does not apply to {fp.path}"
    if fp.is_new:
        if content is not None:
            raise PatchError(f"{where}: it creates the file, but the file already exists")
        content = b""
    elif content is None:
        raise PatchError(f"{where}: the file does not exist")
    lines = split_lines(content)
    delta = 0  # position shift from earlier hunks (their size change and offset)
    floor = 0  # a hunk may not start before the end of the previous one
    for number, hunk in enumerate(fp.hunks, 1):
        old = hunk.old_lines
        stated = hunk.old_start - 1 if hunk.old_len else hunk.old_start
        expected = max(stated + delta, floor)
        pos = _find(lines, old, expected, floor)
        if pos is None:
            raise PatchError(_mismatch_message(patch_name, fp.path, number, hunk, lines, old,
                                               min(expected, len(lines))))
        new = hunk.new_lines
        lines[pos:pos + len(old)] = new
        floor = pos + len(new)
        delta = pos - stated + len(new) - len(old)
    result = b"".join(lines)
    if fp.is_delete:
        if result:
            raise PatchError(f"{where}: it deletes the file, but the file has "
                             f"{len(split_lines(result))} lines the patch does not remove")
        return None
    return result


def _find(lines: list[bytes], old: list[bytes], expected: int, floor: int) -> int | None:
    last = len(lines) - len(old)
    if last < floor:
        return None
    expected = min(max(expected, floor), last)
    for step in range(0, max(expected - floor, last - expected) + 1):
        for pos in (expected - step, expected + step) if step else (expected,):
            if floor <= pos <= last and lines[pos:pos + len(old)] == old:
                return pos
    return None


def _mismatch_message(patch_name, path, number, hunk, lines, old, expected) -> str:
    # Point at the closest near-match (most equal lines, nearest the stated place),
    # and show its first line that differs from what the hunk expects.
    best, best_score = expected, -1
    last = max(len(lines) - len(old), 0)
    for pos in sorted(range(0, last + 1), key=lambda p: abs(p - expected)):
        score = sum(1 for k, want in enumerate(old) if pos + k < len(lines) and lines[pos + k] == want)
        if score > best_score:
            best, best_score = pos, score
    first_bad = 0
    for k, want in enumerate(old):
        if (lines[best + k] if best + k < len(lines) else None) != want:
            first_bad = k
            break
    want = old[first_bad] if old else None
    have = lines[best + first_bad] if best + first_bad < len(lines) else None
    where = (f"expected at line {expected + 1}" if best == expected else
             f"expected at line {expected + 1}, closest match at line {best + 1}")
    return (
        f"patch {patch_name} does not apply to {path}: hunk #{number} ({hunk.header.strip()}) "
        f"found no exact match for its {len(old)} context/removed lines.\n"
        f"  {where} ({max(best_score, 0)} of {len(old)} lines equal); "
        f"first difference at line {best + first_bad + 1}:\n"
        f"    patch expects: {_show(want)}\n"
        f"    file has:      {_show(have)}\n"
        "  The pinned tree or an earlier patch in the series changed this region; "
        "regenerate the patch against the pinned tree."
    )


def apply_series(patches: Iterable[Patch], read: Callable[[str], bytes | None]) -> dict[str, bytes | None]:
    """Apply patches in order to contents read via `read(path)` (None: no such file).

    Returns path -> final contents (None: deleted) for every file a patch touches.
    """
    state: dict[str, bytes | None] = {}
    for patch in patches:
        for fp in patch.files:
            current = state[fp.path] if fp.path in state else read(fp.path)
            state[fp.path] = apply_file_patch(fp, current, patch.name)
    return state


# --------------------------------------------------------------------------- writing


def _git_blob_id(data: bytes | None) -> str:
    if data is None:
        return "0000000"
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()[:7]


def _range(start: int, count: int) -> str:
    # start is 0-based; unified diff numbers a range from 1, and an empty range
    # by the line before it.
    first = start + 1 if count else start
    return f"{first}" if count == 1 else f"{first},{count}"


def _emit(out: list[bytes], op: bytes, line: bytes) -> None:
    out.append(op + line if line.endswith(b"\n") else op + line + b"\n" + NO_NEWLINE + b"\n")


def make_diff(path: str, old: bytes | str | None, new: bytes | str | None, context: int = 3) -> str:
    """One file's git-style unified diff (empty string when old == new)."""
    old_b, new_b = _to_bytes(old), _to_bytes(new)
    if old_b == new_b:
        return ""
    a, b = split_lines(old_b or b""), split_lines(new_b or b"")
    out = [f"diff --git a/{path} b/{path}\n".encode()]
    if old_b is None:
        out.append(b"new file mode 100644\n")
        out.append(f"index 0000000..{_git_blob_id(new_b)}\n".encode())
    elif new_b is None:
        out.append(b"deleted file mode 100644\n")
        out.append(f"index {_git_blob_id(old_b)}..0000000\n".encode())
    else:
        out.append(f"index {_git_blob_id(old_b)}..{_git_blob_id(new_b)} 100644\n".encode())
    if a or b:
        out.append(b"--- /dev/null\n" if old_b is None else f"--- a/{path}\n".encode())
        out.append(b"+++ /dev/null\n" if new_b is None else f"+++ b/{path}\n".encode())
        matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
        for group in matcher.get_grouped_opcodes(context):
            i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
            out.append(f"@@ -{_range(i1, i2 - i1)} +{_range(j1, j2 - j1)} @@\n".encode())
            for tag, ai1, ai2, bj1, bj2 in group:
                if tag == "equal":
                    for line in a[ai1:ai2]:
                        _emit(out, b" ", line)
                    continue
                for line in a[ai1:ai2]:
                    _emit(out, b"-", line)
                for line in b[bj1:bj2]:
                    _emit(out, b"+", line)
    return b"".join(out).decode("utf-8", "surrogateescape")


def make_patch(changes: Mapping[str, tuple[bytes | str | None, bytes | str | None]],
               subject: str | None = None, context: int = 3) -> str:
    """A patch file from {path: (old, new)} (None: file absent on that side).

    With a subject it gets a minimal format-patch mail header, like the files in
    patches/; without one it is a bare diff. Files appear in path order.
    """
    body = "".join(make_diff(p, o, n, context) for p, (o, n) in sorted(changes.items()))
    if subject is None:
        return body
    return (
        "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
        "From: tqpatch <tqpatch@localhost>\n"
        f"Subject: [PATCH] {subject}\n\n---\n{body}-- \ntqpatch\n"
    )
