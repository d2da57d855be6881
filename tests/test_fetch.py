"""Fetching the pinned llama.cpp: sources, verification, and leaving nothing half-done."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from tqpatch import fetch, paths, pin
from tqpatch.cli import main
from tqpatch.errors import TqpatchError

SUBDIR = "pkg-1.0/vendor/llama.cpp"
SDIST_NAME = "pkg-1.0.tar.gz"

FAKE_FILES = {
    "CMakeLists.txt": "cmake_minimum_required(VERSION 3.14)\nproject(llama.cpp)\n",
    "LICENSE": "MIT\n",
    "ggml/CMakeLists.txt": "project(ggml)\n",
    "ggml/include/ggml.h": "enum ggml_type { GGML_TYPE_F32 = 0, GGML_TYPE_COUNT = 1 };\n",
    "ggml/src/ggml.c": "int ggml(void) { return 0; }\n",
    "include/llama.h": "#pragma once\n",
    "src/llama.cpp": "// llama\n",
    "tools/run.sh": "#!/bin/sh\necho hi\n",
    "docs/readme.md": "docs are outside the fingerprint\n",
}


def make_tree(root: Path, files=FAKE_FILES) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def leftovers(cache: Path) -> list[str]:
    """Temp dirs and partial downloads anywhere under the cache."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")
                  if ".tmp-" in p.name or p.name.endswith(".part") or ".old-" in p.name)


