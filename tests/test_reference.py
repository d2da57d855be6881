"""The NumPy reference: byte layout, round trip, distortion, upstream q8_0 rounding, bad input."""

import numpy as np
import pytest

from tqpatch import formats, reference as R
from tqpatch.errors import TqpatchError


def f16_bits(v: float) -> int:
    return int(np.array([v], dtype=np.float32).astype(np.float16).view(np.uint16)[0])


def le16(row, at=0) -> int:
    return int(row[at]) | (int(row[at + 1]) << 8)


def hand_block(name: str, pattern):
    """A block whose indices are known: u = x (max|x| = 1) and x_j = c[idx_j]."""
    fmt = formats.TURBO_FORMATS[name]
    cent, _ = R.codebook_arrays(name)
    idx = np.array([pattern(j) for j in range(fmt.block)], dtype=np.int64)
    idx[0] = fmt.levels - 1  # x_0 = 1.0 falls above the last boundary
    x = cent[idx].astype(np.float32)
    x[0] = 1.0
    c = cent[idx].astype(np.float64)
    s = (x.astype(np.float64) @ c) / (c @ c)
    return x, idx, s


def log8_code(s: float) -> int:
    """The log8 code by hand: the nearest of 2^((e-128)/8) in linear distance."""
    vals = 2.0 ** ((np.arange(1, 255) - 128) / 8)
    return int(np.argmin(np.abs(vals - s))) + 1


def test_turbo3_bytes_decoded_by_hand():
    x, idx, s = hand_block("turbo3", lambda j: j % 8)
    row = R.quantize_rows(x[None, :], "turbo3")[0]
    assert row.shape == (25,)                       # 1 + 64*2/8 + 64/8
    assert row[0] == log8_code(s) == 128            # s ~ 1: code 128 = 2^0, first byte
    # indices 0,1,2,3 -> low bits 00,01,10,11 packed low-first: 0b11100100
    # (index 7 at j=0 puts 3 in the low bits of byte 0 as well)
    assert row[1] == 0b11100111
    assert all(b == 0b11100100 for b in row[2:17])
    # third bit: j%8 in 4..7 -> bits 4..7 of every qh byte (and j=0's index 7 -> bit 0)
    assert row[17] == 0b11110001
    assert all(b == 0b11110000 for b in row[18:25])


def test_turbo2_and_turbo4_bytes_decoded_by_hand():
    x2, idx2, s2 = hand_block("turbo2", lambda j: j % 4)
    row = R.quantize_rows(x2[None, :], "turbo2")[0]
    assert row.shape == (17,) and row[0] == log8_code(s2)
    assert row[1] == 0b11100111 and all(b == 0b11100100 for b in row[2:])
    x4, idx4, s4 = hand_block("turbo4", lambda j: j % 16)
    row = R.quantize_rows(x4[None, :], "turbo4")[0]
    assert row.shape == (17,) and row[0] == log8_code(s4)
    # value 2j in the low nibble: (0,1) -> 0x10, (2,3) -> 0x32 ...; j=0 holds index 15
    assert row[1] == 0x1F and row[2] == 0x32 and row[8] == 0xFE


def test_fp16_scale_layout_still_supported(monkeypatch):
    """A format with an fp16 scale (the first layout) keeps its bytes: {fp16 d; planes}."""
    fmt = formats.TURBO_FORMATS["turbo3"]
    old = formats.TurboFormat("turbo3", bits=3, block=64, codebook=fmt.codebook, ggml_id=44,
                              planes=fmt.planes, scale=formats.FP16)
    monkeypatch.setitem(formats.TURBO_FORMATS, "turbo3", old)
    monkeypatch.setitem(formats.ALL_TYPES, "turbo3", formats.TypeInfo("turbo3", 64, old.block_bytes, 44))
    x, idx, s = hand_block("turbo3", lambda j: j % 8)
    row = R.quantize_rows(x[None, :], "turbo3")[0]
    assert row.shape == (26,) and le16(row) == f16_bits(np.float32(s))
    assert row[2] == 0b11100111
    y = R.dequantize_rows(row[None, :], "turbo3", 64)
    np.testing.assert_array_equal(y[0], np.float32(np.float16(np.float32(s))) * R.codebook_arrays("turbo3")[0][idx])


