"""End to end on the CPU: fetch, apply, build, llama.cpp's own tests, the real model.

Slow (a llama.cpp build is ~10 min on 2 cores); CI runs it through `make test`.
Nothing here is skipped for lack of a build: the session fixture builds.

The CPU backend is in every build, so these tests run the CPU backend of the
build named by TQPATCH_TEST_CPU_BUILD (default `cpu`): CI builds once, for
Vulkan (`make test BUILD=vulkan`), and runs both these tests and the Vulkan ones
from that build. The llama.cpp tools always get the CPU backend's
e2e.tool_args (`--device none`), so a GPU build's tools stay on the CPU.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tqpatch.backends import cpu

pytestmark = pytest.mark.slow

CPU_BUILD = os.environ.get("TQPATCH_TEST_CPU_BUILD", "cpu")  # the build whose CPU backend is tested
CPU_ARGS = cpu.e2e.tool_args

THREADS = str(max(1, min(4, os.cpu_count() or 1)))


def run(cmd, timeout=3600, check=True, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd[0]} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def cpu_build():
    """`tqpatch build --backend $TQPATCH_TEST_CPU_BUILD` from whatever state the cache is in."""
    run([sys.executable, "-m", "tqpatch.cli", "build", "--backend", CPU_BUILD], timeout=5000)
    from tqpatch import build

    return lambda name: build.find_binary(name, CPU_BUILD)


@pytest.fixture(scope="session")
def gemma():
    from tqpatch import model

    return model.ensure_model()


def test_tree_is_applied(cpu_build):
    proc = run([sys.executable, "-m", "tqpatch.cli", "status"])
    assert "applied" in proc.stdout.lower()
    again = run([sys.executable, "-m", "tqpatch.cli", "apply"])
    assert "nothing to do" in (again.stdout + again.stderr).lower()


def test_quantize_fns_cover_turbo_types(cpu_build):
    proc = run([cpu_build("test-quantize-fns"), "-v"])
    out = proc.stdout
    for name in ("turbo2", "turbo3", "turbo4"):
        assert f"Testing {name}" in out
        assert re.search(rf"{name} absolute quantization error:\s+ok", out), out[-2000:]
        assert re.search(rf"{name} dot product error:\s+ok", out)


@pytest.mark.parametrize("op", ["SET_ROWS", "GET_ROWS", "CPY", "FLASH_ATTN_EXT"])
def test_backend_ops_run_turbo_cases_on_cpu(cpu_build, op):
    # -b CPU makes test-backend-ops run the CPU backend against its CPU
    # reference: it executes every turbo case (crashes, NaN, non-determinism
    # fail it); kernel correctness proper is `tqpatch verify`.
    proc = run([cpu_build("test-backend-ops"), "test", "-b", "CPU", "-o", op, "-p", "turbo"], timeout=1800)
    out = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout)  # drop colour codes
    passed = re.findall(r"^\s*\w+\(.*turbo.*\): OK$", out, re.M)
    assert passed, out[-2000:]
    assert "FAIL" not in out
    if op == "FLASH_ATTN_EXT":
        for k in ("f16", "q8_0", "turbo2", "turbo3", "turbo4"):
            for v in ("turbo2", "turbo3", "turbo4"):
                assert any(f"type_K={k},type_V={v}" in line for line in passed), (k, v)


def test_unsupported_head_size_names_what_works(cpu_build, tmp_path):
    model = tmp_path / "hd64.gguf"
    run([sys.executable, "-m", "tqpatch.cli", "synth-model", model, "--layers", "1", "--embd", "256",
         "--heads", "4", "--kv-heads", "2", "--head-dim", "64", "--ff", "64"])
    proc = run([cpu_build("llama-cli"), "-m", model, "-ctk", "turbo3", "-ctv", "turbo3", "-p", "hi",
                "-n", "1", "--no-warmup", "-t", THREADS, *CPU_ARGS], check=False, timeout=300,
               stdin=subprocess.DEVNULL)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "K cache type turbo3 with block size 128 does not divide n_embd_head_k=64" in log, log[-2000:]
    assert "turbo4" in log.split("fit this model:")[1].splitlines()[0]


# ------------------------------------------------------------------ real model

PPL_CONFIGS = ["f16/f16", "q8_0/q8_0", "q4_0/q4_0", "q8_0/turbo4", "q8_0/turbo3", "q8_0/turbo2",
               "turbo4/turbo4", "turbo3/turbo3", "turbo2/turbo2"]


@pytest.fixture(scope="session")
def ppl_table(cpu_build, gemma, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    proc = run([sys.executable, "-m", "tqpatch.cli", "eval", "--backend", CPU_BUILD, "--no-kld",
                "--chunks", "20", "--configs", ",".join(PPL_CONFIGS), "--json",
                "--markdown", out / "ppl.md", *(f"--extra-arg={a}" for a in CPU_ARGS)], timeout=5000)
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    rows = report["results"]
    print((out / "ppl.md").read_text())
    assert all(r["ok"] for r in rows), [r["error"] for r in rows if not r["ok"]]
    return {f"{r['k']}/{r['v']}": r for r in rows}


def test_every_configuration_runs_on_the_real_model(ppl_table):
    for cfg in PPL_CONFIGS:
        assert cfg in ppl_table and ppl_table[cfg]["ppl"] > 1, cfg


def test_quality_bars_against_upstream_caches(ppl_table):
    f16 = ppl_table["f16/f16"]["ppl"]
    inc = {cfg: ppl_table[cfg]["ppl"] / f16 - 1 for cfg in ppl_table}
    assert inc["q8_0/turbo4"] <= 0.012, inc
    assert inc["turbo4/turbo4"] <= 1.15 * inc["q4_0/q4_0"], inc
    # the recommended asymmetric configuration stays close to f16
    assert inc["q8_0/turbo3"] <= 0.05, inc


# ------------------------------------------------------------------ llama-server

PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _complete(server_bin, model, ctk, ctv, n_predict=16, extra=()) -> tuple[list[int], str]:
    """Greedy continuation of PROMPT by a fresh llama-server: (tokens, text)."""
    return _completions(server_bin, model, ctk, ctv, [PROMPT], n_predict, extra)[0]


def _completions(server_bin, model, ctk, ctv, prompts, n_predict=16, extra=(),
                 env=None) -> list[tuple[list[int], str]]:
    """Greedy continuations of prompts by one fresh llama-server: [(tokens, text)]."""
    port = _free_port()
    proc = subprocess.Popen([str(server_bin), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
                             "-ctk", ctk, "-ctv", ctv, "-c", "2048", "-t", THREADS, "-np", "1", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError(f"llama-server exited: {proc.stdout.read()[-3000:]}")
                time.sleep(0.5)
        else:
            raise AssertionError("llama-server did not become healthy in 180 s")
        out = []
        for prompt in prompts:
            body = json.dumps({"prompt": prompt, "n_predict": n_predict, "temperature": 0, "top_k": 1,
                               "return_tokens": True, "cache_prompt": False}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/completion", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=600) as r:
                res = json.loads(r.read())
            out.append((res["tokens"], res["content"]))
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.parametrize("ctk,ctv", [("q8_0", "turbo3"), ("turbo3", "turbo3")])
def test_server_greedy_continuation_matches_f16(cpu_build, gemma, ctk, ctv):
    server = cpu_build("llama-server")
    base_tokens, base_text = _complete(server, gemma, "f16", "f16", extra=CPU_ARGS)
    tokens, text = _complete(server, gemma, ctk, ctv, extra=CPU_ARGS)
    assert "13" in base_text, base_text   # the model counts on
    assert tokens[:8] == base_tokens[:8], (base_text, text)