def tar_of(src: Path, dest: Path, prefix: str) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(src, arcname=prefix)
        # An sdist also carries things outside the subdir, and a .git link.
        data = b"gitdir: ../../.git/modules/vendor/llama.cpp\n"
        info = tarfile.TarInfo(f"{prefix}/.git")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo(prefix.split("/")[0] + "/setup.py")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"x=1"))
    return dest


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A fake upstream tree, pinned: pin.* describe it, the cache is in tmp_path."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TQPATCH_CACHE", str(cache))
    upstream = make_tree(tmp_path / "upstream")
    index = fetch.tree_index(upstream)
    monkeypatch.setattr(pin, "TREE_FINGERPRINT", fetch.fingerprint(index))
    encoded = fetch.encode_index(index)
    monkeypatch.setattr(pin, "tree_index_text", lambda: encoded)
    monkeypatch.setattr(pin, "TREE_FILE_COUNT", len(index))
    sdist = tar_of(upstream, tmp_path / SDIST_NAME, SUBDIR)
    data = sdist.read_bytes()
    monkeypatch.setattr(pin, "SDIST_NAME", SDIST_NAME)
    monkeypatch.setattr(pin, "SDIST_URL", sdist.as_uri())
    monkeypatch.setattr(pin, "SDIST_SHA256", hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(pin, "SDIST_SIZE", len(data))
    monkeypatch.setattr(pin, "SDIST_SUBDIR", SUBDIR)
    monkeypatch.setattr(pin, "GIT_URL", (tmp_path / "no-such-repo").as_uri())
    cache.mkdir()

    class Env:
        pass

    e = Env()
    e.tmp, e.cache, e.upstream, e.sdist, e.index = tmp_path, cache, upstream, sdist, index
    e.msgs = []
    e.echo = e.msgs.append
    return e


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_covers_the_build_inputs_only(env):
    assert "docs/readme.md" not in env.index
    assert {"CMakeLists.txt", "LICENSE", "ggml/src/ggml.c", "tools/run.sh"} <= set(env.index)
    assert fetch.decode_index(fetch.encode_index(env.index)) == {k: v[:8] for k, v in env.index.items()}
    # Editing a file outside the scope keeps the fingerprint; inside, changes it.
    (env.upstream / "docs/readme.md").write_text("edited\n")
    (env.upstream / "ggml/__pycache__").mkdir()
    (env.upstream / "ggml/__pycache__/x.pyc").write_bytes(b"\0")
    assert fetch.verify_tree(env.upstream) == pin.TREE_FINGERPRINT


def test_pin_values_are_consistent():
    table = fetch.pinned_index()
    assert len(table) == pin.TREE_FILE_COUNT > 3000
    assert "ggml/include/ggml.h" in table and "src/llama-kv-cache.cpp" in table
    # the build runs it (tools/ui), so the fingerprint must cover it (test_pin_scope.py)
    assert "scripts/ui-assets.cmake" in table and "scripts/sync_vendor.py" not in table
    # the table is package data, not a blob in pin.py
    assert not hasattr(pin, "TREE_INDEX")
    assert (Path(pin.__file__).parent / pin.TREE_INDEX_FILE).is_file()
    assert len(pin.TREE_FINGERPRINT) == 64 and len(pin.LLAMA_CPP_COMMIT_FULL) == 40
    assert pin.LLAMA_CPP_COMMIT_FULL.startswith(pin.LLAMA_CPP_COMMIT)


@pytest.mark.parametrize("change, named", [
    (lambda t: (t / "ggml/src/ggml.c").write_text("tampered\n"), "ggml/src/ggml.c differs"),
    (lambda t: (t / "src/llama.cpp").unlink(), "src/llama.cpp is missing"),
    (lambda t: (t / "src/evil.cpp").write_text("x\n"), "src/evil.cpp is extra"),
])
def test_from_directory_with_a_changed_file_is_refused_naming_it(env, change, named):
    change(env.upstream)
    with pytest.raises(TqpatchError) as exc:
        fetch.fetch(from_path=env.upstream, echo=env.echo)
    assert named in exc.value.message
    assert pin.LLAMA_CPP_COMMIT in exc.value.message
    assert not paths.pristine_tree().exists()
    assert leftovers(env.cache) == []


def test_pin_values_of_a_tree(env):
    lines, index_text = fetch.pin_values(env.upstream)
    assert f'TREE_FINGERPRINT = "{pin.TREE_FINGERPRINT}"' in lines
    assert f"TREE_FILE_COUNT = {len(env.index)}" in lines
    assert fetch.decode_index(index_text.strip()) == {k: v[:8] for k, v in env.index.items()}


# --------------------------------------------------------------------------- --from


def test_from_directory_then_rerun_is_a_fast_noop(env):
    (env.upstream / ".git").mkdir()
    (env.upstream / ".git" / "HEAD").write_text("ref: x\n")
    target = fetch.fetch(from_path=env.upstream, echo=env.echo)
    assert target == paths.pristine_tree()
    assert (target / "ggml/src/ggml.c").read_text() == FAKE_FILES["ggml/src/ggml.c"]
    assert not (target / ".git").exists()
    assert fetch.is_verified()
    env.msgs.clear()
    t0 = time.perf_counter()
    assert fetch.fetch(echo=env.echo) == target
    assert time.perf_counter() - t0 < 0.5
    assert "already fetched and verified" in env.msgs[-1] and "nothing to do" in env.msgs[-1]
    assert fetch.ensure_pristine() == target


def test_from_the_pinned_sdist_extracts_only_the_subdir(env):
    target = fetch.fetch(from_path=env.sdist, echo=env.echo)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) \
        == sorted(FAKE_FILES)
    assert not (target / ".git").exists()  # the sdist's dangling submodule link is dropped
    assert os.access(target / "tools/run.sh", os.X_OK) == os.access(env.upstream / "tools/run.sh", os.X_OK)


def test_from_a_local_sdist_whose_sha256_does_not_match(env, monkeypatch):
    monkeypatch.setattr(pin, "SDIST_SHA256", "0" * 64)
    with pytest.raises(TqpatchError) as exc:
        fetch.fetch(from_path=env.sdist, echo=env.echo)
    msg = exc.value.message
    assert "expected sha256 " + "0" * 64 in msg
    assert "got sha256 " + hashlib.sha256(env.sdist.read_bytes()).hexdigest() in msg
    assert f"size {env.sdist.stat().st_size} bytes" in msg
    assert not paths.pristine_tree().exists()
    assert leftovers(env.cache) == []


def test_from_other_archives_finds_the_tree(env):
    gh = tar_of(env.upstream, env.tmp / "llama.cpp-master.tar.gz", "llama.cpp-0c1e570")
    fetch.fetch(from_path=gh, echo=env.echo)
    assert fetch.is_verified()
    z = env.tmp / "tree.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(env.upstream.rglob("*")):
            if p.is_file():
                zf.write(p, "top/llama.cpp/" + p.relative_to(env.upstream).as_posix())
    target = fetch.fetch(from_path=z, force=True, echo=env.echo)
    assert (target / "include/llama.h").is_file()
    assert leftovers(env.cache) == []


