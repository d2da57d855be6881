"""The CUDA flash-attention decode helpers, emulated on the host: the reference's values.

The rendered ggml-cuda/fattn-turbo.cuh is compiled as C++ under two small shims
(tests/data/cuda_shim, tests/data/cuda_fattn_shim) and its per-type decode runs on random
blocks of every turbo type: the tensor-core kernel's half2 path (value-pair tables for 2-
and 3-bit types, byte tables for 4-bit ones) and the vector kernel's float path must give
ggml-turbo.c's values, the half path within its rounding. This checks the rendered index arithmetic in CI, which has
no NVIDIA GPU; the kernels themselves run on the device (`tqpatch verify --backend cuda`,
test-backend-ops; docs/benchmarks.md).
"""

from __future__ import annotations

import subprocess

import pytest

import cuda_emulation as emu
from tqpatch import formats


@pytest.mark.slow
def test_cuda_fattn_decode_matches_the_reference(tmp_path):
    exe = emu.build("turbo_cuda_fattn_emulation.cpp", ["cuda_shim", "cuda_fattn_shim"], tmp_path)
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("OK"), res.stdout + res.stderr
    for name, fmt in formats.TURBO_FORMATS.items():
        path = "pair tables" if fmt.bits <= 3 else "byte tables" if fmt.bits == 4 else "codebook"
        assert f"{name}: " in res.stdout and f"0 mismatches ({path})" in res.stdout.split(f"{name}: ", 1)[1].splitlines()[0]
