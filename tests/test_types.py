"""The package type-checks: mypy over tqpatch/ with pyproject.toml's [tool.mypy] settings.

The Backend object (tqpatch/backends/base.py) is typed field by field; this is what holds
every backend module and every caller to those types.
"""

from __future__ import annotations

from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_type_checks(tmp_path):
    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"),
                                "--cache-dir", str(tmp_path / "mypy-cache"), str(ROOT / "tqpatch")])
    assert status == 0, out + err


def test_a_backend_of_the_wrong_shape_is_refused(tmp_path):
    """The check bites: a Backend whose cmake_args takes one argument, not (arch, options)."""
    bad = tmp_path / "bad_backend.py"
    bad.write_text("from tqpatch.backends.base import Backend\n"
                   "BACKEND = Backend(name='toy', ggml_backend_name='TOY0', cmake_args=lambda arch: [])\n")
    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--follow-imports", "silent",
                                "--cache-dir", str(tmp_path / "mypy-cache"), str(bad)])
    assert status == 1 and "cmake_args" in out, out + err
