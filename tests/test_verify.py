"""tqpatch verify: case/result files, the comparison logic on synthetic harness
outputs, the harness runner, the report, and (slow) the real CPU harness."""

import json
import stat
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from tqpatch import reference as R
from tqpatch import formats
from tqpatch import backends, build_record
from tqpatch import verify as V
from tqpatch.verify import checks as VC
from tqpatch.verify import compare as VCMP
from tqpatch.verify import tolerance as VT
from tqpatch import verify_io as io
from tqpatch.cli import main
from tqpatch.errors import TqpatchError

CPU = backends.get("cpu").precision()


# ---------------------------------------------------------------- helpers

def ok(check, data=None):
    return io.Result(0, 0, "", V.expected_output(check) if data is None else data)


def quantize_check(name="turbo3", x=None, seed=0):
    rng = np.random.default_rng(seed)
    if x is None:
        x = rng.standard_normal((6, 256)).astype(np.float32)
    return VC._set_rows_check(rng, name, x, ["test"] * x.shape[0], "test")


def placed(check, ref_rows):
    """Harness output for SET_ROWS: row i of the input lands in row idx[i]."""
    out = np.zeros_like(ref_rows)
    out[check.data["idx"]] = ref_rows
    return out.tobytes()


def set_d(row, b, bits, bb):
    row[b * bb] = bits & 0xFF
    row[b * bb + 1] = bits >> 8


def far_from_boundary(x, name, cols):
    m = R.boundary_margin(x, name)[:, :cols]
    r, c = np.argwhere(m > 0.02)[0]
    return int(r), int(c)


def flip_index(row_bytes, name, j, new):
    """Set index j of the first block of a turbo row to `new` (packed layout of reference.py)."""
    fmt = formats.TURBO_FORMATS[name]
    blk = row_bytes[: fmt.block_bytes].copy()[None, :]
    d, idx = R.turbo_fields(blk, name)
    idx[0, j] = new
    row_bytes[: fmt.block_bytes] = R.turbo_blocks(d, idx, name)[0]


# ---------------------------------------------------------------- file formats

def test_case_file_round_trip():
    rng = np.random.default_rng(1)
    cases = [
        io.Case("SET_ROWS", "turbo3", "turbo3", (256, 4), 1.0,
                [rng.standard_normal((4, 256)).astype("<f4"), np.arange(4, dtype="<i8")]),
        io.Case("FLASH_ATTN_EXT", "q8_0", "turbo2", (128, 3, 4, 64, 2), 0.125,
                [b"\x01\x02", b"", b"abc", bytes(range(256))]),
    ]
    data = io.encode_cases(cases)
    assert data[:4] == b"TQVC" and int.from_bytes(data[4:8], "little") == io.VERSION
    back = io.decode_cases(data)
    assert back == cases
    assert back[1].type_k == "q8_0" and back[1].type_v == "turbo2"
    # ids on the wire are ggml's
    assert int.from_bytes(data[16:20], "little", signed=True) == 44


def test_case_file_rejects_bad_input():
    with pytest.raises(TqpatchError, match="not a tqpatch-verify"):
        io.decode_cases(b"XXXX" + bytes(8))
    bad_version = b"TQVC" + (99).to_bytes(4, "little") + bytes(4)
    with pytest.raises(TqpatchError, match="version 99"):
        io.decode_cases(bad_version)
    good = io.encode_cases([io.Case("CPY", "turbo2", "turbo2", (128, 1), 1.0, [bytes(34)])])
    with pytest.raises(TqpatchError, match="truncated"):
        io.decode_cases(good[:-3])


def test_results_round_trip_and_partial_file():
    res = io.Results(3, "CPU", "CPU", "Some CPU", [
        io.Result(0, 0, "", b"\x00" * 8),
        io.Result(1, 1, "SET_ROWS not supported", b""),
        io.Result(2, 2, "graph compute failed", b"xyz"),
    ])
    data = io.encode_results(res)
    back = io.decode_results(data)
    assert back == res and back.complete
    # a crash mid-record: the complete records survive, the torn one is dropped
    torn = io.decode_results(data[:-2])
    assert len(torn.records) == 2 and not torn.complete
    assert torn.device_description == "Some CPU"


