"""Verify built kernels against the NumPy reference (DESIGN.md, "The verification contract").

`verify()` generates seeded random and adversarial inputs, runs them through
the `tqpatch-verify` harness of one built backend (ggml ops on that backend's
device), and compares every output with `tqpatch.reference`:

  SET_ROWS (quantize)     block bytes equal to reference.quantize_rows, except
                          indices whose pre-quantization value lies within
                          BOUNDARY_TOL of a decision boundary (flipped to the
                          neighbouring level: counted, reported) and fp16
                          scales within 1 ulp (counted). Anything else fails.
  GET_ROWS, CPY           bit-exact equality with reference.dequantize_rows
  (dequantize)            given the same bytes (NaN matches any NaN).
  MUL_MAT (vec_dot)       close to a float64 dot product of the dequantized
                          values; per-element bound, see dot_tolerance().
  FLASH_ATTN_EXT          close to float64 attention (reference.attention) on
                          the dequantized K and V; see attention_tolerance().

MUL_MAT and FLASH_ATTN_EXT are fed the reference's quantized bytes, so they
are tested independently of the backend's quantizer. Only the backend that
was run is verified; the report says so.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import formats, reference
from .errors import TqpatchError
from .precision import Precision
from .verify_io import Case, Result

HARNESS = "tqpatch-verify"
TURBO_TYPES = formats.TURBO_TYPES
# upstream cache types verify also checks (SET_ROWS, FA pairs)
BASELINE_TYPES = tuple(t for t in formats.CACHE_TYPES if t not in formats.TURBO_FORMATS)
HEAD_SIZES = formats.HEAD_SIZES

U32 = 2.0 ** -24    # float32 unit roundoff (round to nearest)
U16 = 2.0 ** -11    # float16 unit roundoff

# Decision-boundary tolerance, in the units the decision is taken in.
# turbo: u = x * (1/max|x|), |u| <= 1. A backend computing 1/r with a fast
# reciprocal (<= 1 ulp) and x*(1/r) (0.5 ulp) moves u by < 2 float32 ulps
# (< 2.4e-7 for |u| < 1); 1e-6 leaves a factor of 4 and is still "a handful
# per million" for random data.
BOUNDARY_TOL = 1e-6
# q8_0: v = x/d with |v| <= 127; upstream's SIMD quantizer uses 127/amax
# instead of 1/d and rounds ties to even, so the same relative 1e-6 at the
# top of the range.
BOUNDARY_TOL_Q8 = 1e-6 * 127

# Softmax perturbation analysis and the f16 accumulator term use a statistical
# bound for rounding errors that a rigorous bound would overstate by sqrt(n):
K_SIGMA = 6.0


# ================================================================ precision models

def precision_for(backend: str) -> Precision:
    """The verify precision model the backend module declares."""
    from .backends import get

    return get(backend).precision()


def simulate_q(q: np.ndarray, how: str) -> np.ndarray:
    """Q (rows, d) after the conversion a backend is known to apply (float32)."""
    q = np.asarray(q, dtype=np.float32)
    if how == "f32":
        return q
    if how == "f16":
        return q.astype(np.float16).astype(np.float32)
    if how == "q8_0":
        return reference.roundtrip(q, "q8_0")
    raise ValueError(how)


def _q8_step(q: np.ndarray) -> np.ndarray:
    """Per element: the q8 quantization step (block amax / 127) of its 32-value block."""
    q = np.abs(np.asarray(q, dtype=np.float64))
    shp = q.shape
    blk = q.reshape(*shp[:-1], shp[-1] // 32, 32)
    d = blk.max(axis=-1, keepdims=True) / 127.0
    return np.broadcast_to(d, blk.shape).reshape(shp)


def _q_extra_error(q: np.ndarray, ak: np.ndarray, how: str) -> np.ndarray:
    """Bound on |sum_i (Q'_i - Q_i) k_ji| for every (query row, key row): (nq, nk)."""
    if how == "none" or how == "f32":
        return np.zeros((q.shape[0], ak.shape[0]))
    aq = np.abs(np.asarray(q, dtype=np.float64))
    if how == "f16":
        return (U16 * aq) @ ak.T
    step = _q8_step(q)
    if how == "q8":
        # q8_0/q8_1: d = amax/127 (rounded to half), q' = d_h * round(q / d):
        # |q' - q| <= d (1/2 + 127 * 2^-11)
        return (step * (0.5 + 127 * U16)) @ ak.T
    if how == "q8_flip":
        # only values within the boundary tolerance of a q8 rounding boundary
        # (ties included) can land one step off: sum of step_i |k_ji| over them
        near = reference.boundary_margin(q, "q8_0") <= BOUNDARY_TOL_Q8
        return np.where(near, step, 0.0) @ ak.T
    raise ValueError(how)


# ================================================================ checks

@dataclass
class Check:
    """One harness case plus what the comparison needs."""
    case: Case
    kind: str                   # quantize | dequantize | dot | attention
    label: str                  # input class(es), for the table
    shape: str
    elements: int
    data: dict = field(default_factory=dict)

    @property
    def op(self) -> str:
        return self.case.op

    @property
    def types(self) -> str:
        c = self.case
        return f"{c.type_k}/{c.type_v}" if c.op == "FLASH_ATTN_EXT" else c.type_k

    @property
    def involves_turbo(self) -> bool:
        return self.case.type_k in TURBO_TYPES or (
            self.case.op == "FLASH_ATTN_EXT" and self.case.type_v in TURBO_TYPES)


@dataclass
class CaseReport:
    op: str
    types: str
    shape: str
    label: str
    elements: int
    result: str                 # PASS | FAIL | UNSUPPORTED
    boundary: int = 0           # quantize: indices flipped at a decision boundary (allowed)
    near_boundary: int = 0      # quantize: values within the boundary tolerance
    scale_ulp: int = 0          # quantize: scales 1 fp16 ulp off (allowed)
    mismatches: int = 0
    max_err: float = 0.0
    tol: float | None = None    # dot / attention: the largest per-element tolerance
    worst_ratio: float = 0.0    # dot / attention: max(err / tol)
    note: str = ""
    details: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- inputs

ROW_CLASSES = ("gaussian", "outliers", "zeros", "constant", "tiny", "huge", "alternating",
               "mixed-blocks")


def make_rows(rng: np.random.Generator, kind: str, k: int, block: int = 128) -> np.ndarray:
    """One float32 row of length k of an input class."""
    g = rng.standard_normal(k)
    if kind == "gaussian":
        x = g
    elif kind == "outliers":       # a few channels 30-100x larger
        x = g.copy()
        ch = rng.choice(k, size=max(1, k // 64), replace=False)
        x[ch] *= rng.uniform(30, 100, size=ch.size) * rng.choice([-1, 1], size=ch.size)
    elif kind == "zeros":
        x = np.zeros(k)
    elif kind == "constant":
        x = np.full(k, rng.choice([-1, 1]) * rng.uniform(0.1, 10))
    elif kind == "tiny":           # row norm 1e-30 .. 1e-20
        x = g / np.linalg.norm(g) * 10 ** rng.uniform(-30, -20)
    elif kind == "huge":           # row norm 1e4 .. 6e4 (every value within fp16 range)
        x = g / np.linalg.norm(g) * 10 ** rng.uniform(4, math.log10(6e4))
    elif kind == "alternating":    # |u| = 1 everywhere: the extreme levels
        x = np.where(np.arange(k) % 2 == 0, 1.0, -1.0) * rng.uniform(0.5, 2)
    elif kind == "mixed-blocks":   # blocks of very different scale (per-block scales)
        scales = 10.0 ** rng.integers(-3, 4, size=k // block)
        x = g * np.repeat(scales, block)
        x[:block] = 0 if k > block else x[:block]
    elif kind == "nan":
        x = g.copy()
        x[rng.integers(k)] = np.nan
    elif kind == "inf":
        x = g.copy()
        x[rng.integers(k)] = rng.choice([np.inf, -np.inf])
    else:
        raise ValueError(kind)
    return x.astype(np.float32)


def _row_set(rng, classes, k, block, repeat=1):
    rows, labels = [], []
    for c in classes:
        for _ in range(repeat):
            rows.append(make_rows(rng, c, k, block))
            labels.append(c)
    return np.stack(rows), labels


def _block(name: str) -> int:
    return formats.type_info(name).block_size


def _quantize(x, name: str) -> np.ndarray:
    return reference.quantize_rows(x, name, nonfinite="poison" if name in TURBO_TYPES else "error")


# ---------------------------------------------------------------- check builders

def _set_rows_check(rng, name: str, x: np.ndarray, labels: list[str], label: str) -> Check:
    n, k = x.shape
    idx = rng.permutation(n).astype("<i8")
    case = Case("SET_ROWS", name, name, (k, n), 1.0, [x.astype("<f4"), idx])
    return Check(case, "quantize", label, f"{n}x{k}", n * k,
                 {"x": x, "idx": idx, "labels": labels})


def _dequant_data(rng, name: str, k: int) -> tuple[np.ndarray, list[str]]:
    """Reference bytes of every input class (poisoned blocks included) plus random bytes."""
    blk = _block(name)
    x, labels = _row_set(rng, ROW_CLASSES, k, blk)
    data = [_quantize(x, name)]
    if name in TURBO_TYPES:
        nf, nf_labels = _row_set(rng, ("nan", "inf"), k, blk)
        data.append(_quantize(nf, name))
        labels += nf_labels
    row_bytes = k // blk * formats.type_info(name).block_bytes
    data.append(rng.integers(0, 256, size=(4, row_bytes), dtype=np.uint8))
    labels += ["random-bytes"] * 4
    return np.concatenate(data).astype(np.uint8), labels


def _get_rows_check(rng, name: str, k: int) -> Check:
    data, labels = _dequant_data(rng, name, k)
    n = data.shape[0]
    idx = np.concatenate([rng.permutation(n), rng.integers(0, n, size=5)]).astype("<i4")
    case = Case("GET_ROWS", name, name, (k, n, idx.size), 1.0, [data, idx])
    return Check(case, "dequantize", "all classes + random bytes", f"{idx.size}x{k}",
                 idx.size * k, {"bytes": data, "idx": idx, "k": k, "labels": labels})


def _cpy_check(rng, name: str, k: int) -> Check:
    data, labels = _dequant_data(rng, name, k)
    n = data.shape[0]
    case = Case("CPY", name, name, (k, n), 1.0, [data])
    return Check(case, "dequantize", "all classes + random bytes", f"{n}x{k}", n * k,
                 {"bytes": data, "idx": np.arange(n), "k": k, "labels": labels})


def _mul_mat_check(rng, name: str, k: int, nk: int, nq: int) -> Check:
    classes = ("gaussian", "gaussian", "outliers", "zeros", "constant", "tiny", "huge",
               "alternating", "mixed-blocks")
    kx, labels = _row_set(rng, classes, k, _block(name))
    kx = np.concatenate([kx, _row_set(rng, ("gaussian",), k, _block(name), nk - kx.shape[0])[0]]) \
        if nk > kx.shape[0] else kx[:nk]
    kb = _quantize(kx, name)
    q = rng.standard_normal((nq, k)).astype(np.float32)
    case = Case("MUL_MAT", name, name, (k, kx.shape[0], nq), 1.0, [kb, q.astype("<f4")])
    return Check(case, "dot", "mixed K rows, gaussian Q", f"k={k} nk={kx.shape[0]} nq={nq}",
                 kx.shape[0] * nq, {"kbytes": kb, "q": q, "k": k})


def _fa_mask(rng, nq: int, nkv: int) -> np.ndarray:
    """f16 mask (nq, nkv): causal for the last nq positions, some random -inf and
    finite negative values; every row keeps at least one position."""
    m = np.zeros((nq, nkv), dtype=np.float32)
    off = nkv - nq
    for i in range(nq):
        m[i, off + i + 1:] = -np.inf
    m[rng.random((nq, nkv)) < 0.1] = -np.inf
    soft = rng.random((nq, nkv)) < 0.1
    m[soft] = np.where(np.isfinite(m[soft]), -rng.uniform(0, 3, size=soft.sum()), m[soft])
    for i in range(nq):
        m[i, off + i] = 0.0            # the diagonal stays visible
    return m.astype(np.float16)


def _fa_check(rng, tk: str, tv: str, d: int, nq: int, nh: int, nkv: int, nh_kv: int) -> Check:
    q = rng.standard_normal((nh, nq, d)).astype(np.float32)
    kx = rng.standard_normal((nh_kv, nkv, d))
    # a quarter of the K rows carry outlier channels (sharper softmax)
    rows = rng.random((nh_kv, nkv)) < 0.25
    ch = rng.choice(d, size=2, replace=False)
    kx[..., ch] *= np.where(rows[..., None], rng.uniform(30, 100, size=2), 1.0)
    vx = rng.standard_normal((nh_kv, nkv, d)) * np.where(rng.random((nh_kv, nkv, 1)) < 0.1, 3, 1)
    kx, vx = kx.astype(np.float32), vx.astype(np.float32)
    kb = _quantize(kx.reshape(-1, d), tk)
    vb = _quantize(vx.reshape(-1, d), tv)
    mask = _fa_mask(rng, nq, nkv)
    scale = float(np.float32(1.0 / math.sqrt(d)))
    case = Case("FLASH_ATTN_EXT", tk, tv, (d, nq, nh, nkv, nh_kv), scale,
                [q.astype("<f4"), kb, vb, mask.astype("<f2")])
    shape = f"d={d} nq={nq} nh={nh}/{nh_kv} kv={nkv}"
    return Check(case, "attention", "decode" if nq == 1 else "prefill", shape, nh * nq * d,
                 {"q": q, "kbytes": kb, "vbytes": vb, "mask": mask, "scale": scale})


def fa_pairs(types: tuple[str, ...]) -> list[tuple[str, str]]:
    """Every K type with every V type in f16, q8_0 and the selected turbo types,
    at least one of them turbo."""
    return [(k, v) for k, v in formats.cache_pairs((*BASELINE_TYPES, *types))
            if k in types or v in types]


def make_checks(types=TURBO_TYPES, seed: int = 0, quick: bool = False) -> list[Check]:
    types = tuple(types)
    for t in types:
        if t not in TURBO_TYPES:
            raise TqpatchError(f"--types: {t!r} is not a turbo type ({', '.join(TURBO_TYPES)})")
    rng = np.random.default_rng(seed)
    checks: list[Check] = []
    heads = (128,) if quick else HEAD_SIZES
    n_gauss = 16 if quick else 48

    for name in (*types, *BASELINE_TYPES):
        blk = _block(name)
        for k in heads:
            if k % blk == 0:
                x, labels = _row_set(rng, ("gaussian",), k, blk, n_gauss)
                checks.append(_set_rows_check(rng, name, x, labels, "gaussian"))
        x, labels = _row_set(rng, ROW_CLASSES, 256, blk, 1 if quick else 2)
        checks.append(_set_rows_check(rng, name, x, labels, "adversarial"))
        if name in TURBO_TYPES:
            x, labels = _row_set(rng, ("nan", "inf", "gaussian"), 256, blk)
            checks.append(_set_rows_check(rng, name, x, labels, "nan/inf (poison)"))

    for name in types:
        checks.append(_get_rows_check(rng, name, 256))
        checks.append(_cpy_check(rng, name, 256))
        if not quick and 128 % _block(name) == 0:
            checks.append(_cpy_check(rng, name, 128))
        checks.append(_mul_mat_check(rng, name, 256, 16, 1))
        if not quick:
            checks.append(_mul_mat_check(rng, name, 128, 24, 8))

    for tk, tv in fa_pairs(types):
        for d in heads:
            if d % _block(tk) or d % _block(tv):
                continue
            # decode: one query, GQA 4:1; prefill-ish: 8..32 queries, GQA 2:1
            checks.append(_fa_check(rng, tk, tv, d, 1, 4, 128 if quick else 256, 1))
            nq = int(rng.integers(8, 33))
            checks.append(_fa_check(rng, tk, tv, d, nq, 4, 64 if quick else 96, 2))
    return checks


# ================================================================ expected outputs

def expected_output(check: Check, prec: Precision | None = None) -> bytes:
    """The bytes a perfect backend returns for a check (the reference's answer)."""
    d = check.data
    if check.kind == "quantize":
        ref = _quantize(d["x"], check.case.type_k)
        out = np.zeros_like(ref)
        out[d["idx"]] = ref
        return out.tobytes()
    if check.kind == "dequantize":
        return _dequant_expected(check).astype("<f4").tobytes()
    if check.kind == "dot":
        return _dot_expected(check)[0].astype("<f4").tobytes()
    if check.kind == "attention":
        return _attention_expected(check, prec)[0].astype("<f4").tobytes()
    raise ValueError(check.kind)


def _dequant_expected(check: Check) -> np.ndarray:
    d = check.data
    with np.errstate(invalid="ignore", over="ignore"):   # poisoned / random-byte blocks
        full = reference.dequantize_rows(d["bytes"], check.case.type_k, d["k"])
    return full[d["idx"]]


def _dot_expected(check: Check):
    d = check.data
    kd = reference.dequantize_rows(d["kbytes"], check.case.type_k, d["k"])
    return reference.dot_rows(d["q"], kd, "f32"), kd


def _dequant_kv(check: Check):
    c, d = check.case, check.data
    hd, nq, nh, nkv, nh_kv = c.dims[:5]
    kd = reference.dequantize_rows(d["kbytes"], c.type_k, hd).reshape(nh_kv, nkv, hd)
    vd = reference.dequantize_rows(d["vbytes"], c.type_v, hd).reshape(nh_kv, nkv, hd)
    return kd, vd


def _attention_expected(check: Check, prec: Precision | None = None):
    """float64 (nq, nh, d) from reference.attention on the dequantized K and V.

    Q is first converted the way the backend is known to feed K's dot product
    (prec.q_sim; on the CPU e.g. f16 K means Q in f16): that is the kernel's
    documented input, not an error. Returns (out, q used, kd, vd).
    """
    c, d = check.case, check.data
    hd, nq, nh, nkv, nh_kv = c.dims[:5]
    prec = prec or precision_for("cpu")
    kd, vd = _dequant_kv(check)
    q = simulate_q(d["q"].reshape(-1, hd), prec.q_sim[c.type_k]).reshape(d["q"].shape)
    mask = d["mask"].astype(np.float64)
    out = np.empty((nq, nh, hd))
    for h in range(nh):
        g = h // (nh // nh_kv)             # ggml's broadcast: q head h reads kv head h / (nh/nh_kv)
        out[:, h, :] = reference.attention(q[h], kd[g], vd[g], "f32", "f32",
                                           scale=d["scale"], mask=mask)
    return out, q, kd, vd


# ================================================================ tolerances

def dot_tolerance(q: np.ndarray, kd: np.ndarray, prec: Precision) -> np.ndarray:
    """Per-element bound on |dot_f32 - dot_f64| for (nq, nk) dot products.

    Float32 summation of k products in any order is off by at most about
    k u sum_i |q_i k_i| (Higham's gamma_k, u = 2^-24); the turbo vec_dot
    multiplies each block's partial sum by its scale instead of summing
    scale*centroid products, which adds a few roundings: (k + 8) u sum|q||k|.
    That bound is rigorous; real errors are ~sqrt(k) u, and a decoding bug
    (wrong index, bit, centroid or scale) is orders of magnitude larger.
    Backends that may feed Q as q8 or K as f16 get those conversion errors too.
    """
    k = q.shape[1]
    ak = np.abs(kd.astype(np.float64))
    a = np.abs(q.astype(np.float64)) @ ak.T
    tol = (k + 8) * U32 * a
    if prec.dot_k_f16:
        tol += U16 * a
    tol += _q_extra_error(q, ak, prec.dot_q)
    return tol + 1e-30


def attention_tolerance(q, kd, vd, mask, scale, type_k, type_v, prec: Precision):
    """Per-output bound (nq, dv) on |attention_f32 - attention_f64| for one head.

    q is the Q the reference used (already converted by simulate_q).

    Scores: |ds_j| <= D_j = scale ((d + 8) u + e_k) A_j + scale X_j
                            + 4 u (|s_j| + |m_j| + |M|) + 2 u
      with A_j = sum_i |q_i||k_ji| (f32 dot; e_k = 2^-11 where K may be f16),
      X_j the allowance for Q conversions not simulated, and the last terms
      for the mask add, the max subtraction and expf.
    Softmax: to first order o_c moves by sum_j w_j ds_j (v_jc - o_c), so
      |do_c| <= e^(2 max D) sum_j w_j D_j |v_jc - o_c| (the factor covers the
      higher orders: weights change by at most e^(+-2 max D)).
    V: f32 accumulation of nkv terms: (2 nkv + 8) u W_c, W_c = sum_j w_j |v_jc|;
      V rounded to f16: 2^-11 W_c; an f16 accumulator (ggml-cpu for V=f16):
      each of <= 2 nkv roundings is <= 2^-11 W_c; summed as a random walk,
      K_SIGMA sqrt(2 nkv / 3) 2^-11 W_c (the worst case 2 nkv 2^-11 W_c is
      too loose to catch anything).
    """
    q = np.asarray(q, dtype=np.float64)
    kd = np.asarray(kd, dtype=np.float64)
    vd = np.asarray(vd, dtype=np.float64)
    mask = np.asarray(mask, dtype=np.float64)
    d = q.shape[1]
    visible = np.isfinite(mask)
    ak = np.abs(kd)
    a = np.abs(q) @ ak.T                                     # (nq, nkv)
    s = (q @ kd.T) * scale
    e_k = U16 if prec.k_f16 else 0.0
    x = _q_extra_error(q, ak, prec.q_extra[type_k])
    mfin = np.where(visible, mask, 0.0)
    big_m = np.max(np.where(visible, s + mfin, -np.inf), axis=1, keepdims=True)
    dsj = scale * (((d + 8) * U32 + e_k) * a + x) \
        + 4 * U32 * (np.abs(s) + np.abs(mfin) + np.abs(big_m)) + 2 * U32
    dsj = np.where(visible, dsj, 0.0)

    w = np.exp(np.where(visible, s + mfin - big_m, -np.inf))
    w /= w.sum(axis=1, keepdims=True)
    o = w @ vd                                               # (nq, dv)
    spread = np.abs(vd[None, :, :] - o[:, None, :])           # (nq, nkv, dv)
    tol = np.exp(2 * dsj.max(axis=1, keepdims=True)) * np.einsum("qj,qjc->qc", w * dsj, spread)
    wv = w @ np.abs(vd)                                       # W_c
    nkv = visible.sum(axis=1, keepdims=True)
    tol += (2 * nkv + 8) * U32 * wv
    if prec.v_f16:
        tol += U16 * wv
    if type_v in prec.v_acc_f16:
        tol += K_SIGMA * np.sqrt(2 * nkv / 3) * U16 * wv
    return tol + 1e-30


# ================================================================ comparisons

def _f16_ordered(bits: np.ndarray) -> np.ndarray:
    b = bits.astype(np.int64)
    mag = b & 0x7FFF
    return np.where(b & 0x8000, -mag, mag)


def f16_ulp_distance(a_bits, b_bits) -> np.ndarray:
    """ulps between fp16 bit patterns (+0 and -0 are 0 apart; NaN vs non-NaN is huge)."""
    a_bits = np.asarray(a_bits, dtype=np.uint16)
    b_bits = np.asarray(b_bits, dtype=np.uint16)
    dist = np.abs(_f16_ordered(a_bits) - _f16_ordered(b_bits))
    a_nan = (a_bits & 0x7C00) == 0x7C00
    a_nan &= (a_bits & 0x3FF) != 0
    b_nan = ((b_bits & 0x7C00) == 0x7C00) & ((b_bits & 0x3FF) != 0)
    return np.where(a_nan | b_nan, np.where(a_nan & b_nan, 0, 1 << 20), dist)


def _turbo_fields(blocks: np.ndarray, name: str):
    """(d bits (nb,), indices (nb, B) as int64) of turbo blocks."""
    d, idx = reference.turbo_fields(blocks, name)
    return d, idx.astype(np.int64)


def _turbo_u(xb: np.ndarray) -> np.ndarray:
    """u = x * (1/max|x|) in float32, as the reference and the kernels compute it."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        r = np.abs(xb).max(axis=1)
        inv = np.where(r > 0, np.float32(1.0) / np.where(r > 0, r, 1), np.float32(0))
        return xb * inv.astype(np.float32)[:, None]


def _scale_for(xb: np.ndarray, idx: np.ndarray, cent: np.ndarray) -> np.ndarray:
    """fp16 bits of the least-squares scale for given indices (the reference's formula)."""
    c = cent[idx].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = (xb.astype(np.float64) * c).sum(axis=1) / (c * c).sum(axis=1)
    return s.astype(np.float32).astype(np.float16).view(np.uint16)


def _where(check: Check, row: int, col: int | None = None) -> str:
    labels = check.data.get("labels")
    lab = f" ({labels[row]})" if labels is not None and row < len(labels) else ""
    return f"row {row}{lab}" + (f", value {col}" if col is not None else "")


def compare_quantize(check: Check, got: bytes) -> CaseReport:
    name = check.case.type_k
    x = check.data["x"]
    n, k = x.shape
    ref = _quantize(x, name)
    out = np.frombuffer(got, dtype=np.uint8)
    rep = _report(check)
    if out.size != ref.size:
        return _fail(rep, f"harness returned {out.size} bytes, expected {ref.size}")
    out = out.reshape(ref.shape)[check.data["idx"]]        # row i of x landed in row idx[i]
    info = formats.type_info(name)
    bb, blk = info.block_bytes, info.block_size

    if name == "f16":
        diff = out.view("<u2") != ref.view("<u2")
        rep.mismatches = int(diff.sum())
        for r, c in np.argwhere(diff)[:3]:
            rep.details.append(f"{_where(check, r, c)}: f16 bits {out.view('<u2')[r, c]:#06x}, "
                               f"reference {ref.view('<u2')[r, c]:#06x}")
        _max_err_deq(rep, out, ref, name, k)
        return _finish(rep)

    ob, rb = out.reshape(-1, bb), ref.reshape(-1, bb)
    xb = x.reshape(-1, blk)
    nb_per_row = k // blk
    if name == "q8_0":
        d_o = ob[:, :2].copy().view("<u2")[:, 0]
        d_r = rb[:, :2].copy().view("<u2")[:, 0]
        i_o = ob[:, 2:].view(np.int8).astype(np.int64)
        i_r = rb[:, 2:].view(np.int8).astype(np.int64)
        margin = reference.boundary_margin(x, "q8_0").reshape(-1, blk)
        near = margin <= BOUNDARY_TOL_Q8
        allowed = near & (np.abs(i_o - i_r) == 1)
        exp_d = d_r
    else:
        cent, bounds = reference.codebook_arrays(name)
        d_o, i_o = _turbo_fields(ob, name)
        d_r, i_r = _turbo_fields(rb, name)
        u = _turbo_u(xb).astype(np.float64)
        poisoned = ~np.isfinite(xb).all(axis=1)
        lower = np.minimum(i_o, i_r).clip(0, len(bounds) - 1)
        # a flip is allowed only to the neighbouring level, across the boundary u is near
        dist = np.abs(u - bounds.astype(np.float64)[lower])
        margin = reference.boundary_margin(np.nan_to_num(x), name).reshape(-1, blk)
        near = (margin <= BOUNDARY_TOL) & ~poisoned[:, None]
        allowed = (np.abs(i_o - i_r) == 1) & (dist <= BOUNDARY_TOL) & ~poisoned[:, None]
        # the scale follows the indices: with allowed flips, expect the scale of the backend's indices
        has_flip = ((i_o != i_r) & allowed).any(axis=1)
        exp_d = d_r.copy()
        if has_flip.any():
            exp_d[has_flip] = _scale_for(xb[has_flip], i_o[has_flip], cent)
        # poisoned blocks: exact bytes (d = NaN 0x7E00, indices 0)
        bad_poison = poisoned & (ob != rb).any(axis=1)
        for b in np.flatnonzero(bad_poison)[:3]:
            rep.details.append(f"{_where(check, b // nb_per_row)}: block {b % nb_per_row} holds a "
                               f"NaN/inf; expected the poison block d=0x7E00, indices 0, got d="
                               f"{d_o[b]:#06x}")
        rep.mismatches += int(bad_poison.sum())
        i_o = np.where(poisoned[:, None], i_r, i_o)
        d_o = np.where(poisoned, d_r, d_o)

    idx_diff = i_o != i_r
    bad_idx = idx_diff & ~allowed
    rep.boundary = int((idx_diff & allowed).sum())
    rep.near_boundary = int(near.sum())
    ulps = f16_ulp_distance(d_o, exp_d)
    rep.scale_ulp = int(((ulps == 1) | ((ulps == 0) & (d_o != exp_d))).sum())
    bad_d = ulps > 1
    rep.mismatches += int(bad_idx.sum()) + int(bad_d.sum())
    for b, j in np.argwhere(bad_idx)[:3]:
        r, col = b // nb_per_row, (b % nb_per_row) * blk + j
        rep.details.append(f"{_where(check, r, col)}: index {i_o[b, j]}, reference {i_r[b, j]} "
                           f"(x={x[r, col]:.9g}, not at a decision boundary)")
    for b in np.flatnonzero(bad_d)[:3]:
        rep.details.append(f"{_where(check, b // nb_per_row)}, block {b % nb_per_row}: scale "
                           f"{d_o[b]:#06x}, expected {exp_d[b]:#06x} ({ulps[b]} fp16 ulps apart)")
    _max_err_deq(rep, out, ref, name, k)
    return _finish(rep)


def _max_err_deq(rep: CaseReport, out, ref, name, k):
    with np.errstate(invalid="ignore", over="ignore"):
        a = reference.dequantize_rows(out, name, k).astype(np.float64)
        b = reference.dequantize_rows(ref, name, k).astype(np.float64)
        err = np.abs(a - b)
    err = err[np.isfinite(err)]
    rep.max_err = float(err.max()) if err.size else 0.0


def compare_dequantize(check: Check, got: bytes) -> CaseReport:
    exp = _dequant_expected(check).astype(np.float32)
    out = np.frombuffer(got, dtype="<f4")
    rep = _report(check)
    if out.size != exp.size:
        return _fail(rep, f"harness returned {out.size} floats, expected {exp.size}")
    out = out.reshape(exp.shape)
    both_nan = np.isnan(out) & np.isnan(exp)
    diff = (out.view(np.uint32) != exp.view(np.uint32)) & ~both_nan
    rep.mismatches = int(diff.sum())
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(out.astype(np.float64) - exp.astype(np.float64))
    err = np.where(diff, err, 0.0)
    rep.max_err = float(np.nan_to_num(err, nan=np.inf).max()) if err.size else 0.0
    for r, c in np.argwhere(diff)[:3]:
        src = int(check.data["idx"][r])
        labels = check.data.get("labels")
        lab = f" ({labels[src]})" if labels else ""
        rep.details.append(f"output row {r} (source row {src}{lab}), value {c}: {out[r, c]!r}, "
                           f"reference {exp[r, c]!r}")
    return _finish(rep)


def compare_dot(check: Check, got: bytes, prec: Precision) -> CaseReport:
    ref, kd = _dot_expected(check)
    out = np.frombuffer(got, dtype="<f4")
    rep = _report(check)
    if out.size != ref.size:
        return _fail(rep, f"harness returned {out.size} floats, expected {ref.size}")
    tol = dot_tolerance(check.data["q"], kd, prec)
    return _close(rep, out.reshape(ref.shape).astype(np.float64), ref, tol,
                  lambda i: f"q row {i[0]}, k row {i[1]}")


def compare_attention(check: Check, got: bytes, prec: Precision) -> CaseReport:
    ref, q, kd, vd = _attention_expected(check, prec)
    out = np.frombuffer(got, dtype="<f4")
    rep = _report(check)
    if out.size != ref.size:
        return _fail(rep, f"harness returned {out.size} floats, expected {ref.size}")
    c, d = check.case, check.data
    hd, nq, nh, nkv, nh_kv = c.dims[:5]
    tol = np.empty_like(ref)
    for h in range(nh):
        g = h // (nh // nh_kv)
        tol[:, h, :] = attention_tolerance(q[h], kd[g], vd[g], d["mask"].astype(np.float64),
                                           d["scale"], c.type_k, c.type_v, prec)
    return _close(rep, out.reshape(ref.shape).astype(np.float64), ref, tol,
                  lambda i: f"query {i[0]}, head {i[1]}, dim {i[2]}")


def _close(rep: CaseReport, out, ref, tol, where) -> CaseReport:
    err = np.abs(out - ref)
    err = np.where(np.isnan(err), np.inf, err)
    ratio = err / tol
    bad = ratio > 1
    rep.mismatches = int(bad.sum())
    rep.max_err = float(err.max()) if err.size else 0.0
    rep.tol = float(tol.max()) if tol.size else 0.0
    rep.worst_ratio = float(ratio.max()) if ratio.size else 0.0
    order = np.argsort(-ratio, axis=None)[: min(3, int(bad.sum()))]
    for flat in order:
        i = np.unravel_index(flat, ratio.shape)
        rep.details.append(f"{where(i)}: {out[i]:.9g}, float64 reference {ref[i]:.9g}, "
                           f"error {err[i]:.3g} > tolerance {tol[i]:.3g}")
    return _finish(rep)


def _report(check: Check) -> CaseReport:
    return CaseReport(check.op, check.types, check.shape, check.label, check.elements, "PASS")


def _fail(rep: CaseReport, why: str) -> CaseReport:
    rep.result = "FAIL"
    rep.note = why
    return rep


def _finish(rep: CaseReport) -> CaseReport:
    if rep.mismatches:
        rep.result = "FAIL"
    return rep


def judge(check: Check, result: Result | None, backend: str, prec: Precision) -> CaseReport:
    """Compare one harness result with the reference."""
    if result is None:
        rep = _report(check)
        return _fail(rep, "the harness crashed on this case")
    if result.status == 1:  # unsupported
        rep = _report(check)
        rep.result = "UNSUPPORTED"
        if not check.involves_turbo:
            rep.note = "upstream type not supported here (not counted)"
        elif check.op in prec.optional_ops:
            rep.note = (f"{check.op} not supported on {backend}: allowed (the KV cache attends "
                        "through flash attention)")
        else:
            rep.result = "FAIL"
            rep.note = f"UNSUPPORTED: the backend does not run this turbo op ({result.message})"
        return rep
    if result.status != 0:
        return _fail(_report(check), f"harness error: {result.message}")
    if check.kind == "quantize":
        return compare_quantize(check, result.data)
    if check.kind == "dequantize":
        return compare_dequantize(check, result.data)
    if check.kind == "dot":
        return compare_dot(check, result.data, prec)
    return compare_attention(check, result.data, prec)


# ================================================================ running the harness

@dataclass
class HarnessRun:
    backend_name: str
    device_name: str
    device_description: str
    results: list[Result | None]        # per case; None: the harness crashed on it
    crashes: list[str]


def run_harness(binary: Path, ggml_backend: str, cases: list[Case],
                timeout: float = 1800) -> HarnessRun:
    """Run the harness on all cases; a crash loses only the case it happened in."""
    from . import verify_io

    results: list[Result | None] = [None] * len(cases)
    crashes: list[str] = []
    header = None
    start = 0
    with tempfile.TemporaryDirectory(prefix="tqpatch-verify-") as tmp:
        cases_path, out_path = Path(tmp) / "cases.bin", Path(tmp) / "results.bin"
        while start < len(cases):
            verify_io.write_cases(cases_path, cases[start:])
            if out_path.exists():
                out_path.unlink()
            cmd = [str(binary), "--backend", ggml_backend, "--in", str(cases_path),
                   "--out", str(out_path)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise TqpatchError(f"{binary.name} did not finish within {timeout:.0f} s") from None
            except OSError as exc:
                raise TqpatchError(f"cannot run {binary}: {exc}") from None
            if proc.returncode == 2 and not out_path.exists():
                raise TqpatchError(
                    f"{binary} has no ggml device named {ggml_backend!r} (was it built for this "
                    f"backend, and is the device visible?):\n{_tail(proc.stderr)}")
            if not out_path.exists() or out_path.stat().st_size == 0:
                raise TqpatchError(f"{binary.name} exited with status {proc.returncode} before "
                                   f"writing results:\n{_tail(proc.stderr)}")
            res = verify_io.read_results(out_path)
            if header is None:
                header = (res.backend_name, res.device_name, res.device_description)
            for rec in res.records:
                if rec.index < len(cases) - start:
                    results[start + rec.index] = rec
            done = len(res.records)
            if res.complete and proc.returncode == 0:
                break
            if res.complete:
                raise TqpatchError(f"{binary.name} exited with status {proc.returncode}:\n"
                                   f"{_tail(proc.stderr)}")
            crashed = start + done
            crashes.append(f"case {crashed} ({cases[crashed].op} {cases[crashed].type_k}/"
                           f"{cases[crashed].type_v}): exit status {proc.returncode}: "
                           f"{_tail(proc.stderr, 3)}")
            start = crashed + 1
    assert header is not None
    return HarnessRun(*header, results, crashes)


def _tail(text: str, n: int = 15) -> str:
    lines = [ln for ln in (text or "").strip().splitlines()
             if not ln.startswith("tqpatch-verify: case ")]
    return "\n".join(lines[-n:]) or "(no output)"


# ================================================================ the report

@dataclass
class Report:
    backend: str
    ggml_backend: str
    device_name: str
    device_description: str
    binary: str
    seed: int
    quick: bool
    types: list[str]
    precision: str
    cases: list[CaseReport]
    crashes: list[str] = field(default_factory=list)
    label: str = ""     # e.g. "host-emulated, not run on Apple hardware" (the backend's verify_label)

    @property
    def counts(self) -> dict[str, int]:
        out = {"PASS": 0, "FAIL": 0, "UNSUPPORTED": 0}
        for c in self.cases:
            out[c.result] += 1
        return out

    @property
    def passed(self) -> bool:
        return self.counts["FAIL"] == 0 and not self.crashes

    @property
    def statement(self) -> str:
        dev = self.device_description or self.device_name
        how = f" {self.label}:" if self.label else ""
        return (f"Only the {self.backend} backend ({self.ggml_backend}: {dev}) was verified by "
                f"this run;{how} no other backend is covered by this report.")

    def to_dict(self) -> dict:
        return {
            "backend": self.backend,
            "ggml_backend": self.ggml_backend,
            "device": {"name": self.device_name, "description": self.device_description},
            "verified_backends": [self.backend],
            "label": self.label,
            "statement": self.statement,
            "binary": self.binary,
            "seed": self.seed,
            "quick": self.quick,
            "types": self.types,
            "precision_model": self.precision,
            "tolerances": {
                "boundary_u": BOUNDARY_TOL, "boundary_q8": BOUNDARY_TOL_Q8,
                "scale_ulps": 1, "dequantize": "bit-exact",
                "dot": "(k+8)*2^-24*sum|q||k| plus the backend's allowed operand conversions",
                "attention": "softmax perturbation bound + f32 accumulation + allowed conversions",
            },
            "summary": self.counts,
            "passed": self.passed,
            "crashes": self.crashes,
            "cases": [asdict(c) for c in self.cases],
        }

    def to_json(self) -> str:
        return json.dumps(_finite(self.to_dict()), indent=2)


def _finite(obj):
    """JSON has no inf/nan: write them as strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _fmt_err(v: float) -> str:
    if v == 0:
        return "0"
    return f"{v:.2e}" if math.isfinite(v) else str(v)


def render_table(report: Report) -> str:
    head = ["op", "types", "shape", "inputs", "elements", "boundary", "d+-1ulp", "mismatches",
            "max err", "err/tol", "result"]
    rows = []
    for c in report.cases:
        tol = "exact" if c.op in ("GET_ROWS", "CPY") else (
            "bytes" if c.op == "SET_ROWS" else f"{c.worst_ratio:.3f}")
        if c.result == "UNSUPPORTED" or (c.result == "FAIL" and c.note.startswith("UNSUPPORTED")):
            cells = [c.op, c.types, c.shape, c.label, str(c.elements), "-", "-", "-", "-", "-",
                     "FAIL (UNSUPPORTED)" if c.result == "FAIL" else "UNSUPPORTED (allowed)"]
        else:
            cells = [c.op, c.types, c.shape, c.label, str(c.elements),
                     str(c.boundary) if c.op == "SET_ROWS" else "-",
                     str(c.scale_ulp) if c.op == "SET_ROWS" else "-",
                     str(c.mismatches), _fmt_err(c.max_err), tol, c.result]
        rows.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    right = {4, 5, 6, 7, 8, 9}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    dev = report.device_description or report.device_name
    counts = report.counts
    out = [
        f"tqpatch verify: backend {report.backend} (ggml {report.ggml_backend}), "
        f"device: {dev}" + (f" [{report.label}]" if report.label else ""),
        f"  harness {report.binary}; seed {report.seed}{', quick' if report.quick else ''}; "
        f"types {', '.join(report.types)}",
        f"  tolerance model: {report.precision}",
        f"  {report.statement}",
        "",
        line(head),
        line(["-" * w for w in widths]),
    ]
    out += [line(r) for r in rows]
    fails = [c for c in report.cases if c.result == "FAIL" or c.note]
    if fails:
        out.append("")
    for c in fails:
        if c.note:
            out.append(f"{c.op} {c.types} {c.shape}: {c.note}")
        if c.result == "FAIL":
            for d in c.details:
                out.append(f"  {c.op} {c.types} {c.shape}: {d}")
    for crash in report.crashes:
        out.append(f"harness crash: {crash}")
    out.append("")
    boundary = sum(c.boundary for c in report.cases)
    scale_ulp = sum(c.scale_ulp for c in report.cases)
    quantized = sum(c.elements for c in report.cases if c.op == "SET_ROWS")
    out.append(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['UNSUPPORTED']} "
               f"unsupported (allowed); {boundary} boundary indices and {scale_ulp} scales "
               f"1 ulp off in {quantized} quantized values.")
    out.append(("PASS: " if report.passed else "FAIL: ") + report.statement)
    return "\n".join(out) + "\n"


# ================================================================ entry point

def verify(backend: str | None = None, build_dir: Path | None = None, seed: int = 0,
           quick: bool = False, types=TURBO_TYPES,
           runner: Callable[[list[Case]], HarnessRun] | None = None,
           binary: Path | None = None) -> Report:
    """Run the checks on one built backend (default: the last one built) and return the report.

    `runner` replaces the real harness (tests); otherwise the backend's own
    verify_runner (host emulation; called with record None when there is no
    build), else its built tqpatch-verify binary. A build made from other
    kernels than the current render is refused as stale.
    """
    from . import build as build_mod
    from .backends import get as get_backend

    if backend is None:
        backend = build_mod.last_built(build_dir)
    be = get_backend(backend)
    types = tuple(types)
    checks = make_checks(types, seed=seed, quick=quick)
    if runner is None:
        try:
            record, not_built = build_mod.load_record(backend, build_dir), None
        except TqpatchError as exc:  # a backend may verify without a build (host emulation)
            record, not_built = None, exc
        if record is not None:
            build_mod.check_fresh(record)
        runner = be.verify_runner(record)
        if runner is None and not_built is not None:
            raise not_built
    if runner is None:
        if binary is None:
            binary = build_mod.find_binary(HARNESS, backend, build_dir)
        bin_path = binary

        def runner(cases):
            return run_harness(bin_path, be.ggml_backend_name, cases)
    run = runner([c.case for c in checks])
    if len(run.results) != len(checks):
        raise TqpatchError(f"the harness answered {len(run.results)} of {len(checks)} cases")
    prec = be.precision()
    reports = [judge(ch, res, backend, prec) for ch, res in zip(checks, run.results)]
    return Report(backend=backend, ggml_backend=run.backend_name or be.ggml_backend_name,
                  device_name=run.device_name, device_description=run.device_description,
                  binary=str(binary) if binary else "(backend runner)", seed=seed, quick=quick,
                  types=list(types), precision=prec.name, cases=reports, crashes=run.crashes,
                  label=be.verify_label)
