"""apply / status / revert on a tiny fake llama.cpp tree: atomic, idempotent, drift-aware."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import fake_llama
import pytest
from click.testing import CliRunner

import tqpatch
from tqpatch import apply, fetch, fsutil, paths, patchset, pin, txn
from tqpatch.cli import main
from tqpatch.errors import TqpatchError
from tqpatch.render import RenderResult

FAKE_LLAMA = str(Path(fake_llama.__file__).resolve())
PYTHONPATH = os.pathsep.join([str(Path(tqpatch.__file__).resolve().parent.parent),
                              os.environ.get("PYTHONPATH", "")])


def numbered(n, prefix):
    return "".join(f"{prefix} {i}\n" for i in range(1, n + 1))


PRISTINE = {
    "CMakeLists.txt": "project(llama.cpp)\n" + numbered(20, "# cmake"),
    "ggml/CMakeLists.txt": "project(ggml)\n",
    "ggml/include/ggml.h": numbered(30, "// ggml"),
    "ggml/src/ggml.c": numbered(50, "/* c */"),
    "include/llama.h": "#pragma once\n",
    "src/llama.cpp": numbered(40, "// llama"),
    "tests/old-test.cpp": "int main() { return 0; }\n",
    "common/arg.cpp": numbered(10, "// arg"),
}


def edit(text, old, new):
    assert old in text
    return text.replace(old, new, 1)


def tree_hashes(root: Path) -> dict[str, tuple[str, int]]:
    """Every file (and symlink) under root with its sha256 and mtime."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[p.relative_to(root).as_posix()] = (hashlib.sha256(p.read_bytes()).hexdigest(),
                                                   st.st_mtime_ns)
        elif p.is_dir():
            out[p.relative_to(root).as_posix() + "/"] = ("dir", 0)
    return out


