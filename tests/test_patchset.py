"""The patch engine: parsing, exact in-memory application, offsets, errors, writing."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tqpatch import formats
from tqpatch import patchset as ps
from tqpatch.errors import TqpatchError
from tqpatch import backends


def numbered(n: int, prefix: str = "line") -> str:
    return "".join(f"{prefix} {i}\n" for i in range(1, n + 1))


def test_split_lines_keeps_ends_and_a_last_line_without_newline():
    assert ps.split_lines(b"") == []
    assert ps.split_lines(b"a\nb") == [b"a\n", b"b"]
    assert ps.split_lines(b"a\r\nb\n") == [b"a\r\n", b"b\n"]


def test_modify_new_and_delete_in_one_patch_with_several_hunks():
    old = numbered(40)
    new = old.replace("line 3\n", "line 3\nadded A\n").replace("line 30\n", "changed 30\n")
    text = ps.make_patch({
        "src/a.c": (old, new),
        "src/new.h": (None, "#pragma once\nint x;\n"),
        "tests/gone.cpp": ("bye\nbye\n", None),
    }, subject="three kinds of change")
    patch = ps.parse_patch(text, "0001-x.patch")
    by_path = {fp.path: fp for fp in patch.files}
    assert set(by_path) == {"src/a.c", "src/new.h", "tests/gone.cpp"}
    assert len(by_path["src/a.c"].hunks) == 2
    assert by_path["src/new.h"].is_new and by_path["tests/gone.cpp"].is_delete
    pristine = {"src/a.c": old.encode(), "tests/gone.cpp": b"bye\nbye\n"}
    out = ps.apply_series([patch], lambda rel: pristine.get(rel))
    assert out == {"src/a.c": new.encode(), "src/new.h": b"#pragma once\nint x;\n",
                   "tests/gone.cpp": None}


def test_handwritten_git_format_patch_with_mail_header_and_signature():
    text = (
        "From 1234567890abcdef Mon Sep 17 00:00:00 2001\n"
        "From: Someone\n <someone@example.com>\n"
        "Subject: [PATCH 1/2] demo\n\n"
        "Body text mentioning --- dashes.\n"
        "---\n"
        " a.c | 2 +-\n 1 file changed\n\n"
        "diff --git a/a.c b/a.c\n"
        "index 1111111..2222222 100644\n"
        "--- a/a.c\n"
        "+++ b/a.c\n"
        "@@ -1,3 +1,3 @@\n"
        " one\n"
        "-two\n"
        "+TWO\n"
        " three\n"
        "-- \n"
        "2.43.0\n"
    )
    patch = ps.parse_patch(text, "demo.patch")
    assert patch.paths == ["a.c"]
    assert ps.apply_file_patch(patch.files[0], b"one\ntwo\nthree\n") == b"one\nTWO\nthree\n"


def test_no_newline_at_end_of_file_both_ways():
    text = ps.make_patch({"f.txt": ("a\nb", "a\nc\n")})
    assert "\\ No newline at end of file" in text
    fp = ps.parse_patch(text).files[0]
    assert ps.apply_file_patch(fp, b"a\nb") == b"a\nc\n"
    # The old side must really lack the newline: "b\n" is not an exact match.
    with pytest.raises(ps.PatchError):
        ps.apply_file_patch(fp, b"a\nb\n")
    back = ps.parse_patch(ps.make_patch({"f.txt": ("a\nc\n", "a\nb")})).files[0]
    assert ps.apply_file_patch(back, b"a\nc\n") == b"a\nb"


def test_empty_new_file_has_no_hunks():
    patch = ps.parse_patch(ps.make_patch({"empty.txt": (None, "")}))
    assert patch.files[0].is_new and not patch.files[0].hunks
    assert ps.apply_file_patch(patch.files[0], None) == b""


def test_hunk_applies_at_an_offset_searching_outward():
    old = numbered(60)
    new = old.replace("line 40\n", "line 40\ninserted\n")
    fp = ps.parse_patch(ps.make_patch({"f": (old, new)})).files[0]
    # 7 lines added at the top and 2 removed near the end: the hunk moved down by 7.
    shifted = "".join(f"top {i}\n" for i in range(7)) + old
    got = ps.apply_file_patch(fp, shifted)
    assert got == ("".join(f"top {i}\n" for i in range(7)) + new).encode()
    # Moved up by 5 too.
    up = old.replace("".join(f"line {i}\n" for i in range(1, 6)), "")
    assert ps.apply_file_patch(fp, up) == new.replace(
        "".join(f"line {i}\n" for i in range(1, 6)), "").encode()


def test_offset_picks_the_nearest_match_to_the_stated_line():
    block = "x\ny\nz\n"
    old = block + numbered(20) + block
    new = block + numbered(20) + "x\nY\nz\n"
    fp = ps.parse_patch(ps.make_patch({"f": (old, new)}, context=1)).files[0]
    assert ps.apply_file_patch(fp, old) == new.encode()


def test_error_for_a_hunk_that_no_longer_applies_names_everything():
    old = numbered(50)
    new = old.replace("line 10\n", "ten\n").replace("line 40\n", "forty\n")
    text = ps.make_patch({"ggml/src/ggml.c": (old, new)})
    patch = ps.parse_patch(text, "0003-type-traits.patch")
    upstream_moved = old.replace("line 39\n", "line thirty-nine\n")
    with pytest.raises(ps.PatchError) as exc:
        ps.apply_series([patch], lambda rel: upstream_moved.encode())
    msg = exc.value.message
    assert "0003-type-traits.patch" in msg
    assert "ggml/src/ggml.c" in msg
    assert "hunk #2" in msg
    assert "@@ -37,7 +37,7 @@" in msg
    assert "expected at line 37" in msg
    assert "first difference at line 39" in msg
    assert "'line 39'" in msg and "'line thirty-nine'" in msg
    assert isinstance(exc.value, TqpatchError)


def test_no_fuzz_a_single_changed_context_line_is_refused():
    old = numbered(10)
    fp = ps.parse_patch(ps.make_patch({"f": (old, old.replace("line 5\n", "five\n"))})).files[0]
    with pytest.raises(ps.PatchError, match="hunk #1"):
        ps.apply_file_patch(fp, old.replace("line 7\n", "line 7 \n"))


def test_creating_an_existing_file_or_changing_a_missing_one_is_refused():
    new = ps.parse_patch(ps.make_patch({"n.h": (None, "x\n")}), "p1").files[0]
    with pytest.raises(ps.PatchError, match="already exists"):
        ps.apply_file_patch(new, b"x\n", "p1")
    mod = ps.parse_patch(ps.make_patch({"m.c": ("a\n", "b\n")}), "p2").files[0]
    with pytest.raises(ps.PatchError, match=r"p2 does not apply to m.c: the file does not exist"):
        ps.apply_file_patch(mod, None, "p2")
    gone = ps.parse_patch(ps.make_patch({"d.c": ("a\n", None)}), "p3").files[0]
    with pytest.raises(ps.PatchError):
        ps.apply_file_patch(gone, b"a\nextra\n", "p3")


def test_later_patches_see_earlier_ones():
    p1 = ps.parse_patch(ps.make_patch({"f": ("a\nb\n", "a\nB\n")}), "1")
    p2 = ps.parse_patch(ps.make_patch({"f": ("a\nB\n", "a\nB\nc\n")}), "2")
    assert ps.apply_series([p1, p2], lambda rel: b"a\nb\n") == {"f": b"a\nB\nc\n"}
    with pytest.raises(ps.PatchError, match="patch 2"):
        ps.apply_series([p2, p1], lambda rel: b"a\nb\n")


@pytest.mark.parametrize("bad", [
    "diff --git a/../x b/../x\n--- a/../x\n+++ b/../x\n@@ -1 +1 @@\n-a\n+b\n",
    "--- /etc/passwd\n+++ /etc/passwd\n@@ -1 +1 @@\n-a\n+b\n",
    "--- a/.tqpatch/state.json\n+++ b/.tqpatch/state.json\n@@ -1 +1 @@\n-a\n+b\n",
])
def test_unsafe_paths_are_refused(bad):
    with pytest.raises(ps.PatchError, match="unsafe|cannot read"):
        ps.parse_patch(bad, "evil.patch")


@pytest.mark.parametrize("bad, match", [
    ("just some text\n", "no file diffs"),
    ("--- a/f\n+++ b/f\n@@ -1,3 +1,3 @@\n a\n-b\n", "truncated"),
    ("--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n a\n*b\n+c\n", "unexpected line"),
    ("--- a/f\n+++ b/g\n@@ -1 +1 @@\n-a\n+b\n", "rename"),
    ("diff --git a/f b/f\nBinary files a/f and b/f differ\n", "binary"),
])
def test_malformed_patches_get_clear_errors(bad, match):
    with pytest.raises(ps.PatchError, match=match):
        ps.parse_patch(bad, "bad.patch")


def test_make_patch_round_trips_random_edits():
    rng = random.Random(7)
    for _ in range(400):
        a = [f"l{rng.randint(0, 6)}\n" for _ in range(rng.randint(0, 25))]
        b = list(a)
        for _ in range(rng.randint(1, 5)):
            r = rng.random()
            if r < 0.4 and b:
                del b[rng.randrange(len(b))]
            elif r < 0.8:
                b.insert(rng.randint(0, len(b)), f"n{rng.randint(0, 4)}\n")
            elif b:
                b[rng.randrange(len(b))] = "x\n"
        old, new = "".join(a), "".join(b)
        if rng.random() < 0.3 and old:
            old = old[:-1]
        if rng.random() < 0.3 and new:
            new = new[:-1]
        if old == new:
            continue
        fp = ps.parse_patch(ps.make_patch({"f": (old, new)}, context=rng.randint(0, 3))).files[0]
        assert ps.apply_file_patch(fp, old) == new.encode()


def test_series_comments_blank_lines_and_order(tmp_path):
    (tmp_path / "0001-b.patch").write_text(ps.make_patch({"f": ("a\n", "b\n")}, subject="b"))
    (tmp_path / "0002-c.patch").write_text(ps.make_patch({"f": ("b\n", "c\n")}, subject="c"))
    (tmp_path / "series").write_text("# glue\n\n0001-b.patch -p1\n  0002-c.patch  # last\n")
    assert ps.read_series(tmp_path) == ["0001-b.patch", "0002-c.patch"]
    patches = ps.load_series(tmp_path)
    assert ps.apply_series(patches, lambda rel: b"a\n") == {"f": b"c\n"}


def test_series_errors(tmp_path):
    with pytest.raises(TqpatchError, match="no patch series"):
        ps.load_series(tmp_path)
    (tmp_path / "series").write_text("0001-missing.patch\n")
    with pytest.raises(TqpatchError, match="0001-missing.patch.*does not exist"):
        ps.load_series(tmp_path)
    (tmp_path / "series").write_text("x.patch -p0\n")
    with pytest.raises(TqpatchError, match="-p0"):
        ps.read_series(tmp_path)


# ---------------------------------------------------------------- the real series



def test_the_shipped_series_parses_and_touches_only_safe_paths():
    from tqpatch import paths

    patches = ps.load_series(paths.patches_dir())
    assert len(patches) >= 10
    for p in patches:
        assert p.files, p.name
        for fp in p.files:
            assert not fp.path.startswith(("/", "..")) and ".tqpatch" not in fp.path, (p.name, fp.path)


def test_glue_patches_name_no_turbo_type_by_hand():
    """Per-type glue comes from the rendered GGML_TURBO_TYPES list, never typed per type."""
    from tqpatch import formats, paths

    names = [t for t in formats.TURBO_TYPES] + [t.upper() for t in formats.TURBO_TYPES]
    offenders = {}
    for p in ps.load_series(paths.patches_dir()):
        added = [body.decode(errors="replace") for fp in p.files for h in fp.hunks
                 for op, body in h.lines if op == "+"]
        hits = [ln.strip() for ln in added if any(re.search(rf"\b\w*{n}\b", ln) for n in names)]
        if hits:
            offenders[p.name] = hits[:3]
    assert not offenders, offenders
# --------------------------------------------------------------------------- held to git apply


def _git_apply_series(patches: list[ps.Patch], texts: list[bytes], read, root: Path) -> dict:
    """The same series applied by `git apply`, one patch after the other, in a scratch folder."""
    touched = sorted({fp.path for p in patches for fp in p.files})
    for rel in touched:
        data = read(rel)
        if data is not None:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
    for patch, text in zip(patches, texts):
        f = root.parent / "one.patch"
        f.write_bytes(text)
        r = subprocess.run(["git", "apply", "--whitespace=nowarn", str(f)], cwd=root,
                           capture_output=True, text=True)
        assert r.returncode == 0, f"git apply {patch.name}: {r.stderr}"
    return {rel: (root / rel).read_bytes() if (root / rel).exists() else None for rel in touched}


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_the_engine_agrees_with_git_apply_on_random_series(tmp_path):
    rng = random.Random(7)
    base = {f"d/f{i}.c": numbered(rng.randint(5, 60), f"f{i}").encode() for i in range(4)}
    state = dict(base)
    patches, texts = [], []
    for k in range(4):  # four patches, each editing what the last one left
        changes = {}
        for rel in rng.sample(sorted(state), 2):
            lines = ps.split_lines(state[rel])
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(len(lines) + 1)
                lines.insert(at, f"added {k} {at}\n".encode())
            if len(lines) > 3:
                del lines[rng.randrange(len(lines))]
            changes[rel] = (state[rel], b"".join(lines))
            state[rel] = b"".join(lines)
        if k == 2:
            changes[f"d/new{k}.h"] = (None, b"#pragma once\n")
            state[f"d/new{k}.h"] = b"#pragma once\n"
        text = ps.make_patch(changes, subject=f"step {k}").encode()
        patches.append(ps.parse_patch(text, f"{k:04d}.patch"))
        texts.append(text)
    ours = ps.apply_series(patches, base.get)
    work = tmp_path / "git"
    work.mkdir()
    assert ours == _git_apply_series(patches, texts, base.get, work)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_the_engine_agrees_with_git_apply_on_the_real_series(tmp_path):
    from tqpatch import fetch, paths

    root = fetch.ensure_pristine()
    pdir = paths.patches_dir()
    names = ps.read_series(pdir)
    patches = ps.load_series(pdir)
    ours = ps.apply_series(patches, lambda rel: fetch.read_pristine(rel, root))
    work = tmp_path / "git"
    work.mkdir()
    theirs = _git_apply_series(patches, [(pdir / n).read_bytes() for n in names],
                               lambda rel: fetch.read_pristine(rel, root), work)
    assert ours == theirs and len(ours) > 10


def test_every_rendered_glue_macro_is_used():
    """A macro the templates define for the glue (GGML_*TURBO*) must be expanded somewhere:
    in a patch or in another rendered file. Catches a patch that lost its hook (e.g. the
    CUDA flash-attention dispatch of the turbo vector kernels, whose loss only shows as
    a silent f16 fallback)."""
    from tqpatch import paths, render

    rendered = render.render_all(backends.all_backends()).files
    defined = {m for data in rendered.values()
               for m in re.findall(rb"^#define\s+(GGML_\w*TURBO\w*)", data, re.M)}
    patch_text = b"".join((paths.patches_dir() / n).read_bytes() for n in ps.read_series(paths.patches_dir()))
    # X-macro pastes in the glue (GGML_TURBO_VALIDATE_##NAME) expand one name per turbo type
    pasted = {prefix + t.upper().encode() for prefix in re.findall(rb"\b(GGML_\w*TURBO\w*_)##NAME\b", patch_text)
              for t in formats.TURBO_TYPES}
    unused = []
    for name in sorted(defined):
        uses = len(re.findall(rb"\b" + name + rb"\b", patch_text)) + (name in pasted)
        uses += sum(len(re.findall(rb"\b" + name + rb"\b(?!\s*\()|\b" + name + rb"\(", d))
                    for d in rendered.values()) - 1  # minus its own #define
        if uses <= 0:
            unused.append(name.decode())
    assert not unused, f"rendered but never expanded: {unused}"
