"""The verify cases: seeded random and adversarial inputs for every op and type,
and the answer a perfect backend gives (from tqpatch.reference)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import formats, precision, reference
from ..errors import TqpatchError
from ..precision import Precision
from ..verify_io import Case
from .tolerance import simulate_q

TURBO_TYPES = formats.TURBO_TYPES
# upstream cache types verify also checks (SET_ROWS, FA pairs)
BASELINE_TYPES = tuple(t for t in formats.CACHE_TYPES if t not in formats.TURBO_FORMATS)
HEAD_SIZES = formats.HEAD_SIZES


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
    case = Case("SET_ROWS", name, name, (k, n), 1.0, [x.astype("<f4").tobytes(), idx.tobytes()])
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
    case = Case("GET_ROWS", name, name, (k, n, idx.size), 1.0, [data.tobytes(), idx.tobytes()])
    return Check(case, "dequantize", "all classes + random bytes", f"{idx.size}x{k}",
                 idx.size * k, {"bytes": data, "idx": idx, "k": k, "labels": labels})


def _cpy_check(rng, name: str, k: int) -> Check:
    data, labels = _dequant_data(rng, name, k)
    n = data.shape[0]
    case = Case("CPY", name, name, (k, n), 1.0, [data.tobytes()])
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
    case = Case("MUL_MAT", name, name, (k, kx.shape[0], nq), 1.0,
                [kb.tobytes(), q.astype("<f4").tobytes()])
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
                [q.astype("<f4").tobytes(), kb.tobytes(), vb.tobytes(),
                 mask.astype("<f2").tobytes()])
    shape = f"d={d} nq={nq} nh={nh}/{nh_kv} kv={nkv}"
    return Check(case, "attention", "decode" if nq == 1 else "prefill", shape, nh * nq * d,
                 {"q": q, "kbytes": kb, "vbytes": vb, "mask": mask, "scale": scale})


def fa_pairs(types: tuple[str, ...]) -> list[tuple[str, str]]:
    """Every K type with every V type in f16, q8_0 and the selected turbo types,
    at least one of them turbo."""
    return [(k, v) for k, v in formats.cache_pairs((*BASELINE_TYPES, *types))
            if k in types or v in types]


def _row_len(name: str, target: int) -> int:
    """A row length near `target` that is a whole number of the type's blocks."""
    blk = _block(name)
    return blk * max(1, round(target / blk))


def _heads_for(name: str, quick: bool) -> tuple[int, ...]:
    """Head sizes whose rows a type is checked on: the ones it serves among HEAD_SIZES
    (a turbo variant: the head sizes it serves; upstream types: HEAD_SIZES)."""
    if name not in TURBO_TYPES:
        return (128,) if quick else HEAD_SIZES
    served = formats.serving_heads(name)
    main = tuple(h for h in served if h in HEAD_SIZES) or served
    return main[:1] if quick else main


def fa_heads(quick: bool = False) -> tuple[int, ...]:
    """Head sizes of the flash-attention checks (formats.fa_cases); quick: 128 and one variant head."""
    heads = tuple(dict.fromkeys(h for h, _, _ in formats.fa_cases()))
    extra = tuple(h for h in heads if h not in HEAD_SIZES)
    return ((128,) + extra[:1]) if quick else heads


def fa_pairs_at(d: int, types: tuple[str, ...]) -> list[tuple[str, str]]:
    """The K/V pairs formats.fa_cases checks at head size d that involve one of `types`."""
    return [(k, v) for h, k, v in formats.fa_cases() if h == d and (k in types or v in types)]


def make_checks(types=TURBO_TYPES, seed: int = 0, quick: bool = False) -> list[Check]:
    types = tuple(types)
    for t in types:
        if t not in TURBO_TYPES:
            raise TqpatchError(f"--types: {t!r} is not a turbo type ({', '.join(TURBO_TYPES)})")
    rng = np.random.default_rng(seed)
    checks: list[Check] = []
    n_gauss = 16 if quick else 48

    for name in (*types, *BASELINE_TYPES):
        blk = _block(name)
        for k in _heads_for(name, quick):
            x, labels = _row_set(rng, ("gaussian",), k, blk, n_gauss)
            checks.append(_set_rows_check(rng, name, x, labels, "gaussian"))
        x, labels = _row_set(rng, ROW_CLASSES, _row_len(name, 256), blk, 1 if quick else 2)
        checks.append(_set_rows_check(rng, name, x, labels, "adversarial"))
        if name in TURBO_TYPES:
            x, labels = _row_set(rng, ("nan", "inf", "gaussian"), _row_len(name, 256), blk)
            checks.append(_set_rows_check(rng, name, x, labels, "nan/inf (poison)"))

    for name in types:
        checks.append(_get_rows_check(rng, name, _row_len(name, 256)))
        checks.append(_cpy_check(rng, name, _row_len(name, 256)))
        if not quick and _row_len(name, 128) != _row_len(name, 256):
            checks.append(_cpy_check(rng, name, _row_len(name, 128)))
        checks.append(_mul_mat_check(rng, name, _row_len(name, 256), 16, 1))
        if not quick:
            checks.append(_mul_mat_check(rng, name, _row_len(name, 128), 24, 8))

    for d in fa_heads(quick):
        for i, (tk, tv) in enumerate(fa_pairs_at(d, types)):
            # decode: one query, GQA 4:1 or 8:1 (pair by pair: a GPU's group kernels take 4 or 8
            # heads per block); prefill-ish: 8..32 queries, GQA 2:1
            checks.append(_fa_check(rng, tk, tv, d, 1, 8 if i % 2 else 4, 128 if quick else 256, 1))
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
    prec = prec or precision.ggml_cpu()
    kd, vd = _dequant_kv(check)
    q = simulate_q(d["q"].reshape(-1, hd), prec.q_sim[c.type_k]).reshape(d["q"].shape)
    mask = d["mask"].astype(np.float64)
    out = np.empty((nq, nh, hd))
    for h in range(nh):
        g = h // (nh // nh_kv)             # ggml's broadcast: q head h reads kv head h / (nh/nh_kv)
        out[:, h, :] = reference.attention(q[h], kd[g], vd[g], "f32", "f32",
                                           scale=d["scale"], mask=mask)
    return out, q, kd, vd
