"""Running a backend's tqpatch-verify harness on the cases (case/result files: verify_io)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..errors import TqpatchError
from ..verify_io import Case, Result

HARNESS = "tqpatch-verify"


# ================================================================ running the harness

@dataclass
class HarnessRun:
    backend_name: str
    device_name: str
    device_description: str
    results: list[Result | None]        # per case; None: the harness crashed on it
    crashes: list[str]


def run_harness(binary: Path, ggml_backend: str, cases: list[Case],
                timeout: float = 1800, env: Mapping[str, str] | None = None) -> HarnessRun:
    """Run the harness on all cases; a crash loses only the case it happened in.
    env: variables added to the harness's environment (a backend's forced kernel layout)."""
    from .. import verify_io

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
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                      env={**os.environ, **env} if env else None)
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