@pytest.mark.parametrize("name", list(formats.TURBO_FORMATS))
def test_dequantize_is_scale_times_centroid(name):
    rng = np.random.default_rng(3)
    fmt = formats.TURBO_FORMATS[name]
    x = rng.standard_normal((5, 4 * fmt.block)).astype(np.float32)
    data = R.quantize_rows(x, name)
    y = R.dequantize_rows(data, name, x.shape[1])
    cent, bounds = R.codebook_arrays(name)
    xb = x.reshape(-1, fmt.block)
    codes = data.reshape(-1, fmt.block_bytes)[:, 0]
    table, inv, _ = R.scale_arrays(fmt.scale)
    idx = np.searchsorted(bounds, xb * inv[codes][:, None], side="left")   # the second pass
    np.testing.assert_array_equal(y.reshape(-1, fmt.block), table[codes][:, None] * cent[idx])


@pytest.mark.parametrize("name", list(formats.TURBO_FORMATS))
def test_log8_code_is_the_nearest_table_value_to_the_least_squares_scale(name):
    rng = np.random.default_rng(8)
    fmt = formats.TURBO_FORMATS[name]
    x = (rng.standard_normal((64, fmt.block)) * 10.0 ** rng.uniform(-3, 3, (64, 1))).astype(np.float32)
    cent, bounds = R.codebook_arrays(name)
    u = x * (np.float32(1) / np.abs(x).max(axis=1, keepdims=True))
    idx1 = np.searchsorted(bounds, u, side="left")
    s = R.turbo_ls_scale(x, idx1, cent)
    codes = R.quantize_rows(x, name)[:, 0]
    assert [log8_code(v) for v in s] == list(codes)


def test_log8_tables():
    sc = formats.LOG8
    table, inv, bounds = R.scale_arrays(sc)
    assert table[0] == 0 and np.isnan(table[255]) and table[128] == 1.0 and inv[128] == 1.0
    assert table[136] == 2.0 and table[120] == 0.5 and inv[136] == 0.5
    assert np.all(np.diff(table[1:255]) > 0) and len(bounds) == 253
    assert np.all((bounds > table[1:254]) & (bounds < table[2:255]))
    # covers what fp16 covers at the top and far below the bottom of the normal range
    assert table[254] > 50000 and table[1] < 2.0 ** -15


def test_served_head_sizes_have_a_variant_within_budget_where_one_exists():
    for family, budget in formats.BPV_BUDGET.items():
        for h in formats.SERVED_HEAD_SIZES:
            t = formats.fit_type(family, h)
            assert h % formats.type_info(t).block_size == 0
            within = [v for v in formats.FAMILIES[family]
                      if formats.type_info(v).bits_per_value <= budget and h % formats.type_info(v).block_size == 0]
            if within:
                assert formats.type_info(t).bits_per_value <= budget, (family, h, t)
    assert formats.fit_type("turbo3", 96) == "turbo3_b96" and formats.fit_type("turbo3", 32) == "turbo3_b32"
    assert formats.fit_type("turbo3", 192) == "turbo3" and formats.fit_type("turbo4", 96) == "turbo4"
    with pytest.raises(TqpatchError, match="cache types that fit"):
        formats.fit_type("turbo3", 48)


