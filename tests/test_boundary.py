"""Boundary layers (patch 0010): the first and last N layers of a turbo K / V
cache kept at q8_0.

Fast: plan's per-layer arithmetic and bits per value, eval's `:bkN:bvN`
variants (parsing, errors, environment of the run, reports), the build and
plan options. Slow: the patched CPU llama.cpp itself (sizes it prints equal
plan's, an invalid switch fails with a clear message, boundary V helps
q8_0/turbo2 on Gemma 3 270M).
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import cpu_build
from test_plan import write_gguf
from tqpatch import eval as ev
from tqpatch import plan
from tqpatch.cli import main
from tqpatch.errors import TqpatchError
from tqpatch import backends
from tqpatch.backends import cmake

ROOT = Path(__file__).resolve().parent.parent
_USER_CACHE = os.environ.get("TQPATCH_CACHE")  # the slow tests use the real cache


@pytest.fixture
def gemma3(tmp_path):  # Gemma 3 270M attention: 18 layers (5, 11, 17 global), 1 kv head of 256
    return write_gguf(tmp_path / "g3.gguf", "gemma3", n_layer=18, n_embd=640, n_head=4,
                      n_head_kv=1, key_length=256, value_length=256, sliding_window=512,
                      ctx_train=32768)


# ---------------------------------------------------------------- plan arithmetic


def test_layer_type_rule():
    n = 18
    promoted = [il for il in range(n) if plan.layer_type("turbo2", il, n, 2) == "q8_0"]
    assert promoted == [0, 1, 16, 17]
    assert all(plan.layer_type("turbo3", il, n, 0) == "turbo3" for il in range(n))
    # only turbo types are promoted
    assert all(plan.layer_type(t, 0, n, 5) == t for t in ("f16", "q8_0", "q4_0"))
    # 2N >= n_layer: every layer
    assert {plan.layer_type("turbo4", il, n, 9) for il in range(n)} == {"q8_0"}


def test_kv_caches_promote_per_cache(gemma3):
    info = plan.read_model(gemma3)
    plain = plan.kv_caches(info, 4096, "q8_0", "turbo2")
    bv2 = plan.kv_caches(info, 4096, "q8_0", "turbo2", boundary_v=2)
    glob, swa = bv2
    # layer 17 is global (4096 cells), 0, 1 and 16 are SWA (1024 cells); one KV head of 256
    row_q8, row_t2 = 256 // 32 * 34, 256 // 128 * 34
    assert glob.v_bytes == (2 * 4096 * row_t2) + 4096 * row_q8
    assert swa.v_bytes == (12 * 1024 * row_t2) + 3 * 1024 * row_q8
    assert [c.k_bytes for c in bv2] == [c.k_bytes for c in plain]
    # K boundary on a q8_0 K changes nothing
    assert plan.kv_caches(info, 4096, "q8_0", "turbo2", boundary_k=3) == plain


def test_effective_bpv_weights_layers_by_cached_values(gemma3):
    info = plan.read_model(gemma3)
    bk, bv = plan.effective_bpv(info, 4096, "q8_0", "turbo2", boundary_v=2)
    assert bk == pytest.approx(8.5)
    # values: global layers 4096 cells, SWA layers 1024: 3*4096 + 15*1024 = 27648 units,
    # promoted 4096 (layer 17) + 3*1024 (0, 1, 16)
    assert bv == pytest.approx((7168 * 8.5 + 20480 * 2.125) / 27648)
    # at llama-perplexity's layout for -c 512 (4 streams of 512 cells) every layer holds the same
    n_ctx, n_par = ev.perplexity_layout(512)
    assert (n_ctx, n_par) == (2048, 4)
    _, bv = plan.effective_bpv(info, n_ctx, "q8_0", "turbo2", n_par, unified=False, boundary_v=2)
    assert bv == pytest.approx((4 * 8.5 + 14 * 2.125) / 18)
    assert plan.effective_bpv(info, 4096, "turbo3", "turbo3") == (3.125, 3.125)
    assert plan.effective_bpv(info, 4096, "turbo3", "turbo4", boundary_k=9,
                              boundary_v=9) == (8.5, 8.5)


def test_boundary_validation(gemma3):
    info = plan.read_model(gemma3)
    for bad in (-1, 1.5, "2", True, plan.MAX_BOUNDARY + 1):
        with pytest.raises(TqpatchError, match="whole number of layers"):
            plan.kv_caches(info, 4096, "q8_0", "turbo2", boundary_v=bad)


def test_plan_rows_and_recommendation(gemma3):
    info = plan.read_model(gemma3)
    rows = {r.label: r for r in plan.plan_rows(info, 4096, boundary_v=2)}
    assert "q8_0/turbo2:bv2" in rows and "q8_0/q8_0" in rows and "f16/f16" in rows
    r = rows["q8_0/turbo2:bv2"]
    assert r.kv_bytes == plan.kv_bytes(info, 4096, "q8_0", "turbo2", boundary_v=2)
    assert r.bpv_v == pytest.approx(plan.effective_bpv(info, 4096, "q8_0", "turbo2",
                                                       boundary_v=2)[1])
    rec = plan.recommend(info, 4096, boundary_v=2)
    assert rec.flags.startswith("LLAMA_TURBO_BOUNDARY_V=2 llama-server ")
    assert not plan.recommend(info, 4096).flags.startswith("LLAMA_")


def test_cli_plan_boundary(gemma3):
    res = CliRunner().invoke(main, ["plan", str(gemma3), "--ctx", "4096", "--boundary-v", "2",
                                    "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["boundary_v"] == 2 and d["boundary_k"] == 0
    rows = {c["label"]: c for c in d["configs"]}
    info = plan.read_model(gemma3)
    assert rows["q8_0/turbo3:bv2"]["kv_bytes"] == plan.kv_bytes(info, 4096, "q8_0", "turbo3",
                                                                boundary_v=2)
    text = CliRunner().invoke(main, ["plan", str(gemma3), "--ctx", "4096", "--boundary-k", "1",
                                     "--boundary-v", "2"]).output
    assert "turbo3/turbo3:bk1:bv2" in text and "boundary layers" in text


@pytest.mark.parametrize("value", ["-1", "abc", "1.5"])
def test_cli_plan_bad_boundary(gemma3, value):
    res = CliRunner().invoke(main, ["plan", str(gemma3), "--ctx", "4096", "--boundary-v", value])
    assert res.exit_code == 2
    assert "--boundary-v" in res.output and "Traceback" not in res.output


# ---------------------------------------------------------------- build option


def test_build_cmake_args_carry_the_default():
    from tqpatch import build

    args = cmake.configure_args(backends.get("cpu"), boundary_k=1, boundary_v=2)
    assert "-DLLAMA_TURBO_BOUNDARY_K=1" in args and "-DLLAMA_TURBO_BOUNDARY_V=2" in args
    # always passed, so that a rebuild without the option resets a cached value
    assert "-DLLAMA_TURBO_BOUNDARY_V=0" in cmake.configure_args(backends.get("cpu"))


@pytest.mark.parametrize("value", ["-1", "x"])
def test_cli_build_bad_boundary(value):
    res = CliRunner().invoke(main, ["build", "--backend", "cpu", "--boundary-v", value])
    assert res.exit_code == 2
    assert "--boundary-v" in res.output and "Traceback" not in res.output


def test_patch_is_in_series():
    series = [line.split("#")[0].split()[0] for line in
              (ROOT / "patches" / "series").read_text().splitlines()
              if line.split("#")[0].strip()]
    assert "0010-llama-turbo-boundary-layers.patch" in series  # later patches (0011 Vulkan) may follow
    text = (ROOT / "patches" / "0010-llama-turbo-boundary-layers.patch").read_text()
    for needle in ("src/llama-kv-cache.cpp", "LLAMA_TURBO_BOUNDARY_K", "LLAMA_TURBO_BOUNDARY_V",
                   "turbo boundary layers", "CACHE STRING"):
        assert needle in text


# ---------------------------------------------------------------- eval configurations


def test_config_variants_parse():
    c = ev.Config.parse("q8_0/turbo2:bv2")
    assert (c.k, c.v, c.bk, c.bv) == ("q8_0", "turbo2", 0, 2)
    assert c.label == "q8_0/turbo2:bv2" and c.pair == "q8_0/turbo2"
    assert c.env() == {"LLAMA_TURBO_BOUNDARY_K": "0", "LLAMA_TURBO_BOUNDARY_V": "2"}
    c = ev.Config.parse(" Turbo3/turbo3:BV2:bk2 ")
    assert c.label == "turbo3/turbo3:bk2:bv2" and (c.bk, c.bv) == (2, 2)
    # a plain turbo configuration pins both switches to 0; a non-turbo one sets nothing
    assert ev.Config.parse("q8_0/turbo3").env() == {"LLAMA_TURBO_BOUNDARY_K": "0",
                                                    "LLAMA_TURBO_BOUNDARY_V": "0"}
    assert ev.Config.parse("f16/f16").env() == {}
    # :bv0 is the plain configuration
    assert ev.parse_configs("q8_0/turbo2,q8_0/turbo2:bv0,q8_0/turbo2:bv2") == [
        ev.Config("q8_0", "turbo2"), ev.Config("q8_0", "turbo2", 0, 2)]


@pytest.mark.parametrize("bad, message", [
    ("q8_0/turbo2:bk2", "K is q8_0"),
    ("q8_0/q8_0:bv2", "V is q8_0"),
    ("q8_0/turbo2:bv", "unknown variant 'bv'"),
    ("q8_0/turbo2:bv-1", "unknown variant 'bv-1'"),
    ("q8_0/turbo2:x2", "unknown variant 'x2'"),
    ("q8_0/turbo2:", "unknown variant ''"),
    ("q8_0/turbo2:bv2:bv4", "bv given twice"),
    ("q8_0/turbo2:bv1000000", "at most 999999"),
    ("q8_0:bv2", "malformed configuration"),
])
def test_config_variant_errors(bad, message):
    with pytest.raises(TqpatchError, match=re.escape(message)):
        ev.Config.parse(bad)


FAKE = """#!/bin/sh
# A llama-perplexity that prints what it was given (args, boundary switches) and a
# result. BOUNDARY_LINE=0 plays a build without patch 0010.
echo "$*" >> "{calls}"
echo "env K=${{LLAMA_TURBO_BOUNDARY_K-unset}} V=${{LLAMA_TURBO_BOUNDARY_V-unset}}" >> "{calls}"
echo "calib=${{LLAMA_TURBO_CALIB-unset}}" >> "{calls}"
if [ -n "${{LLAMA_TURBO_CALIB-}}" ] && [ "{calib_line}" = 1 ]; then
  echo "0.00.100.000 I llama_kv_cache: turbo K calibration from $LLAMA_TURBO_CALIB"
