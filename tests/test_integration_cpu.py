"""End to end on the CPU: fetch, apply, build, llama.cpp's own tests, the real model.

Slow (a llama.cpp build is ~30 min on 2 cores); CI runs it through `make test`.
Nothing here is skipped for lack of a build: the session fixture builds. The
build is tests/cpu_build.py's (the CPU backend of a Vulkan build in CI).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

import cpu_build as cpu

pytestmark = pytest.mark.slow

THREADS = str(max(1, min(4, os.cpu_count() or 1)))


def run(cmd, timeout=3600, check=True, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd[0]} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def cpu_build():
    """`tqpatch build` of the CPU tests' build, from whatever state the cache is in."""
    run([sys.executable, "-m", "tqpatch.cli", "build", "--backend", cpu.BUILD], timeout=5000)
    return cpu.find


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
    # every multiple of 32 has a turbo variant (tests/test_head_sizes.py); 80 has none
    model = tmp_path / "hd80.gguf"
    run([sys.executable, "-m", "tqpatch.cli", "synth-model", model, "--layers", "1", "--embd", "320",
         "--heads", "4", "--kv-heads", "2", "--head-dim", "80", "--ff", "64"])
    proc = run([cpu_build("llama-cli"), "-m", model, "-ctk", "turbo3", "-ctv", "turbo3", "-p", "hi",
                "-n", "1", "--no-warmup", "-t", THREADS, *cpu.TOOL_ARGS], check=False, timeout=300,
               stdin=subprocess.DEVNULL)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "K cache type turbo3 with block size 64 does not divide n_embd_head_k=80" in log, log[-2000:]
    assert "f16" in log.split("fit this model:")[1].splitlines()[0]


# ------------------------------------------------------------------ real model

PPL_CONFIGS = ["f16/f16", "q8_0/q8_0", "q4_0/q4_0", "q8_0/turbo4", "q8_0/turbo3", "q8_0/turbo2",
               "turbo4/turbo4", "turbo3/turbo3", "turbo2/turbo2"]


def eval_rows(configs, chunks, *extra, check=True):
    """`tqpatch eval --json` rows of PPL-only runs (no KLD, no coherence) on the CPU build."""
    proc = run([sys.executable, "-m", "tqpatch.cli", "eval", "--backend", cpu.BUILD, "--no-kld",
                "--no-coherence", "--chunks", str(chunks), "--configs", ",".join(map(str, configs)),
                "--json", *extra, *(f"--extra-arg={a}" for a in cpu.TOOL_ARGS)], timeout=5000, check=check)
    rows = json.loads(proc.stdout[proc.stdout.index("{"):])["results"]
    if check:
        assert all(r["ok"] for r in rows), [r["error"] for r in rows if not r["ok"]]
    return rows