# ---------------------------------------------------------------- quantize

def test_exact_quantize_passes_for_every_type():
    for name in ("turbo2", "turbo3", "turbo4", "f16", "q8_0"):
        ch = quantize_check(name)
        rep = V.judge(ch, ok(ch), "cpu", CPU)
        assert rep.result == "PASS", (name, rep)
        assert rep.mismatches == rep.boundary == rep.scale_ulp == 0


def test_unpermuted_rows_fail():
    ch = quantize_check("turbo4")
    ref = R.quantize_rows(ch.data["x"], "turbo4")
    assert not np.array_equal(ch.data["idx"], np.arange(len(ref)))
    rep = V.judge(ch, ok(ch, ref.tobytes()), "cpu", CPU)   # rows not placed by idx
    assert rep.result == "FAIL"


@pytest.mark.parametrize("name", ["turbo2", "turbo3", "turbo4"])
def test_flipped_index_far_from_boundary_fails(name):
    ch = quantize_check(name)
    x = ch.data["x"]
    ref = R.quantize_rows(x, name)
    r, c = far_from_boundary(x, name, 64)   # in the first block of some row
    _, idx = VCMP._turbo_fields(ref[r:r + 1, :formats.TURBO_FORMATS[name].block_bytes], name)
    levels = formats.TURBO_FORMATS[name].levels
    new = idx[0, c] + 1 if idx[0, c] + 1 < levels else idx[0, c] - 1
    bad = ref.copy()
    flip_index(bad[r], name, c, new)
    rep = V.judge(ch, ok(ch, placed(ch, bad)), "cpu", CPU)
    assert rep.result == "FAIL" and rep.mismatches == 1 and rep.boundary == 0
    assert "not at a decision boundary" in rep.details[0]


