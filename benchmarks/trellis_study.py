"""Would trellis-coded V (TCQ) reach q8_0/turbo2's +6%? A simulation on real V rows.

Issue 14 names trellis-coded quantization as the lever for 2-bit caches. This
measures it before anyone writes kernels: the relative MSE of Gemma's V rows
(tqpatch-capture files, as in benchmarks/block_study.py) at 2 bits per value plus
one 8-bit scale per 64 values (turbo2's 2.125 bits), for

  * turbo2 as shipped (absmax codebook, log8 scale, indices chosen again);
  * a scalar 4-level code on the block's RMS with a least-squares scale (the
    trellis coders' own scalar baseline: same scale rule, no trellis);
  * "bitshift" trellises (QTIP's form): the state is the last L bits of the
    block's bit stream, each value appends 2 bits and is reconstructed as
    codebook[state] (2^L entries, fitted by Lloyd iterations on the fit text).
    Decoding a value needs only its own L bits, so a kernel decodes in parallel;
    encoding is a Viterbi search over 2^L states per value (fixed start state 0).

  python benchmarks/trellis_study.py fit.bin eval.bin [--states 4,6,8,10] [--blocks 3000]

Prints one table row per coder: V relative MSE on the evaluation rows and its
ratio to turbo2's. docs/block-design.md turns it into a PPL estimate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqpatch import capture, formats  # noqa: E402
from block_study import quant  # noqa: E402  (the shipped turbo2 encoder, simulated)

BLOCK, BITS = 64, 2
LOG8 = np.array(formats.LOG8.table, dtype=np.float64)
LOG8_BOUNDS = np.array(formats.LOG8.boundaries, dtype=np.float32)


def v_blocks(rows, limit: int, seed: int) -> np.ndarray:
    """Every layer's V rows as blocks of 64 (a random subset of `limit` blocks)."""
    out = [rec.data.astype(np.float64).reshape(-1, BLOCK) for key, rec in rows.items()
           if isinstance(key, tuple) and key[0] == "v"]
    x = np.concatenate(out)
    x = x[np.abs(x).max(1) > 0]
    rng = np.random.default_rng(seed)
    return x[rng.permutation(len(x))[:limit]]


def log8(s: np.ndarray) -> np.ndarray:
    """The stored scale: s rounded to the shipped log8 code."""
    return LOG8[1 + np.searchsorted(LOG8_BOUNDS, s.astype(np.float32), side="left")]


