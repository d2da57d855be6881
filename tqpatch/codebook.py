"""Lloyd-Max scalar codebooks for the turbo KV-cache types.

A codebook is the optimal (minimum mean squared error) scalar quantizer with
2**bits levels for the distribution of one coordinate of a block, found by
the Lloyd-Max iteration (centroids -> midpoints -> centroids ...).  Three
distributions are supported:

``sphere``
    One coordinate of a uniformly random unit vector in ``dim`` dimensions:
    density proportional to (1 - t^2)^((dim-3)/2) on [-1, 1].  This is what a
    norm-scaled, randomly rotated block looks like (TurboQuant-MSE).
``gaussian``
    N(0, 1/dim), the large-``dim`` approximation of ``sphere``.
``absmax``
    v = x_i / max_j |x_j| for a Gaussian block x ~ N(0, I_dim), i a uniformly
    random coordinate.  The continuous part of the density on (-1, 1) is

        f(v) = (dim-1) * Int_0^inf 2 phi(m) m phi(v m) (2 Phi(m) - 1)^(dim-2) dm

    (mass (dim-1)/dim), plus point masses 1/(2 dim) at v = -1 and v = +1: the
    maximum element itself.  The turbo types scale blocks by their absolute
    maximum, so they use these codebooks (see ``tqpatch.formats``).

Everything is computed deterministically, without random numbers: the density
is tabulated on a fixed fine grid and treated as piecewise linear between grid
nodes, so every cell integral the iteration needs is exact for that table.
The same arguments give the same bytes on any machine.  Centroids and
boundaries are stored as float32 values (what the kernels use), and the
reported MSE is computed with exactly those float32 values.

Codebooks are written as JSON (``to_json``) with their provenance, and the
shipped ones live in ``tqpatch/codebooks/<id>.json``.

``fitted``
    A codebook fitted to real K/V rows of a model (``tqpatch codebook --fit``,
    tqpatch.codebook_fit) rather than to a distribution: its provenance names
    the rows (``source``) and its MSE is measured on them. Fitted codebooks are
    per-model overrides: a folder of ``<type>.json`` files named by
    $TQPATCH_CODEBOOKS replaces the shipped codebook of each type it holds, for
    render, apply, build and verify alike (``load_for``); the render digest
    covers the books used, so a build made with other codebooks is refused as
    stale by verify.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .errors import TqpatchError

FORMAT = "tqpatch-codebook/1"
DISTRIBUTIONS = ("sphere", "gaussian", "absmax")
FITTED = "fitted"            # fitted to data: read, never generated from a density
OVERRIDE_ENV = "TQPATCH_CODEBOOKS"
DIMS = (32, 64, 96, 128, 256, 512)
BITS = (1, 2, 3, 4)

# What ships in tqpatch/codebooks (and what `tqpatch codebook --all/--check` cover).
SHIPPED_DISTS = DISTRIBUTIONS
SHIPPED_DIMS = (32, 64, 96, 128, 256)
SHIPPED_BITS = BITS

TOLERANCE = 1e-10        # stop when no centroid moves by this much (codebook units)
MAX_ITERATIONS = 100_000

# Quadrature grid: number of cells over the support (a power of two, so the
# grid over [-1, 1] is exact in binary).
_GRID_CELLS = 1 << 16
_GAUSS_SPAN = 10.0       # gaussian / sphere grids cover +-10 standard deviations
_M_STEP = 0.04           # absmax: trapezoid step of the integral over the block max m
_M_MAX = 10.0

_FIELDS = ("format", "id", "distribution", "dim", "bits", "centroids", "boundaries",
           "iterations", "tolerance", "mse", "relative_mse", "tool_version")
_OPTIONAL_FIELDS = ("source",)   # fitted codebooks: what they were fitted to
_ID_RE = re.compile(r"^(?P<dist>[a-z]+)-d(?P<dim>\d+)-b(?P<bits>\d+)$")


@dataclass(frozen=True)
class Codebook:
    """One Lloyd-Max codebook with its provenance.

    ``centroids`` are the 2**bits reconstruction levels (float32 values,
    ascending); ``boundaries`` the 2**bits - 1 decision thresholds, each the
    float32 rounding of the midpoint of two adjacent centroids.  ``mse`` is
    the expected squared error per coordinate under ``distribution`` with
    exactly these float32 values; ``relative_mse`` is ``mse / E[t^2]``.
    """

    id: str
    distribution: str
    dim: int
    bits: int
    centroids: tuple[float, ...]
    boundaries: tuple[float, ...]
    iterations: int
    tolerance: float
    mse: float
    relative_mse: float
    tool_version: str
    format: str = FORMAT
    source: str = ""

    @property
    def levels(self) -> int:
        return 1 << self.bits

    def to_dict(self) -> dict:
        out = {name: (list(getattr(self, name)) if name in ("centroids", "boundaries")
                      else getattr(self, name)) for name in _FIELDS}
        out.update({name: getattr(self, name) for name in _OPTIONAL_FIELDS if getattr(self, name)})
        return out


# --------------------------------------------------------------------------- ids


def codebook_id(dist: str, dim: int, bits: int) -> str:
    """The id of a codebook: ``<dist>-d<dim>-b<bits>``."""
    return f"{dist}-d{dim}-b{bits}"


def parse_id(cid: str) -> tuple[str, int, int]:
    """Split an id into (dist, dim, bits); TqpatchError if it is not one."""
    m = _ID_RE.match(cid)
    if not m:
        raise TqpatchError(f"'{cid}' is not a codebook id (expected <dist>-d<dim>-b<bits>, "
                           f"e.g. absmax-d128-b3)")
    dist, dim, bits = m["dist"], int(m["dim"]), int(m["bits"])
    _check_args(dist, dim, bits)
    return dist, dim, bits


def all_shipped() -> list[str]:
    """Every codebook id that the package must ship."""
    return [codebook_id(d, n, b) for d in SHIPPED_DISTS for n in SHIPPED_DIMS for b in SHIPPED_BITS]


def _check_args(dist, dim, bits) -> None:
    if dist == FITTED and isinstance(dim, int) and dim in DIMS and bits in BITS:
        return  # ids of fitted codebooks parse; generate() refuses them below
    if dist not in DISTRIBUTIONS:
        raise TqpatchError(f"unknown distribution {dist!r}; allowed: {', '.join(DISTRIBUTIONS)}")
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim not in DIMS:
        raise TqpatchError(f"dim {dim!r} not supported; allowed: {', '.join(map(str, DIMS))}")
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits not in BITS:
        raise TqpatchError(f"bits {bits!r} not supported; allowed: {', '.join(map(str, BITS))}")


# ------------------------------------------------------------------ densities


def absmax_density(v, dim: int) -> np.ndarray:
    """Continuous part of the density of x_i / max_j |x_j| (x ~ N(0, I_dim)) at v.

    Integrates to (dim-1)/dim over (-1, 1); the remaining 1/dim sits in two
    atoms at +-1.  The integral over the block maximum m is a trapezoid rule
    with a fixed step: the integrand is smooth and vanishes (with all its
    derivatives) at both ends, so that rule is accurate to rounding.
    """
    v = np.asarray(v, dtype=np.float64)
    v2 = v * v
    acc = np.zeros_like(v2)
    inv_sqrt_2pi = 1.0 / math.sqrt(2.0 * math.pi)
    n_m = int(round(_M_MAX / _M_STEP))
    for k in range(1, n_m + 1):
        m = k * _M_STEP
        edge = math.erf(m / math.sqrt(2.0))  # 2 Phi(m) - 1
        # (dim-1) * 2 phi(m) * m * (2 Phi(m)-1)^(dim-2) * dm, then phi(v m) below
        w = (dim - 1) * 2.0 * inv_sqrt_2pi * math.exp(-0.5 * m * m) * m \
            * edge ** (dim - 2) * _M_STEP * inv_sqrt_2pi
        if w == 0.0:
            continue
        acc += w * np.exp((-0.5 * m * m) * v2)
    return acc


class _Table:
    """A density tabulated on a symmetric grid, piecewise linear between nodes.

    Cumulative integrals of f, t f and t^2 f are exact for the piecewise
    linear density, so the moments over any interval [a, b] are too.  Atoms
    (point masses) sit at the two grid ends.
    """

    def __init__(self, x: np.ndarray, f: np.ndarray, atom: float):
        self.x = x
        self.f = f
        self.atom = atom
        self.h = np.diff(x)
        self.slope = np.diff(f) / self.h
        c0, c1, c2 = self._partial(np.arange(len(x) - 1), self.h)
        self.c0 = np.concatenate(([0.0], np.cumsum(c0)))
        self.c1 = np.concatenate(([0.0], np.cumsum(c1)))
        self.c2 = np.concatenate(([0.0], np.cumsum(c2)))

    def _partial(self, i, d):
        """Integrals of t^k f over [x_i, x_i + d], k = 0, 1, 2."""
        xi, fi, s = self.x[i], self.f[i], self.slope[i]
        d2 = d * d
        d3 = d2 * d
        d4 = d3 * d
        m0 = fi * d + s * d2 / 2
        m1 = xi * fi * d + (xi * s + fi) * d2 / 2 + s * d3 / 3
        m2 = (xi * xi * fi * d + (xi * xi * s + 2 * xi * fi) * d2 / 2
              + (2 * xi * s + fi) * d3 / 3 + s * d4 / 4)
        return m0, m1, m2

    def cumulative(self, b: np.ndarray):
        """Integrals of t^k f from the left end to each point of b."""
        n = len(self.x) - 1
        b = np.clip(b, self.x[0], self.x[-1])
        i = np.clip(np.searchsorted(self.x, b, side="right") - 1, 0, n - 1)
        p0, p1, p2 = self._partial(i, b - self.x[i])
        return self.c0[i] + p0, self.c1[i] + p1, self.c2[i] + p2

    def cells(self, boundaries: np.ndarray):
        """Mass, first and second moment of each cell between the boundaries."""
        b0, b1, b2 = self.cumulative(np.asarray(boundaries, dtype=np.float64))
        m0 = np.diff(np.concatenate(([0.0], b0, [self.c0[-1]])))
        m1 = np.diff(np.concatenate(([0.0], b1, [self.c1[-1]])))
        m2 = np.diff(np.concatenate(([0.0], b2, [self.c2[-1]])))
        if self.atom:
            lo, hi = self.x[0], self.x[-1]
            m0[0] += self.atom
            m1[0] += self.atom * lo
            m2[0] += self.atom * lo * lo
            m0[-1] += self.atom
            m1[-1] += self.atom * hi
            m2[-1] += self.atom * hi * hi
        return m0, m1, m2

    def second_moment(self) -> float:
        return float(self.c2[-1] + self.atom * (self.x[0] ** 2 + self.x[-1] ** 2))

    def quantiles(self, p: np.ndarray) -> np.ndarray:
        total = self.c0[-1] + 2 * self.atom
        return np.interp(p * total - self.atom, self.c0, self.x)


def _symmetric_grid(half_width: float) -> np.ndarray:
    half = _GRID_CELLS // 2
    pos = half_width * (np.arange(half + 1, dtype=np.float64) / half)
    return np.concatenate((-pos[:0:-1], pos))


@functools.lru_cache(maxsize=None)
def _table(dist: str, dim: int) -> _Table:
    sigma = 1.0 / math.sqrt(dim)
    if dist == "absmax":
        x = _symmetric_grid(1.0)
        half = _GRID_CELLS // 2
        fpos = absmax_density(x[half:], dim)
        f = np.concatenate((fpos[:0:-1], fpos))
        atom = 1.0 / (2 * dim)
        cont = (dim - 1) / dim
    elif dist == "sphere":
        x = _symmetric_grid(min(1.0, _GAUSS_SPAN * sigma))
        with np.errstate(divide="ignore"):
            logf = ((dim - 3) / 2.0) * np.log1p(-np.minimum(x * x, 1.0))
        f = np.exp(logf)
        atom, cont = 0.0, 1.0
    elif dist == "gaussian":
        x = _symmetric_grid(_GAUSS_SPAN * sigma)
        f = np.exp(-0.5 * (x / sigma) ** 2)
        atom, cont = 0.0, 1.0
    else:  # pragma: no cover - checked by callers
        raise TqpatchError(f"unknown distribution {dist!r}")
    raw = _Table(x, f, 0.0).c0[-1]
    return _Table(x, f * (cont / raw), atom)


# ------------------------------------------------------------------ generate


def _symmetrize(c: np.ndarray) -> np.ndarray:
    return 0.5 * (c - c[::-1])


def _mse(table: "_Table", centroids, boundaries) -> float:
    """Expected squared error per coordinate of quantizing with exactly these values."""
    c = np.asarray(centroids, dtype=np.float64)
    m0, m1, m2 = table.cells(np.asarray(boundaries, dtype=np.float64))
    return max(float(np.sum(m2 - 2.0 * c * m1 + c * c * m0)), 0.0)


# How far a stored codebook may sit from its own provenance (shipped ones: < 1e-7).
CHECK_REL_TOL = 1e-5


def check_values(cb: Codebook, source: str = "codebook") -> None:
    """Refuse values that do not fit the codebook's own provenance.

    from_dict checks the file's shape (sorted, float32, boundaries = midpoints);
    this checks its numbers against its distribution, cheaply (one quadrature
    pass over a cached table, ~1 ms): the MSE of the stored centroids must be
    the stored mse, and each centroid the mean of its cell (Lloyd-Max). A book
    scaled or hand-edited after generation fails here, not in a kernel.
    """
    if cb.distribution == FITTED:
        return  # fitted to data (from_dict checked its shape); its MSE is the data's
    table = _table(cb.distribution, cb.dim)
    c = np.asarray(cb.centroids, dtype=np.float64)
    mse = _mse(table, c, cb.boundaries)
    fix = f"regenerate it with `tqpatch codebook --dist {cb.distribution} --dim {cb.dim} --bits {cb.bits}`"
    if not math.isclose(mse, cb.mse, rel_tol=CHECK_REL_TOL, abs_tol=1e-12):
        raise TqpatchError(f"{source}: its centroids give MSE {mse:.6g} under {cb.distribution} "
                           f"d={cb.dim}, but it records mse {cb.mse:.6g}: the values were changed "
                           f"after generation; {fix}")
    m0, m1, _ = table.cells(np.asarray(cb.boundaries, dtype=np.float64))
    scale = float(np.max(np.abs(c)))
    for k in range(len(c)):
        mean = m1[k] / m0[k] if m0[k] > 0 else float("nan")
        if not abs(mean - c[k]) <= CHECK_REL_TOL * scale:
            raise TqpatchError(f"{source}: centroid {k} = {c[k]!r} is not the mean of its cell "
                               f"({mean:.9g}) under {cb.distribution} d={cb.dim}: not a "
                               f"Lloyd-Max codebook; {fix}")


def _midpoints32(c32: np.ndarray) -> np.ndarray:
    """float32 of the midpoint of adjacent float32 centroids (midpoint exact in float64)."""
    c = c32.astype(np.float64)
    return ((c[:-1] + c[1:]) / 2.0).astype(np.float32)


def generate(dist: str, dim: int, bits: int) -> Codebook:
    """Lloyd-Max codebook with 2**bits levels for ``dist`` in ``dim`` dimensions.

    ``dist`` is one of ``sphere``, ``gaussian``, ``absmax`` (see the module
    docstring), ``dim`` one of 32, 64, 128, 256, 512, ``bits`` 1..4.  The
    iteration starts from the distribution's quantiles and alternates
    centroid (conditional mean) and midpoint updates until no centroid moves
    by ``TOLERANCE`` or ``MAX_ITERATIONS`` is reached.  The result is exactly
    symmetric and deterministic.
    """
    _check_args(dist, dim, bits)
    if dist == FITTED:
        raise TqpatchError("fitted codebooks come from data: `tqpatch codebook --fit MODEL.gguf`")
    dim, bits = int(dim), int(bits)
    table = _table(dist, dim)
    levels = 1 << bits

    c = _symmetrize(table.quantiles((np.arange(levels) + 0.5) / levels))
    iterations = 0
    while iterations < MAX_ITERATIONS:
        b = (c[:-1] + c[1:]) / 2.0
        m0, m1, _ = table.cells(b)
        new = _symmetrize(m1 / m0)
        iterations += 1
        change = float(np.max(np.abs(new - c)))
        c = new
        if change < TOLERANCE:
            break

    # float32 centroids, exactly symmetric: round the upper half, mirror it.
    upper = c[levels // 2:].astype(np.float32)
    c32 = np.concatenate((-upper[::-1], upper))
    b32 = _midpoints32(c32)
    if not np.all(np.diff(c32) > 0):  # pragma: no cover - cannot happen for these densities
        raise TqpatchError(f"{codebook_id(dist, dim, bits)}: centroids collapsed in float32")

    mse = _mse(table, c32, b32)
    rel = mse / table.second_moment()

    return Codebook(
        id=codebook_id(dist, dim, bits),
        distribution=dist,
        dim=dim,
        bits=bits,
        centroids=tuple(float(v) for v in c32),
        boundaries=tuple(float(v) for v in b32),
        iterations=iterations,
        tolerance=TOLERANCE,
        mse=float(np.float32(mse)),
        relative_mse=float(np.float32(rel)),
        tool_version=__version__,
    )


# ------------------------------------------------------------- serialization


def to_json(cb: Codebook) -> str:
    """Deterministic JSON text: sorted keys, indent 2, trailing newline.

    Floats are written with Python's repr, which round-trips them exactly;
    centroids and boundaries are float32 values, so they round-trip to the
    same float32 constants.
    """
    return json.dumps(cb.to_dict(), sort_keys=True, indent=2, allow_nan=False) + "\n"


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def from_dict(d, source: str = "codebook") -> Codebook:
    """Validate a decoded codebook and build a ``Codebook``.

    Raises TqpatchError naming ``source`` and the first problem found.
    """
    def fail(msg):
        raise TqpatchError(f"{source}: {msg}")

    if not isinstance(d, dict):
        fail(f"expected a JSON object, got {type(d).__name__}")
    missing = [k for k in _FIELDS if k not in d]
    if missing:
        fail(f"missing field(s): {', '.join(missing)}")
    unknown = sorted(k for k in d if k not in _FIELDS and k not in _OPTIONAL_FIELDS)
    if unknown:
        fail(f"unknown field(s): {', '.join(unknown)}")
    if d["format"] != FORMAT:
        fail(f"wrong format tag {d['format']!r} (expected {FORMAT!r})")
    dist, dim, bits = d["distribution"], d["dim"], d["bits"]
    if dist not in DISTRIBUTIONS and dist != FITTED:
        fail(f"distribution {dist!r} unknown; allowed: {', '.join((*DISTRIBUTIONS, FITTED))}")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim not in DIMS:
        fail(f"dim {dim!r} out of range; allowed: {', '.join(map(str, DIMS))}")
    if not isinstance(bits, int) or isinstance(bits, bool) or bits not in BITS:
        fail(f"bits {bits!r} out of range; allowed: {', '.join(map(str, BITS))}")
    if d["id"] != codebook_id(dist, dim, bits):
        fail(f"id {d['id']!r} does not match distribution/dim/bits "
             f"(expected {codebook_id(dist, dim, bits)!r})")
    levels = 1 << bits

    arrays = {}
    for name, count in (("centroids", levels), ("boundaries", levels - 1)):
        vals = d[name]
        if not isinstance(vals, list):
            fail(f"{name} must be a list of numbers")
        if len(vals) != count:
            fail(f"{name}: expected {count} values for {bits} bits, got {len(vals)}")
        for k, v in enumerate(vals):
            if not _is_number(v):
                fail(f"{name}[{k}] = {v!r} is not a number")
            if not math.isfinite(v):
                fail(f"{name}[{k}] is {v!r} (NaN/inf not allowed)")
            if float(np.float32(v)) != float(v):
                fail(f"{name}[{k}] = {v!r} is not exactly a float32 value")
        arrays[name] = np.array(vals, dtype=np.float64)

    c = arrays["centroids"]
    for k in range(levels - 1):
        if c[k + 1] == c[k]:
            fail(f"centroids: duplicate value {c[k]!r} at positions {k} and {k + 1}")
        if c[k + 1] < c[k]:
            fail(f"centroids not sorted ascending: centroids[{k}] = {c[k]!r} > "
                 f"centroids[{k + 1}] = {c[k + 1]!r}")
    expected = _midpoints32(c.astype(np.float32)).astype(np.float64)
    for k, (got, want) in enumerate(zip(arrays["boundaries"], expected)):
        if got != want:
            fail(f"boundaries[{k}] = {got!r} is not the float32 midpoint of centroids "
                 f"{k} and {k + 1} (expected {float(want)!r})")

    it = d["iterations"]
    if not isinstance(it, int) or isinstance(it, bool) or it < 0:
        fail(f"iterations must be a non-negative integer, got {it!r}")
    for name in ("tolerance", "mse", "relative_mse"):
        v = d[name]
        if not _is_number(v):
            fail(f"{name} = {v!r} is not a number")
        if not math.isfinite(v):
            fail(f"{name} is {v!r} (NaN/inf not allowed)")
        if v < 0:
            fail(f"{name} = {v!r} is negative")
    if not isinstance(d["tool_version"], str):
        fail(f"tool_version must be a string, got {d['tool_version']!r}")
    if not isinstance(d.get("source", ""), str):
        fail(f"source must be a string, got {d['source']!r}")

    return Codebook(
        id=d["id"], distribution=dist, dim=dim, bits=bits,
        centroids=tuple(float(v) for v in d["centroids"]),
        boundaries=tuple(float(v) for v in d["boundaries"]),
        iterations=it, tolerance=float(d["tolerance"]), mse=float(d["mse"]),
        relative_mse=float(d["relative_mse"]), tool_version=d["tool_version"],
        format=d["format"], source=d.get("source", ""),
    )


def _reject_constant(name):
    raise ValueError(f"{name} is not allowed")


def load(path) -> Codebook:
    """Read and validate a codebook JSON file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TqpatchError(f"{path}: codebook file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TqpatchError(f"{path}: cannot read codebook: {e}") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except ValueError as e:
        if "is not allowed" in str(e):
            raise TqpatchError(f"{path}: not a valid codebook: {e} (NaN/inf not allowed)") from None
        raise TqpatchError(f"{path}: not JSON ({e})") from None
    return from_dict(data, source=str(path))


# ------------------------------------------------------------ shipped files


def codebooks_dir() -> Path:
    """The package folder holding the shipped codebooks (tqpatch/codebooks)."""
    return Path(__file__).resolve().parent / "codebooks"


def path_for(cid: str) -> Path:
    """Where the shipped codebook ``cid`` lives (whether or not it exists)."""
    return codebooks_dir() / f"{cid}.json"


def shipped_ids() -> list[str]:
    """Ids of the codebook files present in the package folder, sorted."""
    folder = codebooks_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json") if p.is_file())


def load_shipped(cid: str) -> Codebook:
    """Load a shipped codebook by id; TqpatchError listing the ids present if unknown."""
    path = path_for(cid)
    if not path.is_file():
        available = shipped_ids()
        listing = ", ".join(available) if available else "(none)"
        raise TqpatchError(f"no shipped codebook {cid!r}; available: {listing}. "
                           f"Generate one with `tqpatch codebook`.")
    cb = load(path)
    if cb.id != cid:
        raise TqpatchError(f"{path}: file holds codebook {cb.id!r}, not {cid!r}")
    return cb


# ------------------------------------------------------------ per-model overrides


def override_dir() -> Path | None:
    """The folder of fitted codebooks named by $TQPATCH_CODEBOOKS (None when unset)."""
    val = os.environ.get(OVERRIDE_ENV, "").strip()
    if not val:
        return None
    path = Path(val).expanduser()
    if not path.is_dir():
        raise TqpatchError(f"{OVERRIDE_ENV}={val}: not a folder (a folder of <type>.json codebooks "
                           "written by `tqpatch codebook --fit`); unset it to use the shipped codebooks")
    return path


class shipped_only:
    """Context: load_for ignores $TQPATCH_CODEBOOKS (the shipped codebooks only)."""

    def __enter__(self):
        self._saved = os.environ.pop(OVERRIDE_ENV, None)
        return self

    def __exit__(self, *exc):
        if self._saved is not None:
            os.environ[OVERRIDE_ENV] = self._saved
        return False


def override_dir_key() -> str:
    """What the codebook caches key on: the override folder ('' when none)."""
    path = override_dir()
    return str(path.resolve()) if path else ""


def load_for(fmt) -> Codebook:
    """The codebook a turbo type uses: <type>.json from $TQPATCH_CODEBOOKS when that folder
    holds one (it must match the type's block and bits), else the shipped one."""
    folder = override_dir()
    if folder is not None and (folder / f"{fmt.name}.json").is_file():
        path = folder / f"{fmt.name}.json"
        cb = load(path)
        if cb.dim != fmt.block or cb.bits != fmt.bits:
            raise TqpatchError(f"{path}: a codebook for blocks of {cb.dim} with {cb.bits} bits, but "
                               f"{fmt.name} has blocks of {fmt.block} with {fmt.bits} bits")
        return cb
    return load_shipped(fmt.codebook)
