"""The verify report: table, JSON, and the statement of what was verified."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from .compare import CaseReport
from .tolerance import BOUNDARY_TOL, BOUNDARY_TOL_Q8


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
