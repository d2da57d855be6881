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
from typing import Callable

from ..errors import TqpatchError
from ..precision import Precision
from ..verify_io import Case
from .checks import (BASELINE_TYPES, HEAD_SIZES, ROW_CLASSES, TURBO_TYPES, Check,  # noqa: F401
                     expected_output, fa_pairs, make_checks, make_rows)
from .compare import CaseReport, f16_ulp_distance, judge  # noqa: F401
from .harness import HARNESS, HarnessRun, run_harness
from .report import Report, render_table  # noqa: F401
from .tolerance import BOUNDARY_TOL, BOUNDARY_TOL_Q8, attention_tolerance, dot_tolerance  # noqa: F401


def precision_for(backend: str) -> Precision:
    """The verify precision model the backend module declares."""
    from ..backends import get

    return get(backend).precision()


def verify(backend: str | None = None, build_dir: Path | None = None, seed: int = 0,
           quick: bool = False, types=TURBO_TYPES,
           runner: Callable[[list[Case]], HarnessRun] | None = None,
           binary: Path | None = None, of_build: str | None = None) -> Report:
    """Run the checks on one built backend (default: the last one built) and return the report.

    `of_build` names the build whose harness runs them when it is another
    backend's: every build holds the CPU backend, so `cpu` can be verified in
    a Vulkan or CUDA build.

    `runner` replaces the real harness (tests); otherwise the backend's own
    verify_runner (host emulation; called with record None when there is no
    build), else its built tqpatch-verify binary. A build made from other
    kernels than the current render is refused as stale.
    """
    from .. import build as build_mod
    from ..backends import get as get_backend

    if backend is None:
        backend = build_mod.last_built(build_dir)
    be = get_backend(backend)
    built = of_build or backend
    types = tuple(types)
    checks = make_checks(types, seed=seed, quick=quick)
    record = None
    if runner is None:
        try:
            record, not_built = build_mod.load_record(built, build_dir), None
        except TqpatchError as exc:  # a backend may verify without a build (host emulation)
            record, not_built = None, exc
        if record is not None:
            build_mod.check_fresh(record)
        runner = be.verify_runner(record)
        if runner is None and not_built is not None:
            raise not_built
    variants = {}
    if runner is None:
        if binary is None:
            binary = build_mod.find_binary(HARNESS, built, build_dir)
        bin_path = binary

        def runner(cases, env=None):
            return run_harness(bin_path, be.ggml_backend_name, cases, env=env)
        variants = be.verify_variants if built == backend else {}
    run = runner([c.case for c in checks])
    if len(run.results) != len(checks):
        raise TqpatchError(f"the harness answered {len(run.results)} of {len(checks)} cases")
    prec = be.precision()
    reports = [judge(ch, res, backend, prec) for ch, res in zip(checks, run.results)]
    crashes = list(run.crashes)
    for name, env in variants.items():  # the decode attention checks again, in each forced layout
        decode = [dataclasses.replace(ch, shape=f"{ch.shape} [{name}]") for ch in checks
                  if ch.kind == "attention" and ch.label == "decode"]
        vrun = runner([c.case for c in decode], env)
        if len(vrun.results) != len(decode):
            raise TqpatchError(f"the harness ({name}) answered {len(vrun.results)} of {len(decode)} cases")
        reports += [judge(ch, res, backend, prec) for ch, res in zip(decode, vrun.results)]
        crashes += [f"{name}: {c}" for c in vrun.crashes]
    report = Report(backend=backend, ggml_backend=run.backend_name or be.ggml_backend_name,
                    device_name=run.device_name, device_description=run.device_description,
                    binary=str(binary) if binary else "(backend runner)", seed=seed, quick=quick,
                    types=list(types), precision=prec.name, cases=reports, crashes=crashes,
                    label=be.verify_label)
    if record is not None:  # a real build: `tqpatch serve` asks whether it passed
        from . import record as verified

        verified.write(report, record)
    return report
