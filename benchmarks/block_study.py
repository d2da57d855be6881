"""The block-design study on real K/V rows (docs/block-design.md, issue 14).

Inputs: two tqpatch-capture files of one model recorded with --queries, one on
a fitting text and one on the evaluation text (by default docs/build.md and
tools/server/README.md of the pinned tree, 4 x 512 tokens each):

  tqpatch-capture -m MODEL -f docs/build.md --out fit.bin --chunks 4 --queries
  tqpatch-capture -m MODEL -f tools/server/README.md --out eval.bin --chunks 4 --queries
  python benchmarks/block_study.py fit.bin eval.bin [--bits 2,3,4]

For each candidate block design it prints, on the evaluation rows:
  * the relative MSE of K and of V (sum (x - x^)^2 / sum x^2);
  * the attention KL proxy: mean over layers, heads and queries of
    KL(softmax(q k^T) || softmax(q k^^T)) with the captured queries, causal,
    only K quantized (the error that reaches the softmax).
Designs: block size (128, 64, 32) x scale (fp16, log8), log8 with the indices
chosen again for the stored scale ("+ri", the shipped encoder), and the shipped
encoder after the calibration (tqpatch.calibrate) fitted on the other text.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqpatch import calibrate, capture, codebook, formats  # noqa: E402

# the shipped log scale: code -> value, and the encoder's boundaries between codes
LOG8 = np.array(formats.LOG8.table, dtype=np.float64)
LOG8_BOUNDS = np.array(formats.LOG8.boundaries, dtype=np.float32)


def book(block: int, bits: int):
    cb = codebook.load_shipped(f"absmax-d{block}-b{bits}") if block in codebook.SHIPPED_DIMS \
        else codebook.generate("absmax", block, bits)
    return np.array(cb.centroids), np.array(cb.boundaries)


def quant(x: np.ndarray, block: int, bits: int, scale: str, reindex: bool) -> np.ndarray:
    """x (n, d) -> dequantized, with the turbo block algorithm and the given scale."""
    c, b = book(block, bits)
    xb = x.reshape(-1, block)
    r = np.abs(xb).max(1, keepdims=True)
    r[r == 0] = 1
    cc = c[np.searchsorted(b, xb / r)]
    s = (xb * cc).sum(1) / np.maximum((cc * cc).sum(1), 1e-300)
    if scale == "fp16":
        s = s.astype(np.float16).astype(np.float64)
    else:
        code = 1 + np.searchsorted(LOG8_BOUNDS, s.astype(np.float32), side="left")  # 1 + #(bounds < s)
        s = LOG8[code]
    if reindex:
        cc = c[np.searchsorted((c[:-1] + c[1:]) / 2, xb / s[:, None])]
    return (s[:, None] * cc).reshape(x.shape)


DESIGNS = {
    "128/fp16 (first turbo2/3)": (128, "fp16", False),
    "64/fp16 (first turbo4)": (64, "fp16", False),
    "64/log8": (64, "log8", False),
    "64/log8+ri (turbo2/3)": (64, "log8", True),
    "32/log8+ri (turbo4, b32)": (32, "log8", True),
}


def attention_kl(rows, layer, kq):
    k = rows[("k", layer)]
    q = rows[("q", layer)]
    g = q.n_head // k.n_head
    out = []
    for kc, qc, hc in zip(k.chunks[:2], q.chunks[:2], kq[:2]):
        t = kc.shape[0]
        k3 = kc.astype(np.float64).reshape(t, k.n_head, -1)
        h3 = hc.reshape(t, k.n_head, -1)
        q3 = qc.astype(np.float64).reshape(t, q.n_head, -1)
        for j in range(k.n_head):
            out.append(calibrate.attention_kl(q3[:, j * g:(j + 1) * g], k3[:, j], h3[:, j], q.scale))
    return float(np.mean(out))


def through(rows, layer, kind, chunk, cal, fn):
    """fn applied to a chunk of rows as a calibrated cache stores them, mapped back."""
    rec = rows[(kind, layer)]
    rot = rows["rotation"].get((kind, layer))
    x = chunk.astype(np.float64)
    if kind != "k":
        return fn(x)                      # the calibration leaves V as it is
    t = x.shape[0]
    plain = calibrate.rotate(x, rot).reshape(t, rec.n_head, -1)
    c = cal.layers[[c.layer for c in cal.layers].index(layer)]
    stored = plain * c.k_scale + c.k_shift
    deq = calibrate.rotate(fn(calibrate.rotate(stored.reshape(t, -1), rot)), rot).reshape(t, rec.n_head, -1)
    back = (deq - c.k_shift) / c.k_scale
    return calibrate.rotate(back.reshape(t, -1), rot)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fit")
    ap.add_argument("eval")
    ap.add_argument("--bits", default="2,3,4")
    a = ap.parse_args()
    fit_rows, rows = capture.read(a.fit), capture.read(a.eval)
    cal = calibrate.fit(fit_rows)
    layers = capture.layers(rows, "k")
    print("| bits | design | K rel. MSE | V rel. MSE | attention KL (K only) |")
    print("|---|---|---|---|---|")
    for bits in map(int, a.bits.split(",")):
        designs = dict(DESIGNS)
        for name, (block, scale, ri) in list(designs.items()) + [("calibrated 64/log8+ri", (64, "log8", True))]:
            fn = lambda x, b=block, s=scale, r=ri: quant(x, b, bits, s, r)  # noqa: E731
            mse = {}
            kls = []
            for kind in ("k", "v"):
                num = den = 0.0
                for layer in layers:
                    chunks = rows[(kind, layer)].chunks
                    if rows[(kind, layer)].n_embd_head % block:
                        continue
                    deq = [through(rows, layer, kind, c, cal, fn) if name.startswith("calibrated") else
                           fn(c.astype(np.float64)) for c in chunks[:2]]
                    for c, d in zip(chunks[:2], deq):
                        num += float(((c - d) ** 2).sum())
                        den += float((c.astype(np.float64) ** 2).sum())
                    if kind == "k":
                        kls.append(attention_kl(rows, layer, deq))
                mse[kind] = num / den if den else float("nan")
            print(f"| {bits} | {name} | {mse['k']:.4f} | {mse['v']:.4f} | {np.mean(kls):.4f} |", flush=True)


if __name__ == "__main__":
    main()