fi
prev=
for a in "$@"; do
  case "$prev" in -ctk) k=$a ;; -ctv) v=$a ;; esac
  prev=$a
done
if [ "${{LLAMA_TURBO_BOUNDARY_V:-0}}" != 0 ] && [ "{boundary_line}" = 1 ]; then
  echo "0.00.100.000 I llama_kv_cache: turbo boundary layers: K 0, V $LLAMA_TURBO_BOUNDARY_V -> q8_0 layers K none, V 0,1"
fi
echo "0.00.100.001 I llama_kv_cache: size =    1.00 MiB (   512 cells,  18 layers,  4/4 seqs), K ($k):    0.50 MiB, V ($v):    0.50 MiB"
ppl=10.0
[ "${{LLAMA_TURBO_BOUNDARY_V:-0}}" != 0 ] && ppl=9.5
echo "Final estimate: PPL = $ppl +/- 0.1"
"""


def _fake(tmp_path, boundary_line=True, calib_line=True):
    calls = tmp_path / "calls.log"
    binary = tmp_path / "llama-perplexity"
    binary.write_text(FAKE.format(calls=calls, boundary_line=int(boundary_line), calib_line=int(calib_line)))
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    text = tmp_path / "t.txt"
    text.write_text("hello\n")
    return binary, text, calls


def test_evaluate_sets_switches_and_reports_variant(tmp_path, gemma3, monkeypatch):
    monkeypatch.setenv("LLAMA_TURBO_BOUNDARY_V", "7")  # the caller's environment does not leak
    binary, text, calls = _fake(tmp_path)
    rs = ev.evaluate("f16/f16,q8_0/turbo2,q8_0/turbo2:bv2", model=gemma3, text=text,
                     binary=binary, kld=False, chunks=1, ctx=512, threads=1)
    assert [r.ok for r in rs] == [True, True, True], [r.error for r in rs]
    log = calls.read_text().splitlines()
    envs = [line for line in log if line.startswith("env ")]
    assert envs == ["env K=unset V=7", "env K=0 V=0", "env K=0 V=2"]
    plain, bv2 = rs[1], rs[2]
    assert plain.ppl == 10.0 and bv2.ppl == 9.5
    assert bv2.eff_bpv_v == pytest.approx((4 * 8.5 + 14 * 2.125) / 18)
    assert plain.eff_bpv_v == 2.125 and bv2.eff_bpv_k == 8.5
    d = ev.to_json(rs)["results"][2]
    assert d["config"] == "q8_0/turbo2:bv2" and d["boundary_v"] == 2
    assert d["bpv_v"] == pytest.approx(bv2.eff_bpv_v)
    assert d["command"].startswith("LLAMA_TURBO_BOUNDARY_K=0 LLAMA_TURBO_BOUNDARY_V=2 ")
    lines = ev.command_lines(rs)
    assert lines[0].startswith(str(binary))  # f16/f16: no switches
    assert lines[2].startswith("LLAMA_TURBO_BOUNDARY_K=0 LLAMA_TURBO_BOUNDARY_V=2 ")
    table = ev.render_table(rs)
    assert "turbo2:bv2" in table and "3.542" in table
    md = ev.render_markdown(rs, {})
    assert "turbo2:bv2" in md and "LLAMA_TURBO_BOUNDARY_V=2" in md


def test_calibration_per_configuration(tmp_path, gemma3, monkeypatch):
    """:cal=FILE runs that configuration with LLAMA_TURBO_CALIB=FILE; the others keep the
    caller's environment (unset here); the path keeps its case, the label names the file."""
    monkeypatch.delenv("LLAMA_TURBO_CALIB", raising=False)
    binary, text, calls = _fake(tmp_path)
    cal = tmp_path / "Gemma.Calib.gguf"
    cal.write_bytes(b"x")
    rs = ev.evaluate(f"turbo3/turbo3,turbo3/turbo3:cal={cal},turbo3/turbo3:bv2:cal={cal}", model=gemma3,
                     text=text, binary=binary, kld=False, chunks=1, ctx=512, threads=1)
    assert [r.ok for r in rs] == [True, True, True], [r.error for r in rs]
    log = calls.read_text().splitlines()
    assert [ln for ln in log if ln.startswith("calib=")] == ["calib=unset", f"calib={cal}", f"calib={cal}"]
    assert rs[1].label == "turbo3/turbo3:cal=Gemma.Calib.gguf"
    assert rs[2].label == "turbo3/turbo3:bv2:cal=Gemma.Calib.gguf"
    assert rs[1].eff_bpv_k == 3.125  # no boundary layers: the type's bits
    assert f"LLAMA_TURBO_CALIB={cal}" in ev.command_lines(rs)[1]
    # a build without patch 0021 says nothing of the file: the run fails and says why
    binary, text, _ = _fake(tmp_path, calib_line=False)
    rs = ev.evaluate(f"turbo3/turbo3:cal={cal}", model=gemma3, text=text, binary=binary, kld=False,
                     chunks=1, ctx=512, threads=1)
    assert not rs[0].ok and "patch 0021" in rs[0].error


