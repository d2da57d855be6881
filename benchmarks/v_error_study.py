"""Where a 2-bit V cache's error reaches the model, and what V channel scales buy
(docs/block-design.md, issue 14).

Inputs: two tqpatch-capture files of one model recorded with --queries (a fitting
text and the evaluation text, as for benchmarks/block_study.py), and optionally the
model GGUF for the output projection (attn_output) column norms:

  python benchmarks/v_error_study.py fit.bin eval.bin [--model M.gguf] [--bits 2]

On the evaluation rows (first two chunks of each layer; K and Q exact, only V
quantized with the shipped turbo block algorithm) it prints:
  * the attention output error sum_i |sum_j p_ij e_j|^2 / sum_i |o_i|^2, and the
    share left when the BOS token (the usual attention sink), the token itself, or
    the 16 most recent tokens (itself included) are stored exactly;
  * V's relative error and the output error with V channel scales c = rms(v)^(-1/2)
    fitted on the other text (what `tqpatch calibrate` writes), and with c from the
    attention-weighted rms (tokens weighted by the squared attention they receive);
  * with --model, how far the output projection's column norms (the weight of each
    V channel's error in what reaches the residual stream) are from uniform.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from block_study import quant  # noqa: E402

from tqpatch import calibrate, capture  # noqa: E402

RECENT = 16


def attention(rows, layer, chunk) -> list[np.ndarray]:
    """Causal softmax attention (T, T) of every query head on one chunk."""
    k, q = rows[("k", layer)], rows[("q", layer)]
    g = q.n_head // k.n_head
    kc, qc = k.chunks[chunk].astype(np.float64), q.chunks[chunk].astype(np.float64)
    t = kc.shape[0]
    k3, q3 = kc.reshape(t, k.n_head, -1), qc.reshape(t, q.n_head, -1)
    future = np.triu(np.ones((t, t), dtype=bool), 1)
    out = []
    for h in range(q.n_head):
        s = q3[:, h] @ k3[:, h // g].T * q.scale
        s[future] = -np.inf
        p = np.exp(s - s.max(1, keepdims=True))
        out.append(p / p.sum(1, keepdims=True))
    return out


def output_error(probs, err, n_head_kv) -> float:
    """sum over heads and queries of |P e|^2 (err: (T, n_head_kv, D))."""
    g = len(probs) // n_head_kv
    return sum(float(((p @ err[:, h // g]) ** 2).sum()) for h, p in enumerate(probs))


def without(probs, keep) -> list[np.ndarray]:
    """The attention with the entries keep(t) marks set to 0 (those tokens stored exactly)."""
    out = []
    for p in probs:
        q = p.copy()
        q[keep(p.shape[0])] = 0
        out.append(q)
    return out


def diagonals(t: int, n: int):
    rows = np.concatenate([np.arange(d, t) for d in range(n)])
    cols = np.concatenate([np.arange(0, t - d) for d in range(n)])
    return rows, cols


def column_weights(model: Path) -> dict[int, np.ndarray]:
    """Per layer, the squared column norms of attn_output (one per channel of every query head)."""
    import gguf

    r = gguf.GGUFReader(str(model))
    out = {}
    for t in r.tensors:
        if t.name.endswith("attn_output.weight"):
            w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float64)
            out[int(t.name.split(".")[1])] = (w.reshape(-1, w.shape[-1]) ** 2).sum(0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fit")
    ap.add_argument("eval")
    ap.add_argument("--model", type=Path, help="GGUF: report the spread of attn_output's column norms")
    ap.add_argument("--bits", type=int, default=2)
    a = ap.parse_args()
    fit, ev = capture.read(a.fit), capture.read(a.eval)
    wo = column_weights(a.model) if a.model else {}
    shares = {"all": 0.0, "BOS exact": 0.0, "self exact": 0.0, f"last {RECENT} exact": 0.0}
    scales = ["none", "rms", "attention-weighted rms"]
    v_err = dict.fromkeys(scales, 0.0)
    out_err = dict.fromkeys(scales, 0.0)
    v_den = out_den = 0.0
    for layer in capture.layers(ev, "v"):
        vrec, frec = ev[("v", layer)], fit[("v", layer)]
        d, hk = vrec.n_embd_head, vrec.n_head
        rot = ev["rotation"].get(("v", layer))
        num, wsum, plain = np.zeros(d), 0.0, []
        for c in range(len(frec.chunks)):
            x = calibrate.rotate(frec.chunks[c].astype(np.float64), rot).reshape(-1, d)
            w = np.repeat(sum((p ** 2).sum(0) for p in attention(fit, layer, c)), hk)
            num += (w[:, None] * x ** 2).sum(0)
            wsum += float(w.sum())
            plain.append(x)
        rms2 = (np.concatenate(plain) ** 2).mean(0)
        chan = {"none": np.ones(d), "rms": rms2 ** -0.25, "attention-weighted rms": (num / wsum) ** -0.25}
        for c in range(2):
            x = calibrate.rotate(vrec.chunks[c].astype(np.float64), rot)
            t = x.shape[0]
            probs = attention(ev, layer, c)
            out_den += output_error(probs, x.reshape(t, hk, d), hk)
            v_den += float((x ** 2).sum())
            for name in scales:
                s = np.tile(chan[name], x.shape[1] // d)
                y = calibrate.rotate(quant(calibrate.rotate(x * s, rot), 64, a.bits, "log8", True), rot) / s
                e = (y - x).reshape(t, hk, d)
                v_err[name] += float((e ** 2).sum())
                out_err[name] += output_error(probs, e, hk)
                if name == "none":
                    shares["all"] += output_error(probs, e, hk)
                    shares["BOS exact"] += output_error(without(probs, lambda n: (slice(None), 0)), e, hk)
                    shares["self exact"] += output_error(
                        without(probs, lambda n: (np.arange(n), np.arange(n))), e, hk)
                    shares[f"last {RECENT} exact"] += output_error(
                        without(probs, lambda n: diagonals(n, RECENT)), e, hk)
        print(f"layer {layer:2d} done", file=sys.stderr, flush=True)
    print(f"V at {a.bits} bits, {len(capture.layers(ev, 'v'))} layers\n")
    print("| V stored | attention output rel. error | share of all |")
    print("|---|---:|---:|")
    for name, val in shares.items():
        print(f"| {name} | {val / out_den:.4f} | {val / shares['all']:.1%} |")
    print("\n| V channel scales | V rel. error | / none | output rel. error | / none |")
    print("|---|---:|---:|---:|---:|")
    for name in scales:
        print(f"| {name} | {v_err[name] / v_den:.4f} | {v_err[name] / v_err['none']:.3f} | "
              f"{out_err[name] / out_den:.4f} | {out_err[name] / out_err['none']:.3f} |")
    if wo:
        spread = [float(w.max() / np.median(w)) for w in wo.values()]
        print(f"\nattn_output squared column norms, max / median per layer: "
              f"{min(spread):.1f} .. {max(spread):.1f} (1.0: every V channel's error weighs the same)")


if __name__ == "__main__":
    main()
