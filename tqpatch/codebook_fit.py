"""Codebooks fitted to a model's own K/V rows (`tqpatch codebook --fit`).

The shipped codebooks are Lloyd-Max for a Gaussian block (`absmax`). A real
model's rotated K/V rows are close to that but not equal (lighter tails after
the rotation, a calibrated K transform changes them again), and the encoder is
not the one the density models exactly: with a log scale the indices are
chosen for the stored least-squares scale, not for max|x|. So the fit is Lloyd's
iteration on the real encoder and the real rows:

  1. encode every block with the current codebook (tqpatch.reference's
     quantizer, the bytes the kernels write);
  2. move each centroid to the least-squares value for the values it holds:
     c_k = sum(s x) / sum(s^2) over the values with index k, s their block's
     stored scale (that minimises sum (x - s c_k)^2 for fixed indices);
  3. boundaries = float32 midpoints; repeat while the MSE falls.

Rows come from a tqpatch-capture file (K and V of every layer whose head size
uses the type), optionally through a calibration (tqpatch.calibrate) so that
K and V are fitted as a calibrated cache stores them. The result is a `fitted` codebook
per type, written to a folder that $TQPATCH_CODEBOOKS names for render,
apply, build and verify.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import __version__, calibrate, capture, codebook, formats, reference
from .errors import TqpatchError

MAX_BLOCKS = 200_000     # blocks per type the fit uses (a seeded subsample beyond that)
MAX_ITERATIONS = 30
FP16_MAX = 65504.0
MIN_GAIN = 1e-4          # stop when an iteration lowers the relative MSE by less than this share


@dataclass
class FitResult:
    name: str
    book: codebook.Codebook
    shipped_mse: float      # relative MSE of the shipped codebook on the same rows
    fitted_mse: float
    blocks: int


def rows_for(rows: dict, name: str, calib: dict | None = None) -> np.ndarray:
    """Blocks (n, block) float32 of every K and V row of the capture whose layer's head
    size uses turbo type `name`, as the cache would store them (through `calib`, the
    tensors of a calibration file, when given)."""
    fmt = formats.TURBO_FORMATS[name]
    out = []
    for kind in ("k", "v"):
        for layer in capture.layers(rows, kind):
            rec = rows[(kind, layer)]
            # a block must lie inside one head (a head of 40 gets no turbo type at all)
            if (formats.fit_type_or_self(fmt.family_name, rec.n_embd_head) != name
                    or rec.n_embd_head % fmt.block):
                continue
            data = rec.data.astype(np.float64)
            if calib is not None:
                data = _calibrated(rows, rec, data, calib)
            out.append(data.reshape(-1, fmt.block).astype(np.float32))
    if not out:
        return np.zeros((0, fmt.block), dtype=np.float32)
    blocks = np.concatenate(out)
    return blocks[np.isfinite(blocks).all(axis=1)]


def _calibrated(rows: dict, rec: capture.Rows, data: np.ndarray, calib: dict) -> np.ndarray:
    """Rows of a layer as a calibrated cache stores them: model coordinates, the
    transform, the rotation again (the capture holds them rotated, untransformed)."""
    rot = rows["rotation"].get((rec.kind, rec.layer))
    t = data.shape[0]
    scale = calib.get(f"blk.{rec.layer}.{rec.kind}_scale")
    if scale is None:
        return data                       # V, from a file written before V scales
    if tuple(scale.shape) != (rec.n_head, rec.n_embd_head):
        raise TqpatchError(
            f"the calibration's blk.{rec.layer}.{rec.kind}_scale is {tuple(scale.shape)}, but the "
            f"capture's layer {rec.layer} has {rec.n_head} heads of {rec.n_embd_head}: "
            "a calibration of another model")
    plain = calibrate.rotate(data, rot).reshape(t, rec.n_head, rec.n_embd_head) * scale
    if rec.kind == "k":
        plain = plain + calib[f"blk.{rec.layer}.k_shift"]
    return calibrate.rotate(plain.reshape(t, -1), rot)


def relative_mse(xb: np.ndarray, name: str, book) -> float:
    d, idx = reference.turbo_encode(xb, name, book)
    s = reference.turbo_scales(d, name).astype(np.float64)
    y = s[:, None] * book[0].astype(np.float64)[idx]
    x = xb.astype(np.float64)
    return float(((x - y) ** 2).sum() / max((x ** 2).sum(), 1e-300))


def _as_book(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c32 = np.sort(c.astype(np.float32))
    for k in range(1, len(c32)):          # strictly increasing in float32
        if c32[k] <= c32[k - 1]:
            c32[k] = np.nextafter(c32[k - 1], np.float32(np.inf))
    b = ((c32[:-1].astype(np.float64) + c32[1:]) / 2.0).astype(np.float32)
    return c32, b


def fit(xb: np.ndarray, name: str, *, seed: int = 0, source: str = "") -> FitResult:
    """Fit the codebook of turbo type `name` to blocks xb (see the module docstring)."""
    fmt = formats.TURBO_FORMATS[name]
    if xb.shape[0] == 0:
        raise TqpatchError(f"no rows for {name}: the capture has no layer whose head size uses it")
    if xb.shape[0] > MAX_BLOCKS:
        pick = np.random.default_rng(seed).choice(xb.shape[0], MAX_BLOCKS, replace=False)
        xb = xb[np.sort(pick)]
    start = reference.codebook_arrays(name)
    book = _as_book(start[0].astype(np.float64))
    # the block scale is the fp16 of about the block's norm: rows beyond it (or all
    # zero) give MSEs of 1e78 or nan, and no turbo cache stores them
    norm = float(np.sqrt((xb.astype(np.float64) ** 2).sum(axis=1)).max())
    if not 0 < norm <= FP16_MAX:
        raise TqpatchError(f"the rows for {name} have blocks of norm up to {norm:.3g}: "
                           f"{'all zero' if norm == 0 else f'beyond its fp16 block scale ({FP16_MAX:g})'}"
                           ", not rows a turbo cache stores")
    shipped = best = relative_mse(xb, name, start)
    best_book, iterations = start, 0
    x = xb.astype(np.float64)
    for it in range(1, MAX_ITERATIONS + 1):
        d, idx = reference.turbo_encode(xb, name, book)
        s = reference.turbo_scales(d, name).astype(np.float64)[:, None] * np.ones_like(x)
        num = np.bincount(idx.ravel(), weights=(s * x).ravel(), minlength=fmt.levels)
        den = np.bincount(idx.ravel(), weights=(s * s).ravel(), minlength=fmt.levels)
        c = np.where(den > 0, num / np.where(den > 0, den, 1), book[0].astype(np.float64))
        cand = _as_book(c)
        mse = relative_mse(xb, name, cand)
        if mse < best:
            gain = (best - mse) / best
            best, best_book, iterations = mse, cand, it
            book = cand
            if gain < MIN_GAIN:
                break
        else:
            break
    c32, b32 = best_book
    d = x.shape[1]
    book_out = codebook.Codebook(
        id=codebook.codebook_id(codebook.FITTED, d, fmt.bits), distribution=codebook.FITTED,
        dim=d, bits=fmt.bits, centroids=tuple(float(v) for v in c32),
        boundaries=tuple(float(v) for v in b32), iterations=iterations, tolerance=MIN_GAIN,
        mse=float(np.float32(best * float((x ** 2).mean()))), relative_mse=float(np.float32(best)),
        tool_version=__version__, source=source or f"{xb.shape[0]} blocks")
    return FitResult(name, book_out, shipped, best, xb.shape[0])


def fit_all(rows: dict, calib: dict | None = None, source: str = "",
            types: tuple[str, ...] | None = None) -> list[FitResult]:
    """A fitted codebook for each turbo type (of `types`) that the capture's head sizes use."""
    out = []
    for name in types or formats.TURBO_TYPES:
        xb = rows_for(rows, name, calib)
        if xb.shape[0]:
            out.append(fit(xb, name, source=f"{source}; {xb.shape[0]} blocks".strip("; ")))
    if not out:
        raise TqpatchError("the capture has no rows any turbo type uses")
    return out


def gain_line(r: FitResult) -> str:
    pct = 100.0 * (r.shipped_mse - r.fitted_mse) / r.shipped_mse  # fit() refuses shipped_mse 0
    return (f"{r.name}: relative MSE {r.shipped_mse:.5f} (shipped) -> {r.fitted_mse:.5f} (fitted), "
            f"{pct:+.1f}% lower, {r.book.iterations} iterations on {r.blocks} blocks")
