"""Two tqpatch processes on one cache: they wait for each other, say so, and time out clearly."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from test_apply import Env
from tqpatch import apply, fetch, lock
from tqpatch.cli import main
from tqpatch.errors import TqpatchError


@pytest.fixture
def env(tmp_path, monkeypatch):
    return Env(tmp_path, monkeypatch)


def _started(proc: subprocess.Popen, lock_path: Path, timeout: float = 20) -> None:
    """Wait until proc holds the lock file lock_path."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lock_path.is_file() and f'"pid": {proc.pid}' in lock_path.read_text():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"{lock_path} never taken by pid {proc.pid}")


def _race(env: Env, first_args, hook: str, second_args, lock_path: Path | None = None,
          extra_env=None, first_env=None):
    """Start `first` (paused by hook while it holds the lock), then `second`; both outputs.

    lock_path: the lock `first` takes (default: the work tree's)."""
    first = env.cli(*first_args, hook=hook, extra_env=first_env)
    _started(first, lock_path or lock.beside(env.work))
    second = env.cli(*second_args, extra_env=extra_env)
    out1, err1 = first.communicate(timeout=60)
    out2, err2 = second.communicate(timeout=60)
    return first, out1, err1, second, out2, err2


def test_two_first_applies_on_one_cache_wait_for_each_other(env):
    fetch.ensure_pristine()
    # The first pauses at its first checkpoint (the work tree copied, not yet renamed).
    first, out1, err1, second, out2, err2 = _race(env, ["apply"], "1:sleep=1", ["apply"])
    assert first.returncode == 0, out1 + err1
    assert second.returncode == 0, out2 + err2
    assert f"waiting for another tqpatch (pid {first.pid}, `tqpatch apply`) holding the lock on " \
           f"the tree {env.work}" in err2
    assert "applied: 4 files patched" in out1 and "already applied" in out2
    assert "Traceback" not in err1 + err2
    assert apply.status(env.work).state == "applied"


@pytest.mark.slow
def test_apply_racing_revert_is_serialized(env):
    env.apply()
    # revert pauses in the middle of its transaction (files already written).
    rev, out_r, err_r, app, out_a, err_a = _race(env, ["revert"], "12:sleep=1", ["apply"])
    assert rev.returncode == 0 and "reverted" in out_r, out_r + err_r
    assert app.returncode == 0, out_a + err_a
    assert "changed by hand" not in err_a and "edited by hand" not in err_a
    assert f"waiting for another tqpatch (pid {rev.pid}, `tqpatch revert`)" in err_a
    assert "applying 2 patches" in out_a
    assert apply.status(env.work).state == "applied"


@pytest.mark.slow
def test_a_lock_held_too_long_times_out_naming_the_holder(env):
    env.apply()
    holder, _o, _e, waiter, out, err = _race(env, ["revert"], "12:sleep=3", ["status"],
                                             extra_env={"TQPATCH_LOCK_TIMEOUT": "0.5"})
    assert waiter.returncode == 1 and "Traceback" not in err
    assert f"gave up after 0.5 s waiting for another tqpatch (pid {holder.pid}, `tqpatch revert`)" in err
    assert "TQPATCH_LOCK_TIMEOUT" in err


@pytest.mark.slow
def test_two_fetches_wait_for_each_other(env):
    fetch_args = ["fetch", "--from", str(env.upstream)]
    first, out1, err1, second, out2, err2 = _race(env, fetch_args, "1:sleep=1", fetch_args,
                                                  lock_path=lock.beside(env.pristine))
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    assert f"waiting for another tqpatch (pid {first.pid}, `tqpatch fetch" in err2
    assert "pristine tree:" in out1 and "pristine tree:" in out2
    assert fetch.is_verified()


def test_holding_a_lock_twice_in_one_process_is_a_no_op(env):
    with lock.tree(env.work):
        with lock.tree(env.work):
            pass
        with lock.tree(env.work, shared=True):
            pass
    with lock.tree(env.work, shared=True):
        with pytest.raises(RuntimeError):
            with lock.tree(env.work):
                pass


