"""End to end on a GPU build (CUDA): llama.cpp's tests, tqpatch verify, the real model.

Marked `gpu`: CI has no GPU, so `make test` does not select these; they run on
the H100 with `python3 -m pytest -m gpu tests/test_integration_gpu.py` after
`tqpatch build --backend cuda` (docs/cuda.md, "On the H100"). Without a CUDA
build or a GPU they are skipped with that reason, never passed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from test_integration_cpu import check_coherence_claims, coherence_run, run  # one check for both

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

BACKEND = "cuda"
DEVICE = "CUDA0"
GPU_ARGS = ("-ngl", "99")


@pytest.fixture(scope="session")
def gpu_build():
    from tqpatch import build
    from tqpatch.errors import TqpatchError

    if shutil.which("nvidia-smi") is None or subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode != 0:
        pytest.skip("no NVIDIA GPU here: the CUDA end-to-end tests run on the GPU machine")
    try:
        build.load_record(BACKEND)
    except TqpatchError as e:
        pytest.skip(f"no CUDA build: {e}")
    return lambda name: build.find_binary(name, BACKEND)


@pytest.fixture(scope="session")
def gemma():
    from tqpatch import model

    return model.ensure_model()


@pytest.mark.parametrize("op", ["SET_ROWS", "GET_ROWS", "CPY", "FLASH_ATTN_EXT"])
def test_backend_ops_turbo_cases_match_cpu(gpu_build, op):
    # -b CUDA0: test-backend-ops compares the CUDA backend with the CPU backend
    proc = run([gpu_build("test-backend-ops"), "test", "-b", DEVICE, "-o", op, "-p", "turbo"], timeout=1800)
    out = proc.stdout + proc.stderr
    assert "FAIL" not in out, out[-3000:]
    assert "not supported" not in out, out[-3000:]
    summary = [line for line in out.splitlines() if "tests passed" in line]
    assert summary and summary[0].split()[0].split("/")[0] == summary[0].split()[0].split("/")[1], summary


def test_tqpatch_verify_cuda_passes(gpu_build):
    proc = run([sys.executable, "-m", "tqpatch.cli", "verify", "--backend", BACKEND, "--json"], timeout=1800)
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert report["passed"] is True, proc.stdout[-3000:]


PPL_CONFIGS = ["f16/f16", "q8_0/q8_0", "q4_0/q4_0", "q8_0/turbo4", "q8_0/turbo3", "q8_0/turbo2",
               "turbo4/turbo4", "turbo3/turbo3", "turbo2/turbo2"]
PPL_CHUNKS = "8"


def _eval(extra: tuple[str, ...]) -> dict:
    args = [sys.executable, "-m", "tqpatch.cli", "eval", "--backend", BACKEND, "--no-kld", "--chunks", PPL_CHUNKS,
            "--configs", ",".join(PPL_CONFIGS), "--json"]
    for a in extra:
        args.append(f"--extra-arg={a}")
    proc = run(args, timeout=3000)
    rows = json.loads(proc.stdout[proc.stdout.index("{"):])["results"]
    assert all(r["ok"] for r in rows), [r["error"] for r in rows if not r["ok"]]
    return {f"{r['k']}/{r['v']}": r["ppl"] for r in rows}


def test_perplexity_on_gpu_equals_cpu(gpu_build, gemma):
    # the same binary twice: every layer and the KV cache on the GPU, then no GPU at all
    gpu = _eval(GPU_ARGS)
    cpu = _eval(("--device", "none"))
    table = "\n".join(f"{c:14s} gpu {gpu[c]:9.4f}  cpu {cpu[c]:9.4f}  {100 * (gpu[c] / cpu[c] - 1):+.3f}%"
                      for c in PPL_CONFIGS)
    print(table)
    # Within noise. The K/V bytes are identical on both; what differs is arithmetic
    # (Q as q8_1 for quantized K, K/V rounded to f16 for the tensor-core prefill,
    # summation order), and it perturbs the quantization error itself, so the
    # PPL moves in proportion to how far the configuration is from f16: 1.5%, or a
    # quarter of the configuration's own PPL increase if that is more. Upstream's
    # q4_0/q4_0 moved 0.8% (of its 13.5%), turbo4/turbo4 2.1% (of 16%) and the
    # degenerate turbo2/turbo2 14.5% (of +2000%) between GPU and CPU on the H100
    # machine (docs/measurements/cuda-20261123; the bound was set after that run).
    for c in PPL_CONFIGS:
        allowed = max(0.015, 0.25 * (cpu[c] / cpu["f16/f16"] - 1))
        assert abs(gpu[c] / cpu[c] - 1) <= allowed, (c, allowed, table)


def test_server_coherence_on_gpu(gpu_build, gemma):
    # every layer and the KV cache on the GPU; the table printed is what
    # benchmarks/coherence_table.py --backend cuda records
    results = coherence_run(gpu_build("llama-server"), gemma, GPU_ARGS)
    check_coherence_claims(results, gemma)