def boundary_row(name="turbo3"):
    """A row whose value 5 lies one float32 ulp above a decision boundary of the stored
    indices (for a log scale: u = x * inverse[e] with the block's code e)."""
    rng = np.random.default_rng(7)
    fmt = formats.TURBO_FORMATS[name]
    _, bounds = R.codebook_arrays(name)
    x = (rng.uniform(-0.9, 0.9, size=(1, 2 * fmt.block))).astype(np.float32)
    x[0, 0] = 1.0
    b = np.float32(bounds[len(bounds) // 2 + 1])
    for _ in range(4):      # the code can move with x[5]; settle it
        e = int(R.quantize_rows(x, name)[0, 0])
        inv = R.scale_arrays(fmt.scale)[1][e]
        v = np.float32(b / inv)
        while np.float32(v * inv) <= b:
            v = np.nextafter(v, np.float32(2))
        while np.float32(np.nextafter(v, np.float32(-2)) * inv) > b:
            v = np.nextafter(v, np.float32(-2))
        x[0, 5] = v
    assert int(R.quantize_rows(x, name)[0, 0]) == e
    return x, 5


def test_flipped_index_at_boundary_is_counted_not_failed():
    name = "turbo3"
    x, j = boundary_row(name)
    assert R.boundary_margin(x, name)[0, j] < 1e-7
    ch = quantize_check(name, x)
    ref = R.quantize_rows(x, name)
    _, idx = VCMP._turbo_fields(ref, name)
    got = ref.copy()
    flip_index(got[0], name, j, idx[0, j] - 1)        # the other side of that boundary
    rep = V.judge(ch, ok(ch, placed(ch, got)), "cpu", CPU)
    assert rep.result == "PASS", rep
    assert rep.boundary == 1 and rep.mismatches == 0 and rep.near_boundary >= 1
    # flipping two levels away is not a boundary case
    flip_index(got[0], name, j, idx[0, j] - 2)
    rep = V.judge(ch, ok(ch, placed(ch, got)), "cpu", CPU)
    assert rep.result == "FAIL"


def test_scale_one_ulp_counted_two_ulps_fail():
    name = "q8_0"
    ch = quantize_check(name)
    ref = R.quantize_rows(ch.data["x"], name)
    bb = formats.type_info(name).block_bytes
    d = int(ref[2, 0]) | int(ref[2, 1]) << 8
    one = ref.copy()
    set_d(one[2], 0, d + 1, bb)
    rep = V.judge(ch, ok(ch, placed(ch, one)), "cpu", CPU)
    assert rep.result == "PASS" and rep.scale_ulp == 1 and rep.mismatches == 0
    two = ref.copy()
    set_d(two[2], 0, d + 2, bb)
    rep = V.judge(ch, ok(ch, placed(ch, two)), "cpu", CPU)
    assert rep.result == "FAIL" and rep.mismatches == 1
    assert "2 fp16 ulps" in rep.details[0]


def scale_boundary_block(name, seed=4):
    """A block whose least-squares scale lies on the boundary between two log codes."""
    fmt = formats.TURBO_FORMATS[name]
    cent, bounds = R.codebook_arrays(name)
    x = np.random.default_rng(seed).standard_normal((1, fmt.block)).astype(np.float32)
    u = x * (np.float32(1) / np.abs(x).max())
    s = R.turbo_ls_scale(x, np.searchsorted(bounds, u, side="left"), cent)[0]
    target = R.scale_arrays(fmt.scale)[2][100]          # boundary between codes 101 and 102
    return (x * np.float32(target / s)).astype(np.float32)


@pytest.mark.parametrize("name", ["turbo2", "turbo4"])
def test_log_scale_one_step_at_a_boundary_counted_else_fails(name):
    x = scale_boundary_block(name)
    ch = quantize_check(name, x)
    ref = R.quantize_rows(x, name)
    e = int(ref[0, 0])
    assert e in (101, 102)
    other = 203 - e
    # the neighbouring code, with the indices of that code: a counted scale step
    alt = R.turbo_blocks(np.array([other]), R.turbo_reindex(x, np.array([other]), name), name)
    rep = V.judge(ch, ok(ch, placed(ch, alt)), "cpu", CPU)
    assert rep.result == "PASS" and rep.scale_ulp == 1 and rep.mismatches == 0, rep
    # the neighbouring code with the reference's indices: those are the wrong indices (unless equal)
    # two codes away: not a boundary case
    far = R.turbo_blocks(np.array([e + 2]), R.turbo_reindex(x, np.array([e + 2]), name), name)
    rep = V.judge(ch, ok(ch, placed(ch, far)), "cpu", CPU)
    assert rep.result == "FAIL" and "scale code" in rep.details[0]
    # a code one step off far from any boundary fails as well
    ch2 = quantize_check(name)
    ref2 = R.quantize_rows(ch2.data["x"], name)
    bad = ref2.copy()
    bad[2, 0] += 1
    rep = V.judge(ch2, ok(ch2, placed(ch2, bad)), "cpu", CPU)
    assert rep.result == "FAIL"


def test_poisoned_block_must_be_exact():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 256)).astype(np.float32)
    x[0, 3] = np.nan
    ch = quantize_check("turbo3", x)
    ref = R.quantize_rows(x, "turbo3", nonfinite="poison")
    assert V.judge(ch, ok(ch), "cpu", CPU).result == "PASS"
    bad = ref.copy()
    bad[0, 0] = 254                                   # the largest scale instead of NaN
    rep = V.judge(ch, ok(ch, placed(ch, bad)), "cpu", CPU)
    assert rep.result == "FAIL" and "poison" in rep.details[0]
    bad = ref.copy()
    bad[0, 1] = 1                                     # an index of a poisoned block
    rep = V.judge(ch, ok(ch, placed(ch, bad)), "cpu", CPU)
    assert rep.result == "FAIL"


def test_q8_0_tie_rounding_is_a_boundary_case():
    # 2.5 steps exactly: the reference rounds half away (3), upstream's SIMD path to even (2)
    x = np.zeros((1, 32), dtype=np.float32)
    x[0, 0] = 127.0
    x[0, 1] = 2.5
    ch = quantize_check("q8_0", x)
    ref = R.quantize_rows(x, "q8_0")
    assert ref[0, 3] == 3
    got = ref.copy()
    got[0, 3] = 2
    rep = V.judge(ch, ok(ch, placed(ch, got)), "cpu", CPU)
    assert rep.result == "PASS" and rep.boundary == 1
    got[0, 4] = 5                                      # value 0.0 stored as 5: a real error
    assert V.judge(ch, ok(ch, placed(ch, got)), "cpu", CPU).result == "FAIL"