def test_unsafe_archive_member_is_refused(env):
    bad = env.tmp / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tf:
        tf.add(env.upstream, arcname="x")
        info = tarfile.TarInfo("x/../../escape.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"!"))
    with pytest.raises(TqpatchError, match="unsafe path"):
        fetch.fetch(from_path=bad, echo=env.echo)
    assert not (env.cache / "escape.txt").exists() and not (env.tmp / "escape.txt").exists()
    assert leftovers(env.cache) == []


def test_an_archive_listing_a_file_twice_is_accepted(env):
    dup = env.tmp / "dup.tar.gz"
    with tarfile.open(dup, "w:gz") as tf:
        tf.add(env.upstream, arcname="top")
        # GNU tar stores a file named twice as a hard link to itself...
        info = tarfile.TarInfo("top/src/llama.cpp")
        info.type, info.linkname = tarfile.LNKTYPE, "top/src/llama.cpp"
        tf.addfile(info)
        # ...and a plain repeat of a regular file (the later entry wins, as with tar)
        data = FAKE_FILES["LICENSE"].encode()
        info = tarfile.TarInfo("top/LICENSE")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    target = fetch.fetch(from_path=dup, echo=env.echo)
    assert (target / "src/llama.cpp").read_text() == FAKE_FILES["src/llama.cpp"]
    assert leftovers(env.cache) == []


@pytest.mark.parametrize("member, why", [
    (dict(name="top/evil", type=tarfile.SYMTYPE, linkname="../../etc/passwd"), "link top/evil -> ../../etc/passwd leaves the tree"),
    (dict(name="/abs.txt"), "unsafe path '/abs.txt'"),
    (dict(name="top/dev", type=tarfile.CHRTYPE), "top/dev is not a file, directory or link"),
    (dict(name="top/hl", type=tarfile.LNKTYPE, linkname="elsewhere/x"), "points outside what is extracted"),
])
def test_unsafe_links_and_special_files_are_refused(env, member, why):
    bad = env.tmp / "bad.tar"
    with tarfile.open(bad, "w") as tf:
        tf.add(env.upstream, arcname="top")
        info = tarfile.TarInfo(member.pop("name"))
        for k, v in member.items():
            setattr(info, k, v)
        tf.addfile(info)
    with pytest.raises(TqpatchError) as exc:
        fetch.fetch(from_path=bad, echo=env.echo)
    assert why in exc.value.message and "refusing it" in exc.value.message
    assert leftovers(env.cache) == [] and not paths.pristine_tree().exists()


def test_a_full_disk_while_extracting_says_write_not_read(env, monkeypatch):
    archive = tar_of(env.upstream, env.tmp / "t.tar.gz", "top")

    def full(self, tarinfo, targetpath):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "makefile", full)
    with pytest.raises(TqpatchError) as exc:
        fetch.fetch(from_path=archive, echo=env.echo)
    msg = exc.value.message
    assert "cannot write the tree from" in msg and "No space left on device" in msg
    assert "cannot read" not in msg
    # one line: the first file it failed on and the free space (issue 25)
    assert "\n" not in msg and "MB free in" in msg and "top/CMakeLists.txt" in msg
    assert leftovers(env.cache) == []


def test_from_errors(env):
    with pytest.raises(TqpatchError, match="no such file"):
        fetch.fetch(from_path=env.tmp / "nope", echo=env.echo)
    with pytest.raises(TqpatchError, match="no llama.cpp tree"):
        fetch.fetch(from_path=env.tmp / "upstream" / "docs", echo=env.echo)
    (env.tmp / "x.txt").write_text("hi")
    with pytest.raises(TqpatchError, match="not a directory or a"):
        fetch.fetch(from_path=env.tmp / "x.txt", echo=env.echo)
    with pytest.raises(TqpatchError, match="either --source or --from"):
        fetch.fetch(source="git", from_path=env.upstream, echo=env.echo)


def _cli(env, *args, hook=None):
    import tqpatch

    root = str(Path(tqpatch.__file__).resolve().parent.parent)
    penv = dict(os.environ, TQPATCH_CACHE=str(env.cache), PYTHONPATH=root)
    penv.pop("TQPATCH_TEST_HOOK", None)
    if hook:
        penv["TQPATCH_TEST_HOOK"] = hook
    return subprocess.run([sys.executable, "-m", "tqpatch.cli", *args], env=penv,
                          capture_output=True, text=True, timeout=120)


