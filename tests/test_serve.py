"""tqpatch serve: the choice rule, the context, the cache keys and the bad inputs (fast)."""

from __future__ import annotations

import json
import os
import socket
import struct

import pytest
from click.testing import CliRunner

from tqpatch import formats
from tqpatch.cli import main
from tqpatch.errors import TqpatchError
from tqpatch.plan import MIB, read_model
from tqpatch import quality
from tqpatch.serve import candidates, memory, store
from tqpatch.quality import ProbeRow
from tqpatch import backends, build_record

CPU = backends.get("cpu")

from test_plan import write_gguf


def rows(table):
    """ProbeRows from {'turbo3/turbo3 cal': kld}; all coherent unless kld < 0."""
    out = []
    for name, kld in table.items():
        pair, _, cal = name.partition(" ")
        k, v = pair.split("/")
        out.append(ProbeRow(k, v, cal == "cal", kld=abs(kld), coherent=kld >= 0,
                            coherence="3/3" if kld >= 0 else "1/3"))
    return out


GEMMA_LIKE = {"q8_0/q8_0": 0.006, "q4_0/q4_0": 0.142, "q8_0/turbo4 cal": 0.011,
              "q8_0/turbo3 cal": 0.028, "turbo4/turbo4 cal": 0.028, "turbo4/turbo3 cal": 0.05,
              "turbo3/turbo3 cal": 0.124, "turbo3/turbo3": 0.695, "turbo2/turbo2 cal": -0.4}


def test_balanced_takes_the_most_compressed_clearly_better_than_q4_0():
    c = quality.choose(rows(GEMMA_LIKE), "balanced")
    assert c.row.label == "turbo4/turbo3 cal"        # 3.69 bits, 0.05 <= 0.071
    assert c.threshold == pytest.approx(0.071)
    assert "turbo3/turbo3" in c.reason               # the smaller one and why it lost


def test_small_and_lossless_levels():
    r = rows(GEMMA_LIKE)
    assert quality.choose(r, "small").row.label == "turbo3/turbo3 cal"   # 0.124 <= 0.142
    assert quality.choose(r, "lossless").row.label == "q8_0/q8_0"        # only it is within 0.0075


def test_incoherent_never_chosen_even_with_a_low_kld():
    r = rows({"q8_0/q8_0": 0.006, "q4_0/q4_0": 0.142, "turbo2/turbo2 cal": -0.001})
    assert quality.choose(r, "small").row.label == "q4_0/q4_0"


def test_failed_runs_and_missing_anchor():
    r = rows({"q8_0/q8_0": 0.006, "q4_0/q4_0": 0.142})
    r.append(ProbeRow("turbo3", "turbo3", True, error="crashed"))
    assert quality.choose(r, "balanced").row.label == "q8_0/q8_0"
    with pytest.raises(TqpatchError, match="q4_0/q4_0"):
        quality.choose(rows({"q8_0/q8_0": 0.006}), "balanced")
    with pytest.raises(TqpatchError, match="unknown quality level"):
        quality.choose(r, "best")


def test_nothing_meets_falls_back_to_f16():
    r = rows({"q8_0/q8_0": -0.006, "q4_0/q4_0": 0.142})
    c = quality.choose(r, "lossless")
    assert c.row is None and c.pair == ("f16", "f16")


def test_probe_rows_round_trip_json():
    r = rows(GEMMA_LIKE)
    back = [ProbeRow.from_dict(json.loads(json.dumps(x.to_dict()))) for x in r]
    assert back == r


def test_candidates_follow_head_sizes(tmp_path):
    m = tmp_path / "m.gguf"
    write_gguf(m, n_embd=512, n_head=4)                       # head 128
    labels = [r.label for r in candidates.candidates(read_model(m))]
    assert "turbo3/turbo3 cal" in labels and "turbo3/turbo3" in labels
    assert labels[-2:] == ["q8_0/q8_0", "q4_0/q4_0"]
    assert len(labels) == len(formats.PROBE_CONFIGS) + len(formats.PROBE_UNCALIBRATED) + 2
    nocal = candidates.candidates(read_model(m), calibrated=False)
    assert not any(r.calibrated for r in nocal)
    odd = tmp_path / "odd.gguf"
    write_gguf(odd, n_embd=80, n_head=4)                      # head 20: no turbo block divides it
    with pytest.raises(TqpatchError, match="no turbo cache type serves head size 20.*f16"):
        candidates.candidates(read_model(odd))