# ---------------------------------------------------------------- dequantize

@pytest.mark.parametrize("op", ["GET_ROWS", "CPY"])
def test_dequantize_is_bit_exact(op):
    rng = np.random.default_rng(4)
    ch = (VC._get_rows_check if op == "GET_ROWS" else VC._cpy_check)(rng, "turbo3", 256)
    assert V.judge(ch, ok(ch), "cpu", CPU).result == "PASS"   # NaN blocks included
    out = np.frombuffer(V.expected_output(ch), dtype="<f4").copy().reshape(-1, 256)
    r, c = np.argwhere(np.isfinite(out) & (out != 0))[0]
    out[r, c] = np.nextafter(out[r, c], np.float32(np.inf))   # 1 ulp
    rep = V.judge(ch, ok(ch, out.tobytes()), "cpu", CPU)
    assert rep.result == "FAIL" and rep.mismatches == 1


# ---------------------------------------------------------------- dot / attention

def test_dot_tolerance():
    rng = np.random.default_rng(5)
    ch = VC._mul_mat_check(rng, "turbo2", 128, 12, 3)
    assert V.judge(ch, ok(ch), "cpu", CPU).result == "PASS"
    ref, kd = VC._dot_expected(ch)
    tol = V.dot_tolerance(ch.data["q"], kd, CPU)
    # float32 evaluation of the same dot products passes with a wide margin
    f32 = (ch.data["q"].astype(np.float32) @ kd.astype(np.float32).T)
    rep = V.judge(ch, ok(ch, f32.astype("<f4").tobytes()), "cpu", CPU)
    assert rep.result == "PASS" and rep.worst_ratio < 0.1
    bad = ref.copy()
    bad[1, 2] += 3 * tol[1, 2]
    rep = V.judge(ch, ok(ch, bad.astype("<f4").tobytes()), "cpu", CPU)
    assert rep.result == "FAIL" and rep.mismatches == 1


def emulate_cpu_fa(check, decode=None):
    """ggml-cpu's flash_attn_ext_f16_one_chunk in float32 (f16 VKQ for V=f16)."""
    c, d = check.case, check.data
    hd, nq, nh, nkv, nh_kv = c.dims[:5]
    kd, vd = VC._dequant_kv(check) if decode is None else decode(check)
    q_all = VT.simulate_q(d["q"].reshape(-1, hd), CPU.q_sim[c.type_k]).reshape(d["q"].shape)
    vdt = np.float16 if c.type_v == "f16" else np.float32
    f32, scale = np.float32, np.float32(d["scale"])
    out = np.empty((nq, nh, hd), np.float32)
    for h in range(nh):
        g = h // (nh // nh_kv)
        for i in range(nq):
            S, M, acc = f32(0), f32(-np.inf), np.zeros(hd, vdt)
            for j in range(nkv):
                mv = f32(d["mask"][i, j])
                if mv == -np.inf:
                    continue
                s = f32(f32(np.dot(kd[g, j].astype(f32), q_all[h, i])) * scale + mv)
                ms = vs = f32(1)
                if s > M:
                    M, ms = s, f32(np.exp(f32(M - s)))
                    acc = (acc.astype(f32) * ms).astype(vdt)
                else:
                    vs = f32(np.exp(f32(s - M)))
                acc = (acc.astype(f32) + vd[g, j].astype(f32) * vs).astype(vdt)
                S = f32(S * ms + vs)
            out[i, h] = acc.astype(f32) * (f32(1) / S)
    return out.tobytes()


@pytest.mark.parametrize("tk,tv", [("turbo3", "turbo2"), ("q8_0", "turbo4"), ("turbo4", "f16")])
def test_attention_emulated_cpu_passes_and_errors_fail(tk, tv):
    rng = np.random.default_rng(6)
    ch = VC._fa_check(rng, tk, tv, 128, 3, 2, 40, 1)
    assert V.judge(ch, ok(ch), "cpu", CPU).result == "PASS"
    rep = V.judge(ch, ok(ch, emulate_cpu_fa(ch)), "cpu", CPU)
    assert rep.result == "PASS" and rep.worst_ratio < 0.5, rep
    # above the tolerance at one output
    ref = np.frombuffer(V.expected_output(ch), dtype="<f4").astype(np.float64).reshape(3, 2, 128)
    rep0 = VCMP.compare_attention(ch, ref.astype("<f4").tobytes(), CPU)
    assert rep0.result == "PASS"
    bad = ref.copy()
    bad[1, 1, 7] += 2 * rep0.tol
    rep = V.judge(ch, ok(ch, bad.astype("<f4").tobytes()), "cpu", CPU)
    assert rep.result == "FAIL" and rep.mismatches >= 1