def test_a_fetch_killed_midway_leaves_temp_dirs_the_next_fetch_sweeps(env):
    # kill -9 once the tree is copied into its temp dir (checkpoint 1), twice: the
    # second run already sweeps the first's
    src = env.cache / "src"
    for _ in range(2):
        r = _cli(env, "fetch", "--from", str(env.upstream), hook="1:KILL")
        assert r.returncode == -signal.SIGKILL, r.stderr
        assert len([p for p in src.iterdir() if ".tmp-" in p.name]) == 1
    legacy = src / f".llama.cpp-{pin.LLAMA_CPP_COMMIT}.tmp-abc_x1"  # an older tqpatch's name
    live = src / f".llama.cpp-{pin.LLAMA_CPP_COMMIT}.tmp-{os.getpid()}-abc"  # a live maker's
    legacy.mkdir()
    live.mkdir()
    (paths.downloads_dir()).mkdir(parents=True, exist_ok=True)
    (paths.downloads_dir() / (pin.SDIST_NAME + ".part")).write_bytes(b"partial")
    fetch.fetch(from_path=env.upstream, echo=env.echo)
    assert any("removed 2 temporary folder(s) an interrupted tqpatch left" in m for m in env.msgs)
    assert leftovers(env.cache) == [str(live.relative_to(env.cache))]
    assert fetch.is_verified()


@pytest.mark.parametrize("sig", ["TERM", "HUP"])
def test_a_terminated_fetch_cleans_up_and_prints_no_traceback(env, sig):
    r = _cli(env, "fetch", "--from", str(env.upstream), hook=f"1:{sig}")
    assert r.returncode == 128 + getattr(signal, "SIG" + sig), r.stderr
    assert "Traceback" not in r.stderr and f"stopped by SIG{sig}" in r.stderr
    assert leftovers(env.cache) == [] and not paths.pristine_tree().exists()


# --------------------------------------------------------------------------- pypi


def test_pypi_download_verifies_and_extracts(env):
    target = fetch.fetch(source="pypi", echo=env.echo)
    assert (paths.downloads_dir() / SDIST_NAME).read_bytes() == env.sdist.read_bytes()
    assert (target / "src/llama.cpp").is_file()
    assert leftovers(env.cache) == []
    # A second fetch after deleting the tree reuses the verified download.
    shutil.rmtree(target)
    env.msgs.clear()
    fetch.fetch(source="pypi", echo=env.echo)
    assert any("using verified" in m for m in env.msgs)


def test_truncated_download_is_refused_and_cleaned_up(env, monkeypatch):
    short = env.tmp / "short.tar.gz"
    short.write_bytes(env.sdist.read_bytes()[:-100])
    monkeypatch.setattr(pin, "SDIST_URL", short.as_uri())
    with pytest.raises(TqpatchError) as exc:
        fetch.fetch(source="pypi", echo=env.echo)
    msg = exc.value.message
    assert f"size {pin.SDIST_SIZE} bytes" in msg and f"size {pin.SDIST_SIZE - 100} bytes" in msg
    assert "expected sha256" in msg and "got sha256" in msg
    assert not (paths.downloads_dir() / SDIST_NAME).exists()
    assert leftovers(env.cache) == []
    assert not paths.pristine_tree().exists()


