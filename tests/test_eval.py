"""eval: parsing real llama-perplexity output, configurations, ΔPPL, reports, failure
handling (with a fake llama-perplexity), plots without matplotlib.

tests/data/perplexity_*.txt are real outputs (stdout + stderr) of the patched
llama-perplexity at the pin, Gemma 3 270M Q4_K_M, the first 8000 bytes of
tools/server/README.md, `-c 256 --chunks 2 -fa on -t 1 -lv 4`:
  perplexity_plain.txt     -ctk f16 -ctv f16
  perplexity_kld_base.txt  -ctk f16 -ctv f16 --kl-divergence-base FILE
  perplexity_kld.txt       -ctk q8_0 -ctv turbo3 --kl-divergence-base FILE --kl-divergence
  perplexity_error.txt     -ctk turbo9 -ctv turbo3 (exit status 1)
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tqpatch import eval as ev
from tqpatch.cli import main
from tqpatch.errors import TqpatchError

DATA = Path(__file__).parent / "data"
_USER_CACHE = os.environ.get("TQPATCH_CACHE")  # the slow test uses the real cache


def data(name: str) -> str:
    return (DATA / f"perplexity_{name}.txt").read_text()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TQPATCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---------------------------------------------------------------- parsing real output


def test_parse_plain():
    p = ev.parse_perplexity_output(data("plain"))
    assert p["ppl"] == pytest.approx(20.6110)
    assert p["ppl_err"] == pytest.approx(4.22192)
    assert p["kld_mean"] is None and p["top1"] is None and p["kld_p99"] is None
    # Gemma 3: a global cache (3 layers) and a sliding-window one (15 layers), summed
    assert p["kv_caches"] == 2
    assert p["kv_mib"] == pytest.approx(36.0)
    assert p["k_mib"] == pytest.approx(18.0) and p["v_mib"] == pytest.approx(18.0)
    assert (p["k_type"], p["v_type"]) == ("f16", "f16")
    assert p["errors"] == []


def test_parse_kld_base_run_is_a_plain_ppl():
    p = ev.parse_perplexity_output(data("kld_base"))
    assert p["ppl"] == pytest.approx(20.6110)
    assert p["kld_mean"] is None
    assert p["errors"] == []


def test_parse_kld():
    p = ev.parse_perplexity_output(data("kld"))
    assert p["ppl"] == pytest.approx(21.660678)  # Mean PPL(Q), not PPL(base)
    assert p["ppl_err"] == pytest.approx(4.403982)
    assert p["ppl_base"] == pytest.approx(20.610911)
    assert p["kld_mean"] == pytest.approx(0.038803)
    assert p["kld_err"] == pytest.approx(0.002648)
    assert p["kld_p99"] == pytest.approx(0.212216)
    assert p["top1"] == pytest.approx(90.945)
    assert p["top1_err"] == pytest.approx(1.804)
    assert (p["k_type"], p["v_type"]) == ("q8_0", "turbo3")
    assert p["k_mib"] == pytest.approx(1.59 + 7.97)
    assert p["v_mib"] == pytest.approx(0.59 + 2.93)
    assert p["kv_mib"] == pytest.approx(2.18 + 10.90)
    assert p["errors"] == []


def test_parse_error_output():
    p = ev.parse_perplexity_output(data("error"))
    assert p["ppl"] is None
    assert any("Unsupported cache type: turbo9" in e for e in p["errors"])


def test_parse_nan_and_judge():
    text = data("plain").replace("PPL = 20.6110 +/- 4.22192", "PPL = nan +/- nan")
    assert math.isnan(ev.parse_perplexity_output(text)["ppl"])
    r = ev.judge(ev.Result(ev.Config("q8_0", "turbo3")), 0, text)
    assert not r.ok and "nan" in r.error


def test_judge_failures_keep_log_tail():
    r = ev.judge(ev.Result(ev.Config("q8_0", "turbo3")), 1, data("error"))
    assert not r.ok
    assert "status 1" in r.error and "Unsupported cache type" in r.error
    assert "to show complete usage" in r.log_tail
    assert len(r.log_tail.splitlines()) <= ev.TAIL_LINES
    ok = ev.judge(ev.Result(ev.Config("q8_0", "turbo3")), 0, data("kld"))
    assert ok.ok and ok.error is None and ok.top1 == pytest.approx(90.945)
    other = ev.judge(ev.Result(ev.Config("turbo3", "turbo3")), 0, data("kld"))
    assert not other.ok and "K (q8_0) / V (turbo3)" in other.error
    missing = ev.judge(ev.Result(ev.Config("f16", "f16")), 0, "nothing useful\n")
    assert not missing.ok and "no PPL" in missing.error


# ---------------------------------------------------------------- configurations


def test_config_parse():
    c = ev.Config.parse(" Q8_0/Turbo3 ")
    assert (c.k, c.v, c.label) == ("q8_0", "turbo3", "q8_0/turbo3")
    assert c.bpv_k == pytest.approx(8.5)
    assert c.bpv_v == pytest.approx(3.125)
    assert c.avg_bpv == pytest.approx((8.5 + 3.125) / 2)
    assert ev.Config.parse("f16/f16").is_baseline
    assert ev.Config.parse("turbo4/turbo4").bpv_k == pytest.approx(4.25)


@pytest.mark.parametrize("bad", ["q8_0", "q8_0/", "/turbo3", "a/b/c", "", "q8_0 turbo3"])
def test_config_malformed(bad):
    with pytest.raises(TqpatchError, match="malformed configuration"):
        ev.Config.parse(bad)


def test_config_unknown_type_lists_known():
    with pytest.raises(TqpatchError) as exc:
        ev.Config.parse("q8_0/turbo9")
    msg = exc.value.message
    assert "turbo9" in msg and "for V" in msg
    for t in ("f16", "q8_0", "q4_0", "turbo2", "turbo3", "turbo4"):
        assert t in msg


def test_parse_configs():
    cs = ev.parse_configs("f16/f16, q8_0/turbo3,,q8_0/turbo3,turbo2/turbo2")
    assert [c.label for c in cs] == ["f16/f16", "q8_0/turbo3", "turbo2/turbo2"]
    with pytest.raises(TqpatchError, match="no configuration"):
        ev.parse_configs(" , ")
    assert len(ev.parse_configs(ev.DEFAULT_CONFIGS)) == 9


# ---------------------------------------------------------------- ΔPPL


def test_delta_ppl():
    assert ev.delta_ppl_pct(11.0, 10.0) == pytest.approx(10.0)
    assert ev.delta_ppl_pct(9.0, 10.0) == pytest.approx(-10.0)
    assert ev.delta_ppl_pct(12.62, 11.29) == pytest.approx(11.780, abs=1e-3)
    assert ev.delta_ppl_pct(None, 10.0) is None
    assert ev.delta_ppl_pct(10.0, None) is None
    assert ev.delta_ppl_pct(float("nan"), 10.0) is None


def _res(label, ppl, ok=True, **kw):
    return ev.Result(ev.Config.parse(label), ok=ok, ppl=ppl, **kw)


def test_fill_deltas_uses_f16_row_then_fallback():
    rs = [_res("q8_0/turbo3", 11.0), _res("f16/f16", 10.0), _res("turbo2/turbo2", None, ok=False)]
    assert ev.fill_deltas(rs, base_ppl=99.0) == 10.0
    assert rs[0].delta_ppl_pct == pytest.approx(10.0)
    assert rs[1].delta_ppl_pct == pytest.approx(0.0)
    assert rs[2].delta_ppl_pct is None
    # no f16/f16 row: the base run's PPL; neither: no delta
    rs = [_res("q8_0/turbo3", 11.0)]
    ev.fill_deltas(rs, base_ppl=10.0)
    assert rs[0].delta_ppl_pct == pytest.approx(10.0)
    rs = [_res("q8_0/turbo3", 11.0)]
    ev.fill_deltas(rs)
    assert rs[0].delta_ppl_pct is None


def test_base_file_size_matches_real_file():
    # the real --kl-divergence-base file of the captured run: 2 chunks x 256, Gemma vocab
    real = 133173252
    est = ev.base_file_bytes(2, 256, 262144)
    assert est <= real and real - est < 4096  # a small header besides the logits
    # ~512 KB per scored token; 20 x 512 is ~2.5 GiB, below the warning
    assert ev.base_file_bytes(20, 512, 262144) < ev.BASE_FILE_WARN_BYTES
    assert ev.base_file_bytes(40, 512, 262144) > ev.BASE_FILE_WARN_BYTES


# ---------------------------------------------------------------- reports


def _sample_results():
    rs = [
        _res("f16/f16", 9.1553, ppl_err=1.0546, kld_mean=1e-6, kld_p99=3e-5, top1=100.0,
             kv_mib=36.0, seconds=6.8, command=["llama-perplexity", "-ctk", "f16"]),
        _res("q8_0/turbo3", 9.2253, ppl_err=1.0355, kld_mean=0.049669, kld_p99=0.6334,
             top1=92.94, kv_mib=13.08, seconds=13.0,
             command=["llama-perplexity", "-ctk", "q8_0", "-ctv", "turbo3"],
             base_command=["llama-perplexity", "--kl-divergence-base", "/tmp/b.kld"]),
        ev.Result(ev.Config.parse("turbo2/turbo2"), ok=False, error="exited with status 1",
                  log_tail="boom | line"),
    ]
    ev.fill_deltas(rs)
    return rs


def test_render_markdown():
    rs = _sample_results()
    meta = {"date": "2026-01-01T00:00:00+00:00", "model": "/m/gemma.gguf", "model_sha256": "ab" * 32,
            "text": "/t/README.md", "text_sha256": "cd" * 32, "backend": "cpu", "chunks": 3,
            "ctx": 512, "threads": 2, "kld": True,
            "machine": {"platform": "Linux-x86_64", "cpu_count": 2}}
    md = ev.render_markdown(rs, meta)
    lines = md.splitlines()
    header = next(i for i, l in enumerate(lines) if l.startswith("| K | V |"))
    assert "ΔPPL %" in lines[header] and "top-1 %" in lines[header]
    assert lines[header + 1].startswith("|---|---|---:")
    assert lines[header + 2] == ("| f16 | f16 | 16.000 | 16.000 | 9.1553 ± 1.0546 | +0.00 | "
                                 "0.000001 | 0.00003 | 100.00 | - | 36.00 | 6.8 |")
    assert "| q8_0 | turbo3 | 8.500 | 3.125 | 9.2253 ± 1.0355 | +0.76 |" in lines[header + 3]
    assert lines[header + 4].startswith("| turbo2 | turbo2 | 2.125 | 2.125 | FAILED |")
    assert "### turbo2/turbo2" in md and "boom | line" in md  # log tail in a code block
    assert "ab" * 32 in md and "cd" * 32 in md
    assert "Linux-x86_64" in md and "CPUs: 2" in md
    assert "2026-01-01" in md
    # exact commands, base-logits run first
    cmds = md.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
    assert cmds[0] == "llama-perplexity -ctk f16"
    assert "llama-perplexity --kl-divergence-base /tmp/b.kld" in cmds
    assert cmds.index("llama-perplexity --kl-divergence-base /tmp/b.kld") < cmds.index(
        "llama-perplexity -ctk q8_0 -ctv turbo3")


def test_render_table_and_json():
    rs = _sample_results()
    table = ev.render_table(rs)
    assert "FAILED" in table and "turbo2/turbo2 FAILED: exited with status 1" in table
    assert "+0.76" in table
    js = ev.to_json(rs, {"x": 1})
    assert js["meta"] == {"x": 1}
    row = js["results"][1]
    assert row["config"] == "q8_0/turbo3" and row["bpv_v"] == pytest.approx(3.125)
    assert row["delta_ppl_pct"] == pytest.approx((9.2253 / 9.1553 - 1) * 100)
    json.dumps(js)


def test_plot_without_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(TqpatchError, match=r"pip install 'tqpatch\[plot\]'"):
        ev.plot(_sample_results(), tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()


# ---------------------------------------------------------------- runs with a fake binary

FAKE = """#!/bin/sh
# Canned real outputs; the KV cache lines name the -ctk/-ctv asked for.
echo "$*" >> "{calls}"
mode=plain
prev=
for a in "$@"; do
  case "$prev" in -ctk) k=$a ;; -ctv) v=$a ;; esac
  case "$a" in
    --kl-divergence) mode=kld ;;
    --kl-divergence-base) [ "$mode" = plain ] && mode=kld_base ;;
    turbo2) cat "{data}/perplexity_error.txt" >&2; exit 1 ;;
  esac
  prev=$a