def test_attention_catches_a_decoding_bug():
    """A kernel that reads the wrong turbo4 nibble order is far outside the tolerance."""
    rng = np.random.default_rng(8)
    ch = VC._fa_check(rng, "turbo4", "turbo4", 64, 2, 2, 32, 2)

    def swapped(check):
        kb = check.data["kbytes"].copy()
        kb[:, 2:] = (kb[:, 2:] >> 4) | ((kb[:, 2:] & 15) << 4)
        hd, nq, nh, nkv, nh_kv = check.case.dims[:5]
        kd = R.dequantize_rows(kb, "turbo4", hd).reshape(nh_kv, nkv, hd)
        return kd, VC._dequant_kv(check)[1]

    rep = V.judge(ch, ok(ch, emulate_cpu_fa(ch, swapped)), "cpu", CPU)
    assert rep.result == "FAIL"


def test_gqa_head_mapping():
    """q head h reads kv head h // (nh / nh_kv): swapping kv heads must fail."""
    rng = np.random.default_rng(9)
    ch = VC._fa_check(rng, "turbo2", "turbo2", 128, 1, 4, 16, 2)
    good = VC._attention_expected(ch, CPU)[0]
    wrong = good[:, [2, 3, 0, 1], :]
    assert V.judge(ch, ok(ch, wrong.astype("<f4").tobytes()), "cpu", CPU).result == "FAIL"


# ---------------------------------------------------------------- statuses

def test_unsupported_and_crash_statuses():
    rng = np.random.default_rng(10)
    fa = VC._fa_check(rng, "f16", "turbo3", 128, 1, 2, 16, 1)
    mm = VC._mul_mat_check(rng, "turbo3", 128, 4, 1)
    sr16 = quantize_check("f16")
    unsup = io.Result(0, 1, "not supported", b"")
    assert V.judge(fa, unsup, "cuda", backends.get("cuda").precision()).result == "FAIL"
    assert V.judge(mm, unsup, "cuda", backends.get("cuda").precision()).result == "UNSUPPORTED"
    assert V.judge(mm, unsup, "cpu", CPU).result == "FAIL"
    assert V.judge(sr16, unsup, "cpu", CPU).result == "UNSUPPORTED"
    assert V.judge(mm, io.Result(0, 2, "graph compute failed", b""), "cpu", CPU).result == "FAIL"
    assert V.judge(mm, None, "cpu", CPU).note == "the harness crashed on this case"
    assert V.judge(mm, ok(mm, b"\x00" * 4), "cpu", CPU).result == "FAIL"   # wrong size