def test_context_fits_free_memory_capped_at_training(tmp_path):
    m = tmp_path / "m.gguf"
    write_gguf(m, n_embd=512, n_head=4, ctx_train=8192)
    info = read_model(m)
    big = memory.Memory(64 * 1024 * MIB, "test")
    assert memory.pick_ctx(info, "turbo3", "turbo3", big)[0] == 8192
    per_token = (4 * 128 * 2 * 2) * info.n_layer              # f16 K+V bytes per token
    tight = memory.Memory(info.weight_bytes + memory.OVERHEAD_MIB * MIB + 1000 * per_token, "t")
    ctx, why = memory.pick_ctx(info, "f16", "f16", tight)
    assert ctx == 768 and "fits" in why
    assert memory.pick_ctx(info, "turbo3", "turbo3", tight)[0] > ctx   # a smaller cache: more
    with pytest.raises(TqpatchError, match="does not fit.*largest that fits is --ctx 768"):
        memory.pick_ctx(info, "f16", "f16", tight, requested=4096)
    with pytest.raises(TqpatchError, match="trained context"):
        memory.pick_ctx(info, "f16", "f16", big, requested=16384)
    with pytest.raises(TqpatchError, match="not even"):
        memory.pick_ctx(info, "f16", "f16", memory.Memory(1, "t"))


def test_device_list_parsing():
    text = ("Available devices:\n  CUDA0: NVIDIA H100 80GB HBM3 (81079 MiB, 80537 MiB free)\n"
            "  CUDA1: NVIDIA H100 80GB HBM3 (81079 MiB, 1000 MiB free)\n"
            "  Vulkan0: llvmpipe (LLVM 19) (32000 MiB, 31000 MiB free)\n")
    cuda = memory.parse_devices(text, "CUDA")
    assert [f for _, f in cuda] == [80537 * MIB, 1000 * MIB]
    assert len(memory.parse_devices(text, "Vulkan")) == 1
    assert memory.parse_devices("Available devices:\n  (none)\n", "CUDA") == []


def test_cache_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("TQPATCH_CACHE", str(tmp_path / "cache"))
    m = tmp_path / "m.gguf"
    m.write_bytes(b"GGUF" + b"\0" * 100)
    hashed = []
    sha = store.model_sha256(m, on_hash=hashed.append)
    assert store.model_sha256(m, on_hash=hashed.append) == sha and len(hashed) == 1  # remembered
    m.write_bytes(b"GGUF" + b"\1" * 100)
    os.utime(m, ns=(1, 1))
    assert store.model_sha256(m, on_hash=hashed.append) != sha and len(hashed) == 2  # changed
    rec = {"inputs": {"digest": "aaaa", "render": {"codebooks": "c1"}}}
    other_codebooks = {"inputs": {"digest": "aaaa", "render": {"codebooks": "c2"}}}
    other_build = {"inputs": {"digest": "bbbb", "render": {"codebooks": "c1"}}}
    assert store.calib_path(sha, rec) != store.calib_path(sha, other_codebooks)
    assert store.calib_path(sha, rec) == store.calib_path(sha, other_build)   # kernels aside
    assert store.probe_path(sha, rec, backends.get("cpu")) != store.probe_path(sha, other_build, backends.get("cpu"))
    assert store.probe_path(sha, rec, backends.get("cpu")) != store.probe_path(sha, rec, backends.get("cuda"))
    assert store.probe_path(sha, rec, backends.get("cpu")) != store.probe_path(sha, rec, backends.get("cpu"), calibrated=False)
    store.save_json(store.probe_path(sha, rec, backends.get("cpu")), {"rows": []})
    assert store.latest_probe(sha)[1] == {"rows": []}
    assert store.latest_probe(sha, calibrated=False) is None