done
sed -E "s/K \\([a-z0-9_]+\\):/K ($k):/; s/V \\([a-z0-9_]+\\):/V ($v):/" "{data}/perplexity_$mode.txt"
"""


FAKE_SERVER = """#!{python}
# A llama-server stand-in: /health, and /completion answering each prompt sensibly,
# or garbage when a cache type named in GARBAGE_FOR is asked for.
import http.server, json, sys
args = sys.argv[1:]
arg = lambda name: args[args.index(name) + 1]
k, v = arg("-ctk"), arg("-ctv")
with open("{calls}", "a") as f:
    f.write("server " + " ".join(args) + "\\n")
if k == "bf16":
    sys.exit("error: this fake refuses bf16")
garbage = any(t in "{garbage}".split(",") for t in (k, v))
answers = {{"1, 2, 3, 4, 5,": " 6, 7, 8, 9, 10", "The capital of France is": " Paris.",
           "def fibonacci(n):": "\\n    return n"}}

class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def reply(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.reply({{"status": "ok"}})

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = " the the the the" if garbage else answers[req["prompt"]]
        self.reply({{"content": text, "tokens": [ord(c) for c in text]}})

http.server.HTTPServer(("127.0.0.1", int(arg("--port"))), Handler).serve_forever()
"""


def make_fake_server(tmp_path, calls, garbage="turbo2"):
    server = tmp_path / "bin" / "llama-server"
    server.parent.mkdir(parents=True, exist_ok=True)
    server.write_text(FAKE_SERVER.format(python=sys.executable, calls=calls, garbage=garbage))
    server.chmod(server.stat().st_mode | stat.S_IEXEC)
    return server


@pytest.fixture
def fake(tmp_path, monkeypatch):
    calls = tmp_path / "calls.log"
    binary = tmp_path / "bin" / "llama-perplexity"
    binary.parent.mkdir()
    binary.write_text(FAKE.format(calls=calls, data=DATA))
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))  # a header: eval checks it first
    text = tmp_path / "t.txt"
    text.write_text("hello world\n" * 100)

    server = make_fake_server(tmp_path, calls, garbage="turbo2,turbo4")

    import tqpatch.build_record as build_mod

    def find_binary(name, backend, build_dir=None):
        return {"llama-perplexity": binary, "llama-server": server}[name]

    monkeypatch.setattr(build_mod, "find_binary", find_binary)
    return {"binary": binary, "model": model, "text": text, "calls": calls, "server": server}


class _Recorder(ev.Progress):
    def __init__(self):
        self.events = []

    def start(self, index, total, config, what):
        self.events.append(("start", index, config.label))

    def finish(self, index, total, result, what):
        self.events.append(("finish", index, result.label, result.ok))

    def warn(self, message):
        self.events.append(("warn", message))

    def coherence(self, label, result):
        self.events.append(("coherence", label, result.summary))


def test_evaluate_one_failure_does_not_stop_others(fake, cache):
    rec = _Recorder()
    rs = ev.evaluate("f16/f16,q8_0/turbo2,q8_0/turbo3", model=fake["model"], text=fake["text"],
                     chunks=2, ctx=256, threads=1, progress=rec)
    assert [r.label for r in rs] == ["f16/f16", "q8_0/turbo2", "q8_0/turbo3"]
    assert [r.ok for r in rs] == [True, False, True]
    assert "Unsupported cache type" in rs[1].error
    assert "to show complete usage" in rs[1].log_tail
    assert rs[2].kld_mean == pytest.approx(0.038803)
    assert rs[2].top1 == pytest.approx(90.945)
    # the canned f16/f16 KLD output is the q8_0/turbo3 one: ΔPPL 0 against itself
    assert rs[0].delta_ppl_pct == pytest.approx(0.0)
    calls = fake["calls"].read_text().splitlines()
    assert len(calls) == 4  # base + 3
    assert "--kl-divergence-base" in calls[0] and "--kl-divergence " not in calls[0] + " "
    assert "-ctk f16 -ctv f16" in calls[0]
    for c in calls[1:]:
        assert "--kl-divergence" in c.split() and "-fa on" in c and "-lv 4" in c
        assert "--device none" in c  # the CPU backend's tool arguments
    assert "-c 256 --chunks 2" in calls[1] and "-t 1" in calls[1]
    assert rec.events[0] == ("start", 0, "f16/f16")
    assert ("finish", 2, "q8_0/turbo2", False) in rec.events
    # the base logits' temporary folder is gone
    assert list((cache / "tmp").iterdir()) == []
    assert rs[2].base_command and "--kl-divergence-base" in rs[2].base_command


def test_evaluate_no_kld(fake, cache):
    rs = ev.evaluate(["q8_0/turbo3", "f16/f16"], model=fake["model"], text=fake["text"],
                     chunks=2, ctx=256, threads=1, kld=False, extra_args=["--foo", "1"])
    assert all(r.ok for r in rs)
    assert rs[0].ppl == pytest.approx(20.6110) and rs[0].kld_mean is None
    calls = fake["calls"].read_text().splitlines()
    assert len(calls) == 2
    assert not any("kl-divergence" in c for c in calls)
    assert all(c.endswith("--foo 1") for c in calls)
    assert not (cache / "tmp").exists()


def test_evaluate_base_failure_fails_all(fake):
    fake["binary"].write_text("#!/bin/sh\necho 'error: out of memory' >&2\nexit 3\n")
    rs = ev.evaluate("f16/f16,q8_0/turbo3", model=fake["model"], text=fake["text"],
                     chunks=1, ctx=256)
    assert [r.ok for r in rs] == [False, False]
    assert all("base run failed" in r.error for r in rs)
    assert "out of memory" in rs[0].log_tail


def test_evaluate_warns_about_big_base_file(fake):
    rec = _Recorder()
    ev.evaluate("q8_0/turbo3", model=fake["model"], text=fake["text"], chunks=40, ctx=512,
                threads=1, progress=rec)
    warnings = [e[1] for e in rec.events if e[0] == "warn"]
    assert warnings and "GiB" in warnings[0] and "--no-kld" in warnings[0]


def _cli(args):
    return CliRunner().invoke(main, ["eval", *args])


def test_cli_failure_reported_and_exit_nonzero(fake, tmp_path):
    md = tmp_path / "r.md"
    res = _cli(["--model", str(fake["model"]), "--text", str(fake["text"]), "--chunks", "2",
                "--ctx", "256", "-t", "1", "--configs", "f16/f16,turbo2/turbo2,q8_0/turbo3",
                "--markdown", str(md), "--no-coherence"])
    assert res.exit_code == 1, res.output
    out = res.output
    assert "[base] f16/f16 base logits" in out
    assert "[2/3] turbo2/turbo2: FAILED" in out
    assert "[3/3] q8_0/turbo3: done in" in out
    assert "1 of 3 configuration(s) failed: turbo2/turbo2" in out
    assert "Traceback" not in out
    text = md.read_text()
    assert "| q8_0 | turbo3 |" in text and "FAILED" in text
    assert "--kl-divergence-base" in text  # the exact command lines
    assert "sha256" in text


def test_cli_json(fake):
    res = _cli(["--model", str(fake["model"]), "--text", str(fake["text"]), "--chunks", "2",
                "--ctx", "256", "--configs", "q8_0/turbo3", "--no-kld", "--json", "--no-coherence"])
    assert res.exit_code == 0, res.output
    js = json.loads(res.stdout)
    assert js["results"][0]["ppl"] == pytest.approx(20.6110)
    assert js["meta"]["kld"] is False and len(js["meta"]["model_sha256"]) == 64
    assert js["meta"]["machine"]["cpu_count"] == os.cpu_count()


def test_cli_plot_without_matplotlib(fake, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    args = ["--model", str(fake["model"]), "--text", str(fake["text"]), "--chunks", "1",
            "--configs", "q8_0/turbo3", "--no-kld", "--no-coherence"]
    res = _cli(args)  # no --plot: matplotlib is never needed
    assert res.exit_code == 0, res.output
    res = _cli(args + ["--plot", str(tmp_path / "p.png")])
    assert res.exit_code == 1
    assert "q8_0" in res.stdout  # the table still came out
    assert "pip install 'tqpatch[plot]'" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("configs, message", [
    ("q8_0/turbo9", "known cache types"),
    ("q8_0", "malformed configuration"),
    ("f16/f16/f16", "malformed configuration"),
])
def test_cli_bad_configs(fake, configs, message):
    res = _cli(["--model", str(fake["model"]), "--text", str(fake["text"]), "--configs", configs])
    assert res.exit_code != 0
    assert message in res.output and "Traceback" not in res.output
    assert not fake["calls"].exists()


def test_cli_missing_inputs(fake, tmp_path):
    res = _cli(["--model", str(tmp_path / "nope.gguf"), "--text", str(fake["text"])])
    assert res.exit_code == 1 and "model file" in res.output and "not found" in res.output
    res = _cli(["--model", str(fake["model"]), "--text", str(tmp_path / "nope.txt")])
    assert res.exit_code == 1 and "text file" in res.output and "not found" in res.output


def test_cli_binary_not_built(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    text = tmp_path / "t.txt"
    text.write_text("x")
    res = _cli(["--model", str(model), "--text", str(text), "--build-dir", str(tmp_path / "b")])
    assert res.exit_code == 1
    assert "tqpatch build --backend cpu" in res.output and "Traceback" not in res.output


# ---------------------------------------------------------------- coherence beside PPL / KLD


def test_evaluate_reports_coherence_per_configuration(fake):
    rec = _Recorder()
    rs = ev.evaluate("f16/f16,q8_0/turbo3,turbo2/turbo2,q8_0/turbo3:bv2", model=fake["model"],
                     text=fake["text"], binary=fake["binary"], kld=False, chunks=1, ctx=256,
                     threads=1, progress=rec, server=fake["server"])
    got = {r.label: r.coherence for r in rs}
    assert got["f16/f16"].summary == "3/3" and got["q8_0/turbo3"].coherent
    assert got["turbo2/turbo2"].summary == "0/3" and not got["turbo2/turbo2"].coherent
    assert got["q8_0/turbo3:bv2"].summary == "3/3"
    servers = [line for line in fake["calls"].read_text().splitlines() if line.startswith("server")]
    # f16 once (the reference), then every other configuration; the variant's switches
    # are the ones its PPL run had
    assert len(servers) == 4 and "-ctk f16 -ctv f16" in servers[0]
    assert ("coherence", "turbo2/turbo2", "0/3") in rec.events
    table = ev.render_table(rs)
    assert "coherent" in table.splitlines()[0]
    assert [line.split()[-3] for line in table.splitlines()[2:6]] == ["3/3", "3/3", "0/3", "3/3"]
    row = ev.to_json(rs)["results"][2]["coherence"]
    assert row["n_coherent"] == 0 and row["prompts"]["count"]["text"] == " the the the the"
    assert "coherent: of 3 prompts" in ev.render_markdown(rs, {})


def test_evaluate_coherence_failures(fake, tmp_path):
    # a configuration whose server does not start: 'failed', the others still judged
    rs = ev.evaluate("q8_0/turbo3,bf16/bf16", model=fake["model"], text=fake["text"],
                     binary=fake["binary"], kld=False, chunks=1, threads=1, server=fake["server"])
    assert rs[0].coherence.summary == "3/3"
    assert rs[1].coherence.summary == "failed" and "refuses bf16" in rs[1].coherence.error
    # f16 itself answers garbage: no verdicts, a warning instead
    bad = make_fake_server(tmp_path / "b", fake["calls"], garbage="f16")
    rec = _Recorder()
    rs = ev.evaluate("q8_0/turbo3", model=fake["model"], text=fake["text"], binary=fake["binary"],
                     kld=False, chunks=1, threads=1, server=bad, progress=rec)
    assert rs[0].coherence is None
    assert any(e[0] == "warn" and "cannot judge this model" in e[1] for e in rec.events)


def test_cli_coherence_column_and_switch(fake):
    args = ["--model", str(fake["model"]), "--text", str(fake["text"]), "--chunks", "1",
            "--no-kld", "--configs", "q8_0/turbo3,turbo4/turbo4"]
    res = _cli(args)
    assert res.exit_code == 0, res.output  # incoherent is reported, not a failure
    assert "[coherence] turbo4/turbo4: 0/3 (count WRONG, capital WRONG, code WRONG)" in res.output
    assert "coherent" in res.stdout and "0/3" in res.stdout
    fake["calls"].unlink()
    res = _cli(args + ["--no-coherence"])
    assert res.exit_code == 0 and "(no coherence check)" in res.output
    assert not any(line.startswith("server") for line in fake["calls"].read_text().splitlines())


def test_cli_coherence_needs_a_built_server(fake, monkeypatch):
    import tqpatch.build_record as build_mod

    def find_binary(name, backend, build_dir=None):
        if name == "llama-server":
            raise TqpatchError("llama-server is missing: it was not built")
        return fake["binary"]

    monkeypatch.setattr(build_mod, "find_binary", find_binary)
    res = _cli(["--model", str(fake["model"]), "--text", str(fake["text"]), "--no-kld"])
    assert res.exit_code == 1 and "--no-coherence skips it" in res.output
    assert not fake["calls"].exists()


@pytest.mark.parametrize("types", ["bf16/q4_1", "q5_0/q5_1", "iq4_nl/q8_0", "q4_1/turbo3"])
def test_every_llama_cpp_cache_type_is_accepted(fake, types):
    cfg = ev.Config.parse(types)
    assert (cfg.k, cfg.v) == tuple(types.split("/"))
    res = _cli(["--model", str(fake["model"]), "--text", str(fake["text"]), "--chunks", "1",
                "--no-kld", "--no-coherence", "--configs", types])
    assert res.exit_code == 0, res.output
    assert f"-ctk {cfg.k} -ctv {cfg.v}" in fake["calls"].read_text()


# ---------------------------------------------------------------- the real thing


@pytest.mark.slow
def test_real_eval_cpu(monkeypatch):
    if _USER_CACHE is None:
        monkeypatch.delenv("TQPATCH_CACHE")
    else:
        monkeypatch.setenv("TQPATCH_CACHE", _USER_CACHE)
    import cpu_build

    try:
        cpu_build.find("llama-perplexity")
    except TqpatchError as exc:
        pytest.skip(f"no CPU llama-perplexity built: {exc.message}")
    res = CliRunner().invoke(main, ["eval", "--backend", cpu_build.BUILD, "--no-kld", "--chunks", "3",
                                    "--json", "--configs", "f16/f16,q8_0/turbo3",
                                    *(f"--extra-arg={a}" for a in cpu_build.TOOL_ARGS)])
    assert res.exit_code == 0, res.output
    rows = {r["config"]: r for r in json.loads(res.stdout)["results"]}
    f16, turbo = rows["f16/f16"]["ppl"], rows["q8_0/turbo3"]["ppl"]
    assert math.isfinite(f16) and math.isfinite(turbo)
    assert abs(turbo / f16 - 1) < 0.10, (f16, turbo)