def test_make_checks_covers_the_contract():
    checks = V.make_checks(seed=0)
    ops = {(c.op, c.case.type_k) for c in checks}
    for t in V.TURBO_TYPES:
        for op in ("SET_ROWS", "GET_ROWS", "CPY", "MUL_MAT"):
            assert (op, t) in ops
    fa = [c for c in checks if c.op == "FLASH_ATTN_EXT"]
    by_head = {}
    for c in fa:
        by_head.setdefault(c.case.dims[0], set()).add((c.case.type_k, c.case.type_v))
    # every K/V pair each head size produces (served_pairs), variants at the heads they serve
    assert set(by_head) == set(VC.fa_heads()) >= set(formats.HEAD_SIZES) | {32, 96}
    for d, pairs in by_head.items():
        assert pairs == set(VC.fa_pairs_at(d, V.TURBO_TYPES)), d
    assert by_head[96] >= {("turbo3_b96", "turbo3_b96"), ("q8_0", "turbo2_b96"), ("turbo3_b96", "turbo4")}
    assert ("turbo3_b32", "turbo3_b32") in by_head[32] and ("turbo3", "turbo3") in by_head[64]
    assert all(c.case.dims[0] % formats.type_info(t).block_size == 0 for c in fa for t in c.types.split("/"))
    assert {c.case.dims[1] == 1 for c in fa} == {True, False}
    assert all(c.case.dims[2] % c.case.dims[4] == 0 and c.case.dims[4] < c.case.dims[2] for c in fa)
    assert any(np.isinf(c.data["mask"]).any() for c in fa)
    labels = {lab for c in checks if c.op == "SET_ROWS" for lab in c.data["labels"]}
    assert set(V.ROW_CLASSES) | {"nan", "inf"} <= labels
    # seeded
    a = V.make_checks(seed=3, quick=True, types=("turbo2",))
    b = V.make_checks(seed=3, quick=True, types=("turbo2",))
    assert io.encode_cases([c.case for c in a]) == io.encode_cases([c.case for c in b])
    with pytest.raises(TqpatchError, match="not a turbo type"):
        V.make_checks(types=("q4_0",))


# ---------------------------------------------------------------- report

def perfect_runner(device="Fake CPU", break_first_fa=False):
    def run(cases):
        checks = run.checks
        run.broken = False
        results = []
        for i, ch in enumerate(checks):
            data = V.expected_output(ch)
            if break_first_fa and ch.op == "FLASH_ATTN_EXT" and not run.broken:
                data = (np.frombuffer(data, "<f4") + 1).astype("<f4").tobytes()
                run.broken = True
            results.append(io.Result(i, 0, "", data))
        return V.HarnessRun("CPU", "CPU", device, results, [])
    run.broken = False
    return run


def run_verify(monkeypatch, runner, **kw):
    checks = V.make_checks(seed=0, quick=True, types=("turbo4",))
    runner.checks = checks
    monkeypatch.setattr(V, "make_checks", lambda *a, **k: checks)
    return V.verify(backends.get("cpu"), runner=runner, **kw)


def test_report_table_and_json(monkeypatch):
    rep = run_verify(monkeypatch, perfect_runner())
    assert rep.passed
    table = V.render_table(rep)
    assert "backend cpu" in table and "Fake CPU" in table
    assert "Only the cpu backend" in table and "no other backend" in table
    for op in ("SET_ROWS", "GET_ROWS", "CPY", "MUL_MAT", "FLASH_ATTN_EXT"):
        assert op in table
    assert "turbo4/q8_0" in table and "FAIL" not in table
    doc = json.loads(rep.to_json())
    assert doc["passed"] and doc["verified_backends"] == ["cpu"]
    assert doc["device"]["description"] == "Fake CPU"
    assert doc["summary"]["FAIL"] == 0 and len(doc["cases"]) == len(rep.cases)
    assert {"op", "types", "shape", "boundary", "mismatches", "max_err", "result"} <= set(doc["cases"][0])


def test_report_fails_and_explains(monkeypatch):
    rep = run_verify(monkeypatch, perfect_runner(break_first_fa=True))
    assert not rep.passed and rep.counts["FAIL"] == 1
    table = V.render_table(rep)
    assert "FAIL" in table and "tolerance" in table
    rep.cases[0].max_err = float("inf")
    assert json.loads(rep.to_json())["cases"][0]["max_err"] == "inf"


def test_cli_exit_codes(monkeypatch):
    runner = CliRunner()
    good = perfect_runner()
    bad = perfect_runner(break_first_fa=True)
    real_verify = V.verify
    for r, code in ((good, 0), (bad, 1)):
        checks = V.make_checks(seed=0, quick=True, types=("turbo4",))
        r.checks = checks
        monkeypatch.setattr(V, "make_checks", lambda *a, **k: checks)
        monkeypatch.setattr(V, "verify", lambda backend, r=r, **kw: real_verify(backend, runner=r, **kw))
        res = runner.invoke(main, ["verify", "--backend", "cpu", "--quick", "--types", "turbo4"])
        assert res.exit_code == code, res.output
        res = runner.invoke(main, ["verify", "--backend", "cpu", "--json", "--types", "turbo4"])
        assert res.exit_code == code and json.loads(res.output)["passed"] == (code == 0)
    res = runner.invoke(main, ["verify", "--backend", "cpu", "--types", "turbo9"])
    assert res.exit_code == 2 and "turbo9" in res.output


