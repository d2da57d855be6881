"""What `tqpatch verify` found for a build, kept in the build dir (tqpatch-verified.json)
so that `tqpatch serve` serves only from a build whose kernels passed.

One entry per backend verified in the build (a Vulkan build can also have its
CPU backend verified): passed or not, whether it was the full case set, and the
build it was run on (the build record's inputs digest and finish time), so a
rebuild makes it stale.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import fsutil
from ..formats import TURBO_FORMATS

RECORD_NAME = "tqpatch-verified.json"


def _build_id(build_record: dict) -> dict:
    return {"digest": (build_record.get("inputs") or {}).get("digest"),
            "finished": build_record.get("finished")}


def _load(build_dir: Path) -> dict:
    try:
        data = json.loads((Path(build_dir) / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write(report, build_record: dict) -> None:
    """Remember a verify report's verdict for the build it ran on (best effort)."""
    if not build_record.get("build_dir") or not Path(build_record["build_dir"]).is_dir():
        return
    build_dir = Path(build_record["build_dir"])
    data = _load(build_dir)
    data[report.backend] = {"passed": bool(report.passed), "quick": bool(report.quick),
                            "types": list(report.types), "build": _build_id(build_record),
                            "label": report.label or ""}
    try:
        fsutil.write_atomic(build_dir / RECORD_NAME, (json.dumps(data, indent=1) + "\n").encode())
    except OSError:
        pass  # serve will verify again


def status(backend: str, build_record: dict) -> str:
    """'passed', 'failed', 'quick' (only --quick or some types passed) or 'none' for
    this build (a record of an earlier build counts as none)."""
    if not build_record.get("build_dir"):
        return "none"
    entry = _load(Path(build_record["build_dir"])).get(backend)
    if not isinstance(entry, dict) or entry.get("build") != _build_id(build_record):
        return "none"
    if not entry.get("passed"):
        return "failed"

    if entry.get("quick") or set(entry.get("types") or ()) != set(TURBO_FORMATS):
        return "quick"
    return "passed"