class Env:
    """A fake llama.cpp (tests/fake_llama.py) in tmp_path/setup; the cache in tmp_path/cache."""

    def __init__(self, tmp_path: Path, monkeypatch):
        self.tmp = tmp_path
        self.mp = monkeypatch
        self.msgs: list[str] = []
        self.cache = tmp_path / "cache"
        monkeypatch.setenv("TQPATCH_CACHE", str(self.cache))
        self.setup = tmp_path / "setup"
        fake_llama.write_upstream(self.setup, PRISTINE)
        self.upstream = self.setup / "upstream"
        self.pdir = self.setup / "patches"
        self.versions = {"codebooks": "cb1", "templates": "tp1"}
        self.set_patches(default_patches())
        self.set_rendered({"ggml/src/ggml-turbo.c": b"// GENERATED turbo\nint turbo;\n",
                           "ggml/src/turbo/deep/k.h": b"// GENERATED deep\n"}, self.versions)
        # No network in tests: a missing pristine tree comes from the fake upstream.
        fake_llama.install(self.setup, monkeypatch.setattr)

    @property
    def pristine(self) -> Path:
        return paths.pristine_tree()

    @property
    def work(self) -> Path:
        return paths.default_work_tree()

    @property
    def rendered(self) -> RenderResult:
        return fake_llama.read_rendered(self.setup)

    def echo(self, msg):
        self.msgs.append(msg)

    def set_patches(self, patches: list[tuple[str, str]], series_extra: str = ""):
        fake_llama.write_patches(self.setup, patches, series_extra)

    def set_rendered(self, files, versions=None):
        self.versions = dict(versions or self.versions)
        fake_llama.write_rendered(self.setup, dict(files), self.versions)

    def apply(self, **kw):
        self.msgs.clear()
        return apply.apply(echo=self.echo, **kw)

    def cli(self, *args, hook: str | None = None, extra_env: dict | None = None,
            **popen) -> subprocess.Popen:
        """`tqpatch ARGS` in a real process on this fake setup (TQPATCH_TEST_HOOK=hook)."""
        env = dict(os.environ, TQPATCH_CACHE=str(self.cache), PYTHONPATH=PYTHONPATH)
        env.pop("TQPATCH_TEST_HOOK", None)
        if hook:
            env["TQPATCH_TEST_HOOK"] = hook
        env.update(extra_env or {})
        return subprocess.Popen([sys.executable, FAKE_LLAMA, str(self.setup), *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def default_patches():
    h, c, t = PRISTINE["ggml/include/ggml.h"], PRISTINE["ggml/src/ggml.c"], PRISTINE["tests/old-test.cpp"]
    p1 = patchset.make_patch({
        "ggml/include/ggml.h": (h, edit(h, "// ggml 10\n", "// ggml 10\nGGML_TYPE_TURBO3,\n")),
        "ggml/src/ggml.c": (c, edit(edit(c, "/* c */ 5\n", "/* c */ five\n"), "/* c */ 45\n", "#include \"ggml-turbo.h\"\n/* c */ 45\n")),
    }, subject="ggml: turbo type")
    c2 = edit(edit(c, "/* c */ 5\n", "/* c */ five\n"), "/* c */ 45\n", "#include \"ggml-turbo.h\"\n/* c */ 45\n")
    p2 = patchset.make_patch({
        "ggml/src/ggml.c": (c2, edit(c2, "/* c */ 20\n", "/* c */ 20\nturbo_init();\n")),
        "ggml/src/ggml-turbo.h": (None, "#pragma once\nvoid turbo_init(void);\n"),
        "tests/old-test.cpp": (t, None),
    }, subject="more glue")
    return [("0001-ggml-turbo-type.patch", p1), ("0002-more-glue.patch", p2)]


@pytest.fixture
def env(tmp_path, monkeypatch):
    return Env(tmp_path, monkeypatch)


# --------------------------------------------------------------------------- apply


def test_apply_creates_the_work_tree_and_records_a_manifest(env):
    res = env.apply()
    w = env.work
    assert res.tree == w and res.changed
    assert "GGML_TYPE_TURBO3,\n" in (w / "ggml/include/ggml.h").read_text()
    c = (w / "ggml/src/ggml.c").read_text()
    assert "/* c */ five\n" in c and "turbo_init();\n" in c and '#include "ggml-turbo.h"' in c
    assert (w / "ggml/src/ggml-turbo.h").read_text().startswith("#pragma once")
    assert not (w / "tests/old-test.cpp").exists()
    assert (w / "ggml/src/ggml-turbo.c").read_bytes() == b"// GENERATED turbo\nint turbo;\n"
    assert (w / "ggml/src/turbo/deep/k.h").is_file()
    # Untouched files are copies with their mtimes kept (incremental builds).
    assert (w / "src/llama.cpp").stat().st_mtime_ns == (env.pristine / "src/llama.cpp").stat().st_mtime_ns
    # The pristine tree is untouched.
    assert (env.pristine / "ggml/src/ggml.c").read_text() == PRISTINE["ggml/src/ggml.c"]

    m = json.loads((w / ".tqpatch/state.json").read_text())
    assert m["pin"] == pin.LLAMA_CPP_COMMIT
    assert [p["name"] for p in m["patches"]] == ["0001-ggml-turbo-type.patch", "0002-more-glue.patch"]
    assert m["patches"][0]["sha256"] == hashlib.sha256((env.pdir / "0001-ggml-turbo-type.patch").read_bytes()).hexdigest()
    assert m["render"] == {"codebooks": "cb1", "templates": "tp1"}
    f = m["files"]
    assert f["ggml/src/ggml.c"] == {
        "sha256": hashlib.sha256((w / "ggml/src/ggml.c").read_bytes()).hexdigest(),
        "origin": "patched",
        "pristine_sha256": hashlib.sha256(PRISTINE["ggml/src/ggml.c"].encode()).hexdigest()}
    assert f["ggml/src/ggml-turbo.h"]["pristine_sha256"] is None
    assert f["tests/old-test.cpp"]["sha256"] is None
    assert f["ggml/src/ggml-turbo.c"]["origin"] == "rendered"
    assert set(f) == {"ggml/include/ggml.h", "ggml/src/ggml.c", "ggml/src/ggml-turbo.h",
                      "tests/old-test.cpp", "ggml/src/ggml-turbo.c", "ggml/src/turbo/deep/k.h"}
    assert "ggml/src/turbo" in m["created_dirs"]
    out = "\n".join(env.msgs)
    assert "4 files patched" in out and "2 rendered files placed" in out
    assert f"tree: {w}" in out and "next: tqpatch build --backend cpu" in out


def watch_writes(monkeypatch, tree: Path, fail=None) -> list[str]:
    """Tree-relative paths of the files written in `tree` (journal files left out).

    fail(n, path): called before the n-th such write; it may raise.
    """
    written: list[str] = []
    real = fsutil.write_atomic

    def watched(path, data, mode=None, fsync=False):
        rel = Path(path).relative_to(tree).as_posix() if Path(path).is_relative_to(tree) else str(path)
        if "journal" not in rel:
            written.append(rel)
            if fail is not None:
                fail(len(written), Path(path))
        return real(path, data, mode, fsync)

    monkeypatch.setattr(fsutil, "write_atomic", watched)
    return written


def test_apply_twice_writes_nothing(env, monkeypatch):
    env.apply()
    before = tree_hashes(env.work)
    writes = watch_writes(monkeypatch, env.work)
    res = env.apply()
    assert not res.changed and writes == []
    assert env.msgs == ["already applied (llama.cpp 0c1e57098, 2 patches, codebooks cb1, "
                        "templates tp1); nothing to do"]
    assert tree_hashes(env.work) == before


def test_changed_inputs_reapply_from_pristine_writing_only_what_differs(env, monkeypatch):
    env.apply()
    before = tree_hashes(env.work)
    env.set_rendered({"ggml/src/ggml-turbo.c": b"// GENERATED turbo v2\n",
                      "ggml/src/turbo/deep/k.h": b"// GENERATED deep\n"}, {"codebooks": "cb2", "templates": "tp1"})
    written = watch_writes(monkeypatch, env.work)
    env.apply()
    assert sorted(written) == [".tqpatch/state.json", "ggml/src/ggml-turbo.c"]
    assert "inputs changed" in env.msgs[0]
    after = tree_hashes(env.work)
    assert after["ggml/src/ggml.c"] == before["ggml/src/ggml.c"]  # same bytes, same mtime
    # Drop the second patch: its files go back to pristine (or away).
    env.set_patches(default_patches()[:1])
    env.apply()
    w = env.work
    assert (w / "tests/old-test.cpp").read_text() == PRISTINE["tests/old-test.cpp"]
    assert not (w / "ggml/src/ggml-turbo.h").exists()
    assert "turbo_init();" not in (w / "ggml/src/ggml.c").read_text()
    assert "restored to pristine" in env.msgs[-4]
    m = apply.read_manifest(w)
    assert "tests/old-test.cpp" not in m["files"] and len(m["patches"]) == 1
    assert apply.status(w).state == "applied"


def failing_patch():
    h = PRISTINE["ggml/include/ggml.h"]
    stale = edit(h, "// ggml 20\n", "// ggml twenty\n")  # not what the tree has
    return ("0003-stale.patch", patchset.make_patch({"ggml/include/ggml.h": (stale, edit(stale, "// ggml 21\n", "X\n"))}))


def test_a_failing_patch_midway_writes_nothing(env):
    # Fresh tree: the work tree is created (a pristine copy) but nothing is patched.
    env.set_patches(default_patches()[:1] + [failing_patch()] + default_patches()[1:])
    with pytest.raises(patchset.PatchError) as exc:
        env.apply()
    msg = exc.value.message
    assert "0003-stale.patch" in msg and "ggml/include/ggml.h" in msg and "hunk #1" in msg
    assert "'// ggml twenty'" in msg and "'// ggml 20'" in msg
    assert tree_hashes(env.work) == tree_hashes(env.pristine)
    # Applied tree with new, broken inputs: untouched, manifest included.
    env.set_patches(default_patches())
    env.apply()
    before = tree_hashes(env.work)
    env.set_patches(default_patches() + [failing_patch()])
    with pytest.raises(patchset.PatchError):
        env.apply()
    assert tree_hashes(env.work) == before


@pytest.mark.parametrize("fail_at", [1, 3, 5])  # 5: the manifest, written last
@pytest.mark.parametrize("exc_type", [OSError, KeyboardInterrupt])
def test_a_write_failing_midway_restores_every_file(env, monkeypatch, fail_at, exc_type):
    env.apply()
    env.set_patches(default_patches()[:1])  # next apply: restores + rewrites + manifest
    env.set_rendered({"ggml/src/ggml-turbo.c": b"v2\n", "ggml/src/new/dir/x.h": b"new\n"}, {"codebooks": "cb9"})
    before = tree_hashes(env.work)

    def fail(n, path):
        if n == fail_at:
            if exc_type is OSError:
                raise OSError(28, "No space left on device", str(path))
            raise KeyboardInterrupt

    calls = watch_writes(monkeypatch, env.work, fail)
    with pytest.raises(TqpatchError if exc_type is OSError else KeyboardInterrupt) as exc:
        env.apply()
    if exc_type is OSError:
        assert "restored unchanged" in exc.value.message and "No space left" in exc.value.message
    if fail_at == 5:
        assert calls[fail_at - 1] == ".tqpatch/state.json"
    assert tree_hashes(env.work) == before  # contents, mtimes, no new files or dirs
    assert not list(env.work.rglob("*.tqpatch-tmp"))
    assert not txn.pending(env.work)


def test_a_full_disk_rolls_back_without_claiming_files_were_lost(env, monkeypatch):
    # Once the disk is full every further write fails, the rollback's too: rolling
    # back must not need to write (it renames the kept old files back).
    env.apply()
    env.set_rendered({"ggml/src/ggml-turbo.c": b"v2\n", "ggml/src/turbo/deep/k.h": b"v2\n"},
                     {"codebooks": "cb9"})
    before = tree_hashes(env.work)

    def disk_full(n, path):
        if n >= 2:
            raise OSError(28, "No space left on device", str(path))

    watch_writes(monkeypatch, env.work, disk_full)
    with pytest.raises(TqpatchError) as exc:
        env.apply()
    msg = exc.value.message
    assert "No space left" in msg and "restored unchanged" in msg
    assert "could not be restored" not in msg and "rolling back failed" not in msg
    assert tree_hashes(env.work) == before


def test_a_failing_unlink_midway_restores_too(env, monkeypatch):
    env.set_patches(default_patches()[:1])
    env.apply()
    before = tree_hashes(env.work)
    env.set_patches(default_patches())  # deletes tests/old-test.cpp, adds ggml-turbo.h
    real_unlink = Path.unlink

    def bad_unlink(self, *a, **k):
        if self.name == "old-test.cpp":
            raise PermissionError(13, "Permission denied", str(self))
        return real_unlink(self, *a, **k)

    monkeypatch.setattr(Path, "unlink", bad_unlink)
    with pytest.raises(TqpatchError, match="Permission denied"):
        env.apply()
    monkeypatch.setattr(Path, "unlink", real_unlink)
    assert tree_hashes(env.work) == before


# --------------------------------------------------------------------------- drift


def test_drift_is_refused_unless_forced(env):
    env.apply()
    w = env.work
    (w / "ggml/src/ggml-turbo.c").write_text("// my experiment\n")
    (w / "ggml/src/ggml-turbo.h").unlink()
    before = tree_hashes(w)
    with pytest.raises(TqpatchError) as exc:
        env.apply()
    msg = exc.value.message
    assert "edited by hand" in msg and "ggml/src/ggml-turbo.c (rendered, edited)" in msg
    assert "ggml-turbo.h" not in msg and "--force" in msg  # a deleted file is no edit
    assert tree_hashes(w) == before
    st = apply.status(w)
    assert st.state == "drifted" and not st.ok
    assert {d["path"]: (d["origin"], d["how"]) for d in st.drifted} == {
        "ggml/src/ggml-turbo.c": ("rendered", "edited"), "ggml/src/ggml-turbo.h": ("patched", "deleted")}
    with pytest.raises(TqpatchError, match="ggml-turbo.c"):
        apply.revert(w, echo=env.echo)
    env.apply(force=True)
    assert (w / "ggml/src/ggml-turbo.c").read_bytes() == b"// GENERATED turbo\nint turbo;\n"
    assert apply.status(w).state == "applied"


def test_deleted_or_pristine_again_files_are_restored_without_force(env):
    env.apply()
    w = env.work
    (w / "ggml/src/ggml-turbo.c").unlink()  # rendered, deleted
    (w / "ggml/src/ggml.c").write_text(PRISTINE["ggml/src/ggml.c"])  # patched, back to pristine
    (w / "tests/old-test.cpp").write_text(PRISTINE["tests/old-test.cpp"])  # removed by apply, back
    st = apply.status(w)
    assert {d["path"]: d["how"] for d in st.drifted} == {
        "ggml/src/ggml-turbo.c": "deleted", "ggml/src/ggml.c": "pristine",
        "tests/old-test.cpp": "pristine"}
    res = env.apply()
    assert sorted(res.written) == ["ggml/src/ggml-turbo.c", "ggml/src/ggml.c", "tests/old-test.cpp"]
    assert "1 deleted since apply" in env.msgs[0]
    assert apply.status(w).state == "applied"
    # revert needs no --force for a deleted file either (its pristine bytes are known)
    (w / "ggml/src/ggml-turbo.h").unlink()
    apply.revert(w, echo=env.echo)
    assert apply.status(w).state == "pristine"


def test_a_user_modified_checkout_is_refused_naming_the_file(env):
    tree = env.tmp / "mycheckout"
    apply.create_work_tree(tree, echo=env.echo)
    (tree / "ggml/src/ggml.c").write_text("my own changes\n")
    with pytest.raises(TqpatchError) as exc:
        env.apply(tree=tree)
    assert "ggml/src/ggml.c" in exc.value.message and "not applied by tqpatch" in exc.value.message
    assert not (tree / ".tqpatch").exists()
    st = apply.status(tree)
    assert st.state == "modified" and st.modified == ["ggml/src/ggml.c"] and not st.ok
    # A file apply would create that is already there counts too.
    (tree / "ggml/src/ggml.c").write_text(PRISTINE["ggml/src/ggml.c"])
    (tree / "ggml/src/ggml-turbo.c").write_text("mine\n")
    with pytest.raises(TqpatchError, match="ggml/src/ggml-turbo.c"):
        env.apply(tree=tree)
    env.apply(tree=tree, force=True)
    assert apply.status(tree).state == "applied"
    assert f"--tree {tree}" in env.msgs[-1]


# --------------------------------------------------------------------------- status


def test_status_in_every_state(env):
    w = env.work
    assert apply.status(w).state == "missing"
    (env.tmp / "notatree").mkdir()
    assert apply.status(env.tmp / "notatree").state == "not-a-tree"
    fetch.ensure_pristine()
    apply.create_work_tree(w, echo=env.echo)
    st = apply.status(w)
    assert st.state == "pristine" and st.ok, st.message
    assert apply.status(env.pristine).state == "pristine"
    env.apply()
    st = apply.status(w)
    assert st.state == "applied" and not st.out_of_date
    assert st.pin == pin.LLAMA_CPP_COMMIT and st.versions == {"codebooks": "cb1", "templates": "tp1"}
    assert st.patches == ["0001-ggml-turbo-type.patch", "0002-more-glue.patch"]
    env.set_rendered(dict(env.rendered.files, **{"ggml/src/ggml-turbo.c": b"new\n"}), {"codebooks": "cb2"})
    st = apply.status(w)
    assert st.state == "applied" and st.out_of_date and st.ok
    assert "rendered files changed: ggml/src/ggml-turbo.c" in st.reasons[0]
    (env.pdir / "0002-more-glue.patch").write_text(default_patches()[1][1] + "\n")
    assert any("0002-more-glue.patch" in r for r in apply.status(w).reasons)
    (w / "ggml/include/ggml.h").write_text("hand edit\n")
    st = apply.status(w)
    assert st.state == "drifted" and st.drifted == [
        {"path": "ggml/include/ggml.h", "origin": "patched", "how": "edited"}]


def test_status_command_exit_codes_and_json(env):
    runner = CliRunner()
    r = runner.invoke(main, ["status"])
    assert r.exit_code == 1 and "missing" in r.output
    env.apply()
    r = runner.invoke(main, ["status", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["state"] == "applied" and data["ok"] and data["tree"] == str(env.work)
    (env.work / "ggml/src/ggml-turbo.c").write_text("x\n")
    r = runner.invoke(main, ["status"])
    assert r.exit_code == 1 and "drifted" in r.output and "ggml/src/ggml-turbo.c (rendered, edited)" in r.output
    r = runner.invoke(main, ["status", "--tree", str(env.tmp)])
    assert r.exit_code == 1 and "not a llama.cpp tree" in r.output


# --------------------------------------------------------------------------- revert


def test_revert_restores_pristine_exactly(env):
    fetch.ensure_pristine()
    apply.create_work_tree(env.work, echo=env.echo)
    pristine_state = tree_hashes(env.work)
    env.apply()
    env.msgs.clear()
    res = apply.revert(echo=env.echo)
    assert res.changed
    after = tree_hashes(env.work)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in pristine_state.items()}
    assert not (env.work / ".tqpatch").exists() and not (env.work / "ggml/src/turbo").exists()
    assert "3 files restored to pristine, 3 files removed" in env.msgs[-1]
    assert apply.status(env.work).state == "pristine"
    env.msgs.clear()
    assert not apply.revert(echo=env.echo).changed
    assert "already pristine" in env.msgs[-1]


def test_revert_drifted_needs_force_and_is_atomic(env, monkeypatch):
    env.apply()
    (env.work / "ggml/src/ggml.c").write_text("edited\n")
    before = tree_hashes(env.work)
    with pytest.raises(TqpatchError, match=r"ggml/src/ggml.c \(patched, edited\)"):
        apply.revert(echo=env.echo)
    assert tree_hashes(env.work) == before
    real = fsutil.write_atomic

    def flaky(n, path):
        if n == 2:
            raise OSError(5, "I/O error", str(path))

    watch_writes(monkeypatch, env.work, flaky)
    with pytest.raises(TqpatchError, match="revert failed"):
        apply.revert(force=True, echo=env.echo)
    assert tree_hashes(env.work) == before
    monkeypatch.setattr(fsutil, "write_atomic", real)
    apply.revert(force=True, echo=env.echo)
    assert (env.work / "ggml/src/ggml.c").read_text() == PRISTINE["ggml/src/ggml.c"]


def test_revert_and_apply_refuse_the_pristine_tree(env):
    p = fetch.ensure_pristine()
    with pytest.raises(TqpatchError, match="pristine tree"):
        env.apply(tree=p)
    with pytest.raises(TqpatchError, match="pristine tree"):
        apply.revert(p, echo=env.echo)


# --------------------------------------------------------------------------- no patches yet, CLI


def test_no_series_yet_is_a_clear_error(env):
    (env.pdir / "series").unlink()
    with pytest.raises(TqpatchError, match="no patch series at .*series"):
        env.apply()
    assert not env.work.exists()
    r = CliRunner().invoke(main, ["apply"])
    assert r.exit_code == 1 and "Error: no patch series" in r.output and "Traceback" not in r.output


def test_cli_apply_and_revert_and_ensure_applied(env, capsys):
    runner = CliRunner()
    r = runner.invoke(main, ["apply"])
    assert r.exit_code == 0, r.output
    assert "applied: 4 files patched" in r.output and "next: tqpatch build --backend cpu" in r.output
    r = runner.invoke(main, ["apply"])
    assert r.exit_code == 0 and "nothing to do" in r.output
    capsys.readouterr()
    assert apply.ensure_applied() == env.work
    assert capsys.readouterr().out == ""  # quiet when already applied
    r = runner.invoke(main, ["revert"])
    assert r.exit_code == 0 and "reverted" in r.output
    assert apply.ensure_applied() == env.work
    assert apply.status(env.work).state == "applied"
    other = env.tmp / "fresh"
    with pytest.raises(TqpatchError, match="--create"):  # a missing --tree is never made silently
        apply.ensure_applied(other)
    assert not other.exists()
    assert apply.ensure_applied(other, create=True) == other.absolute()
    assert apply.status(other).state == "applied"