@pytest.mark.parametrize("spec, message", [
    ("q8_0/q8_0:cal={f}", "turbo K or V cache only"),
    ("f16/q8_0:cal={f}", "these are f16/q8_0"),
    ("turbo3/turbo3:cal={f}:cal={f}", "cal= given twice"),
    ("turbo3/turbo3:cal={f}.missing", "no calibration file"),
    ("turbo3/turbo3:cal=", "no calibration file"),
])
def test_calibration_errors(tmp_path, spec, message):
    f = tmp_path / "c.gguf"
    f.write_bytes(b"x")
    with pytest.raises(TqpatchError, match=re.escape(message)):
        ev.Config.parse(spec.format(f=f))


def test_evaluate_build_without_patch_fails_the_variant(tmp_path, gemma3):
    binary, text, _ = _fake(tmp_path, boundary_line=False)
    rs = ev.evaluate("q8_0/turbo2,q8_0/turbo2:bv2", model=gemma3, text=text, binary=binary,
                     kld=False, chunks=1, ctx=512, threads=1)
    assert rs[0].ok and not rs[1].ok
    assert "patch 0010" in rs[1].error


def test_evaluate_unreadable_model_keeps_type_bpv(tmp_path):
    binary, text, _ = _fake(tmp_path)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"not a gguf")
    rs = ev.evaluate("q8_0/turbo2:bv2", model=model, text=text, binary=binary, kld=False,
                     chunks=1, ctx=512, threads=1)
    assert rs[0].ok and rs[0].eff_bpv_v == 2.125


