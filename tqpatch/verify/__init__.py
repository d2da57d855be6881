"""Verify built kernels against the NumPy reference (DESIGN.md, "The verification contract").

Modules: checks (inputs and expected outputs), tolerance (the bounds),
compare (judging one result), harness (running tqpatch-verify), report.

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
are tested independently of the backend's quantizer. A backend that picks a
kernel layout by size (CUDA's decode attention) names each other layout in
`verify_variants`: the decode attention checks run once more per layout, with
its environment, and are reported with the layout's name. Only the backend that
was run is verified; the report says so.
"""


from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Mapping

from .. import apply, build_record
from ..backends.base import Backend
from ..errors import TqpatchError
from . import record as verified
from .checks import (BASELINE_TYPES, HEAD_SIZES, ROW_CLASSES, TURBO_TYPES, Check,  # noqa: F401
                     expected_output, fa_pairs, make_checks, make_rows)
from .compare import CaseReport, f16_ulp_distance, judge  # noqa: F401
from .harness import HARNESS, HarnessRun, run_harness
from .report import Report, render_table  # noqa: F401
from .tolerance import BOUNDARY_TOL, BOUNDARY_TOL_Q8, attention_tolerance, dot_tolerance  # noqa: F401


def verify(backend: Backend | None = None, build_dir: Path | None = None, seed: int = 0,
           quick: bool = False, types=TURBO_TYPES,
           runner: Callable[..., HarnessRun] | None = None,  # (cases, env=None)
           binary: Path | None = None, of_build: Backend | None = None) -> Report:
    """Run the checks on one built backend (default: the last one built) and return the report.

    `of_build` is the build whose harness runs them when it is another
    backend's: every build holds the CPU backend, so `cpu` can be verified in
    a Vulkan or CUDA build.

    `runner` replaces the real harness (tests); otherwise the backend's own
    verify runner (host emulation; asked with record None when there is no
    build), else its built tqpatch-verify binary. A build made from other
    kernels than the current render is refused as stale.
    """
    if backend is None:
        backend = build_record.last_built(build_dir)
    built = of_build or backend
    types = tuple(types)
    checks = make_checks(types, seed=seed, quick=quick)
    record = None
    if runner is None:
        try:
            record, not_built = build_record.load_record(built, build_dir), None
        except TqpatchError as exc:  # a backend may verify without a build (host emulation)
            record, not_built = None, exc
        if record is not None:
            build_record.check_fresh(record)
        runner = backend.make_verify_runner(record, _applied_tree, run_harness)
        if runner is None and not_built is not None:
            raise not_built
    variants: Mapping[str, Mapping[str, str]] = {}
    if runner is None:
        if binary is None:
            binary = build_record.find_binary(HARNESS, built, build_dir)
        bin_path = binary
        device = backend.ggml_backend_name

        def runner(cases, env=None):
            return run_harness(bin_path, device, cases, env=env)
        variants = backend.verify_variants if built.name == backend.name else {}
    run = runner([c.case for c in checks])
    if len(run.results) != len(checks):
        raise TqpatchError(f"the harness answered {len(run.results)} of {len(checks)} cases")
    prec = backend.precision()
    reports = [judge(ch, res, backend.name, prec) for ch, res in zip(checks, run.results)]
    crashes = list(run.crashes)
    for name, env in variants.items():  # the decode attention checks again, in each forced layout
        decode = [dataclasses.replace(ch, shape=f"{ch.shape} [{name}]") for ch in checks
                  if ch.kind == "attention" and ch.label == "decode"]
        vrun = runner([c.case for c in decode], env)
        if len(vrun.results) != len(decode):
            raise TqpatchError(f"the harness ({name}) answered {len(vrun.results)} of {len(decode)} cases")
        reports += [judge(ch, res, backend.name, prec) for ch, res in zip(decode, vrun.results)]
        crashes += [f"{name}: {c}" for c in vrun.crashes]
    report = Report(backend=backend.name, ggml_backend=run.backend_name or backend.ggml_backend_name,
                    device_name=run.device_name, device_description=run.device_description,
                    binary=str(binary) if binary else "(backend runner)", seed=seed, quick=quick,
                    types=list(types), precision=prec.name, cases=reports, crashes=crashes,
                    label=backend.verify_label)
    if record is not None:  # a real build: `tqpatch serve` asks whether it passed
        verified.write(report, record)
    return report


def _applied_tree() -> Path:
    """The applied llama.cpp tree (made when missing), for runners that read its sources."""
    return Path(apply.ensure_applied())