def _serve(args, tmp_path):
    env = {"TQPATCH_CACHE": str(tmp_path / "cache")}
    return CliRunner().invoke(main, ["serve", *args], env=env)


def test_bad_inputs_one_line_and_nothing_started(tmp_path):
    good = tmp_path / "m.gguf"
    write_gguf(good, n_embd=512, n_head=4)
    text = tmp_path / "t.gguf"
    text.write_text("hello")
    odd = tmp_path / "odd.gguf"
    write_gguf(odd, n_embd=80, n_head=4)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        cases = [
            ([str(tmp_path / "missing.gguf")], "not found"),
            ([str(text)], "GGUF"),
            ([str(tmp_path)], "not found"),
            ([str(odd)], "no turbo cache type serves head size 20"),
            ([str(good), "--port", str(port)], "in use"),
            ([str(good), "--ctx", "12"], "at least 256"),
            ([str(good), "--ctx", "lots"], "a number of tokens"),
            ([str(good), "--quality", "best"], "best"),
            ([str(good), "--host", "no.such.host.invalid"], "--host"),
        ]
        for args, expect in cases:
            res = _serve(args, tmp_path)
            assert res.exit_code != 0, args
            assert expect in res.output, (args, res.output)
            assert "Traceback" not in res.output and len(res.output.strip().splitlines()) <= 4
            assert not (tmp_path / "cache" / "build").exists()     # refused before any work


def test_unbuilt_backend_is_built_first(tmp_path, monkeypatch):
    """Without a build, serve asks `build` for one (here: refused, no toolchain named)."""
    from tqpatch.serve import session

    calls = []
    monkeypatch.setattr("tqpatch.build.build", lambda req, echo=None: calls.append(req.backend.name)
                        or (_ for _ in ()).throw(TqpatchError("no compiler")))
    monkeypatch.setenv("TQPATCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(TqpatchError, match="no compiler"):
        session.ensure_build(CPU, CPU, None, echo=lambda m: None)
    assert calls == ["cpu"]


def test_failed_verify_is_refused(tmp_path, monkeypatch):
    from tqpatch.serve import session
    from tqpatch.verify import record as verified

    bdir = tmp_path / "b"
    (bdir / "bin").mkdir(parents=True)
    for t in session.NEEDED_TARGETS:
        (bdir / "bin" / t).write_text("")
    rec = {"backend": "cpu", "build_dir": str(bdir), "bin_dir": str(bdir / "bin"),
           "inputs": {"digest": "x"}, "finished": "now"}
    monkeypatch.setattr("tqpatch.build_record.load_record", lambda b, d=None: rec)
    monkeypatch.setattr("tqpatch.build_record.check_fresh", lambda r: None)

    class Rep:
        backend, passed, quick, types, label = "cpu", False, False, list(formats.TURBO_FORMATS), ""
        counts = {"FAIL": 3, "PASS": 1}
    monkeypatch.setattr("tqpatch.verify.verify", lambda *a, **k: Rep)
    with pytest.raises(TqpatchError, match="tqpatch verify --backend cpu` fails"):
        session.ensure_build(CPU, CPU, bdir, echo=lambda m: None)
    verified.write(Rep, rec)
    assert verified.status("cpu", rec) == "failed"
    with pytest.raises(TqpatchError, match="failed on this build"):
        session.ensure_build(CPU, CPU, bdir, echo=lambda m: None)
    Rep.passed = True
    verified.write(Rep, rec)
    assert session.ensure_build(CPU, CPU, bdir, echo=lambda m: None) is rec
    assert verified.status("cpu", {**rec, "finished": "later"}) == "none"   # a rebuild


def test_loosest_bar_is_the_small_level():
    r = rows(GEMMA_LIKE)
    assert quality.loosest_bar(r) == pytest.approx(0.142)
    assert quality.loosest_bar(rows({"turbo3/turbo3": 0.1})) is None