def test_tampered_download_of_the_right_size_is_refused(env, monkeypatch):
    data = bytearray(env.sdist.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = env.tmp / "tampered.tar.gz"
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(pin, "SDIST_URL", bad.as_uri())
    with pytest.raises(TqpatchError) as exc:
        fetch.fetch(source="pypi", echo=env.echo)
    assert f"got sha256 {hashlib.sha256(bytes(data)).hexdigest()}" in exc.value.message
    assert leftovers(env.cache) == [] and not paths.downloads_dir().joinpath(SDIST_NAME).exists()


def test_interrupted_download_leaves_nothing(env, monkeypatch):
    class Resp:
        def __init__(self):
            self.n = 0

        def read(self, size):
            self.n += 1
            if self.n > 1:
                raise KeyboardInterrupt
            return b"x" * 10

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(fetch, "_urlopen", lambda url: Resp())
    with pytest.raises(KeyboardInterrupt):
        fetch.fetch(source="pypi", echo=env.echo)
    assert leftovers(env.cache) == []
    assert not paths.pristine_tree().exists()


def test_unreachable_url_then_no_git_reports_both(env, monkeypatch):
    monkeypatch.setattr(pin, "SDIST_URL", (env.tmp / "missing.tar.gz").as_uri())
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    with pytest.raises(TqpatchError) as exc:
        fetch.fetch(echo=env.echo)
    msg = exc.value.message
    assert "pypi: could not download" in msg and "git: git is not installed" in msg
    assert leftovers(env.cache) == []


# --------------------------------------------------------------------------- git


def _git(*args, cwd):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                   check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_source_from_a_local_repository(env, monkeypatch):
    repo = env.tmp / "repo"
    shutil.copytree(env.upstream, repo)
    _git("init", "-q", cwd=repo)
    _git("add", "-A", cwd=repo)
    _git("commit", "-q", "-m", "pin", cwd=repo)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                         text=True, check=True).stdout.strip()
    monkeypatch.setattr(pin, "GIT_URL", repo.as_uri())
    monkeypatch.setattr(pin, "LLAMA_CPP_COMMIT_FULL", sha)
    target = fetch.fetch(source="git", echo=env.echo)
    assert (target / ".git").is_dir()
    assert fetch.verify_tree(target) == pin.TREE_FINGERPRINT
    assert leftovers(env.cache) == []


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_source_failure_is_clean(env):
    with pytest.raises(TqpatchError, match="git fetch of .* failed"):
        fetch.fetch(source="git", echo=env.echo)
    assert leftovers(env.cache) == [] and not paths.pristine_tree().exists()


# --------------------------------------------------------------------------- existing trees


def test_existing_tree_without_stamp_is_checked_and_a_bad_one_refused(env):
    target = fetch.fetch(from_path=env.upstream, echo=env.echo)
    fetch._stamp_path(target).unlink()
    env.msgs.clear()
    fetch.fetch(echo=env.echo)
    assert fetch.is_verified() and "matches" in env.msgs[-1]
    fetch._stamp_path(target).unlink()
    (target / "ggml/include/ggml.h").write_text("edited\n")
    with pytest.raises(TqpatchError, match=r"ggml/include/ggml.h differs[\s\S]*--force"):
        fetch.fetch(echo=env.echo)
    fetch.fetch(from_path=env.sdist, force=True, echo=env.echo)
    assert (target / "ggml/include/ggml.h").read_text() == FAKE_FILES["ggml/include/ggml.h"]
    assert leftovers(env.cache) == []


def test_read_pristine_catches_an_edited_pristine_tree(env):
    target = fetch.fetch(from_path=env.upstream, echo=env.echo)
    assert fetch.read_pristine("src/llama.cpp") == b"// llama\n"
    assert fetch.read_pristine("src/new-file.c") is None
    (target / "src/llama.cpp").write_text("oops\n")
    with pytest.raises(TqpatchError, match="modified after fetch"):
        fetch.read_pristine("src/llama.cpp")


def test_cli_fetch(env):
    r = CliRunner().invoke(main, ["fetch", "--from", str(env.sdist)])
    assert r.exit_code == 0, r.output
    assert "verified and placed" in r.output and "next: tqpatch apply" in r.output
    r = CliRunner().invoke(main, ["fetch"])
    assert r.exit_code == 0 and "nothing to do" in r.output
    r = CliRunner().invoke(main, ["fetch", "--force", "--from", str(env.tmp / "nope")])
    assert r.exit_code == 1 and "Error: --from" in r.output and "Traceback" not in r.output


# --------------------------------------------------------------------------- the real thing


@pytest.mark.slow
def test_real_sdist_matches_the_pinned_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setenv("TQPATCH_CACHE", str(tmp_path / "cache"))
    local = Path("/tmp/dl") / pin.SDIST_NAME
    t0 = time.perf_counter()
    if local.is_file():
        target = fetch.fetch(from_path=local)
    else:
        target = fetch.fetch(source="pypi")
    assert fetch.verify_tree(target) == pin.TREE_FINGERPRINT
    assert len(fetch.tree_index(target)) == pin.TREE_FILE_COUNT
    assert (target / "src/llama-kv-cache.cpp").is_file()
    assert time.perf_counter() - t0 < 60
