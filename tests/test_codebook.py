"""Lloyd-Max codebooks: known values, Monte-Carlo checks, files and CLI."""

from __future__ import annotations

import json
import os
import math
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from tqpatch import codebook as C
from tqpatch.commands.codebook import command
from tqpatch.errors import TqpatchError


# ------------------------------------------------------------ known values

# Lloyd-Max quantizer of N(0,1) (Max 1960). Max's 16-level MSE (0.009497) is
# known to be slightly low; the exact fixed point gives 0.0095010, so the
# comparison tolerance is 1e-3 relative.
GAUSS_MSE = {1: 0.3634, 2: 0.1175, 3: 0.03455, 4: 0.009497}


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("dim", [64, 128])
def test_gaussian_known_mse(bits, dim):
    cb = C.generate("gaussian", dim, bits)
    assert cb.mse * dim == pytest.approx(GAUSS_MSE[bits], rel=1e-3)
    assert cb.relative_mse == pytest.approx(GAUSS_MSE[bits], rel=1e-3)


def test_gaussian_known_centroids():
    s = math.sqrt(128)
    c1 = C.generate("gaussian", 128, 1).centroids
    assert c1[1] * s == pytest.approx(math.sqrt(2 / math.pi), rel=1e-6)
    assert C.generate("gaussian", 128, 1).mse * 128 == pytest.approx(1 - 2 / math.pi, rel=1e-6)
    c2 = np.array(C.generate("gaussian", 128, 2).centroids) * s
    assert c2[2:] == pytest.approx([0.4528, 1.510], abs=6e-4)


def test_sphere_one_bit_exact():
    # E[t | t > 0] for the sphere marginal has a closed form.
    for dim in (32, 128, 512):
        want = math.exp(math.lgamma(dim / 2) - math.lgamma((dim + 1) / 2)) / math.sqrt(math.pi)
        assert C.generate("sphere", dim, 1).centroids[1] == pytest.approx(want, rel=2e-7)


def test_sphere_vs_gaussian():
    close_s, close_g = C.generate("sphere", 256, 1), C.generate("gaussian", 256, 1)
    assert close_s.centroids[1] == pytest.approx(close_g.centroids[1], rel=2e-3)
    assert close_s.relative_mse == pytest.approx(close_g.relative_mse, rel=5e-3)
    far_s, far_g = C.generate("sphere", 32, 1), C.generate("gaussian", 32, 1)
    assert far_s.centroids[1] / far_g.centroids[1] - 1 > 5e-3
    assert far_g.relative_mse - far_s.relative_mse > 5e-3
    for bits in (2, 3, 4):  # close at d=256 for every bit width too
        s, g = C.generate("sphere", 256, bits), C.generate("gaussian", 256, bits)
        assert s.centroids == pytest.approx(g.centroids, rel=2e-2)


@pytest.mark.parametrize("dim", [32, 128, 512])
def test_absmax_continuous_mass(dim):
    x = np.linspace(-1.0, 1.0, 40001)
    f = C.absmax_density(x, dim)
    mass = float(np.sum((f[1:] + f[:-1]) / 2 * np.diff(x)))
    assert mass == pytest.approx((dim - 1) / dim, abs=1e-7)
    assert np.all(f >= 0) and f[0] == f[-1]


# -------------------------------------------------- structure & invariants


@pytest.mark.parametrize("dist", C.DISTRIBUTIONS)
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_structure(dist, bits):
    cb = C.generate(dist, 64, bits)
    L = 1 << bits
    assert cb.id == f"{dist}-d64-b{bits}"
    assert len(cb.centroids) == L and len(cb.boundaries) == L - 1
    c = np.array(cb.centroids)
    assert np.all(np.diff(c) > 0)
    assert np.array_equal(c, -c[::-1])  # exact symmetry
    for v in cb.centroids + cb.boundaries:
        assert float(np.float32(v)) == v
    mids = ((c[:-1] + c[1:]) / 2).astype(np.float32).astype(np.float64)
    assert np.array_equal(np.array(cb.boundaries), mids)
    assert 0 < cb.iterations < C.MAX_ITERATIONS
    assert cb.tolerance == C.TOLERANCE
    assert 0 < cb.relative_mse < 1
    assert cb.format == "tqpatch-codebook/1"
    assert np.all(np.abs(c) <= 1.0)


