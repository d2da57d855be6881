"""The CUDA flash-attention decode helpers, emulated on the host: the reference's values.

The rendered ggml-cuda/fattn-turbo.cuh is compiled as C++ under two small shims
(tests/data/cuda_shim, tests/data/cuda_fattn_shim) and its per-type decode runs on random
blocks of every turbo type: the tensor-core kernel's half2 path (value-pair tables for 2-
and 3-bit types) and the vector kernel's float path must give ggml-turbo.c's values, the
half path within its rounding. This checks the rendered index arithmetic in CI, which has
no NVIDIA GPU; the kernels themselves run on the device (`tqpatch verify --backend cuda`,
test-backend-ops; docs/benchmarks.md).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tqpatch import formats

DATA = Path(__file__).parent / "data"
GENERATED = Path(__file__).resolve().parent.parent / "generated" / "ggml" / "src"
TYPES = "".join(f"X({n},{n.upper()})" for n in formats.TURBO_FORMATS)


@pytest.fixture(scope="module")
def tree() -> Path:
    from tqpatch import apply

    return Path(apply.ensure_applied(None))


@pytest.mark.slow
def test_cuda_fattn_decode_matches_the_reference(tree, tmp_path):
    if shutil.which("gcc") is None or shutil.which("g++") is None:
        pytest.skip("no gcc/g++")
    g = tree / "ggml"
    inc = [f"-I{GENERATED}", f"-I{g / 'include'}", f"-I{g / 'src'}"]
    ref = tmp_path / "turbo_ref.o"
    subprocess.run(["gcc", "-O2", "-c", *inc, str(GENERATED / "ggml-turbo.c"), "-o", str(ref)],
                   check=True, capture_output=True, text=True, timeout=300)
    exe = tmp_path / "fattn_emu"
    build = subprocess.run(
        ["g++", "-std=c++17", "-O2", f"-I{DATA / 'cuda_shim'}", f"-I{DATA / 'cuda_fattn_shim'}",
         f"-I{GENERATED / 'ggml-cuda'}", *inc, f"-DTURBO_EMU_TYPES={TYPES}",
         str(DATA / "turbo_cuda_fattn_emulation.cpp"), str(ref), "-o", str(exe)],
        capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-4000:]
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("OK"), res.stdout + res.stderr
    for name, fmt in formats.TURBO_FORMATS.items():
        path = "pair tables" if fmt.bits <= 3 else "codebook"
        assert f"{name}: " in res.stdout and f"0 mismatches ({path})" in res.stdout.split(f"{name}: ", 1)[1].splitlines()[0]
