"""Hostile files and shared machines (issue 25): tqpatch touches nothing outside its own folders.

Every path tqpatch writes or deletes from a manifest (generated/'s render
manifest, a tree's state.json), a journal or a patch must stay inside the
folder it belongs to: absolute paths, `..` and symbolic links leading out are
refused in one line naming the entry, and the would-be victims stay as they
were. Also: --out writes only regular files, a damaged pristine tree is caught
on reuse, a missing --tree is not made silently, a command stopped after its
work says it had finished, a full disk is one line, and an unreadable build
record is one line.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from test_apply import PRISTINE, Env
from tqpatch import apply, build, cli, fetch, fsutil, paths, patchset, render, txn
from tqpatch.cli import main
from tqpatch.errors import TqpatchError
from tqpatch import backends, build_record


@pytest.fixture
def env(tmp_path, monkeypatch):
    return Env(tmp_path, monkeypatch)


@pytest.fixture
def victims(tmp_path):
    """Files and an empty folder outside every folder tqpatch owns here; checked untouched."""
    outside = tmp_path / "outside"
    outside.mkdir()
    files = {outside / "victim1.txt": "one\n", outside / "victim2.txt": "two\n"}
    for p, text in files.items():
        p.write_text(text)
    (outside / "emptydir").mkdir()
    yield outside
    for p, text in files.items():
        assert p.read_text() == text, f"{p} was changed"
    assert (outside / "emptydir").is_dir()
    assert sorted(q.name for q in outside.iterdir()) == ["emptydir", "victim1.txt", "victim2.txt"]


def one_line(msg: str) -> str:
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def hostile_entries(root: Path, outside: Path) -> list[str]:
    """Paths that leave `root`: absolute, `..` (relative to root), and through a link in root."""
    rel_up = os.path.relpath(outside, root)
    link = root / "escape"
    root.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(outside, target_is_directory=True)
    return [str(outside / "victim1.txt"), f"{rel_up}/victim2.txt", "escape/victim1.txt",
            f"ok/../{rel_up}/victim1.txt", "./x/../../victim1.txt"]


# --------------------------------------------------------------------------- the helper


def test_inside_accepts_plain_paths_and_refuses_every_way_out(tmp_path, victims):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "inner").symlink_to(root / "a", target_is_directory=True)  # a link that stays in
    assert fsutil.inside(root, "a/b/c.txt", "x") == root / "a/b/c.txt"
    assert fsutil.inside(root, "inner/b/c.txt", "x") == root / "inner/b/c.txt"
    assert fsutil.inside(root, "new/deep/file", "x") == root / "new/deep/file"
    for bad in [*hostile_entries(root, victims), "", "a//b", "a/./b", "a\0b", None, 3]:
        with pytest.raises(TqpatchError) as exc:
            fsutil.inside(root, bad, "the manifest entry")
        assert one_line(exc.value.message).startswith(f"the manifest entry {bad!r}: ")


# --------------------------------------------------------------------------- render manifest


def _result():
    return render.RenderResult(files={"ggml/src/a.c": b"// a\n", "b.h": b"// b\n"},
                               versions={"codebooks": "c", "templates": "t", "tqpatch": "0"})


@pytest.mark.parametrize("which", range(5))
def test_render_refuses_a_manifest_entry_outside_its_folder(tmp_path, victims, which):
    out = tmp_path / "generated"
    render.write(_result(), out)
    bad = hostile_entries(out, victims)[which]
    manifest = out / render.MANIFEST
    data = json.loads(manifest.read_text())
    data["files"][bad] = "0" * 64  # a stale entry: render would remove it
    manifest.write_text(json.dumps(data))
    before = manifest.read_bytes()
    with pytest.raises(TqpatchError) as exc:
        render.write(_result(), out)
    msg = one_line(exc.value.message)
    assert str(manifest) in msg and repr(bad) in msg
    assert manifest.read_bytes() == before  # refused before anything was written


def test_render_cli_out_folder_with_a_hostile_manifest_is_one_line(tmp_path, victims):
    out = tmp_path / "out"
    out.mkdir()
    rel_up = os.path.relpath(victims, out)
    (out / render.MANIFEST).write_text(json.dumps(
        {"files": {f"{rel_up}/victim1.txt": "0", str(victims / "victim2.txt"): "0"}}))
    r = CliRunner().invoke(main, ["render", "--out", str(out)])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "victim" in r.output and "refusing it" in r.output and "wrote" not in r.output


@pytest.mark.parametrize("where", ["manifest", "stale entry", "rendered file"])
def test_render_with_a_folder_where_a_file_belongs_is_one_line(tmp_path, where):
    out = tmp_path / "generated"
    render.write(_result(), out)
    if where == "manifest":
        (out / render.MANIFEST).unlink()
        (out / render.MANIFEST).mkdir()
        target = out / render.MANIFEST
    elif where == "stale entry":
        data = json.loads((out / render.MANIFEST).read_text())
        data["files"]["old/dir"] = "0"
        (out / render.MANIFEST).write_text(json.dumps(data))
        (out / "old/dir").mkdir(parents=True)
        target = out / "old/dir"
    else:
        (out / "b.h").unlink()
        (out / "b.h").mkdir()
        target = out / "b.h"
    with pytest.raises(TqpatchError) as exc:
        render.write(_result(), out)
    msg = one_line(exc.value.message)
    assert str(target) in msg and "is a folder" in msg


# --------------------------------------------------------------------------- tree manifest, journal


@pytest.mark.parametrize("field", ["files", "created_dirs"])
def test_apply_revert_status_refuse_a_tree_manifest_pointing_outside(env, victims, field):
    env.apply()
    w = env.work
    mpath = apply.manifest_path(w)
    for bad in hostile_entries(w, victims) + [".tqpatch/journal/x"]:
        data = json.loads(mpath.read_text())
        if field == "files":
            data["files"][bad] = {"sha256": None, "origin": "patched", "pristine_sha256": None}
        else:
            data["created_dirs"].append(bad if "victim" not in bad else str(Path(bad).parent) + "/emptydir")
        mpath.write_text(json.dumps(data))
        for run in (lambda: env.apply(), lambda: env.apply(force=True),
                    lambda: apply.revert(w, force=True, echo=env.echo)):
            with pytest.raises(TqpatchError) as exc:
                run()
            assert str(mpath) in one_line(exc.value.message)
        st = apply.status(w)
        assert st.state == "unknown" and str(mpath) in st.message
        data[field] = json.loads(mpath.read_text())[field]
    (w / "escape").unlink()


def test_a_tree_whose_folder_links_outside_is_not_written_through(env, victims):
    env.apply()
    apply.revert(env.work, echo=env.echo)
    w = env.work
    # ggml/src is replaced by a link to a folder outside holding the same files
    shutil.copytree(w / "ggml/src", victims / "src")
    shutil.rmtree(w / "ggml/src")
    (w / "ggml/src").symlink_to(victims / "src", target_is_directory=True)
    before = {p.name: p.read_bytes() for p in (victims / "src").iterdir()}
    with pytest.raises(TqpatchError) as exc:
        env.apply()
    assert "leads out of" in one_line(exc.value.message) and "ggml/src/" in exc.value.message
    assert {p.name: p.read_bytes() for p in (victims / "src").iterdir()} == before
    assert not txn.pending(w)
    shutil.rmtree(victims / "src")


@pytest.mark.parametrize("what", ["path", "old", "created_dirs"])
def test_a_tampered_journal_is_refused_before_anything_moves(env, victims, what):
    env.apply()
    w = env.work
    jdir = txn.journal_dir(w)
    (jdir / "old").mkdir(parents=True)
    (jdir / "old" / "0").write_text("saved\n")
    rel_up = os.path.relpath(victims, w)
    entry = {"path": "ggml/src/ggml.c", "old": "old/0", "old_sha256": None, "new_sha256": None}
    created = []
    if what == "path":
        entry["path"] = f"{rel_up}/victim1.txt"
    elif what == "old":
        entry["old"] = f"../../{os.path.relpath(victims, jdir.parent.parent)}/victim2.txt"
    else:
        created = [f"{rel_up}/emptydir"]
    (jdir / txn.JOURNAL_FILE).write_text(json.dumps(
        {"format": 1, "op": "apply", "files": [entry], "created_dirs": created, "pid": 1}))
    with pytest.raises(TqpatchError) as exc:
        apply.status(w, echo=env.echo)
    assert str(jdir / txn.JOURNAL_FILE) in one_line(exc.value.message)
    assert txn.pending(w)  # kept for a person to look at
    assert (w / "ggml/src/ggml.c").read_text() != "saved\n"


def test_a_state_folder_that_links_outside_is_refused(env, victims):
    env.apply()
    w = env.work
    shutil.copytree(w / ".tqpatch", victims / "state")
    shutil.rmtree(w / ".tqpatch")
    (w / ".tqpatch").symlink_to(victims / "state", target_is_directory=True)
    (victims / "state" / ".journal.tmp-999999999-x").mkdir()  # a "stale" temporary to sweep
    for run in (lambda: env.apply(force=True), lambda: apply.revert(w, force=True, echo=env.echo),
                lambda: apply.status(w, echo=env.echo)):
        with pytest.raises(TqpatchError) as exc:
            run()
        assert "is a symbolic link" in one_line(exc.value.message)
    assert (victims / "state" / ".journal.tmp-999999999-x").is_dir()
    shutil.rmtree(victims / "state")


def test_a_patch_target_outside_the_tree_is_refused(env):
    for bad in ("../../etc/passwd", "/etc/passwd", "ggml/./x", ".tqpatch/state.json"):
        text = f"--- a/{bad}\n+++ b/{bad}\n@@ -1 +1 @@\n-x\n+y\n"
        with pytest.raises(patchset.PatchError) as exc:
            patchset.parse_patch(text, "0009-evil.patch")
        assert repr(bad) in one_line(exc.value.message) and "refusing it" in exc.value.message
    (env.pdir / "series").write_text("../evil.patch\n")
    with pytest.raises(TqpatchError, match="patch name '../evil.patch': climbs out"):
        patchset.read_series(env.pdir)


def test_txn_commit_refuses_paths_outside_the_tree(tmp_path, victims):
    tree = tmp_path / "tree"
    for bad in hostile_entries(tree, victims):
        with pytest.raises(TqpatchError) as exc:
            txn.commit(tree, {bad: b"pwned\n"}, "apply")
        assert repr(bad) in one_line(exc.value.message)
        with pytest.raises(TqpatchError):
            txn.commit(tree, {"fine.txt": b"x"}, "revert", remove_dirs=[bad])
    assert not (tree / "fine.txt").exists() and not (tree / ".tqpatch").exists()


# --------------------------------------------------------------------------- codebook --out


@pytest.mark.parametrize("kind", ["fifo", "symlink", "dangling", "folder-entry", "device"])
def test_codebook_out_writes_only_regular_files(tmp_path, victims, kind):
    if kind == "fifo":
        out = tmp_path / "fifo"
        os.mkfifo(out)
    elif kind == "symlink":
        out = tmp_path / "link.json"
        out.symlink_to(victims / "victim1.txt")
    elif kind == "dangling":
        out = tmp_path / "dangling.json"
        out.symlink_to(victims / "nothing.json")
    elif kind == "folder-entry":
        (tmp_path / "d" / "absmax-d64-b2.json").mkdir(parents=True)
        out = tmp_path / "d"
    else:
        out = Path("/dev/full")
        if not out.exists():
            pytest.skip("no /dev/full here")
    mode = os.lstat(out).st_mode
    r = CliRunner().invoke(main, ["codebook", "--dist", "absmax", "--dim", "64", "--bits", "2",
                                  "--out", str(out)])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "tqpatch writes only regular files" in r.output
    assert len([line for line in r.output.splitlines() if line.strip()]) == 1
    assert os.lstat(out).st_mode == mode  # still what it was
    if kind == "dangling":
        assert not (victims / "nothing.json").exists()
    # a regular file is replaced as before
    ok = tmp_path / "ok.json"
    ok.write_text("old\n")
    r = CliRunner().invoke(main, ["codebook", "--dist", "absmax", "--dim", "64", "--bits", "2",
                                  "--out", str(ok)])
    assert r.exit_code == 0 and json.loads(ok.read_text())["bits"] == 2


def test_write_atomic_never_writes_through_a_planted_temporary(tmp_path, victims):
    target = tmp_path / "file.json"
    fsutil.tmp_path(target).symlink_to(victims / "victim1.txt")
    fsutil.write_atomic(target, b"new\n")
    assert target.read_bytes() == b"new\n" and not fsutil.tmp_path(target).exists()


# --------------------------------------------------------------------------- pin scope on reuse


@pytest.mark.parametrize("damage", ["delete", "append", "add"])
def test_a_damaged_pristine_tree_is_caught_on_reuse_naming_the_file(env, damage):
    pristine = fetch.ensure_pristine()
    rel = "common/arg.cpp"  # no patch touches it: only the scope check can see it
    if damage == "delete":
        (pristine / rel).unlink()
        named = f"{rel} is missing"
    elif damage == "append":
        with open(pristine / rel, "a") as f:
            f.write("message(FATAL_ERROR evil)\n")
        named = f"{rel} differs"
    else:
        (pristine / "common/extra.cpp").write_text("evil\n")
        named = "common/extra.cpp is extra"
    assert not fetch.is_verified()
    r = CliRunner().invoke(main, ["fetch", "--from", str(env.upstream)])
    assert r.exit_code == 1 and "already fetched" not in r.output, r.output
    assert named in r.output and "tqpatch fetch --force" in r.output and "Traceback" not in r.output
    with pytest.raises(TqpatchError, match=named):
        env.apply()
    assert not env.work.exists()  # nothing copied from the damaged tree
    shutil.rmtree(pristine)  # what `fetch --force` does (the fake fetch here drops --force)
    fetch.ensure_pristine()
    env.apply()
    assert (env.work / rel).read_text() == PRISTINE[rel]


def test_a_touched_but_unchanged_pristine_tree_is_rehashed_once_then_fast(env, monkeypatch):
    pristine = fetch.ensure_pristine()
    os.utime(pristine / "common/arg.cpp", (1, 1))
    calls = []
    real = fetch.verify_tree
    monkeypatch.setattr(fetch, "verify_tree", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert fetch.ensure_pristine() == pristine and len(calls) == 1  # hashed again, it matches
    assert fetch.ensure_pristine() == pristine and len(calls) == 1  # the stamp took the new times
    assert fetch.is_verified()


def test_a_stamp_of_an_older_tqpatch_gets_the_tree_hashed_once(env):
    pristine = fetch.ensure_pristine()
    stamp = fetch._stamp_path(pristine)
    data = json.loads(stamp.read_text())
    del data["scan"]
    stamp.write_text(json.dumps(data))
    assert not fetch.is_verified()
    assert fetch.ensure_pristine() == pristine and fetch.is_verified()


# --------------------------------------------------------------------------- apply --tree, SIGTERM


def test_apply_to_a_missing_tree_needs_create(env):
    tree = env.tmp / "typo" / "llama.cpp"
    r = CliRunner().invoke(main, ["apply", "--tree", str(tree)])
    assert r.exit_code == 1 and "--create" in r.output and "Traceback" not in r.output
    assert not tree.exists() and not tree.parent.exists()
    r = CliRunner().invoke(main, ["apply", "--tree", str(tree), "--create"])
    assert r.exit_code == 0, r.output
    assert apply.status(tree).state == "applied"
    r = CliRunner().invoke(main, ["apply"])  # the default work tree is still made on its own
    assert r.exit_code == 0 and env.work.is_dir(), r.output


@pytest.mark.parametrize("cmd", ["apply", "revert"])
def test_a_command_stopped_after_its_last_write_says_it_had_finished(env, monkeypatch, cmd):
    if cmd == "revert":
        env.apply()
    real_disarm = txn._disarm
    disarmed = []
    monkeypatch.setattr(txn, "_disarm", lambda tree: disarmed.append(1) or real_disarm(tree))

    def stop_after_the_end():
        if disarmed:
            raise cli.Terminated(signal.SIGTERM)

    monkeypatch.setattr(txn, "checkpoint", stop_after_the_end)
    r = CliRunner().invoke(main, [cmd])
    assert r.exit_code == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in r.stderr and "Traceback" not in r.stderr
    outcome = "applied" if cmd == "apply" else "reverted to pristine"
    assert f"{cmd} had finished when it was stopped: {env.work} is {outcome}" in r.stderr
    assert apply.status(env.work).state == ("applied" if cmd == "apply" else "pristine")


def test_a_command_stopped_before_the_end_does_not_claim_it_finished(env, monkeypatch):
    def stop():
        raise cli.Terminated(signal.SIGTERM)

    fetch.ensure_pristine()
    apply.create_work_tree(env.work, echo=env.echo)
    monkeypatch.setattr(txn, "checkpoint", stop)
    r = CliRunner().invoke(main, ["apply"])
    assert r.exit_code == 128 + signal.SIGTERM and "had finished" not in r.stderr
    assert apply.status(env.work).state == "pristine"


# --------------------------------------------------------------------------- full disk


def _disk_full_after(monkeypatch, n_ok: int):
    real = shutil.copy2
    count = [0]

    def copy2(src, dst, *a, **k):
        count[0] += 1
        if count[0] > n_ok:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(shutil, "copy2", copy2)
    return count


def test_fetch_on_a_full_disk_is_one_line_with_the_first_path_and_the_free_space(env, monkeypatch):
    count = _disk_full_after(monkeypatch, 2)
    r = CliRunner().invoke(main, ["fetch", "--from", str(env.upstream)])
    assert r.exit_code == 1, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "MB free" in lines[0]
    assert lines[0].count(str(env.cache)) <= 3 and len(lines[0]) < 600
    assert count[0] == 3  # stopped at the first failure, not after trying every file
    assert not fetch.is_verified() and not list(paths.pristine_tree().parent.glob(".*tmp-*"))


def test_making_a_work_tree_on_a_full_disk_is_one_line(env, monkeypatch):
    fetch.ensure_pristine()
    _disk_full_after(monkeypatch, 1)
    with pytest.raises(TqpatchError) as exc:
        env.apply()
    msg = one_line(exc.value.message)
    assert "No space left on device" in msg and "MB free" in msg
    assert not env.work.exists()


# --------------------------------------------------------------------------- build records


def test_an_unreadable_build_record_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TQPATCH_CACHE", str(tmp_path / "cache"))
    bdir = paths.default_build_dir("cpu")
    bdir.mkdir(parents=True)
    (bdir / build.RECORD_NAME).write_text(json.dumps({"backend": "cpu"}))
    real_is_file = Path.is_file

    def denied(self):
        if self.name == build.RECORD_NAME:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", denied)
    for call in (lambda: build_record.load_record(backends.get("cpu")), lambda: build_record.built_backends(),
                 lambda: build_record.last_built(), lambda: build_record.last_built(bdir)):
        with pytest.raises(TqpatchError) as exc:
            call()
        msg = one_line(exc.value.message)
        assert "Permission denied" in msg and build.RECORD_NAME in msg
    monkeypatch.setattr(Path, "is_file", real_is_file)
    real_read = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (_ for _ in ()).throw(
        PermissionError(errno.EACCES, "Permission denied", str(self)))
        if self.name == build.RECORD_NAME else real_read(self, *a, **k))
    with pytest.raises(TqpatchError, match="cannot read .*Permission denied"):
        build_record.load_record(backends.get("cpu"))


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run as another user")
def test_verify_as_a_user_who_cannot_read_the_cache_is_one_line(tmp_path):
    import subprocess
    import sys

    import tqpatch

    cache = tmp_path / "cache"
    bdir = cache / "build" / "cpu"
    bdir.mkdir(parents=True)
    (bdir / build.RECORD_NAME).write_text(json.dumps({"backend": "cpu"}))
    os.chmod(bdir, 0o700)
    os.chmod(tmp_path, 0o755)
    root = str(Path(tqpatch.__file__).resolve().parent.parent)
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    if subprocess.run([*as_nobody, "-c", "import click"], env=dict(os.environ, PYTHONPATH=root),
                      capture_output=True).returncode != 0:
        pytest.skip("this Python's packages are not readable by another user")
    code = ("import sys; from tqpatch import backends, build_record; from tqpatch.errors import TqpatchError\n"
            "try:\n    build_record.load_record(backends.get('cpu'))\nexcept TqpatchError as e:\n"
            "    print(e.message); sys.exit(1)\n")
    r = subprocess.run([*as_nobody, "-c", code],
                       env=dict(os.environ, TQPATCH_CACHE=str(cache), PYTHONPATH=root,
                                HOME=str(tmp_path)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "Permission denied" in r.stdout and "\n" not in r.stdout.strip()