def test_cli_eval_bad_variant(tmp_path, gemma3):
    binary, text, calls = _fake(tmp_path)
    res = CliRunner().invoke(main, ["eval", "--model", str(gemma3), "--text", str(text),
                                    "--configs", "q8_0/turbo2:bk2"])
    assert res.exit_code != 0
    assert "boundary layers apply to turbo2/turbo3/turbo4" in res.output
    assert "Traceback" not in res.output and not calls.exists()


def test_plot_labels_show_variant(tmp_path, gemma3):
    pytest.importorskip("matplotlib")
    binary, text, _ = _fake(tmp_path)
    rs = ev.evaluate("f16/f16,q8_0/turbo2:bv2", model=gemma3, text=text, binary=binary,
                     kld=False, chunks=1, ctx=512, threads=1)
    seen = []
    import matplotlib.axes

    orig = matplotlib.axes.Axes.annotate

    def annotate(self, text, xy, *a, **kw):
        seen.append((text, xy[0]))
        return orig(self, text, xy, *a, **kw)

    matplotlib.axes.Axes.annotate = annotate
    try:
        ev.plot(rs, tmp_path / "p.png")
    finally:
        matplotlib.axes.Axes.annotate = orig
    assert ("q8_0/turbo2:bv2", pytest.approx((8.5 + rs[1].eff_bpv_v) / 2)) in seen


