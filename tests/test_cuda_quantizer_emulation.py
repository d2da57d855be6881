"""The CUDA turbo quantizer, emulated on the host: bytes equal to the reference.

The rendered ggml-cuda/turbo.cuh is compiled as C++ under a small shim
(tests/data/cuda_shim/common.cuh) and its lane-group quantizer runs with each
lane as a user context (shuffles through a slot array between barriers) and
x86 MXCSR flush-to-zero + denormals-are-zero, which flush float subnormals in
arithmetic and in float <-> double conversions as nvcc's -use_fast_math does.
Its bytes must equal ggml-turbo.c's on the byte check's random and
adversarial blocks (tests/data/turbo_block_data.h), from f32 and f16 rows.
This proves the quantizer's logic and its flush handling, not the GPU: the
device steps (docs/measurements/cuda-speed) run the same data on CUDA.
"""

from __future__ import annotations

import platform
import subprocess

import pytest

import cuda_emulation as emu
from tqpatch import formats


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="MXCSR flush-to-zero emulation is x86-64")
def test_cuda_quantizer_bytes_under_flush_to_zero(tmp_path):
    exe = emu.build("turbo_cuda_quantizer_emulation.cpp", ["cuda_shim"], tmp_path)
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and res.stdout.strip().endswith("OK"), res.stdout + res.stderr
    assert "log8 scale:" in res.stdout and "identical" in res.stdout
    for name in formats.TURBO_FORMATS:
        assert f"{name} from f32" in res.stdout and f"{name} from f16" in res.stdout
