"""capture.read on hostile capture records: every field checked, one line each (issue 25 item 4)."""

from __future__ import annotations

import numpy as np
import pytest

from tqpatch import capture, codebook_fit
from tqpatch.errors import TqpatchError

from test_calibrate import write_capture

ROPE = capture.Rope(64, 2, 4096, 10000.0)


def _rows(t=4, d=64, h=1, value=0.5):
    return np.full((t, d * h), value, dtype=np.float32)


def test_a_sane_file_reads(tmp_path):
    p = write_capture(tmp_path / "ok.bin", [(0, 1, 64, 1, 0.0, _rows())], ropes=[(0, ROPE), (1, ROPE)],
                      rotations=[(("k", 1), 64)])
    rows = capture.read(p, n_layer=2)
    assert rows[("k", 1)].data.shape == (4, 64) and rows["rotation"][("k", 1)] == 64


BAD = {
    # the cases: a broadcast error, a 2^32-1 n_rot, a layer beyond the model
    "n_rot beyond the head": (dict(records=[(0, 0, 40, 1, 0.0, _rows(d=40))],
                                   ropes=[(0, capture.Rope(64, 2, 4096, 1e4))]),
                              "layer 0's RoPE turns 64 dims of K heads of 40"),
    "huge n_rot": (dict(records=[], ropes=[(0, capture.Rope(2**32 - 2, 2, 4096, 1e4))]),
                   "RoPE n_rot 4294967294 is not an even head size"),
    "odd n_rot": (dict(records=[], ropes=[(0, capture.Rope(63, 2, 4096, 1e4))]), "RoPE n_rot 63"),
    "layer beyond the model": (dict(records=[(0, 2**32 - 1, 64, 1, 0.0, _rows())]),
                               "layer 4294967295 of a model of 2 layers"),
    "layer beyond llama.cpp": (dict(records=[(0, 600, 64, 1, 0.0, _rows())], n_layer=None),
                               "layer 600, more than llama.cpp's 512"),
    "rope type": (dict(records=[], ropes=[(0, capture.Rope(64, 5, 4096, 1e4))]), "RoPE type 5"),
    "rope base": (dict(records=[], ropes=[(0, capture.Rope(64, 2, 4096, float("nan")))]),
                  "out of range"),
    "rotation not a power of 2": (dict(records=[], rotations=[(("k", 0), 48)]), "rotation of size 48"),
    "rotation not dividing the head": (dict(records=[(0, 0, 96, 1, 0.0, _rows(d=96))],
                                            rotations=[(("k", 0), 64)]),
                                       "K rotation of 64 does not divide its heads of 96"),
    "unknown kind": (dict(records=[(7, 0, 64, 1, 0.0, _rows())]), "unknown kind 7"),
    "no heads": (dict(records=[(0, 0, 64, 0, 0.0, _rows(h=0))]), "rows of 0 heads of 64"),
    "nan rows": (dict(records=[(1, 0, 64, 1, 0.0, _rows(value=np.nan))]), "hold NaN or infinite"),
    "inf scale": (dict(records=[(2, 0, 64, 1, float("inf"), _rows())]), "scale inf"),
    "shape changes": (dict(records=[(0, 0, 64, 1, 0.0, _rows()), (0, 0, 32, 2, 0.0, _rows(d=32, h=2))]),
                      "K rows of layer 0 of 2 heads of 32, earlier ones of 1 heads of 64"),
    "rows without rope": (dict(records=[(0, 1, 64, 1, 0.0, _rows())], ropes=[(0, ROPE)]),
                          "rows of layer 1, which has no RoPE record"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_records(tmp_path, case):
    kw, message = BAD[case]
    kw = dict(kw)
    n_layer = kw.pop("n_layer", 2)
    p = write_capture(tmp_path / "c.bin", kw.pop("records"), **kw)
    with pytest.raises(TqpatchError, match=message) as err:
        capture.read(p, n_layer=n_layer)
    assert "\n" not in str(err.value) and str(p) in str(err.value)


def test_rows_past_the_end(tmp_path):
    p = write_capture(tmp_path / "c.bin", [(0, 0, 64, 1, 0.0, _rows())])
    p.write_bytes(p.read_bytes()[:-4])
    with pytest.raises(TqpatchError, match="4 rows of 64 values run past the end"):
        capture.read(p)


def test_head_40_makes_no_straddling_blocks(tmp_path):
    # 40-value heads: no turbo block divides them, so no rows for any turbo type
    p = write_capture(tmp_path / "c.bin", [(0, 0, 40, 16, 0.0, _rows(t=8, d=40, h=16))])
    rows = capture.read(p)
    for name in ("turbo3", "turbo4"):
        assert codebook_fit.rows_for(rows, name).shape[0] == 0


@pytest.mark.parametrize("value", [0.0, 3e4])
def test_fit_refuses_rows_no_cache_stores(value):
    # all-zero rows once printed "+nan% lower"; rows beyond the fp16 block scale an MSE of 1e78
    xb = np.full((64, 128), value, dtype=np.float32)
    with pytest.raises(TqpatchError, match="have blocks of norm up to .*(all zero|beyond its fp16 block scale)"):
        codebook_fit.fit(xb, "turbo3")