def test_bad_args():
    with pytest.raises(TqpatchError, match="allowed: 1, 2, 3, 4"):
        C.generate("absmax", 128, 5)
    with pytest.raises(TqpatchError, match="allowed: 32, 64, 128, 256, 512"):
        C.generate("absmax", 100, 2)
    with pytest.raises(TqpatchError, match="sphere, gaussian, absmax"):
        C.generate("laplace", 128, 2)
    with pytest.raises(TqpatchError):
        C.generate("absmax", 128, True)


# ------------------------------------------------------------- Monte-Carlo


def _absmax_samples(dim, n_values, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_values // dim, dim))
    return (x / np.abs(x).max(axis=1, keepdims=True)).ravel()


@pytest.mark.parametrize("cid", ["absmax-d128-b2", "absmax-d128-b3", "absmax-d64-b4",
                                 "absmax-d32-b1"])
def test_absmax_monte_carlo(cid):
    cb = C.generate(*C.parse_id(cid))
    v = _absmax_samples(cb.dim, 1 << 20, seed=1234)
    b, c = np.array(cb.boundaries), np.array(cb.centroids)
    idx = np.searchsorted(b, v, side="left")  # number of boundaries strictly below
    err2 = (v - c[idx]) ** 2
    # reported MSE and E[v^2] agree with the empirical ones (std error ~0.2%)
    assert err2.mean() == pytest.approx(cb.mse, rel=1.5e-2)
    assert (v * v).mean() == pytest.approx(cb.mse / cb.relative_mse, rel=1e-2)
    assert err2.mean() / (v * v).mean() == pytest.approx(cb.relative_mse, rel=1.5e-2)
    # Lloyd-Max optimality: each centroid is the conditional mean of its cell
    count = np.bincount(idx, minlength=len(c))
    mean = np.bincount(idx, weights=v, minlength=len(c)) / count
    sq = np.bincount(idx, weights=v * v, minlength=len(c)) / count
    se = np.sqrt(np.maximum(sq - mean ** 2, 0) / count)
    assert np.all(np.abs(mean - c) < 5 * se + 1e-6), (mean - c) / se
    # the atoms at +-1 carry 1/dim of the mass
    assert np.mean(np.abs(v) == 1.0) == pytest.approx(1 / cb.dim, rel=1e-6)


def test_absmax_beats_uniform_grid_and_differs_from_sphere():
    cb = C.generate("absmax", 128, 3)
    v = _absmax_samples(128, 1 << 18, seed=7)
    grid = np.linspace(-1, 1, 8)
    uni = np.min((v[:, None] - grid[None, :]) ** 2, axis=1).mean()
    assert cb.mse < 0.8 * uni
    assert C.generate("sphere", 128, 3).centroids != cb.centroids


# --------------------------------------------------- determinism & files


def test_deterministic_and_matches_shipped():
    for cid in ("absmax-d128-b2", "absmax-d128-b3", "absmax-d64-b4", "sphere-d256-b4"):
        a = C.to_json(C.generate(*C.parse_id(cid)))
        C._table.cache_clear()
        b = C.to_json(C.generate(*C.parse_id(cid)))
        assert a == b
        assert C.path_for(cid).read_text(encoding="utf-8") == a


def test_shipped_set_complete():
    ids = set(C.shipped_ids())
    for d in ("sphere", "gaussian", "absmax"):
        for dim in (64, 128, 256):
            for bits in (1, 2, 3, 4):
                assert f"{d}-d{dim}-b{bits}" in ids
    for fmt_cb in ("absmax-d128-b2", "absmax-d128-b3", "absmax-d64-b4"):
        assert C.load_shipped(fmt_cb).id == fmt_cb


def test_json_roundtrip_and_format():
    cb = C.generate("absmax", 64, 4)
    text = C.to_json(cb)
    assert text.endswith("}\n") and '\n  "bits": 4,' in text
    d = json.loads(text)
    assert list(d) == sorted(d)
    assert C.from_dict(d) == cb
    assert C.to_json(C.from_dict(d)) == text


def test_load_shipped_unknown():
    with pytest.raises(TqpatchError, match="available: .*absmax-d128-b3"):
        C.load_shipped("absmax-d100-b3")


def _good():
    return json.loads(C.to_json(C.generate("absmax", 128, 2)))


def _mutations():
    def setf(key, val):
        def f(d):
            d[key] = val
        return f

    def delf(key):
        def f(d):
            del d[key]
        return f

    def cent(k, val):
        def f(d):
            d["centroids"][k] = val
        return f

    def swap(d):
        d["centroids"][0], d["centroids"][1] = d["centroids"][1], d["centroids"][0]

    def dup(d):
        d["centroids"][1] = d["centroids"][0]

    def bnd(d):
        d["boundaries"][0] = float(np.float32(d["boundaries"][0]) * np.float32(1.5))

    return [
        ("missing", delf("centroids"), "missing field.*centroids"),
        ("missing2", delf("tool_version"), "missing field.*tool_version"),
        ("format", setf("format", "tqpatch-codebook/2"), "wrong format tag"),
        ("bits", setf("bits", 5), "bits 5 out of range"),
        ("bits0", setf("bits", 0), "bits 0 out of range"),
        ("dim", setf("dim", 100), "dim 100 out of range"),
        ("dist", setf("distribution", "laplace"), "distribution 'laplace' unknown"),
        ("id", setf("id", "absmax-d64-b2"), "id 'absmax-d64-b2' does not match"),
        ("ncent", lambda d: d["centroids"].pop(), "centroids: expected 4 values"),
        ("nbound", lambda d: d["boundaries"].append(0.5), "boundaries: expected 3 values"),
        ("nan", cent(0, float("nan")), r"centroids\[0\] is nan"),
        ("inf", cent(3, float("inf")), r"centroids\[3\] is inf"),
        ("string", cent(1, "x"), r"centroids\[1\] = 'x' is not a number"),
        ("f64", cent(0, -0.55164212345), "not exactly a float32"),
        ("unsorted", swap, "not sorted ascending"),
        ("duplicate", dup, "duplicate value"),
        ("midpoint", bnd, r"boundaries\[0\] .* not the float32 midpoint"),
        ("msenan", setf("mse", float("nan")), "mse is nan"),
        ("iters", setf("iterations", -1), "iterations must be"),
        ("extra", setf("foo", 1), "unknown field.*foo"),
    ]


@pytest.mark.parametrize("name,mutate,pattern", _mutations(), ids=[m[0] for m in _mutations()])
def test_from_dict_rejects(name, mutate, pattern):
    d = _good()
    mutate(d)
    with pytest.raises(TqpatchError, match=pattern):
        C.from_dict(d, source="x.json")


def test_load_rejects_files(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json", encoding="utf-8")
    with pytest.raises(TqpatchError, match="bad.json: not JSON"):
        C.load(p)
    p.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(TqpatchError, match="expected a JSON object"):
        C.load(p)
    text = C.to_json(C.generate("absmax", 128, 2)).replace('"mse": 0.', '"mse": NaN, "x": 0.')
    p.write_text(text, encoding="utf-8")
    with pytest.raises(TqpatchError, match="NaN"):
        C.load(p)
    d = _good()
    d["centroids"][0] = -1e999  # -Infinity after parsing
    p.write_text(json.dumps(d).replace("-Infinity", "-1e999"), encoding="utf-8")
    with pytest.raises(TqpatchError, match="inf"):
        C.load(p)
    with pytest.raises(TqpatchError, match="not found"):
        C.load(tmp_path / "nope.json")
    good = tmp_path / "good.json"
    good.write_text(C.to_json(C.generate("gaussian", 64, 3)), encoding="utf-8")
    assert C.load(good) == C.generate("gaussian", 64, 3)


# ---------------------------------------------------------------------- CLI


@pytest.fixture
def books(tmp_path, monkeypatch):
    folder = tmp_path / "codebooks"
    shutil.copytree(C.codebooks_dir(), folder)
    monkeypatch.setattr(C, "codebooks_dir", lambda: folder)
    return folder


def test_cli_out_and_summary(tmp_path, books):
    out = tmp_path / "cb.json"
    r = CliRunner().invoke(command, ["--bits", "3", "--dim", "128", "--dist", "absmax",
                                     "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "absmax-d128-b3" in r.output and "relative MSE" in r.output
    assert str(out) in r.output and "centroids" in r.output and "boundaries" in r.output
    assert out.read_text(encoding="utf-8") == (books / "absmax-d128-b3.json").read_text()
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["cb.json"]  # no temp left


def test_cli_default_writes_into_codebooks_dir(books):
    r = CliRunner().invoke(command, ["--bits", "2", "--dim", "32", "--dist", "sphere"])
    assert r.exit_code == 0, r.output
    assert C.load(books / "sphere-d32-b2.json") == C.generate("sphere", 32, 2)


def test_cli_out_folder(tmp_path, books):
    r = CliRunner().invoke(command, ["--bits", "1", "--dim", "64", "--dist", "gaussian",
                                     "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "gaussian-d64-b1.json").is_file()
    # a new folder named with a trailing slash is a folder, not a file called "newdir"
    r = CliRunner().invoke(command, ["--bits", "1", "--dim", "64", "--dist", "gaussian",
                                     "--out", str(tmp_path / "newdir") + "/"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "newdir" / "gaussian-d64-b1.json").is_file()


def test_cli_writes_files_with_the_umask_mode(tmp_path, books):
    old = os.umask(0o022)
    try:
        r = CliRunner().invoke(command, ["--bits", "2", "--dim", "64", "--dist", "absmax",
                                         "--out", str(tmp_path / "cb.json")])
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "cb.json").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("args,msg", [
    (["--bits", "5", "--dim", "128", "--dist", "absmax"], "allowed: 1, 2, 3, 4"),
    (["--bits", "0", "--dim", "128", "--dist", "absmax"], "allowed: 1, 2, 3, 4"),
    (["--bits", "2", "--dim", "100", "--dist", "absmax"], "allowed: 32, 64"),
    (["--bits", "2", "--dim", "128"], "missing --dist"),
    (["--bits", "2", "--dim", "128", "--dist", "cauchy"], "cauchy"),
    (["--all", "--check"], "exclude"),
    (["--check", "--bits", "2"], "takes no --bits"),
])
def test_cli_bad_input_writes_nothing(tmp_path, books, args, msg):
    before = sorted(p.name for p in books.iterdir())
    out = tmp_path / "o.json"
    r = CliRunner().invoke(command, args + ["--out", str(out)] if "--check" not in args
                           and "--all" not in args else args)
    assert r.exit_code != 0
    assert msg in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)  # no traceback
    assert not out.exists()
    assert sorted(p.name for p in books.iterdir()) == before


def test_cli_out_missing_folder(tmp_path, books):
    out = tmp_path / "no" / "such" / "cb.json"
    r = CliRunner().invoke(command, ["--bits", "2", "--dim", "64", "--dist", "absmax",
                                     "--out", str(out)])
    assert r.exit_code != 0 and "does not exist" in r.output
    assert not out.exists()


def test_cli_check_passes_and_fails(books):
    runner = CliRunner()
    r = runner.invoke(command, ["--check"])
    assert r.exit_code == 0, r.output
    assert "36 codebooks" in r.output

    target = books / "absmax-d128-b3.json"
    target.write_text(target.read_text().replace("0.7800137996673584", "0.78"))
    (books / "gaussian-d64-b2.json").unlink()
    before = {p.name: p.read_bytes() for p in books.iterdir()}
    r = runner.invoke(command, ["--check"])
    assert r.exit_code != 0
    assert "differs" in r.output and "absmax-d128-b3.json" in r.output
    assert "missing" in r.output and "gaussian-d64-b2.json" in r.output
    assert "sphere-d64-b1.json" not in r.output
    assert {p.name: p.read_bytes() for p in books.iterdir()} == before  # wrote nothing

    r = runner.invoke(command, ["--all"])
    assert r.exit_code == 0, r.output
    assert runner.invoke(command, ["--check"]).exit_code == 0


def test_cli_help_mentions_distributions():
    r = CliRunner().invoke(command, ["--help"])
    assert r.exit_code == 0
    for word in ("sphere", "gaussian", "absmax", "turbo3", "absmax-d128-b3", "--check"):
        assert word in r.output