@pytest.fixture(scope="session")
def ppl_table(cpu_build, gemma, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    # coherence is its own test below (test_server_coherence_on_cpu)
    rows = eval_rows(PPL_CONFIGS, 20, "--markdown", out / "ppl.md")
    print((out / "ppl.md").read_text())
    return {f"{r['k']}/{r['v']}": r for r in rows}


def test_every_configuration_runs_on_the_real_model(ppl_table):
    for cfg in PPL_CONFIGS:
        assert cfg in ppl_table and ppl_table[cfg]["ppl"] > 1, cfg


def test_quality_bars_against_upstream_caches(ppl_table):
    f16 = ppl_table["f16/f16"]["ppl"]
    inc = {cfg: ppl_table[cfg]["ppl"] / f16 - 1 for cfg in ppl_table}
    assert inc["q8_0/turbo4"] <= 0.012, inc
    # A regression bar, not the quality target (issue 14's KLD target is tracked in
    # docs/quality.md): turbo4/turbo4 sits near q4_0/q4_0, at 1.14x its PPL increase
    # on 16 threads (docs/quality.md) and 1.17x on 2 threads with --no-repack
    # (2026-11-27), so issue 3's 1.15x split on thread count and weight layout.
    assert inc["turbo4/turbo4"] <= 1.25 * inc["q4_0/q4_0"], inc
    # the recommended asymmetric configuration stays close to f16
    assert inc["q8_0/turbo3"] <= 0.05, inc


# ------------------------------------------------------------------ coherence (llama-server)

# tqpatch.coherence's check over every configuration, on the CPU backend (its
# e2e tool arguments carry the AMX workaround where the CPU needs it).
CPU_TOOL_ARGS = cpu.TOOL_ARGS


def coherence_run(server, model, tool_args):
    """label -> Coherence for every formats.KV_CONFIGS entry (f16/f16 first), printed."""
    from tqpatch import coherence, formats

    configs = [(f"{k}/{v}", k, v, {}) for k, v in formats.KV_CONFIGS]
    _, results = coherence.check(configs, server, model, threads=int(THREADS), extra_args=tool_args)
    for label, r in results.items():
        print(f"{label:15s} {r.summary:6s} " + (r.error or " | ".join(repr(p.text) for p in r.prompts)))
    return results


def offered_by_plan(model, ctx=4096):
    """Every configuration `tqpatch plan` may name for the model, any memory budget."""
    from tqpatch import plan

    info = plan.read_model(model)
    offered = set()
    for vram in (None, info.weight_bytes / 2**30 + 0.001, info.weight_bytes / 2**30 + 1):
        rec = plan.recommend(info, ctx, vram_gib=vram, overhead_mib=0)
        offered.add(f"{rec.type_k}/{rec.type_v}")
        offered |= {a.split("-ctk ")[1].split(" -fa")[0].replace(" -ctv ", "/") for a in rec.alternatives}
    return offered


def check_coherence_claims(results, model):
    # the check passes upstream's 8-bit cache (it is not too strict); upstream's
    # 4-bit q4_0/q4_0 is the anchor the turbo types are compared with, reported
    # rather than required (it lost the capital prompt on the H100, 2026-11-27)
    assert results["q8_0/q8_0"].coherent, results["q8_0/q8_0"].to_dict()
    print(f"anchor q4_0/q4_0: {results['q4_0/q4_0'].n_coherent}/{results['q4_0/q4_0'].n_prompts}")
    # what plan recommends for this model family is coherent here
    for label in offered_by_plan(model):
        assert results[label].coherent, (label, results[label].to_dict())
    # and the check does catch symmetric 2-bit K/V (it is not too lenient)
    assert results["turbo2/turbo2"].n_coherent <= 1, results["turbo2/turbo2"].to_dict()


@pytest.fixture(scope="session")
def cpu_coherence(cpu_build, gemma):
    return coherence_run(cpu_build("llama-server"), gemma, CPU_TOOL_ARGS)


def test_server_coherence_on_cpu(cpu_coherence, gemma):
    check_coherence_claims(cpu_coherence, gemma)


# ------------------------------------------------------------------ calibration (patch 0021)

# LLAMA_TURBO_CALIB is exact for attention: K stored as k_scale*k + k_shift with
# q_scale = 1/k_scale on the queries, V stored as v_scale*v with o_scale = 1/v_scale on
# the output. With a power of two per layer, the rotation, the turbo block (its log
# scale steps 2^(1/8)) and the products scale exactly, so PPL must not move; scales
# that differ per channel change only V's rounding. A file whose inverse does not
# match (q_scale or o_scale left at 1) must move PPL far away: the check can fail.


def make_calibration(model, rng, *, k_pow2=True, v_chan=False, break_k=False, break_v=False):
    """A calibration of the model's shapes: K scales 2^a per layer (a in -2..2, not 0; or
    1), no K shift; V scales 2^b per layer, or per channel in [1/4, 4] with v_chan."""
    import numpy as np

    from tqpatch import calibrate, plan

    info = plan.read_model(model)
    layers = []
    for il in range(info.n_layer):
        dk, dv = info.layer_head_k(il), info.layer_head_v(il)
        h, hk = info.n_head[il], info.n_head_kv[il]
        a = np.full((hk, dk), 2.0 ** rng.choice([-2, -1, 1, 2]) if k_pow2 else 1.0)
        c = (np.exp(rng.uniform(-np.log(4), np.log(4), (hk, dv))) if v_chan
             else np.full((hk, dv), 2.0 ** rng.choice([-2, -1, 1, 2])))
        layers.append(calibrate.LayerCalib(
            layer=il, n_embd_head_k=dk, n_head_kv=hk, n_head=h,
            k_scale=a, k_shift=np.zeros((hk, dk)),
            q_scale=np.ones((h, dk)) if break_k else np.repeat(1 / a, h // hk, axis=0),
            gamma=1.0, mean_energy=0.0,
            v_scale=c, o_scale=np.ones((h, dv)) if break_v else np.repeat(1 / c, h // hk, axis=0),
            v_gamma=1.0, v_error={}))
    return calibrate.Calibration(layers, info.ctx_train, "test")


@pytest.fixture(scope="session")
def calib_ppl(cpu_build, gemma, tmp_path_factory):
    """PPL by name: 'turbo4/turbo4', 'turbo4/turbo4 pow2', 'q8_0/turbo4 chan_no_o', ..."""
    import numpy as np

    from tqpatch import calibrate

    out = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(7)
    kinds = {"pow2": {}, "pow2_no_q": {"break_k": True},
             "chan": {"k_pow2": False, "v_chan": True},
             "chan_no_o": {"k_pow2": False, "v_chan": True, "break_v": True}}
    for name, kw in kinds.items():
        calibrate.write(make_calibration(gemma, rng, **kw), out / f"{name}.gguf", gemma.name)
    runs = ["q8_0/turbo4", "turbo4/turbo4", "turbo4/turbo4 pow2", "q8_0/turbo4 pow2",
            "turbo4/turbo4 pow2_no_q", "q8_0/turbo4 chan", "q8_0/turbo4 chan_no_o"]
    configs = [r.replace(" ", f":cal={out}/") + (".gguf" if " " in r else "") for r in runs]
    by_label = {r["config"]: r["ppl"] for r in eval_rows(configs, 3)}
    ppl = {r: by_label[r.replace(" ", ":cal=") + (".gguf" if " " in r else "")] for r in runs}
    print(ppl)
    return ppl


def test_calibration_is_exact_for_attention(calib_ppl):
    for kv in ("q8_0/turbo4", "turbo4/turbo4"):
        assert abs(calib_ppl[f"{kv} pow2"] / calib_ppl[kv] - 1) < 0.002, calib_ppl
    # V scales per channel change V's rounding only
    assert calib_ppl["q8_0/turbo4 chan"] < 1.15 * calib_ppl["q8_0/turbo4"], calib_ppl


def test_a_calibration_without_its_inverse_is_caught(calib_ppl):
    assert calib_ppl["turbo4/turbo4 pow2_no_q"] > 1.3 * calib_ppl["turbo4/turbo4"], calib_ppl
    assert calib_ppl["q8_0/turbo4 chan_no_o"] > 1.3 * calib_ppl["q8_0/turbo4"], calib_ppl


def test_calibrate_end_to_end_lowers_symmetric_turbo3_ppl(cpu_build, gemma, tmp_path):
    """tqpatch-capture on the model, the fit, the file, and llama.cpp applying it: on Gemma 3
    the calibration takes turbo3/turbo3 from about +90% PPL to about +10% (docs/quality.md)."""
    from tqpatch import backends, calibrate, capture, plan

    run([sys.executable, "-m", "tqpatch.cli", "build", "--backend", cpu.BUILD, "--targets", "tqpatch-capture"],
        timeout=3000)
    rows = capture.run(gemma, tmp_path / "rows.bin", chunks=2, backend=backends.get(cpu.BUILD), threads=int(THREADS))
    cal = calibrate.fit(capture.read(rows))
    info = plan.read_model(gemma)
    for c in cal.layers:   # V's scales for every layer, in the shapes llama.cpp checks
        dv = info.layer_head_v(c.layer)
        assert c.v_scale.shape == (info.n_head_kv[c.layer], dv) and c.o_scale.shape == (info.n_head[c.layer], dv)
    path = tmp_path / "gemma.calib.gguf"
    calibrate.write(cal, path, gemma.name)
    rows = eval_rows(["turbo3/turbo3", f"turbo3/turbo3:cal={path}", "q8_0/turbo2", f"q8_0/turbo2:cal={path}"], 3)
    ppl = {r["config"]: r["ppl"] for r in rows}
    print(ppl)
    assert ppl["turbo3/turbo3:cal=gemma.calib.gguf"] < 0.8 * ppl["turbo3/turbo3"], ppl
    # the V part reaches a turbo V cache under a q8_0 K (not a regression bar: a sanity bound)
    assert ppl["q8_0/turbo2:cal=gemma.calib.gguf"] < 1.03 * ppl["q8_0/turbo2"], ppl


def test_a_file_without_v_scales(cpu_build, gemma, tmp_path, monkeypatch):
    """A file written before V scales: its K part still serves a turbo K cache (V stored as
    it is, with a warning), and under a q8_0 K nothing of it applies, which llama.cpp refuses."""
    import numpy as np

    from tqpatch import calibrate

    path = tmp_path / "k-only.calib.gguf"
    with monkeypatch.context() as m:
        m.setattr(calibrate, "TENSORS", ("k_scale", "k_shift", "q_scale"))
        calibrate.write(make_calibration(gemma, np.random.default_rng(3)), path, gemma.name)
    assert not any(name.endswith("v_scale") for name in calibrate.read(path))
    rows = {r["config"]: r for r in eval_rows([f"turbo4/turbo4:cal={path}", f"q8_0/turbo4:cal={path}"], 1,
                                              check=False)}
    assert rows["turbo4/turbo4:cal=k-only.calib.gguf"]["ok"], rows
    bad = rows["q8_0/turbo4:cal=k-only.calib.gguf"]
    assert not bad["ok"] and "nothing in it applies" in (bad["error"] or "") + (bad["log_tail"] or ""), bad