# ---------------------------------------------------------------- the patched llama.cpp (slow)


def _use_real_cache(monkeypatch):
    if _USER_CACHE is None:
        monkeypatch.delenv("TQPATCH_CACHE", raising=False)
    else:
        monkeypatch.setenv("TQPATCH_CACHE", _USER_CACHE)


@pytest.fixture
def built(monkeypatch):
    """The CPU tests' build (tests/cpu_build.py; a no-op when it is up to date)."""
    _use_real_cache(monkeypatch)
    proc = subprocess.run([sys.executable, "-m", "tqpatch.cli", "build", "--backend", cpu_build.BUILD],
                          capture_output=True, text=True, timeout=5000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from tqpatch import model

    return (lambda name: str(cpu_build.find(name))), model.ensure_model()


def _llama_cli(binary, model, ctx, type_k, type_v, env):
    # the CPU backend's tool arguments carry its AMX workaround where the CPU needs it
    cmd = [binary, *cpu_build.TOOL_ARGS, "-m", str(model), "-c", str(ctx),
           "-ctk", type_k, "-ctv", type_v, "-fa", "on", "-ngl", "0", "-fit", "off", "-n", "1",
           "-p", "Hello", "-st", "-v", "--no-warmup", "-t", "2"]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          errors="replace", timeout=600, env={**os.environ, **env})
    return proc.returncode, proc.stdout + proc.stderr


_RE_LAYERS = re.compile(r"turbo boundary layers: K (\d+), V (\d+) -> q8_0 layers K (\S+), V (\S+)")


def _promoted(log):
    k, v = set(), set()
    for m in _RE_LAYERS.finditer(log):
        for dst, s in ((k, m.group(3)), (v, m.group(4))):
            if s != "none":
                dst.update(int(x) for x in s.split(","))
    return k, v


