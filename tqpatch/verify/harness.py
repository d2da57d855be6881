"""Running a backend's tqpatch-verify harness on the cases (case/result files: verify_io)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .. import ui, verify_io
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
            proc = ui.run(cmd, timeout=timeout, env=dict(env or {}), merge=False, check=False)
            if proc.timed_out:
                raise TqpatchError(f"{binary.name} did not finish within {timeout:.0f} s")
            if proc.returncode == 2 and not out_path.exists():
                raise TqpatchError(
                    f"{binary} has no ggml device named {ggml_backend!r} (was it built for this "
                    f"backend, and is the device visible?):\n{_last_messages(proc.stderr)}")
            if not out_path.exists() or out_path.stat().st_size == 0:
                raise TqpatchError(f"{binary.name} exited with status {proc.returncode} before "
                                   f"writing results:\n{_last_messages(proc.stderr)}")
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
                                   f"{_last_messages(proc.stderr)}")
            crashed = start + done
            crashes.append(f"case {crashed} ({cases[crashed].op} {cases[crashed].type_k}/"
                           f"{cases[crashed].type_v}): exit status {proc.returncode}: "
                           f"{_last_messages(proc.stderr, 3)}")
            start = crashed + 1
    assert header is not None
    return HarnessRun(*header, results, crashes)


def _last_messages(text: str, n: int = 15) -> str:
    """ui.tail of the harness's stderr without its per-case progress lines."""
    lines = [ln for ln in (text or "").splitlines() if not ln.startswith("tqpatch-verify: case ")]
    return ui.tail("\n".join(lines).strip(), n) or "(no output)"
