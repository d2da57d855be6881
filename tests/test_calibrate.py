"""Capture files, the calibration fit (exactness of the transform, the RoPE rule, the
GGUF file) and codebooks fitted to rows (Lloyd on the encoder, the override folder)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from tqpatch import calibrate, capture, codebook, codebook_fit, formats, reference, render
from tqpatch.errors import TqpatchError
from tqpatch import backends


def write_capture(path, records, ropes=(), rotations=()):
    """A tqpatch-capture file: records (kind, layer, n_embd_head, n_head, scale, rows)."""
    out = bytearray(b"TQKV" + struct.pack("<I", 1))
    for layer, rope in ropes:
        out += struct.pack("<5If", 3, layer, rope.n_rot, rope.rope_type + 1, rope.n_ctx_train, rope.freq_base)
    for (which, layer), n in rotations:
        out += struct.pack("<5If", 4, layer, n, 0 if which == "k" else 1, 0, 0.0)
    for kind, layer, d, h, scale, rows in records:
        rows = np.ascontiguousarray(rows, dtype="<f4")
        out += struct.pack("<5If", kind, layer, d, h, rows.shape[0], scale) + rows.tobytes()
    path.write_bytes(bytes(out))
    return path


def synthetic_layer(rng, t=256, d=64, hk=1, h=2, mean=3.0, rot=64):
    """K with a large mean and channels of very different size, Q using other channels,
    V with channels of very different size."""
    chan = np.exp(rng.uniform(-1.5, 1.5, d))
    mu = mean * rng.standard_normal(d)
    k = (rng.standard_normal((t, hk, d)) * chan + mu).reshape(t, -1)
    q = (rng.standard_normal((t, h, d)) / chan).reshape(t, -1)
    v = (rng.standard_normal((t, hk, d)) * np.exp(rng.uniform(-1.5, 1.5, d)) + 0.3 * rng.standard_normal(d)).reshape(t, -1)
    r = lambda x: calibrate.rotate(x, rot)  # noqa: E731 - the capture holds rotated rows
    return r(k), r(v), r(q)


@pytest.fixture
def rows(tmp_path):
    rng = np.random.default_rng(0)
    recs = []
    for layer in range(2):
        for chunk in range(2):
            k, v, q = synthetic_layer(rng)
            recs += [(0, layer, 64, 1, 0.0, k), (1, layer, 64, 1, 0.0, v), (2, layer, 64, 2, 0.125, q)]
    rope = capture.Rope(64, 2, 4096, 10000.0)
    path = write_capture(tmp_path / "rows.bin", recs, ropes=[(0, rope), (1, rope)],
                         rotations=[(("k", 0), 64), (("v", 0), 64), (("k", 1), 64), (("v", 1), 64)])
    return capture.read(path)


def test_capture_file_reads_back(rows):
    assert capture.layers(rows, "k") == [0, 1] == capture.layers(rows, "q")
    k = rows[("k", 0)]
    assert k.data.shape == (512, 64) and len(k.chunks) == 2 and rows[("q", 1)].scale == 0.125
    assert rows["rotation"][("v", 1)] == 64 and rows["rope"][0].rope_type == 2


def test_capture_file_errors(tmp_path):
    with pytest.raises(TqpatchError, match="not a tqpatch-capture file"):
        capture.read(write_capture(tmp_path / "a.bin", []).with_suffix(".bin").write_bytes(b"XXXX") and
                     tmp_path / "a.bin")
    p = write_capture(tmp_path / "b.bin", [(0, 0, 64, 1, 0.0, np.zeros((4, 64)))])
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(TqpatchError, match="corrupt record"):
        capture.read(p)


def test_rope_pairs_and_angles():
    neox, norm = capture.Rope(8, 2, 100, 10000.0), capture.Rope(8, 0, 100, 10000.0)
    assert list(neox.pair_of(8)) == [0, 1, 2, 3, 0, 1, 2, 3]
    assert list(norm.pair_of(10)) == [0, 0, 1, 1, 2, 2, 3, 3, -1, -1]
    th = neox.theta(8)
    assert th[0] == 1.0 and th[4] == 1.0 and th[3] == pytest.approx(10000.0 ** (-6 / 8))


def test_the_transform_leaves_attention_unchanged(rows):
    cal = calibrate.fit(rows, ctx=10**9)       # no pair keeps its mean at this context ...
    assert all(c.mean_energy == 0 for c in cal.layers)
    cal = calibrate.fit(rows, ctx=1)           # ... and every pair at one token
    c = cal.layers[0]
    assert c.mean_energy > 0.3 and c.gamma > 0
    k = calibrate.rotate(rows[("k", 0)].data.astype(np.float64), 64).reshape(-1, 1, 64)
    q = calibrate.rotate(rows[("q", 0)].data.astype(np.float64), 64).reshape(-1, 2, 64)
    k2 = k * c.k_scale + c.k_shift
    q2 = q * c.q_scale
    for head in range(2):
        s, s2 = q[:, head] @ k[:, 0].T, q2[:, head] @ k2[:, 0].T
        shift = s2 - s                          # the same for every key of a query
        assert np.allclose(shift, shift[:, :1], atol=1e-8 * np.abs(s).max())
    # the proxy picked the exponent with the lowest attention KL on these rows, not worse than none
    assert c.proxy_kl[c.gamma] <= c.proxy_kl[0.0]


def test_v_scales_are_exact_and_lower_v_error(rows):
    c = calibrate.fit(rows).layers[0]
    assert c.v_scale.shape == (1, 64) and c.o_scale.shape == (2, 64)
    # o_scale is 1/v_scale for each query head of the KV head: the output of
    # attention over v_scale*v, times o_scale, is the output over v
    np.testing.assert_allclose(c.o_scale * c.v_scale[[0, 0]], 1.0, rtol=1e-12)
    v = calibrate.rotate(rows[("v", 0)].data.astype(np.float64), 64)
    p = np.random.default_rng(1).dirichlet(np.ones(len(v)), size=8)
    np.testing.assert_allclose((p @ (v * c.v_scale[0])) * c.o_scale[1], p @ v, rtol=1e-10)
    # channels of very different size: scaling them lowers V's error through the type
    assert c.v_gamma > 0 and c.v_error[c.v_gamma] < 0.9 * c.v_error[0.0], c.v_error


def test_the_mean_is_kept_only_where_rope_turns_slowly(rows):
    rope = rows["rope"][0]
    ctx = 50
    cal = calibrate.fit(rows, ctx=ctx)
    keep = rope.theta(64) * ctx <= calibrate.MEAN_RADIANS
    assert 0 < keep.sum() < 64
    c = cal.layers[0]
    assert np.all(c.k_shift[:, ~keep] == 0) and np.any(c.k_shift[:, keep] != 0)
    # the channel scales are the same within a RoPE pair (they commute with RoPE)
    pair = rope.pair_of(64)
    for p in range(32):
        assert np.ptp(c.k_scale[0, pair == p]) < 1e-12


def test_calibration_file_round_trip(rows, tmp_path):
    cal = calibrate.fit(rows, ctx=1)
    path = tmp_path / "m.turbo-calib.gguf"
    calibrate.write(cal, path, "m.gguf")
    t = calibrate.read(path)
    assert set(t) == {f"blk.{i}.{n}" for i in (0, 1) for n in calibrate.TENSORS}
    np.testing.assert_array_equal(t["blk.1.q_scale"], cal.layers[1].q_scale.astype(np.float32))
    assert t["blk.0.k_scale"].shape == (1, 64) and t["blk.0.q_scale"].shape == (2, 64)
    assert t["blk.0.v_scale"].shape == (1, 64) and t["blk.0.o_scale"].shape == (2, 64)
    with pytest.raises(TqpatchError, match="not a tqpatch calibration file"):
        import gguf

        w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "llama")
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        calibrate.read(tmp_path / "x.gguf")


def test_missing_queries_is_a_clear_error(tmp_path):  # noqa: D103
    p = write_capture(tmp_path / "kv.bin", [(0, 0, 64, 1, 0.0, np.ones((8, 64))),
                                            (1, 0, 64, 1, 0.0, np.ones((8, 64)))])
    with pytest.raises(TqpatchError, match="--queries"):
        calibrate.fit(capture.read(p))


# ---------------------------------------------------------------- fitted codebooks


def test_fit_on_gaussian_blocks_keeps_the_shipped_codebook_and_beats_it_elsewhere():
    rng = np.random.default_rng(3)
    g = rng.standard_normal((3000, 64)).astype(np.float32)
    r = codebook_fit.fit(g, "turbo3")
    assert r.fitted_mse <= r.shipped_mse and (r.shipped_mse - r.fitted_mse) / r.shipped_mse < 0.01
    u = rng.uniform(-1, 1, (3000, 64)).astype(np.float32)   # not what the shipped book is for
    r = codebook_fit.fit(u, "turbo3")
    assert (r.shipped_mse - r.fitted_mse) / r.shipped_mse > 0.05
    cb = r.book
    assert cb.distribution == "fitted" and cb.dim == 64 and cb.bits == 3 and cb.id == "fitted-d64-b3"
    back = codebook.from_dict(json.loads(codebook.to_json(cb)))
    assert back == cb and back.source


def test_override_folder_reaches_reference_and_render(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    r = codebook_fit.fit(rng.uniform(-1, 1, (2000, 64)).astype(np.float32), "turbo3")
    (tmp_path / "turbo3.json").write_text(codebook.to_json(r.book))
    shipped = reference.codebook_arrays("turbo3")[0].copy()
    plain = render.render_all(backends.all_backends())
    monkeypatch.setenv(codebook.OVERRIDE_ENV, str(tmp_path))
    np.testing.assert_array_equal(reference.codebook_arrays("turbo3")[0], np.float32(r.book.centroids))
    assert not np.array_equal(reference.codebook_arrays("turbo3")[0], shipped)
    fitted = render.render_all(backends.all_backends())
    assert fitted.versions != plain.versions               # the digest records the books used
    changed = [rel for rel in plain.files if plain.files[rel] != fitted.files[rel]]
    assert "ggml/src/ggml-turbo-common.h" in changed
    # apply places the fitted render: the templates are the committed ones
    assert render.load_rendered(backends.all_backends()).files == fitted.files
    # a codebook for another block is refused
    (tmp_path / "turbo4.json").write_text(codebook.to_json(r.book))
    with pytest.raises(TqpatchError, match="blocks of 64 with 3 bits"):
        codebook.load_for(formats.TURBO_FORMATS["turbo4"])
    monkeypatch.setenv(codebook.OVERRIDE_ENV, str(tmp_path / "nope"))
    with pytest.raises(TqpatchError, match="not a folder"):
        codebook.load_for(formats.TURBO_FORMATS["turbo3"])


def test_fit_from_a_capture_uses_the_layers_of_the_type(rows):
    assert codebook_fit.rows_for(rows, "turbo3").shape == (2 * 2 * 512, 64)
    assert codebook_fit.rows_for(rows, "turbo3_b96").shape[0] == 0
    out = codebook_fit.fit_all(rows, types=("turbo2", "turbo3_b96"))
    assert [r.name for r in out] == ["turbo2"]
