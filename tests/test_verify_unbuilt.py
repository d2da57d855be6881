"""verify on a backend with nothing built: one line that says so (issue 25 item 4)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tqpatch.backends import hip
from tqpatch.cli import main


def test_hip_runner_with_no_build():
    assert hip.verify_runner(None, None, None) is None  # was AttributeError: 'NoneType' ... 'get'


@pytest.mark.parametrize("backend", ["hip", "cpu"])
def test_verify_with_nothing_built(tmp_path, monkeypatch, backend):
    monkeypatch.setenv("TQPATCH_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(main, ["verify", "--backend", backend])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert f"{backend} not built" in res.output and res.output.count("\n") == 1