def test_missing_harness_says_what_to_build(tmp_path, monkeypatch):
    monkeypatch.setenv("TQPATCH_CACHE", str(tmp_path))
    with pytest.raises(TqpatchError, match="tqpatch build --backend cpu"):
        V.verify(backends.get("cpu"), quick=True, types=("turbo2",))
    res = CliRunner().invoke(main, ["verify", "--backend", "cpu", "--build-dir", str(tmp_path / "b")])
    assert res.exit_code == 1 and "tqpatch build --backend cpu" in res.output
    assert "Traceback" not in res.output


def test_of_build_runs_the_backend_in_another_build(tmp_path, monkeypatch):
    """--of-build vulkan: the CPU checks run by the Vulkan build's harness on its CPU device."""

    monkeypatch.setenv("TQPATCH_CACHE", str(tmp_path))
    with pytest.raises(TqpatchError, match="tqpatch build --backend vulkan"):
        V.verify(backends.get("cpu"), quick=True, types=("turbo2",), of_build=backends.get("vulkan"))
    seen = {}
    monkeypatch.setattr(build_record, "load_record", lambda backend, build_dir=None: {"backend": backend.name})
    monkeypatch.setattr(build_record, "check_fresh", lambda record: None)
    monkeypatch.setattr(build_record, "find_binary", lambda name, backend, build_dir=None:
                        seen.setdefault("bin", (name, backend.name)) and tmp_path / name)

    def fake_harness(binary, device, cases, env=None):
        seen["device"] = device
        raise TqpatchError("stop here")
    monkeypatch.setattr(V, "run_harness", fake_harness)
    with pytest.raises(TqpatchError, match="stop here"):
        V.verify(backends.get("cpu"), quick=True, types=("turbo2",), of_build=backends.get("vulkan"))
    assert seen == {"bin": (V.HARNESS, "vulkan"), "device": "CPU"}
    res = CliRunner().invoke(main, ["verify", "--of-build", "vulkan"])
    assert res.exit_code == 2 and "--of-build needs --backend" in res.output


# ---------------------------------------------------------------- the harness runner

FAKE_HARNESS = """\
#!{python}
# a stand-in for tqpatch-verify: answers with the reference, crashes on case CRASH_AT
import os, sys
from tqpatch import verify_io as io
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
if args["--backend"] != "CPU":
    print("tqpatch-verify: no backend device named '%s'" % args["--backend"], file=sys.stderr)
    print("available devices:\\n  CPU (Fake CPU)", file=sys.stderr)
    sys.exit(2)
cases = io.decode_cases(open(args["--in"], "rb").read())
crash = int(os.environ.get("CRASH_AT", "-1"))
log = open(os.environ["FAKE_LOG"], "a")
log.write("%d\\n" % len(cases))
log.flush()
with open(args["--out"], "wb") as f:
    f.write(io.encode_results(io.Results(len(cases), "CPU", "CPU", "Fake CPU", [])))
    for i, c in enumerate(cases):
        if c.scale == float(crash):
            f.flush()
            os.abort()
        rec = io.Results(1, "", "", "", [io.Result(i, 0, "", c.buffers[0])])
        f.write(io.encode_results(rec)[4 + 8 + 12:])
"""


@pytest.fixture
def fake_harness(tmp_path, monkeypatch):
    path = tmp_path / "tqpatch-verify"
    path.write_text(FAKE_HARNESS.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "log"))
    return path


def test_run_harness_survives_a_crash(fake_harness, monkeypatch, tmp_path):
    cases = [io.Case("CPY", "turbo2", "turbo2", (128, 1), float(i), [bytes([i]) * 4])
             for i in range(5)]
    monkeypatch.setenv("CRASH_AT", "2")
    run = V.run_harness(fake_harness, "CPU", cases)
    assert run.device_description == "Fake CPU"
    assert [r.data if r else None for r in run.results] == \
        [b"\0" * 4, b"\1" * 4, None, b"\3" * 4, b"\4" * 4]
    assert len(run.crashes) == 1 and "case 2 (CPY" in run.crashes[0]
    assert (tmp_path / "log").read_text().split() == ["5", "2"]   # rerun from case 3