@pytest.mark.parametrize("name", ["turbo2", "turbo3", "turbo4", "q8_0", "q4_0", "f16"])
def test_round_trip_shape_and_determinism(name):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((9, 256)).astype(np.float32)
    a = R.quantize_rows(x, name)
    b = R.quantize_rows(x.copy(), name)
    assert a.dtype == np.uint8 and a.shape == (9, 256 // R.type_info(name).block_size * R.type_info(name).block_bytes)
    np.testing.assert_array_equal(a, b)
    y = R.dequantize_rows(a, name, 256)
    assert y.shape == x.shape and y.dtype == np.float32
    # quantizing the reconstruction again is stable for codebook types
    if name.startswith("turbo"):
        rel = ((x - y) ** 2).sum() / (x ** 2).sum()
        assert rel < 0.15


# TurboQuant paper, Gaussian Lloyd-Max distortion at 2, 3, 4 bits
PAPER = {"turbo2": 0.1175, "turbo3": 0.0345, "turbo4": 0.0095}


@pytest.mark.parametrize("name", list(PAPER))
def test_distortion_on_random_unit_vectors(name):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4096, 128)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = R.roundtrip(x, name)
    mse = float((((x - y) ** 2).sum(axis=1) / (x ** 2).sum(axis=1)).mean())
    assert mse <= 1.10 * PAPER[name], mse


def test_turbo4_matches_q4_0_distortion_at_fewer_bits():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2048, 128)).astype(np.float32)
    e = {t: float(((x - R.roundtrip(x, t)) ** 2).sum() / (x ** 2).sum()) for t in ("turbo4", "q4_0")}
    assert R.type_info("turbo4").bits_per_value < R.type_info("q4_0").bits_per_value
    assert e["turbo4"] <= 1.05 * e["q4_0"], e


def test_q8_0_rounds_half_away_from_zero_like_upstream():
    x = np.zeros((1, 32), dtype=np.float32)
    x[0, 0] = 127.0            # d = 1 exactly
    x[0, 1], x[0, 2] = 2.5, -2.5
    x[0, 3], x[0, 4] = 0.5, -0.5
    row = R.quantize_rows(x, "q8_0")[0]
    assert le16(row) == f16_bits(1.0)
    q = row[2:].view(np.int8)
    assert list(q[:5]) == [127, 3, -3, 1, -1]   # np.round would give 2, -2, 0, 0


def test_q8_0_reference_matches_hand_computation():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    data = R.quantize_rows(x, "q8_0").reshape(-1, 34)
    for blk, xb in zip(data, x.reshape(-1, 32)):
        d = np.float32(np.abs(xb).max() / np.float32(127))
        inv = np.float32(1) / d
        q = [int(np.copysign(np.floor(abs(float(np.float32(v * inv))) + 0.5), v)) for v in xb]
        assert list(blk[2:].view(np.int8)) == q
        assert le16(blk) == f16_bits(d)


def test_attention_asymmetric_types_close_to_float64():
    rng = np.random.default_rng(4)
    q = rng.standard_normal((3, 128))
    k = rng.standard_normal((40, 128)).astype(np.float32)
    v = rng.standard_normal((40, 128)).astype(np.float32)
    exact = R.attention(q, k, v, "f32", "f32")
    for tk, tv in (("q8_0", "turbo3"), ("turbo4", "turbo2"), ("f16", "turbo4")):
        out = R.attention(q, k, v, tk, tv)
        assert out.shape == (3, 128)
        assert np.abs(out - exact).max() < 0.5
    # K precision matters more than V precision (softmax amplifies K error)
    err_k = np.abs(R.attention(q * 4, k, v, "turbo2", "f16") - R.attention(q * 4, k, v, "f32", "f32")).mean()
    err_v = np.abs(R.attention(q * 4, k, v, "f16", "turbo2") - R.attention(q * 4, k, v, "f32", "f32")).mean()
    assert err_k > err_v


def test_nonfinite_is_an_error_or_a_poisoned_block():
    x = np.ones((2, 64), dtype=np.float32)
    x[1, 5] = np.nan
    with pytest.raises(TqpatchError, match="non-finite"):
        R.quantize_rows(x, "turbo3")
    data = R.quantize_rows(x, "turbo3", nonfinite="poison")
    assert data[1, 0] == formats.LOG8.NAN_CODE and not data[1, 1:].any()
    assert data[0, 0] != formats.LOG8.NAN_CODE
    y = R.dequantize_rows(data, "turbo3", 64)
    assert np.isnan(y[1]).all() and np.isfinite(y[0]).all()
    x[1, 5] = np.inf
    with pytest.raises(TqpatchError):
        R.quantize_rows(x, "turbo4")