def ls_scale(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return log8((x * c).sum(1) / np.maximum((c * c).sum(1), 1e-300))


def scalar_rms(x: np.ndarray, levels: np.ndarray) -> np.ndarray:
    rms = np.sqrt((x * x).mean(1, keepdims=True))
    u = x / rms
    c = levels[np.abs(u[..., None] - levels).argmin(-1)]
    return ls_scale(x, c)[:, None] * c


def lloyd_gauss(n: int) -> np.ndarray:
    """Lloyd-Max levels of N(0, 1) (sampled)."""
    z = np.sort(np.random.default_rng(1).standard_normal(200000))
    c = np.quantile(z, (np.arange(n) + 0.5) / n)
    for _ in range(100):
        idx = np.abs(z[:, None] - c).argmin(1)
        c = np.array([z[idx == i].mean() for i in range(n)])
    return c


def viterbi(u: np.ndarray, book: np.ndarray, L: int) -> np.ndarray:
    """States of the best path for each row of u (n, T): state_t = last L bits after value t."""
    n, T = u.shape
    S, k = 1 << L, BITS
    s = np.arange(S)
    pred = ((s >> k)[:, None] | (np.arange(1 << k) << (L - k))[None, :])  # (S, 2^k) predecessors
    cost = np.full((n, S), np.inf)
    cost[:, 0] = 0.0                                     # start state 0
    back = np.empty((T, n, S), dtype=np.uint16)
    for t in range(T):
        cand = cost[:, pred]                             # (n, S, 2^k)
        j = cand.argmin(-1)
        cost = np.take_along_axis(cand, j[..., None], -1)[..., 0] + (u[:, t:t + 1] - book[None, :]) ** 2
        back[t] = pred[s[None, :], j]
    states = np.empty((n, T), dtype=np.int64)
    cur = cost.argmin(1)
    for t in range(T - 1, -1, -1):
        states[:, t] = cur
        cur = back[t, np.arange(n), cur]
    return states


def encode(u: np.ndarray, book: np.ndarray, L: int) -> np.ndarray:
    """viterbi() over parts of u small enough for its back-pointer array (~256 MB)."""
    rows = max(1, (1 << 21) // (1 << L))
    return np.concatenate([viterbi(u[i:i + rows], book, L) for i in range(0, len(u), rows)])


def trellis(x: np.ndarray, book: np.ndarray, L: int) -> tuple[np.ndarray, np.ndarray]:
    """(dequantized blocks, states) of the bitshift trellis on the block's RMS, LS scale."""
    rms = np.sqrt((x * x).mean(1, keepdims=True))
    st = encode(x / rms, book, L)
    c = book[st]
    return ls_scale(x, c)[:, None] * c, st


def fit_book(x: np.ndarray, L: int, iters: int) -> np.ndarray:
    """Lloyd iterations of the 2^L reconstruction values on the RMS-normalised fit blocks."""
    # start from the scalar code (a value's own 2 bits pick a Lloyd-Max level) plus noise
    # in the older bits, so the first pass is no worse than scalar; Lloyd then uses them
    rng = np.random.default_rng(L)
    book = lloyd_gauss(1 << BITS)[np.arange(1 << L) & ((1 << BITS) - 1)] + 0.3 * rng.standard_normal(1 << L)
    u = x / np.sqrt((x * x).mean(1, keepdims=True))
    for _ in range(iters):
        st = encode(u, book, L)
        sums = np.bincount(st.ravel(), weights=u.ravel(), minlength=len(book))
        cnt = np.bincount(st.ravel(), minlength=len(book))
        book = np.where(cnt > 0, sums / np.maximum(cnt, 1), book)
    return book


def rel_mse(x: np.ndarray, y: np.ndarray) -> float:
    return float(((x - y) ** 2).sum() / (x * x).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fit")
    ap.add_argument("eval")
    ap.add_argument("--states", default="4,6,8,10", help="trellis memory L (2^L states), comma-separated")
    ap.add_argument("--blocks", type=int, default=3000, help="V blocks of each text used")
    ap.add_argument("--iters", type=int, default=8, help="Lloyd iterations of each trellis codebook")
    a = ap.parse_args()
    fit = v_blocks(capture.read(a.fit), a.blocks, 0)
    ev = v_blocks(capture.read(a.eval), a.blocks, 1)
    base = rel_mse(ev, quant(ev, BLOCK, BITS, "log8", True))
    print(f"V blocks of 64: {len(fit)} fit, {len(ev)} evaluated (Gemma's V rows as the cache stores them)")
    print("| coder (2 bits per value + an 8-bit scale per 64) | V rel. MSE | / turbo2 |")
    print("|---|---:|---:|")
    print(f"| turbo2 as shipped (absmax codebook, log8, re-index) | {base:.4f} | 1.000 |", flush=True)
    m = rel_mse(ev, scalar_rms(ev, lloyd_gauss(1 << BITS)))
    print(f"| scalar 4-level Lloyd-Max on the block RMS, LS scale | {m:.4f} | {m / base:.3f} |", flush=True)
    for L in map(int, a.states.split(",")):
        book = fit_book(fit, L, a.iters)
        y, _ = trellis(ev, book, L)
        m = rel_mse(ev, y)
        print(f"| bitshift trellis, {1 << L} states ({1 << L}-entry codebook fitted) | {m:.4f} | {m / base:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