def test_run_harness_unknown_device(fake_harness):
    cases = [io.Case("CPY", "turbo2", "turbo2", (128, 1), 0.0, [b"x"])]
    with pytest.raises(TqpatchError, match="no ggml device named 'CUDA0'") as exc:
        V.run_harness(fake_harness, "CUDA0", cases)
    assert "CPU (Fake CPU)" in str(exc.value)


# ---------------------------------------------------------------- the real harness

@pytest.mark.slow
def test_real_cpu_harness():
    import cpu_build

    try:
        cpu_build.find(V.HARNESS)
    except TqpatchError as exc:
        pytest.skip(f"the CPU tqpatch-verify harness is not built: {exc}")
    # the CPU device of the CPU tests' build (a Vulkan build's in CI)
    res = CliRunner().invoke(main, ["verify", "--backend", "cpu", "--of-build", cpu_build.BUILD, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["passed"] and doc["verified_backends"] == ["cpu"]
    seen = {(c["op"], t) for c in doc["cases"] for t in c["types"].split("/")}
    for t in V.TURBO_TYPES:
        for op in ("SET_ROWS", "GET_ROWS", "CPY", "MUL_MAT", "FLASH_ATTN_EXT"):
            assert (op, t) in seen, (op, t)
    assert all(c["result"] == "PASS" for c in doc["cases"])


def test_backend_layout_variants_rerun_the_decode_attention_checks(tmp_path, monkeypatch):
    """CUDA declares two more decode kernels: verify runs the decode FA checks again with each
    one's env, reports them apart, and a wrong answer in one of them alone fails the run."""
    from tqpatch.backends import cuda

    checks = V.make_checks(seed=0, quick=True, types=("turbo3",))
    monkeypatch.setattr(V, "make_checks", lambda *a, **k: checks)
    monkeypatch.setattr(build_record, "load_record", lambda backend, build_dir=None: {"backend": backend.name})
    monkeypatch.setattr(build_record, "check_fresh", lambda record: None)
    monkeypatch.setattr(build_record, "find_binary", lambda name, backend, build_dir=None: tmp_path / name)
    calls = []

    def fake_harness(binary, device, cases, env=None, break_variant=False):
        calls.append((env, [c.op for c in cases]))
        by_case = {id(ch.case): ch for ch in checks}
        results = []
        for i, c in enumerate(cases):
            data = V.expected_output(by_case[id(c)])
            if env and break_variant and i == 0:
                data = (np.frombuffer(data, "<f4") + 1).astype("<f4").tobytes()
            results.append(io.Result(i, 0, "", data))
        return V.HarnessRun("CUDA0", "CUDA0", "Fake GPU", results, [])

    monkeypatch.setattr(V, "run_harness", fake_harness)
    rep = V.verify(backends.get("cuda"), quick=True, types=("turbo3",))
    decode = [ch for ch in checks if ch.kind == "attention" and ch.label == "decode"]
    assert decode and len(calls) == 1 + len(cuda.verify_variants)
    assert calls[0][0] is None
    assert [c[0] for c in calls[1:]] == [{"GGML_CUDA_TURBO_FA_KERNEL": "gqa"}, {"GGML_CUDA_TURBO_FA_KERNEL": "mma"}]
    assert all(c[1] == ["FLASH_ATTN_EXT"] * len(decode) for c in calls[1:])
    for name in ("GQA kernel", "tensor-core kernel"):
        assert len([c for c in rep.cases if c.shape.endswith(f"[{name}]")]) == len(decode)
    assert len(rep.cases) == len(checks) + 2 * len(decode)
    assert rep.passed
    monkeypatch.setattr(V, "run_harness", lambda *a, **k: fake_harness(*a, **k, break_variant=True))
    rep = V.verify(backends.get("cuda"), quick=True, types=("turbo3",))
    failed = sorted(c.shape.rsplit("[", 1)[1] for c in rep.cases if c.result == "FAIL")
    assert not rep.passed and failed == ["GQA kernel]", "tensor-core kernel]"]
