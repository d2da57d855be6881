"""tqpatch/bench/ and `tqpatch bench`: parsers on real captured llama.cpp output, tables, targets, errors.

The data under tests/data/bench/ are real outputs of the pinned, patched tree's
CPU build (see tests/data/bench/README.md). One slow test runs `tqpatch bench`
end to end on the CPU build with tiny settings. The figures and targets
themselves are the bench's output, never asserted on timings here.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from tqpatch import backends, perf_cases, plan, render
from tqpatch.bench import common, kv_size, proc, report
from tqpatch.bench import fa_perf as fa
from tqpatch.bench import llama_bench as lb
from tqpatch.bench import model as bench_model
from tqpatch.commands.bench import command as bench_command
from tqpatch.errors import TqpatchError

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "bench"
SCRIPT = ROOT / "benchmarks" / "bench_kv.py"
TBO = "tests/test-backend-ops-turbo.inc"


def read(name: str) -> str:
    return (DATA / name).read_text()


def main(args: list[str]) -> tuple[int, str, str]:
    res = CliRunner().invoke(bench_command, args)
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exc_info
    return res.exit_code, res.stdout, res.stderr


# ---------------------------------------------------------------------------
# part 1: test-backend-ops


def _fa_loop(text: str) -> str:
    body = text[text.index("tqpatch_turbo_perf_cases"):]
    return body[:body.index("// short caches")]


def test_the_template_renders_its_decode_cases_from_the_constant(monkeypatch):
    # the shape is one constant (perf_cases.FA_DECODE) read by the template and by fa_filter:
    # another shape in the render context gives other C++ and another filter
    loop = _fa_loop(render.render_all(backends.all_backends()).files[TBO].decode())
    assert "for (int hs : {128, 256})" in loop
    assert "new test_flash_attn_ext(hs, hs, 8, {4, 1}, 16384, 1, true, false, 0.0f" in loop
    assert loop in (ROOT / "generated" / TBO).read_text()  # what render --check also holds
    other = dataclasses.replace(perf_cases.FA_DECODE, head_sizes=(64, 96, 512), n_kv_heads=2,
                                nr23=(8, 2), kv=4096, sinks=True)
    monkeypatch.setattr(perf_cases, "FA_DECODE", other)
    loop = _fa_loop(render.render_all(backends.all_backends()).files[TBO].decode())
    assert "for (int hs : {64, 96, 512})" in loop
    assert "new test_flash_attn_ext(hs, hs, 2, {8, 2}, 4096, 1, true, true, 0.0f" in loop
    rx = re.compile(fa.fa_filter([64], ["f16"], shape=other))
    assert rx.search("hsk=64,hsv=64,nh=2,nr23=[8,2],kv=4096,nb=1,mask=1,sinks=1,x=0,type_K=f16,type_V=f16,")


def test_fa_filter_selects_exactly_the_decode_cases():
    rx = re.compile(fa.fa_filter())  # test-backend-ops uses std::regex_search (ECMAScript)
    params = [r["params"] for r in fa.parse_tbo_sql(read("tbo_perf_fa_cpu_sql.txt"))]
    assert params and all(rx.search(p) for p in params)
    real = params[0]
    assert "type_K=f16,type_V=f16" in real
    for old, new in [("hsk=128,hsv=128", "hsk=64,hsv=64"), ("kv=16384", "kv=7680"), ("nb=1,", "nb=4096,"),
                     ("nr23=[4,1]", "nr23=[8,1]"), ("type_K=f16", "type_K=q4_0"), ("hsv=128", "hsv=512"),
                     ("sinks=0", "sinks=1")]:
        assert not rx.search(real.replace(old, new, 1)), (old, new)
    only = re.compile(fa.fa_filter([256], ["turbo3"]))
    assert not only.search(real)
    assert only.search(real.replace("hsk=128,hsv=128", "hsk=256,hsv=256")
                       .replace("type_K=f16,type_V=f16", "type_K=turbo3,type_V=turbo3"))


def test_parse_tbo_sql_real():
    rows = fa.parse_tbo_sql(read("tbo_perf_fa_cpu_sql.txt"))
    assert len(rows) == 10  # 9 pairs + upstream's identical f16/f16 case
    r = rows[0]
    assert (r["op"], r["hsk"], r["hsv"], r["nh"], r["nr23"], r["kv"], r["nb"]) == \
        ("FLASH_ATTN_EXT", 128, 128, 8, [4, 1], 16384, 1)
    assert (r["type_k"], r["type_v"], r["supported"], r["n_runs"]) == ("f16", "f16", True, 60)
    assert r["time_us"] == pytest.approx(17242.233333)
    assert r["memory_kb"] == 122944 and r["backend"] == "CPU"
    last = rows[-1]
    assert (last["type_k"], last["type_v"], last["time_us"]) == ("turbo4", "turbo4", pytest.approx(126891.433333))


def test_parse_tbo_sql_not_supported_and_noise():
    line = next(ln for ln in read("tbo_perf_fa_cpu_sql.txt").splitlines() if ln.startswith("INSERT"))
    unsup = line.replace("'perf', '1', '1'", "'perf', '0', '0'")
    rows = fa.parse_tbo_sql("garbage\n" + unsup + "\nINSERT INTO test_backend_ops (a) VALUES ('1', '2');\n")
    assert len(rows) == 1 and rows[0]["supported"] is False and rows[0]["time_us"] is None
    assert fa.parse_tbo_sql("") == []


def test_parse_tbo_console_real():
    rows = fa.parse_tbo_console(read("tbo_perf_fa_cpu_console.txt"))
    assert [(r["type_k"], r["type_v"]) for r in rows] == [
        ("f16", "f16"), ("f16", "f16"), ("f16", "turbo3"), ("turbo3", "f16"), ("turbo3", "turbo3")]
    assert rows[0]["time_us"] == pytest.approx(17873.13) and rows[0]["n_runs"] == 60
    assert rows[4]["time_us"] == pytest.approx(235836.27)
    nosup = "  FLASH_ATTN_EXT(" + rows[0]["params"] + "): not supported\n"
    (r,) = fa.parse_tbo_console(nosup)
    assert r["supported"] is False and r["time_us"] is None


def test_fa_cases_dedupe_bytes_and_bandwidth():
    cases = fa.fa_cases(fa.parse_tbo_sql(read("tbo_perf_fa_cpu_sql.txt")))
    assert len(cases) == 9
    f16 = cases[0]
    assert (f16["type_k"], f16["type_v"]) == ("f16", "f16")
    assert f16["samples"] == pytest.approx([17242.233333, 17097.1])
    assert f16["us"] == pytest.approx((17242.233333 + 17097.1) / 2)
    # 16384 rows x 8 heads x 128 values, K and V, 2 bytes each
    assert f16["kv_bytes"] == 16384 * 8 * 128 * 2 * 2
    assert f16["gbps"] == pytest.approx(f16["kv_bytes"] / (f16["us"] * 1e3))
    t4 = next(c for c in cases if (c["type_k"], c["type_v"]) == ("turbo4", "turbo4"))
    assert t4["kv_bytes"] == 16384 * 8 * (128 // 64 * 34) * 2
    q8t4 = next(c for c in cases if (c["type_k"], c["type_v"]) == ("q8_0", "turbo4"))
    assert q8t4["kv_bytes"] == 16384 * 8 * (128 // 32 * 34 + 128 // 64 * 34)


def test_fa_table_ratios_and_targets_real():
    cases = fa.fa_cases(fa.parse_tbo_sql(read("tbo_perf_fa_cpu_sql.txt")))
    rows = {r["pair"]: r for r in fa.fa_table(cases, 128)}
    f16 = rows["f16/f16"]["us"]
    q8 = rows["q8_0/q8_0"]["us"]
    assert rows["f16/f16"]["vs_f16"] == pytest.approx(1.0)
    assert rows["q8_0/q8_0"]["vs_q8_0"] == pytest.approx(1.0)
    assert rows["q8_0/turbo4"]["vs_q8_0"] == pytest.approx(63842.566667 / q8)
    assert rows["turbo4/turbo4"]["vs_f16"] == pytest.approx(126891.433333 / f16)
    # CPU turbo kernels are scalar: slower than f16 here, so the GPU targets miss
    assert rows["turbo4/turbo4"]["verdict"] == "MISS" and rows["q8_0/turbo4"]["verdict"] == "MISS"
    assert rows["f16/f16"]["verdict"] is None
    t = {x["what"]: x["verdict"] for x in fa.fa_targets(cases, 128)}
    assert t == {"turbo3/turbo3 <= 0.5x f16/f16": "n/a", "turbo4/turbo4 <= 0.5x f16/f16": "MISS",
                 "q8_0/turbo3 <= 0.8x q8_0/q8_0": "n/a", "q8_0/turbo4 <= 1x q8_0/q8_0": "MISS"}
    assert fa.fa_table(cases, 256) == []


def test_fa_target_pass():
    def case(k, v, us):
        return {"hsk": 128, "hsv": 128, "nh": 8, "nr23": [4, 1], "kv": 16384, "nb": 1, "type_k": k,
                "type_v": v, "samples": [us], "us": us, "supported": True, "gbps": None, "kv_bytes": None}
    cases = [case("f16", "f16", 28.0), case("q8_0", "q8_0", 20.0), case("q8_0", "turbo4", 20.0),
             case("q8_0", "turbo3", 16.5), case("turbo3", "turbo3", 14.0), case("turbo4", "turbo4", 14.5)]
    t = {x["what"]: x["verdict"] for x in fa.fa_targets(cases, 128)}
    assert t == {"turbo3/turbo3 <= 0.5x f16/f16": "PASS", "turbo4/turbo4 <= 0.5x f16/f16": "MISS",
                 "q8_0/turbo3 <= 0.8x q8_0/q8_0": "MISS",
                 "q8_0/turbo4 <= 1x q8_0/q8_0": "PASS"}  # the bound itself passes ("no slower")


# ---------------------------------------------------------------------------
# part 2: llama-bench

BENCH_FILES = {c: f"llama_bench_gemma_{c.replace('/', '_')}_cpu.json"
               for c in ("f16/f16", "q8_0/q8_0", "q8_0/turbo3")}


def _runs():
    runs = []
    for cfg, name in BENCH_FILES.items():
        k, v = cfg.split("/")
        runs.append({"type_k": k, "type_v": v,
                     "results": lb.bench_results(lb.parse_llama_bench_json(read(name))), "error": None})
    return runs


def test_parse_llama_bench_json_real():
    recs = lb.parse_llama_bench_json(read(BENCH_FILES["q8_0/turbo3"]))
    assert len(recs) == 4
    res = lb.bench_results(recs)
    assert [(r["test"], r["depth"]) for r in res] == [("pp16", 0), ("tg4", 0), ("pp16", 64), ("tg4", 64)]
    assert all((r["type_k"], r["type_v"], r["flash_attn"]) == ("q8_0", "turbo3", 1) for r in res)
    assert res[0]["avg_ts"] == pytest.approx(53.521558)
    assert res[0]["stddev_ts"] == pytest.approx(9.603731)
    assert res[0]["samples_ts"] == pytest.approx([60.3124, 46.7307])


def test_parse_llama_bench_json_truncated_and_failed():
    text = read(BENCH_FILES["f16/f16"])
    # a run that dies during its third test leaves '[', two objects and part of a third
    cut = text.index('"n_prompt"', text.index('"n_prompt"', text.index('"n_prompt"') + 1) + 1)
    got = lb.parse_llama_bench_json(text[:cut])
    assert [(lb.bench_test_name(r), r["n_depth"]) for r in got] == [("pp16", 0), ("tg4", 0)]
    # what llama-bench printed on stdout when it failed to load the model (real)
    assert lb.parse_llama_bench_json("[\n") == []
    assert lb.parse_llama_bench_json("") == []
    assert lb.parse_llama_bench_json("error: nothing") == []


def test_bench_command_one_pair_all_depths():
    cmd = lb.bench_command(Path("/b/llama-bench"), Path("/m.gguf"), "q8_0", "turbo3", [0, 8192, 32768],
                           pp=512, tg=128, reps=5, ngl=99, threads=None)
    assert cmd == ["/b/llama-bench", "-m", "/m.gguf", "-p", "512", "-n", "128", "-d", "0,8192,32768",
                   "-ctk", "q8_0", "-ctv", "turbo3", "-fa", "1", "-ngl", "99", "-r", "5", "-o", "json",
                   "--progress"]


def test_bench_targets_real_and_na():
    runs = _runs()
    t = lb.bench_targets("gemma", runs, pp=16, tg=4, depths=[0, 64])
    by = {x["what"]: x for x in t}
    look = lb.bench_lookup(runs)
    ratio = look[("q8_0/turbo3", "pp16", 64)]["avg_ts"] / look[("q8_0/q8_0", "pp16", 64)]["avg_ts"]
    assert by["pp16@64 q8_0/turbo3 >= 0.95x q8_0/q8_0"]["ratio"] == pytest.approx(ratio)
    assert ratio == pytest.approx(1.0874, abs=1e-4)  # the recorded runs' figure: over the bar
    assert by["pp16@64 q8_0/turbo3 >= 0.95x q8_0/q8_0"]["verdict"] == "PASS"
    tg0 = look[("q8_0/turbo3", "tg4", 0)]["avg_ts"] / look[("q8_0/q8_0", "tg4", 0)]["avg_ts"]
    assert by["tg4@0 q8_0/turbo3 >= 0.9x q8_0/q8_0"]["ratio"] == pytest.approx(tg0)
    # turbo3/turbo3 was not run, and depth 32768 was not run: n/a, never PASS
    assert by["pp16@64 turbo3/turbo3 >= 0.95x q8_0/q8_0"]["verdict"] == "n/a"
    assert by["tg4@32768 q8_0/turbo3 >= 1x q8_0/q8_0"]["verdict"] == "n/a"
    syn = lb.bench_targets("synth", runs, pp=16, tg=4, depths=[0, 64])
    assert [x["what"] for x in syn][:2] == ["tg4@32768 turbo3/turbo3 >= 1x f16/f16", "tg4@32768 q8_0/turbo4 >= 1x f16/f16"]
    assert {x["what"] for x in syn[2:]} == {f"pp16@64 {c} >= 0.95x q8_0/q8_0"
                                            for c in ("q8_0/turbo4", "q8_0/turbo3", "turbo4/turbo4", "turbo3/turbo3")}
    assert lb.bench_targets("other", runs) == []


def test_bench_targets_default_shape():
    t = [x["what"] for x in lb.bench_targets("gemma", [])]
    turbo = ("q8_0/turbo4", "q8_0/turbo3", "turbo4/turbo4", "turbo3/turbo3")
    assert t == ["tg128@32768 turbo3/turbo3 >= 0.95x q8_0/q8_0", "tg128@32768 q8_0/turbo3 >= 1x q8_0/q8_0",
                 *[f"tg128@0 {c} >= 0.9x q8_0/q8_0" for c in turbo],
                 *[f"pp512@{d} {c} >= 0.95x q8_0/q8_0" for d in (8192, 32768) for c in turbo]]


def test_render_bench_real():
    runs = _runs()
    bench = {"pp": 16, "tg": 4, "depths": [0, 64], "reps": 2, "ngl": 99, "models": [
        {"name": "gemma", "path": "/m", "role": "gemma", "runs": runs,
         "targets": lb.bench_targets("gemma", runs, 16, 4, [0, 64])}]}
    text = "\n".join(report.render_bench(bench, md=False))
    look = lb.bench_lookup(runs)
    assert f"{look[('q8_0/turbo3', 'tg4', 64)]['avg_ts']:.1f}" in text
    assert "tg4@64 t/s" in text and "pp16@0 t/s" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("q8_0/q8_0 "))
    assert "1.000" in line
    md = "\n".join(report.render_bench(bench, md=True))
    assert "| K/V | pp16@0 t/s | /q8_0 | /f16 |" in md


# ---------------------------------------------------------------------------
# part 3: KV cache size


def _gguf(path, arch, *, n_layer, n_embd, n_head, n_head_kv, head=None, window=None, ctx_train):
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layer)
    w.add_context_length(ctx_train)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(1024)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    if head:
        w.add_key_length(head)
        w.add_value_length(head)
    if window:
        w.add_sliding_window(window)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(7)
    w.add_tensor("token_embd.weight", np.zeros((4, 16), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return plan.read_model(path)


@pytest.fixture
def gemma_info(tmp_path):  # Gemma 3 270M's attention metadata
    return _gguf(tmp_path / "g3.gguf", "gemma3", n_layer=18, n_embd=640, n_head=4, n_head_kv=1,
                 head=256, window=512, ctx_train=32768)


@pytest.fixture
def synth_info(tmp_path):  # the bench's synthetic model's attention metadata
    s = bench_model.SYNTH_SHAPE
    return _gguf(tmp_path / "s.gguf", "llama", n_layer=s["layers"], n_embd=s["n_embd"], n_head=s["n_head"],
                 n_head_kv=s["n_head_kv"], ctx_train=s["ctx_train"])


def test_kv_row_gemma_real(gemma_info):
    reported = plan.parse_kv_sizes(read("llama_cli_gemma_q8_0_turbo3_c8192_cpu.log"))
    assert len(reported) == 2
    row = kv_size.kv_row(gemma_info, 8192, "q8_0", "turbo3", reported)
    assert row["match"] is True
    assert row["rep_mib"] == pytest.approx(8.72 + 5.45)
    assert row["rep_k_mib"] == pytest.approx(6.38 + 3.98)
    assert row["pred_mib"] == pytest.approx(row["rep_mib"], abs=0.011)
    assert row["meas_bpv_k"] == pytest.approx(8.5, abs=0.01)
    assert row["meas_bpv_v"] == pytest.approx(3.125, abs=0.01)
    assert (row["bpv_k"], row["bpv_v"]) == (8.5, 3.125)
    # the same log read as another pair: the type check fails it
    assert kv_size.kv_row(gemma_info, 8192, "q8_0", "turbo4", reported)["match"] is False
    # or at another context: the cell counts differ
    assert kv_size.kv_row(gemma_info, 4096, "q8_0", "turbo3", reported)["match"] is False


def test_kv_row_synth_real(synth_info):
    reported = plan.parse_kv_sizes(read("llama_cli_synth_turbo4_turbo4_c4096_cpu.log"))
    row = kv_size.kv_row(synth_info, 4096, "turbo4", "turbo4", reported)
    assert row["match"] is True and row["rep_mib"] == pytest.approx(34.0)
    assert row["meas_bpv_k"] == pytest.approx(4.25) and row["meas_bpv_v"] == pytest.approx(4.25)
    assert kv_size.kv_row(synth_info, 4096, "turbo4", "turbo4", None)["match"] is None


def test_kv_unsupported_and_render(tmp_path, synth_info):
    info = _gguf(tmp_path / "h80.gguf", "llama", n_layer=2, n_embd=320, n_head=4, n_head_kv=4,
                 ctx_train=4096)  # head 80: no turbo block (32, 64, 96) fits
    row = kv_size.kv_row(info, 4096, "q8_0", "turbo3", None)
    assert row["unsupported"] and row["pred_mib"] is None
    ok = kv_size.kv_row(synth_info, 4096, "turbo4", "turbo4",
                   plan.parse_kv_sizes(read("llama_cli_synth_turbo4_turbo4_c4096_cpu.log")))
    text = "\n".join(report.render_kv({"ctx": 4096, "models": [
        {"name": "synthetic", "rows": [ok, row], "errors": []}]}, md=False))
    assert "unsupported" in text and "34.00 (17.00 + 17.00)" in text and " yes" in text


def test_synth_shape_is_8b_attention():
    s = bench_model.SYNTH_SHAPE
    assert (s["n_head"], s["n_head_kv"], s["n_embd"] // s["n_head"]) == (32, 8, 128)
    from tqpatch.synth import SynthShape

    SynthShape(**s).check()


# ---------------------------------------------------------------------------
# CLI behaviour


def test_parse_lists():
    assert common.parse_config_list("f16/f16, q8_0/turbo3") == [("f16", "f16"), ("q8_0", "turbo3")]
    for bad in ("q8_0", "q8_0/", "q8_0/turbo9", ""):
        with pytest.raises(TqpatchError):
            common.parse_config_list(bad)
    assert common.parse_int_list("0,8192,32768", "-d") == [0, 8192, 32768]
    for bad in ("x", "-1", ""):
        with pytest.raises(TqpatchError):
            common.parse_int_list(bad, "-d")


def test_help_explains_the_parts_and_exit_codes():
    code, out, _ = main(["--help"])
    assert code == 0
    for word in ("fa ", "bench ", "kv ", "--parts", "--synth", "--load", "PASS / MISS", "3 when a run failed"):
        assert word in out, word


def test_the_script_is_the_command():
    proc_ = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True,
                           timeout=60, cwd=ROOT)
    assert proc_.returncode == 0 and "Usage: python3 benchmarks/bench_kv.py [OPTIONS]" in proc_.stdout
    assert "--fa-heads" in proc_.stdout


def _one_line_error(code: int, err: str, expect: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code != 0 and "Traceback" not in err, err
    assert any(expect in ln for ln in lines) and len(lines) <= 3, err


def test_missing_binary_is_a_clean_error(tmp_path):
    code, _, err = main(["--backend", "cpu", "--bin-dir", str(tmp_path), "--parts", "fa"])
    _one_line_error(code, err, "test-backend-ops is missing")


def test_missing_model_is_a_clean_error(tmp_path):
    (tmp_path / "llama-cli").write_text("")
    code, _, err = main(["--backend", "cpu", "--bin-dir", str(tmp_path), "--parts", "kv",
                         "--model", str(tmp_path / "none.gguf")])
    _one_line_error(code, err, "none.gguf does not exist")


@pytest.mark.parametrize("args, expect", [
    (["--parts", "fa,xx"], "--parts takes a comma list"),
    (["--backend", "nosuch"], "unknown backend 'nosuch'"),
    (["--pp", "0", "--tg", "0"], "nothing to measure"),
    (["--configs", "q8_0/turbo9"], "turbo9"),
    (["--depths", "0,x"], "--depths must be"),
    (["--fa-heads", "-1"], "--fa-heads must be"),
    (["--timeout", "0"], "must be positive"),
])
def test_bad_options_are_one_clear_line(args, expect):
    code, _, err = main(["--backend", "cpu", *args] if args[0] != "--backend" else args)
    _one_line_error(code, err, expect)


def test_run_tool_timeout_env_and_merged_output():
    r = proc.run_tool([sys.executable, "-c", "import time; time.sleep(30)"], 0.5)
    assert r.timed_out and r.rc != 0
    r = proc.run_tool([sys.executable, "-c", "import sys, os; print(os.environ['LLAMA_TURBO_BOUNDARY_V']); "
                       "sys.stdout.flush(); sys.stderr.write('a\\nb\\n')"], 10)
    assert (r.rc, r.out, r.err, r.timed_out) == (0, "0\na\nb\n", "", False)
    with pytest.raises(TqpatchError, match="cannot run"):
        proc.run_tool(["/nonexistent/binary"], 5)


def test_run_split_keeps_stderr_apart_and_partial_output_on_timeout():
    r = proc.run_split([sys.executable, "-c", "import sys, os; print(os.environ['LLAMA_TURBO_BOUNDARY_K']); "
                        "sys.stderr.write('progress\\n')"], 10)
    assert (r.rc, r.out, r.err, r.timed_out) == (0, "0\n", "progress\n", False)
    r = proc.run_split([sys.executable, "-u", "-c", "import time; print('[', flush=True); time.sleep(30)"], 1)
    assert r.timed_out and r.out.strip() == "["
    with pytest.raises(TqpatchError, match="cannot run"):
        proc.run_split(["/nonexistent/binary"], 5)


def test_tail_is_one_line_of_the_last_lines():
    assert proc.tail("a\n\nb\nc\n", 2) == "b | c"
    assert proc.tail("") == "(no output)"


def test_load_renders_saved_results(tmp_path):
    cases = fa.fa_cases(fa.parse_tbo_sql(read("tbo_perf_fa_cpu_sql.txt")))
    a = {"schema": report.SCHEMA, "meta": {"backend": "cpu", "commands": ["one"]},
         "fa": {"device_name": "CPU", "device": "", "cases": cases, "error": None}}
    runs = _runs()
    b = {"schema": report.SCHEMA, "meta": {"backend": "cpu", "commands": ["two"]},
         "bench": {"pp": 16, "tg": 4, "depths": [0, 64], "reps": 2, "ngl": 99, "models": [
             {"name": "gemma", "path": "/m", "role": "gemma", "runs": runs,
              "targets": lb.bench_targets("gemma", runs, 16, 4, [0, 64])}]}}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    md = tmp_path / "r.md"
    code, out, _ = main(["--load", str(tmp_path / "a.json"), "--load", str(tmp_path / "b.json"),
                         "--markdown", str(md)])
    assert code == 0
    assert "head size 128" in out and "llama-bench: gemma" in out
    text = md.read_text()
    assert "| q8_0/turbo4 |" in text and "one\ntwo" in text
    (tmp_path / "bad.json").write_text("{}")
    code, _, err = main(["--load", str(tmp_path / "bad.json")])
    _one_line_error(code, err, "is not a bench results file")


# ---------------------------------------------------------------------------
# end to end on the CPU build (slow)


@pytest.mark.slow
def test_end_to_end_cpu(tmp_path):
    import cpu_build

    from tqpatch import model as tq_model

    try:
        for name in ("test-backend-ops", "llama-bench", "llama-cli"):
            cpu_build.find(name)
    except TqpatchError as exc:
        pytest.skip(f"no CPU build: {exc}")
    gemma = tq_model.default_model_path()
    if not gemma.is_file():
        pytest.skip("no test model: run `tqpatch model`")
    out = tmp_path / "out"
    # the CPU device of the CPU tests' build (a Vulkan build's in CI)
    cmd = [sys.executable, "-m", "tqpatch.cli", "bench", "--backend", "cpu", "--bin-dir", str(cpu_build.build_dir() / "bin"),
           "--parts", "fa,bench,kv",
           "--fa-types", "f16,turbo3", "--fa-heads", "128",
           "--configs", "f16/f16,q8_0/q8_0,q8_0/turbo3", "--depths", "0,32", "--pp", "8", "--tg", "2",
           "--reps", "1", "--kv-configs", "f16/f16,q8_0/turbo3", "--kv-ctx", "2048", "--threads", "2",
           "--out", str(out), "--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((tmp_path / "r.json").read_text())
    pairs = {(c["type_k"], c["type_v"]) for c in res["fa"]["cases"]}
    assert pairs == {("f16", "f16"), ("f16", "turbo3"), ("turbo3", "f16"), ("turbo3", "turbo3")}
    assert all(c["us"] and c["us"] > 0 for c in res["fa"]["cases"])
    (m,) = res["bench"]["models"]
    assert m["role"] == "gemma" and len(m["runs"]) == 3
    for run in m["runs"]:
        assert run["error"] is None
        assert sorted((r["test"], r["depth"]) for r in run["results"]) == \
            [("pp8", 0), ("pp8", 32), ("tg2", 0), ("tg2", 32)]
    rows = res["kv"]["models"][0]["rows"]
    assert [r["match"] for r in rows] == [True, True]
    assert "head size 128" in proc.stdout and "KV cache size" in proc.stdout
    assert "[bench 3/3]" in proc.stderr
    assert (out / "results.json").is_file() and (out / "fa_test-backend-ops.log").is_file()
    assert "| K/V |" in (tmp_path / "r.md").read_text()


def _fake_tbo(tmp_path: Path, body: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "test-backend-ops"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(0o755)
    return bin_dir


def test_fa_part_on_a_fake_binary_records_its_command(tmp_path):
    sql = DATA / "tbo_perf_fa_cpu_sql.txt"
    bin_dir = _fake_tbo(tmp_path, f"echo 'loading CPU backend' >&2\ncat '{sql}'")
    out = tmp_path / "out"
    code, text, err = main(["-b", "cpu", "--bin-dir", str(bin_dir), "--parts", "fa", "--fa-heads", "128",
                            "--out", str(out), "--json", str(tmp_path / "r.json")])
    assert code == 0, err
    assert "head size 128" in text and "q8_0/turbo4" in text
    res = json.loads((tmp_path / "r.json").read_text())
    assert len(res["fa"]["cases"]) == 9 and res["fa"]["device_name"] == "CPU"
    assert res["meta"]["commands"][0].endswith(f"--backend cpu --bin-dir {bin_dir} --parts fa "
                                                f"--fa-heads 128 --out {out} --json {tmp_path / 'r.json'}")
    assert "loading CPU backend" in (out / "fa_test-backend-ops.log").read_text()
    assert json.loads((out / "results.json").read_text())["fa"]["cases"]


def test_a_failed_run_is_a_table_row_and_exit_3(tmp_path):
    bin_dir = _fake_tbo(tmp_path, "echo 'ggml: no device CUDA7' >&2\nexit 1")
    code, text, err = main(["-b", "cpu", "--bin-dir", str(bin_dir), "--parts", "fa", "--device", "CUDA7"])
    assert code == 3 and "Traceback" not in err
    assert "FAILED: exit code 1: ggml: no device CUDA7" in text
