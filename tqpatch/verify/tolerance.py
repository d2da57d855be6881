"""Error bounds of the verify contract: what a correct backend may differ by.

Quantize: decision-boundary flips within BOUNDARY_TOL (and 1-ulp scales);
dot products and attention: float32-accumulation bounds plus the operand
conversions the backend's precision model (tqpatch.precision) allows.
"""

from __future__ import annotations

import numpy as np

from .. import reference
from ..precision import Precision

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