def test_zero_block_quantizes_to_zero():
    y = R.roundtrip(np.zeros((1, 128), dtype=np.float32), "turbo2")
    assert not y.any()


@pytest.mark.parametrize("call", [
    lambda: R.quantize_rows(np.ones((1, 100), np.float32), "turbo3"),
    lambda: R.quantize_rows(np.ones((1, 128), np.float32), "turbo9"),
    lambda: R.quantize_rows(np.ones((2, 2, 128), np.float32), "turbo3"),
    lambda: R.dequantize_rows(np.zeros((1, 49), np.uint8), "turbo3", 128),
    lambda: R.dequantize_rows(np.zeros((1, 17), np.uint8), "turbo4", 100),
])
def test_bad_input_is_a_clear_error(call):
    with pytest.raises(TqpatchError) as e:
        call()
    assert str(e.value.message)


def test_unknown_type_lists_known_ones():
    with pytest.raises(TqpatchError, match="turbo3"):
        R.type_info("q3_k")


def test_type_info_within_bit_budgets():
    for name, budget in formats.BPV_BUDGET.items():
        info = R.type_info(name)
        assert info.bits_per_value <= budget
    assert R.type_info("turbo3").block_bytes == 25 and R.type_info("turbo3").block_size == 64
    assert R.type_info("turbo4").block_bytes == 17 and R.type_info("turbo4").block_size == 32
    assert R.type_info("q8_0").bits_per_value == 8.5


# ---------------------------------------------------------------- the types' table

def test_the_table_covers_every_type_the_checks_use():
    """verify's types (and f32, its float reference), the anchor and every turbo type
    have a codec; every codec is a type formats knows."""
    assert {*formats.CACHE_TYPES, formats.ANCHOR_TYPE, "f32", *formats.TURBO_TYPES} <= set(R.CODECS)
    assert set(R.CODECS) <= set(formats.ALL_TYPES)


@pytest.mark.parametrize("name", list(R.CODECS))
def test_every_codec_writes_its_layout_and_round_trips_within_its_bits(name):
    info = R.type_info(name)
    k = 4 * max(info.block_size, 32)
    x = np.random.default_rng(6).standard_normal((16, k)).astype(np.float32)
    data = R.quantize_rows(x, name)
    assert data.dtype == np.uint8 and data.shape == (16, k // info.block_size * info.block_bytes)
    y = R.dequantize_rows(data, name, k)
    rel = float(((x - y) ** 2).sum() / (x ** 2).sum())
    # a b-bit code's relative error falls as 4^-b (an f16 holds an 11-bit significand)
    assert rel <= 8 * 4.0 ** -min(info.bits_per_value, 11), rel
    assert R.boundary_margin(x, name).shape == x.shape


UNHANDLED = [t for t in formats.UPSTREAM_TYPES if t not in R.CODECS]


@pytest.mark.parametrize("name", UNHANDLED)
def test_a_type_the_reference_does_not_handle_is_a_clear_error(name):
    info = R.type_info(name)
    k = 2 * info.block_size
    for call in (lambda: R.quantize_rows(np.ones((1, k), np.float32), name),
                 lambda: R.dequantize_rows(np.zeros((1, 2 * info.block_bytes), np.uint8), name, k),
                 lambda: R.roundtrip(np.ones((1, k), np.float32), name),
                 lambda: R.boundary_margin(np.ones((1, k), np.float32), name)):
        with pytest.raises(TqpatchError, match=f"does not handle {name}; it handles") as e:
            call()
        assert all(t in e.value.message for t in ("f16", "q8_0", "q4_0", "turbo3"))


def test_q5_0_is_refused_not_misread():
    """Once a bare AssertionError (quantize) and a (1, 11) array (dequantize)."""
    assert "q5_0" in UNHANDLED
    with pytest.raises(TqpatchError, match="does not handle q5_0"):
        R.dequantize_rows(np.zeros((1, 44), np.uint8), "q5_0", 64)
    with pytest.raises(TqpatchError, match="does not handle q5_0"):
        R.quantize_rows(np.ones((1, 64), np.float32), "q5_0")
