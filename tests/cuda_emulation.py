"""Shared setup of the host emulations of rendered CUDA code (test_cuda_*_emulation.py):
the rendered sources compile as C++ under the shims in tests/data, linked with the C
reference (generated ggml-turbo.c) against the applied tree's ggml headers."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tqpatch import formats

DATA = Path(__file__).parent / "data"
GENERATED = Path(__file__).resolve().parent.parent / "generated" / "ggml" / "src"
TYPES = "".join(f"X({n},{n.upper()})" for n in formats.TURBO_FORMATS)  # TURBO_EMU_TYPES


def build(source: str, shims: list[str], tmp_path: Path) -> Path:
    """tests/data/<source> compiled with the shim folders first on the include path and
    linked with the reference; skips without gcc/g++. Returns the executable."""
    from tqpatch import apply

    if shutil.which("gcc") is None or shutil.which("g++") is None:
        pytest.skip("no gcc/g++")
    g = Path(apply.ensure_applied(None)) / "ggml"
    inc = [f"-I{GENERATED}", f"-I{g / 'include'}", f"-I{g / 'src'}"]
    ref = tmp_path / "turbo_ref.o"
    subprocess.run(["gcc", "-O2", "-c", *inc, str(GENERATED / "ggml-turbo.c"), "-o", str(ref)],
                   check=True, capture_output=True, text=True, timeout=300)
    exe = tmp_path / Path(source).stem
    res = subprocess.run(["g++", "-std=c++17", "-O2", *(f"-I{DATA / s}" for s in shims), f"-I{DATA}",
                          f"-I{GENERATED / 'ggml-cuda'}", *inc, f"-DTURBO_EMU_TYPES={TYPES}",
                          str(DATA / source), str(ref), "-o", str(exe)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    return exe