@pytest.mark.parametrize("how", ["file", "unwritable"])
def test_a_cache_that_is_a_file_or_unwritable_is_one_clear_error(env, monkeypatch, how):
    if how == "file":
        bad = env.tmp / "cachefile"
        bad.write_text("x")
    else:
        bad = env.tmp / "cachefile" / "sub"  # under a file: cannot be created, even by root
        (env.tmp / "cachefile").write_text("x")
    monkeypatch.setenv("TQPATCH_CACHE", str(bad))
    for args in (["apply"], ["status"], ["fetch"], ["revert"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 1, (args, r.output)
        assert "Traceback" not in r.output and str(bad) in r.output
        assert ("is a file, not a folder" if how == "file" else "cannot create") in r.output
        assert "TQPATCH_CACHE" in r.output
    with pytest.raises(TqpatchError, match="TQPATCH_CACHE"):
        lock.cache_dir()


# --------------------------------------------------------------------------- issue 25, items 7 and 9


def test_locks_sit_beside_the_folder_they_guard(env, tmp_path):
    assert lock.beside(env.work) == env.work.parent / f".{env.work.name}.tqpatch.lock"
    link = tmp_path / "link"
    link.symlink_to(env.tmp, target_is_directory=True)
    assert lock.beside(link / "tree") == lock.beside(env.tmp / "tree")  # the resolved path
    env.apply()
    assert lock.beside(env.work).is_file()
    assert lock.beside(env.pristine).is_file()  # fetch's lock: beside the pristine tree


def test_two_applies_on_one_tree_with_different_caches_wait_for_each_other(env):
    tree = env.tmp / "shared-tree"
    env.apply(tree=tree, create=True)
    env.set_rendered({"ggml/src/ggml-turbo.c": b"v2\n", "ggml/src/turbo/deep/k.h": b"v2\n"},
                     {"codebooks": "cb2", "templates": "tp1"})
    other_cache = {"TQPATCH_CACHE": str(env.tmp / "cache2")}
    # The first pauses inside its transaction (files written, journal armed).
    first, out1, err1, second, out2, err2 = _race(
        env, ["apply", "--tree", str(tree)], "12:sleep=1", ["apply", "--tree", str(tree)],
        lock_path=lock.beside(tree), extra_env=other_cache)
    assert first.returncode == 0, out1 + err1
    assert second.returncode == 0, out2 + err2
    assert f"waiting for another tqpatch (pid {first.pid}, `tqpatch apply --tree {tree}`)" in err2
    assert "already applied" in out2 and "edited by hand" not in err2
    assert apply.status(tree).state == "applied"


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "-1", "soon", "1e400"])
def test_a_lock_timeout_that_is_not_a_finite_number_is_refused(env, monkeypatch, raw):
    monkeypatch.setenv("TQPATCH_LOCK_TIMEOUT", raw)
    with pytest.raises(TqpatchError, match="TQPATCH_LOCK_TIMEOUT") as exc:
        lock.timeout_s()
    assert "\n" not in exc.value.message and repr(raw) in exc.value.message
    monkeypatch.setenv("TQPATCH_LOCK_TIMEOUT", "0.5")
    assert lock.timeout_s() == 0.5
    monkeypatch.setenv("TQPATCH_LOCK_TIMEOUT", "0")
    assert lock.timeout_s() == 0.0


@pytest.mark.parametrize("held", [True, False])
def test_a_bad_timeout_is_one_line_whether_or_not_it_waits(env, held):
    env.apply()
    with lock.tree(env.work) if held else contextlib.nullcontext():
        proc = env.cli("status", extra_env={"TQPATCH_LOCK_TIMEOUT": "nan"})
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" not in err
    assert "TQPATCH_LOCK_TIMEOUT='nan' is not a number of seconds" in err


@pytest.mark.parametrize("kind", ["symlink", "folder"])
def test_a_lock_file_that_is_a_link_or_a_folder_is_refused(env, tmp_path, kind):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    where = lock.beside(env.work)
    where.parent.mkdir(parents=True, exist_ok=True)
    if kind == "symlink":
        where.symlink_to(victim)
    else:
        where.mkdir()
    with pytest.raises(TqpatchError, match=f"lock file {where}") as exc:
        with lock.tree(env.work):
            pass
    assert "\n" not in exc.value.message
    assert victim.read_text() == "keep me\n"  # never truncated through the link
