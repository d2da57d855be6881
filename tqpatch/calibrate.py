"""Per-model calibration of a turbo K/V cache: an exact change of basis for K and
channel scales for V, fitted to K/Q/V rows captured from a real run.

Why it is exact. Attention only sees q.k: for a diagonal a > 0 and a vector b,
storing k' = a*k + b and querying with q' = q/a gives q'.k' = q.k + (q/a).b.
The added term is the same for every key of a query, so the softmax is
unchanged (in exact arithmetic). It acts before llama.cpp's Walsh-Hadamard
rotation of K/Q, in the model's own coordinates, where K's channels differ:
llama.cpp applies k' = k_scale*k + k_shift and q' = q_scale*q (q_scale =
1/k_scale per query head) (patch 0021).

Why it helps. A turbo block's error is proportional to the block's scale, so
it is spent evenly over the rotated coordinates. Two things waste it:
  * K's mean over tokens: most of the energy of a real model's K rows can be a
    vector shared by all tokens (25-73% per layer on Gemma 3 270M), which costs
    scale but carries no information for the softmax. Subtracting it (b =
    -a*mu) removes that energy.
  * Channel balance: the logit error is q.e. With the error spread evenly
    over the rotated coordinates, it costs sum_i q_i^2 / a_i^2 times
    sum_i a_i^2 k_i^2; a_i = sqrt(rms(q_i) / rms(k_i)) minimises that product
    (Cauchy-Schwarz), which moves precision to the channels queries use.
    The exponent g of a = (rms q / rms k)^(g/2) is picked per layer, among
    GAMMAS, by the attention KL of the calibration rows themselves.

RoPE. K and Q are captured after RoPE, so a mean of K over tokens is only
meaningful for channel pairs that rotate slowly: a pair turning by theta per
position has moved by theta*p at position p, and past theta*p ~ 1 radian the
subtracted mean would add error instead of removing it. The mean is kept only
in pairs with theta * ctx <= 1, ctx being the context the calibration must
serve (the model's training context by default). The channel scales are
averaged over each RoPE pair, so they commute with RoPE.

V gets channel scales, not its mean. For V the trick is exact too: store
v' = c*v (a diagonal c > 0) and scale the attention output by 1/c, since the
output is a weighted sum of V rows. With a block's error spread evenly over the
rotated coordinates, the error reaching channel i is proportional to
sum_j c_j^2 v_j^2 / c_i^2; c_i = rms(v_i)^(-1/2) minimises the total (the same
Cauchy-Schwarz argument as for K, with every channel weighted alike), which
gives small channels more of the block's precision. The exponent h of c =
rms(v)^(-h/2) is picked per layer, among GAMMAS, by V's relative error through
the turbo type on the calibration rows. On Gemma 3 270M: 13% less V error at
2 bits, q8_0/turbo2's mean KLD 12% lower on the H100; under a calibrated turbo K
it does not pay (docs/quality.md). V's mean is not removed: storing v - m lowers V's
energy but was measured to raise the error that reaches the model (q8_0/turbo2
mean KLD 0.119 -> 0.180 on Gemma 3 270M): attention sinks put most of the
weight on a token whose V is far from the mean, and subtracting the mean makes
that row large. llama.cpp applies the K part with a turbo K cache and the V part
with a turbo V cache (patch 0021), each on its own.

Inputs: `tqpatch.capture.read()` of a tqpatch-capture file recorded with
--queries. Output: a small GGUF (`write()`), read by llama.cpp through
LLAMA_TURBO_CALIB=path.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from . import capture, formats, reference
from .backends.base import Backend
from .errors import TqpatchError
from .plan.gguf_file import open_gguf

FORMAT_VERSION = 1
GAMMAS = (0.0, 0.25, 0.5, 0.75, 1.0)
SCALE_LIMIT = 64.0          # channel scales are kept within [1/64, 64]
MEAN_RADIANS = 1.0          # a pair keeps its mean while theta * ctx <= this
PROXY_CHUNKS = 2            # calibration chunks the exponent is chosen on
SELECT_TYPE = "turbo3"      # the K type whose error the exponent is chosen for


@dataclass
class LayerCalib:
    layer: int
    n_embd_head_k: int
    n_head_kv: int
    n_head: int
    k_scale: np.ndarray          # (n_head_kv, n_embd_head_k)
    k_shift: np.ndarray          # (n_head_kv, n_embd_head_k)
    q_scale: np.ndarray          # (n_head, n_embd_head_k)
    gamma: float
    v_scale: np.ndarray          # (n_head_kv, n_embd_head_v): the cache stores v_scale*v
    o_scale: np.ndarray          # (n_head, n_embd_head_v): 1/v_scale per query head, on the output
    v_gamma: float
    v_error: dict                # gamma -> V's relative error through the turbo type
    mean_energy: float           # share of K's energy the subtracted mean removed
    proxy_kl: dict = field(default_factory=dict)   # gamma -> attention KL on the calibration rows


@dataclass
class Calibration:
    layers: list[LayerCalib]
    ctx: int
    source: str = ""

    def summary(self) -> list[str]:
        out = []
        for c in self.layers:
            base = c.proxy_kl.get(0.0, float("nan"))
            best = c.proxy_kl.get(c.gamma, float("nan"))
            v0, v1 = c.v_error.get(0.0, float("nan")), c.v_error.get(c.v_gamma, float("nan"))
            out.append(f"layer {c.layer:3d}: K mean removed {c.mean_energy:5.1%} of the energy, "
                       f"channel exponent {c.gamma:.2f}, attention KL {base:.4f} -> {best:.4f}; "
                       f"V exponent {c.v_gamma:.2f}, V error {v0:.4f} -> {v1:.4f}")
        return out


# ---------------------------------------------------------------- helpers


def hadamard(n: int) -> np.ndarray:
    """The orthonormal Walsh-Hadamard matrix llama.cpp uses (Sylvester order, symmetric)."""
    if n < 1 or n & (n - 1):
        raise TqpatchError(f"Hadamard size {n} is not a power of two")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / math.sqrt(n)


def rotate(x: np.ndarray, n: int | None) -> np.ndarray:
    """Apply (or undo: the matrix is its own inverse) the rotation over chunks of n values."""
    if not n:
        return x
    return (x.reshape(-1, n) @ hadamard(n)).reshape(x.shape)


def _pair_mean(v: np.ndarray, pair: np.ndarray) -> np.ndarray:
    """Average of v (..., D) over each RoPE pair (dims with pair -1 stay as they are)."""
    out = v.copy()
    for p in np.unique(pair[pair >= 0]):
        sel = pair == p
        out[..., sel] = v[..., sel].mean(axis=-1, keepdims=True)
    return out


def attention_kl(q: np.ndarray, k: np.ndarray, k_hat: np.ndarray, scale: float) -> float:
    """Mean KL(p || p_hat) of causal softmax attention rows: q (T, G, D), k and k_hat (T, D)."""
    t = k.shape[0]
    s = np.einsum("tgd,sd->gts", q, k) * scale
    sh = np.einsum("tgd,sd->gts", q, k_hat) * scale
    future = np.triu(np.ones((t, t), dtype=bool), 1)
    s[:, future] = -np.inf
    sh[:, future] = -np.inf
    lp = s - s.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    lph = sh - sh.max(-1, keepdims=True)
    lph -= np.log(np.exp(lph).sum(-1, keepdims=True))
    p = np.exp(lp)
    with np.errstate(invalid="ignore"):
        kl = np.where(p > 0, p * (lp - lph), 0.0).sum(-1)
    return float(kl.mean())


def _channel_scales(gamma: float, log_target: np.ndarray) -> np.ndarray:
    """exp(gamma * log_target), kept within [1/SCALE_LIMIT, SCALE_LIMIT]."""
    return np.exp(np.clip(gamma * log_target, -math.log(SCALE_LIMIT), math.log(SCALE_LIMIT)))


def _through_cache(x: np.ndarray, scale: np.ndarray, shift, rot: int | None, type_name: str) -> np.ndarray:
    """x (T, heads, D) in model coordinates as a calibrated cache returns it: stored as
    (x - shift) * scale, rotated, through the turbo type, and mapped back."""
    t = x.shape[0]
    stored = rotate(((x - shift) * scale).reshape(t, -1), rot)
    deq = reference.roundtrip(stored.astype(np.float32), type_name).astype(np.float64)
    return rotate(deq, rot).reshape(x.shape) / scale + shift


def _select_type(n_embd_head: int) -> str:
    """The turbo K type the exponent is chosen for (SELECT_TYPE's variant for this head)."""
    return formats.fit_type(SELECT_TYPE, n_embd_head)


# ---------------------------------------------------------------- fitting


def fit_layer(rows: dict, layer: int, ctx: int, *, chunks: int = PROXY_CHUNKS) -> LayerCalib:
    """The calibration of one layer from captured rows (K and Q of that layer)."""
    try:
        krec, qrec = rows[("k", layer)], rows[("q", layer)]
    except KeyError:
        raise TqpatchError(f"layer {layer}: the capture lacks its K or Q rows "
                           "(record with tqpatch-capture --queries)") from None
    d, hk, h = krec.n_embd_head, krec.n_head, qrec.n_head
    if qrec.n_embd_head != d or h % hk:
        raise TqpatchError(f"layer {layer}: {h} query heads of {qrec.n_embd_head} do not fit "
                           f"{hk} KV heads of {d}")
    g = h // hk
    rot_k = rows["rotation"].get(("k", layer))
    rope = rows["rope"].get(layer)

    k_chunks = [rotate(c.astype(np.float64), rot_k) for c in krec.chunks]   # model coordinates
    q_chunks = [rotate(c.astype(np.float64), rot_k) for c in qrec.chunks]
    k0 = np.concatenate(k_chunks).reshape(-1, hk, d)
    q0 = np.concatenate(q_chunks).reshape(-1, h, d)

    pair = rope.pair_of(d) if rope else np.full(d, -1)
    theta = rope.theta(d) if rope else np.zeros(d)
    keep = theta * ctx <= MEAN_RADIANS
    mu = k0.mean(axis=0) * keep                                   # (hk, d)
    energy = float((k0 ** 2).sum(-1).mean())
    resid = float(((k0 - mu) ** 2).sum(-1).mean())
    mean_energy = 1.0 - resid / energy if energy > 0 else 0.0

    k_ms = _pair_mean(((k0 - mu) ** 2).mean(axis=0), pair)                      # (hk, d)
    q_ms = _pair_mean((q0 ** 2).mean(axis=0).reshape(hk, g, d).mean(axis=1), pair)
    floor_k = max(float(k_ms.max()), 1e-30) * 1e-8
    floor_q = max(float(q_ms.max()), 1e-30) * 1e-8
    log_ratio = 0.25 * (np.log(np.maximum(q_ms, floor_q)) - np.log(np.maximum(k_ms, floor_k)))
    log_ratio -= log_ratio.mean(axis=-1, keepdims=True)                         # geometric mean 1

    ktype = _select_type(d)
    scale = qrec.scale

    def proxy(gamma: float) -> float:
        a = _channel_scales(gamma, log_ratio)
        kls = []
        for kc, qc in list(zip(krec.chunks, qrec.chunks))[:chunks]:
            kr = kc.astype(np.float64)
            t = kr.shape[0]
            km = _through_cache(rotate(kr, rot_k).reshape(t, hk, d), a, mu, rot_k, ktype)
            back = rotate(km.reshape(t, -1), rot_k)           # captured (rotated) coordinates
            k3, kh3 = kr.reshape(t, hk, d), back.reshape(t, hk, d)
            q3 = qc.astype(np.float64).reshape(t, h, d)
            for j in range(hk):
                kls.append(attention_kl(q3[:, j * g:(j + 1) * g], k3[:, j], kh3[:, j], scale))
        return float(np.mean(kls))

    kl = {gm: proxy(gm) for gm in GAMMAS}
    gamma = min(kl, key=lambda gm: (kl[gm], gm))
    a = _channel_scales(gamma, log_ratio)
    c, v_gamma, v_error = fit_v_scale(rows, layer, chunks=chunks)
    return LayerCalib(
        layer=layer, n_embd_head_k=d, n_head_kv=hk, n_head=h,
        k_scale=a, k_shift=-a * mu, q_scale=np.repeat(1.0 / a, g, axis=0),
        gamma=gamma, mean_energy=mean_energy, proxy_kl=kl,
        v_scale=c, o_scale=np.repeat(1.0 / c, g, axis=0), v_gamma=v_gamma, v_error=v_error,
    )


def fit_v_scale(rows: dict, layer: int, *, chunks: int = PROXY_CHUNKS) -> tuple[np.ndarray, float, dict]:
    """V's channel scales of one layer, (n_head_kv, n_embd_head_v), their exponent and the
    relative V error through the turbo type for each exponent tried."""
    try:
        vrec = rows[("v", layer)]
    except KeyError:
        raise TqpatchError(f"layer {layer}: the capture lacks its V rows") from None
    d, hk = vrec.n_embd_head, vrec.n_head
    rot_v = rows["rotation"].get(("v", layer))
    v0 = rotate(vrec.data.astype(np.float64), rot_v).reshape(-1, hk, d)      # model coordinates
    ms = (v0 ** 2).mean(axis=0)
    log_ms = -0.25 * np.log(np.maximum(ms, max(float(ms.max()), 1e-30) * 1e-8))
    log_ms -= log_ms.mean(axis=-1, keepdims=True)                                # geometric mean 1
    vtype = _select_type(d)

    def error(gamma: float) -> float:
        c = _channel_scales(gamma, log_ms)
        num = den = 0.0
        for vc in vrec.chunks[:chunks]:
            x = rotate(vc.astype(np.float64), rot_v).reshape(-1, hk, d)
            back = _through_cache(x, c, 0.0, rot_v, vtype)
            num += float(((back - x) ** 2).sum())
            den += float((x ** 2).sum())
        return num / den if den else 0.0

    err = {gm: error(gm) for gm in GAMMAS}
    v_gamma = min(err, key=lambda gm: (err[gm], gm))
    return _channel_scales(v_gamma, log_ms), v_gamma, err


def fit(rows: dict, ctx: int | None = None, *, source: str = "", progress=None) -> Calibration:
    """Calibrate every layer of a capture. ctx: the longest context the
    calibration must serve (default: the model's training context)."""
    layers = capture.layers(rows, "k")
    if not layers:
        raise TqpatchError("the capture holds no K rows")
    if ctx is None:
        ctx = max((r.n_ctx_train for r in rows["rope"].values()), default=0) or 4096
    out = []
    for layer in layers:
        out.append(fit_layer(rows, layer, ctx))
        if progress:
            progress(out[-1])
    return Calibration(out, ctx, source)


# ---------------------------------------------------------------- file


TENSORS = ("k_scale", "k_shift", "q_scale", "v_scale", "o_scale")


def write(cal: Calibration, path, model_name: str = "") -> None:
    """The calibration as GGUF: one f32 tensor blk.<layer>.<name> per layer and TENSORS name."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")  # a reader never sees half a file
    try:
        _write_to(gguf, cal, tmp, model_name)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_to(gguf, cal: Calibration, path: Path, model_name: str) -> None:
    w = gguf.GGUFWriter(str(path), "tqpatch-calib")
    w.add_uint32("tqpatch.calib.version", FORMAT_VERSION)
    w.add_uint32("tqpatch.calib.ctx", int(cal.ctx))
    w.add_string("tqpatch.calib.model", model_name)
    w.add_string("tqpatch.calib.source", cal.source)
    w.add_uint32("tqpatch.calib.n_layer", len(cal.layers))
    for c in cal.layers:
        for name in TENSORS:
            arr = np.ascontiguousarray(getattr(c, name), dtype=np.float32)
            w.add_tensor(f"blk.{c.layer}.{name}", arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


READ_LIMIT = 1 << 28        # bytes of tensor data read(): a real file holds a few MB


def read(path) -> dict[str, np.ndarray]:
    """Tensors of a calibration file by name (for tests and inspection).

    The file is untrusted (a user passes it in): the bounded GGUF reader parses
    it, and each tensor's data is read from its offset, f32 only, finite.
    """
    path = Path(path)
    f, _ = open_gguf(path, want=lambda name: name.startswith("tqpatch.calib."))
    if "tqpatch.calib.version" not in f.fields:
        raise TqpatchError(f"{path}: not a tqpatch calibration file")
    if sum(t.n_bytes for t in f.tensors) > READ_LIMIT:
        raise TqpatchError(f"{path}: tensor data over {READ_LIMIT >> 20} MiB, far more than a "
                           "calibration holds (corrupt or crafted)")
    dtype = np.dtype(np.float32).newbyteorder(f.byte_order)
    out = {}
    try:
        with open(path, "rb") as fh:
            for t in f.tensors:
                if t.tensor_type != gguf.GGMLQuantizationType.F32:
                    raise TqpatchError(f"{path}: tensor {t.name} is {t.tensor_type.name}, not "
                                       "F32 (not a tqpatch calibration file)")
                fh.seek(t.data_offset)
                buf = fh.read(t.n_bytes)
                if len(buf) != t.n_bytes:
                    raise TqpatchError(f"{path}: the file shrank while it was read")
                a = np.frombuffer(buf, dtype=dtype)
                if not np.isfinite(a).all():
                    raise TqpatchError(f"{path}: tensor {t.name} holds non-finite values")
                # ggml order is fastest dimension first; numpy's is the reverse
                out[t.name] = a.astype(np.float32).reshape(tuple(reversed(t.shape)))
    except OSError as exc:
        raise TqpatchError(f"{path}: cannot read: {exc.strerror or exc}") from None
    _check_layers(path, out)
    return out


def _check_layers(path: Path, t: dict) -> None:
    """Each layer's K part (k_scale, k_shift, q_scale) and V part (v_scale, o_scale)
    whole, of (heads, head size), query heads a multiple of KV heads: what its
    readers index without checking."""
    for name in t:
        blk, _, part = name.rpartition(".")
        if not blk.startswith("blk.") or part not in ("k_scale", "k_shift", "q_scale",
                                                       "v_scale", "o_scale"):
            continue
        kv, others, q = ((f"{blk}.k_scale", (f"{blk}.k_shift",), f"{blk}.q_scale")
                         if part[0] in "kq" else (f"{blk}.v_scale", (), f"{blk}.o_scale"))
        missing = [n for n in (kv, *others, q) if n not in t]
        if missing:
            raise TqpatchError(f"{path}: {name} without {', '.join(missing)} "
                               "(not a tqpatch calibration file)")
        a, b = t[kv].shape, t[q].shape
        if (len(a) != 2 or len(b) != 2 or any(t[n].shape != a for n in others)
                or a[1] != b[1] or 0 in a or b[0] % a[0]):
            shapes = ", ".join(f"{n} {list(t[n].shape)}" for n in (kv, *others, q))
            raise TqpatchError(f"{path}: {shapes} are not KV and query heads of one size "
                               "(not a tqpatch calibration file)")


# ---------------------------------------------------------------- a model run


def calibrate_model(model: Path, out: Path, *, backend: Backend, build_dir: Path | None = None,
                    text: Path | None = None, chunks: int = capture.DEFAULT_CHUNKS,
                    serve_ctx: int | None = None, threads: int | None = None,
                    progress=None, n_layer: int | None = None) -> Calibration:
    """Run the model with a build's tqpatch-capture (on the CPU backend every build
    holds), fit the calibration and write it to `out`."""
    with tempfile.TemporaryDirectory(prefix="tqpatch-calib-") as tmp:
        rows_file = capture.run(model, Path(tmp) / "rows.bin", text=text, chunks=chunks,
                                threads=threads, backend=backend, build_dir=build_dir)
        cal = fit_rows(rows_file, serve_ctx, str(text or capture.DEFAULT_TEXT_REL), progress,
                       n_layer=n_layer)
    write(cal, out, Path(model).name)
    return cal


def fit_rows(rows_file: Path, serve_ctx: int | None, source: str, progress=None,
             n_layer: int | None = None) -> Calibration:
    """fit() on a tqpatch-capture file recorded with --queries; n_layer (the
    model's block count) checks the file's layers against the model."""
    data = capture.read(rows_file, n_layer=n_layer)
    if not capture.layers(data, "q"):
        raise TqpatchError(f"{rows_file}: no query rows; record it with tqpatch-capture --queries")
    return fit(data, serve_ctx, source=source, progress=progress)