@pytest.mark.slow
@pytest.mark.parametrize("types, bk, bv", [
    (("q8_0", "turbo2"), 0, 2),
    (("turbo4", "turbo4"), 1, 3),
    (("turbo3", "turbo3"), 2, 0),
])
def test_llama_cpp_sizes_match_plan(built, types, bk, bv):
    binary, model = built[0]("llama-cli"), built[1]
    info = plan.read_model(model)
    ctx = 4096  # SWA layers hold 1024 cells, global ones 4096
    env = {"LLAMA_TURBO_BOUNDARY_K": str(bk), "LLAMA_TURBO_BOUNDARY_V": str(bv)}
    rc, log = _llama_cli(binary, model, ctx, *types, env)
    assert rc == 0, log[-4000:]
    expected = plan.kv_caches(info, ctx, *types, boundary_k=bk, boundary_v=bv)
    got = plan.parse_kv_sizes(log)[-len(expected):]
    assert len(got) == len(expected), log[-4000:]
    for e, g in zip(expected, got):
        assert (g["cells"], g["layers"], g["type_k"], g["type_v"]) == (e.cells, e.layers, *types)
        assert g["k_mib"] == pytest.approx(e.k_bytes / plan.MIB, abs=0.006)
        assert g["v_mib"] == pytest.approx(e.v_bytes / plan.MIB, abs=0.006)
    # the layers llama.cpp says it promoted are plan's
    n = info.n_layer
    want_k = {il for il in range(n) if plan.layer_type(types[0], il, n, bk) != types[0]}
    want_v = {il for il in range(n) if plan.layer_type(types[1], il, n, bv) != types[1]}
    assert _promoted(log) == (want_k, want_v)
    # and `tqpatch plan` prints the same total
    res = CliRunner().invoke(main, ["plan", str(model), "--ctx", str(ctx), "--boundary-k", str(bk),
                                    "--boundary-v", str(bv), "--json"])
    assert res.exit_code == 0, res.output
    label = f"{types[0]}/{types[1]}" + plan.boundary_suffix(*types, bk, bv)
    row = {c["label"]: c for c in json.loads(res.output)["configs"]}[label]
    assert row["kv_mib"] == pytest.approx(sum(g["size_mib"] for g in got), abs=0.02)


@pytest.mark.slow
def test_llama_cpp_plain_run_has_no_boundary_line(built):
    rc, log = _llama_cli(built[0]("llama-cli"), built[1], 512, "q8_0", "turbo3",
                         {"LLAMA_TURBO_BOUNDARY_V": "0"})
    assert rc == 0, log[-3000:]
    assert "turbo boundary layers" not in log
    # non-turbo types are never promoted
    rc, log = _llama_cli(built[0]("llama-cli"), built[1], 512, "q8_0", "q4_0",
                         {"LLAMA_TURBO_BOUNDARY_V": "4"})
    assert rc == 0 and "turbo boundary layers" not in log


@pytest.mark.slow
@pytest.mark.parametrize("var, value", [("LLAMA_TURBO_BOUNDARY_V", "abc"),
                                        ("LLAMA_TURBO_BOUNDARY_V", "-1"),
                                        ("LLAMA_TURBO_BOUNDARY_K", "2x"),
                                        ("LLAMA_TURBO_BOUNDARY_K", "")])
def test_llama_cpp_invalid_switch_fails_clearly(built, var, value):
    rc, log = _llama_cli(built[0]("llama-cli"), built[1], 512, "q8_0", "turbo3", {var: value})
    assert rc != 0
    assert f'{var}="{value}" is not a valid number of boundary layers' in log, log[-3000:]


@pytest.mark.slow
def test_boundary_v_helps_q8_0_turbo2(built):
    """Same text, chunks and threads: q8_0/turbo2 with the first and last 2 layers'
    V at q8_0 scores a lower PPL than without. The settings of docs/quality.md's
    "Boundary layers" table (20 x 512, 2 threads): 9.9428 against 9.9819 there."""
    res = CliRunner().invoke(main, ["eval", "--backend", cpu_build.BUILD, "--no-kld", "--no-coherence",
                                    "--chunks", "20", "--threads", "2", "--json", "--configs", "q8_0/turbo2,q8_0/turbo2:bv2",
                                    *(f"--extra-arg={a}" for a in cpu_build.TOOL_ARGS)])
    assert res.exit_code == 0, res.output
    rows = {r["config"]: r for r in json.loads(res.stdout)["results"]}
    plain, bv2 = rows["q8_0/turbo2"], rows["q8_0/turbo2:bv2"]
    assert bv2["ppl"] < plain["ppl"], (plain["ppl"], bv2["ppl"])
    assert bv2["bpv_v"] == pytest.approx((4 * 8.5 + 14 * 2.125) / 18)
    assert bv2["v_mib"] > plain["v_mib"]


def test_calibration_of_a_turbo_v_cache_alone(tmp_path):
    # the file's V scales apply to a turbo V cache under any K type (patch 0021)
    f = tmp_path / "c.gguf"
    f.write_bytes(b"x")
    cfg = ev.Config.parse(f"q8_0/turbo2:cal={f}")
    assert cfg.calib == str(f.resolve()) and cfg.label == "q8_0/turbo2:cal=c.gguf"
