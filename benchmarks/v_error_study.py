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
  * with --model, V's error weighted by the output projection's squared column norms
    (what reaches the residual stream), with the rms scales and with scales that
    also weigh each channel by them, c = (w / rms(v)^2)^(1/4).
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
    ap.add_argument("--model", type=Path, help="GGUF: weigh V's error by attn_output's column norms")
    ap.add_argument("--bits", type=int, default=2)
    a = ap.parse_args()
    fit, ev = capture.read(a.fit), capture.read(a.eval)
    wo = column_weights(a.model) if a.model else {}
    shares = {"all": 0.0, "BOS exact": 0.0, "self exact": 0.0, f"last {RECENT} exact": 0.0}
    scales = ["none", "rms", "attention-weighted rms"]
    weighted = ["none", "rms", "rms and W_o"]
    w_err = dict.fromkeys(weighted, 0.0)
    v_err = dict.fromkeys(scales, 0.0)
    out_err = dict.fromkeys(scales, 0.0)
    v_den = out_den = w_den = 0.0
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
        if wo:   # per V channel of a KV head: the columns of the query heads it serves
            wcol = wo[layer].reshape(hk, -1, d).sum(1)
            chan["rms and W_o"] = (wcol / rms2) ** 0.25
        for c in range(2):
            x = calibrate.rotate(vrec.chunks[c].astype(np.float64), rot)
            t = x.shape[0]
            probs = attention(ev, layer, c)
            out_den += output_error(probs, x.reshape(t, hk, d), hk)
            v_den += float((x ** 2).sum())
            errs = {}
            for name in dict.fromkeys(scales + (weighted if wo else [])):
                sc = np.broadcast_to(chan[name], (hk, d)).ravel()
                y = calibrate.rotate(quant(calibrate.rotate(x * sc, rot), 64, a.bits, "log8", True), rot) / sc
                errs[name] = (y - x).reshape(t, hk, d)
            for name in scales:
                v_err[name] += float((errs[name] ** 2).sum())
                out_err[name] += output_error(probs, errs[name], hk)
            for name in (weighted if wo else []):
                w_err[name] += float((errs[name] ** 2 * wcol[None]).sum())
            if wo:
                w_den += float((x.reshape(t, hk, d) ** 2 * wcol[None]).sum())
            e = errs["none"]
            shares["all"] += output_error(probs, e, hk)
            shares["BOS exact"] += output_error(without(probs, lambda n: (slice(None), 0)), e, hk)
            shares["self exact"] += output_error(without(probs, lambda n: (np.arange(n), np.arange(n))), e, hk)
            shares[f"last {RECENT} exact"] += output_error(without(probs, lambda n: diagonals(n, RECENT)), e, hk)
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
        print("\n| V channel scales | V rel. error weighted by attn_output's column norms | / none |")
        print("|---|---:|---:|")
        for name in weighted:
            print(f"| {name} | {w_err[name] / w_den:.4f} | {w_err[name] / w_err['none']:.3f} |")


if __name__ == "__main__":
    main()
