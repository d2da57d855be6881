"""Two tqpatch processes on one cache: they wait for each other, say so, and time out clearly."""

from __future__ import annotations

import subprocess
import time

import pytest
from click.testing import CliRunner

from test_apply import Env
from tqpatch import apply, fetch, lock
from tqpatch.cli import main
from tqpatch.errors import TqpatchError


@pytest.fixture
def env(tmp_path, monkeypatch):
    return Env(tmp_path, monkeypatch)


def _started(proc: subprocess.Popen, lock_name: str, env: Env, timeout: float = 20) -> None:
    """Wait until proc holds a lock whose file name starts with lock_name."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for f in (env.cache / "locks").glob(lock_name + "*.lock") if (env.cache / "locks").is_dir() else []:
            if f'"pid": {proc.pid}' in f.read_text():
                return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"{lock_name} lock never taken by pid {proc.pid}")


def _race(env: Env, first_args, hook: str, second_args, lock_name="tree-", extra_env=None):
    """Start `first` (paused by hook while it holds the lock), then `second`; both outputs."""
    first = env.cli(*first_args, hook=hook)
    _started(first, lock_name, env)
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
                                                  lock_name="fetch")
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
