"""Judging one harness result against the reference under the contract."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import formats, reference
from ..precision import Precision
from ..verify_io import Result
from .checks import Check, _attention_expected, _dequant_expected, _dot_expected, _quantize
from .tolerance import (BOUNDARY_TOL, BOUNDARY_TOL_Q8, SCALE_REL_TOL, attention_tolerance,
                        dot_tolerance)


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
    scale_ulp: int = 0          # quantize: scales 1 fp16 ulp / 1 log step off (allowed)
    mismatches: int = 0
    max_err: float = 0.0
    tol: float | None = None    # dot / attention: the largest per-element tolerance
    worst_ratio: float = 0.0    # dot / attention: max(err / tol)
    note: str = ""
    details: list[str] = field(default_factory=list)


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


def log_codes_allowed(xb: np.ndarray, name: str) -> list[set[int]]:
    """Per block, the log-scale codes a correct backend may store.

    The reference's code, and its neighbour where the least-squares scale lies
    within SCALE_REL_TOL of the boundary between them, for the reference's
    first-pass indices and for each first-pass index within BOUNDARY_TOL of a
    decision boundary moved across it (a backend may take either side there,
    which moves the scale)."""
    fmt = formats.TURBO_FORMATS[name]
    cent, bounds = reference.codebook_arrays(name)
    u = _turbo_u(xb).astype(np.float64)
    idx1 = np.searchsorted(bounds, u.astype(np.float32), side="left")
    dist = np.abs(u[..., None] - bounds.astype(np.float64))
    near = dist.min(axis=-1) <= BOUNDARY_TOL
    s = reference.turbo_ls_scale(xb, idx1, cent)
    out = []
    for b in range(xb.shape[0]):
        cands = [s[b]]
        for j in np.flatnonzero(near[b]):
            k = int(np.argmin(dist[b, j]))               # the boundary u is at: levels k and k+1
            alt = idx1[b].copy()
            alt[j] = k + 1 if idx1[b, j] == k else k
            cands.append(float(reference.turbo_ls_scale(xb[b:b + 1], alt[None, :], cent)[0]))
        codes = set()
        for c in cands:
            for f in (1.0 - SCALE_REL_TOL, 1.0, 1.0 + SCALE_REL_TOL):
                codes.add(int(reference.log_scale_code(np.array([c * f]), fmt.scale)[0]))
        out.append(codes)
    return out


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
    elif formats.TURBO_FORMATS[name].scale.is_log:
        return _compare_log_quantize(check, rep, out, ref, ob, rb, xb, name, nb_per_row, blk, k)
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
    _bad_index_details(rep, check, bad_idx, i_o, x, nb_per_row, blk,
                       lambda b, j: f"reference {i_r[b, j]}")
    for b in np.flatnonzero(bad_d)[:3]:
        rep.details.append(f"{_where(check, b // nb_per_row)}, block {b % nb_per_row}: scale "
                           f"{d_o[b]:#06x}, expected {exp_d[b]:#06x} ({ulps[b]} fp16 ulps apart)")
    _max_err_deq(rep, out, ref, name, k)
    return _finish(rep)


def _bad_index_details(rep, check, bad_idx, got, x, nb_per_row, blk, expected) -> None:
    """Up to three wrong indices (not at a decision boundary) into rep.details;
    expected(block, j) says what the index should have been."""
    for b, j in np.argwhere(bad_idx)[:3]:
        r, col = b // nb_per_row, (b % nb_per_row) * blk + j
        rep.details.append(f"{_where(check, r, col)}: index {got[b, j]}, {expected(b, j)} "
                           f"(x={x[r, col]:.9g}, not at a decision boundary)")


def _compare_log_quantize(check, rep, out, ref, ob, rb, xb, name, nb_per_row, blk, k) -> CaseReport:
    """A log-scale turbo type: the code within the allowed set, the indices those of
    the backend's code (the second pass) up to decision-boundary flips."""
    fmt = formats.TURBO_FORMATS[name]
    _, bounds = reference.codebook_arrays(name)
    x = check.data["x"]
    d_o, i_o = _turbo_fields(ob, name)
    d_r, i_r = _turbo_fields(rb, name)
    poisoned = ~np.isfinite(xb).all(axis=1)
    d_o, d_r = d_o.astype(np.int64), d_r.astype(np.int64)
    diff_code = np.flatnonzero((d_o != d_r) & ~poisoned)
    code_ok = np.ones(xb.shape[0], dtype=bool)
    if diff_code.size:
        allowed_codes = log_codes_allowed(xb[diff_code], name)
        code_ok[diff_code] = [int(d_o[b]) in allowed_codes[i] for i, b in enumerate(diff_code)]
    code_ok[poisoned] = d_o[poisoned] == d_r[poisoned]
    # the indices follow the stored code: expect the second pass with the backend's code
    codes = np.where(code_ok & ~poisoned, d_o, d_r)
    x0 = np.where(poisoned[:, None], 0, xb)
    exp_i = reference.turbo_reindex(x0, codes, name).astype(np.int64)
    exp_i[poisoned] = 0
    inv = reference.scale_arrays(fmt.scale)[1][codes]
    u = (x0.astype(np.float32) * inv[:, None]).astype(np.float64)
    lower = np.minimum(i_o, exp_i).clip(0, len(bounds) - 1)
    dist = np.abs(u - bounds.astype(np.float64)[lower])
    allowed = (np.abs(i_o - exp_i) == 1) & (dist <= BOUNDARY_TOL) & ~poisoned[:, None]
    near = (np.abs(u[..., None] - bounds.astype(np.float64)).min(axis=-1) <= BOUNDARY_TOL) & ~poisoned[:, None]
    idx_diff = i_o != exp_i
    bad_idx = idx_diff & ~allowed
    rep.boundary = int((idx_diff & allowed).sum())
    rep.near_boundary = int(near.sum())
    rep.scale_ulp = int(((d_o != d_r) & code_ok).sum())
    bad_d = ~code_ok
    rep.mismatches += int(bad_idx.sum()) + int(bad_d.sum())
    _bad_index_details(rep, check, bad_idx, i_o, x, nb_per_row, blk,
                       lambda b, j: f"expected {exp_i[b, j]} for the stored scale code {codes[b]}")
    for b in np.flatnonzero(bad_d)[:3]:
        why = ("the block holds a NaN/inf: expected the poison block (code "
               f"{fmt.scale.NAN_CODE}, indices 0)") if poisoned[b] else "not within one step at a scale boundary"
        rep.details.append(f"{_where(check, b // nb_per_row)}, block {b % nb_per_row}: scale code "
                           f"{d_o[b]}, reference {d_r[b]} ({why})")
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
        elif check.op == "FLASH_ATTN_EXT" and check.case.dims[0] in prec.fa_heads_on_cpu:
            rep.note = (f"no {backend} flash-attention kernel for heads of {check.case.dims[0]}: allowed "
                        "(llama.cpp runs the op on the CPU backend)")
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
