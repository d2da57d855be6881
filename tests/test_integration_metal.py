"""End to end on Apple Silicon (Metal): llama.cpp's tests, tqpatch verify on the GPU, the real model.

Marked `gpu`: they need a Mac (or a macOS arm64 CI runner) and a Metal build;
ci/tqpatch-metal.yml runs them with `python -m pytest -m gpu tests/test_integration_metal.py`
after `tqpatch build --backend metal` and `tqpatch model` (docs/metal.md).
Anywhere else they are skipped with that reason, never passed. Where no Mac
is at hand the Metal kernels are checked host-emulated (tests/test_metal.py).
"""

from __future__ import annotations

import json
import re
import sys

import pytest

from test_integration_cpu import check_coherence_claims, coherence_run, gemma, run  # noqa: F401  (one check and model for every backend)
from tqpatch import backends, build_record

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

BACKEND = "metal"
DEVICE = "MTL0"
GPU_ARGS = ("-ngl", "99", "-fa", "on")


@pytest.fixture(scope="session")
def metal_build():
    from tqpatch import build
    from tqpatch.errors import TqpatchError

    if sys.platform != "darwin":
        pytest.skip("no Metal here: the Metal end-to-end tests run on macOS (ci/tqpatch-metal.yml)")
    try:
        build_record.load_record(backends.get(BACKEND))
    except TqpatchError as e:
        pytest.skip(f"no Metal build: {e}")
    return lambda name: build_record.find_binary(name, backends.get(BACKEND))


# what Metal leaves to the CPU on purpose: SET_ROWS from f16 rows and turbo -> turbo copies
# (as for upstream's quantized types); every flash-attention K/V pair must run on the GPU
ALLOWED_UNSUPPORTED = {
    "SET_ROWS": re.compile(r"type_src=f16"),
    "CPY": re.compile(r"type_src=(turbo\w+),type_dst=\1,"),
}


@pytest.mark.parametrize("op", ["SET_ROWS", "GET_ROWS", "CPY", "FLASH_ATTN_EXT"])
def test_backend_ops_turbo_cases_match_cpu(metal_build, op):
    # -b MTL0: test-backend-ops compares the Metal backend with the CPU backend
    proc = run([metal_build("test-backend-ops"), "test", "-b", DEVICE, "-o", op, "-p", "turbo"], timeout=3600)
    out = proc.stdout + proc.stderr
    assert "FAIL" not in out, out[-3000:]
    unsupported = [ln for ln in out.splitlines() if "not supported" in ln and "turbo" in ln]
    allowed = ALLOWED_UNSUPPORTED.get(op)
    assert all(allowed and allowed.search(ln) for ln in unsupported), unsupported[:10]
    ok = [ln for ln in out.splitlines() if "turbo" in ln and "OK" in ln]
    assert ok, out[-3000:]
    summary = [line for line in out.splitlines() if "tests passed" in line]
    assert summary and summary[0].split()[0].split("/")[0] == summary[0].split()[0].split("/")[1], summary


def test_tqpatch_verify_metal_passes_on_the_gpu(metal_build):
    proc = run([sys.executable, "-m", "tqpatch.cli", "verify", "--backend", BACKEND, "--json"], timeout=3600)
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert report["passed"] is True, proc.stdout[-3000:]
    assert report["label"] == "", report["label"]  # the real harness ran: not host-emulated
    assert report["ggml_backend"] == DEVICE


def test_server_coherence_on_metal(metal_build, gemma):
    # tqpatch.coherence's check over every configuration, all layers on the GPU
    results = coherence_run(metal_build("llama-server"), gemma, GPU_ARGS)
    check_coherence_claims(results, gemma)
