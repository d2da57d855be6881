"""The workflow files users copy from ci/: valid YAML, and each job does what ci/README.md says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tqpatch.backends import BACKENDS

CI = Path(__file__).resolve().parent.parent / "ci"
FILES = sorted(CI.glob("*.yml"))


def _load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    # YAML 1.1 reads the key `on` as True
    data["on"] = data.pop(True, data.get("on"))
    return data


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_workflow_is_valid_yaml_with_jobs(path):
    data = _load(path)
    assert data["on"] and data["jobs"], path.name
    for name, job in data["jobs"].items():
        assert "runs-on" in job or "uses" in job, (path.name, name)
        for step in job.get("steps", []):
            assert "run" in step or "uses" in step, (path.name, name, step)


def test_matrix_calls_existing_backend_files():
    calls = [job["uses"] for job in _load(CI / "tqpatch.yml")["jobs"].values()]
    assert calls
    for uses in calls:
        m = re.fullmatch(r"\./\.github/workflows/(tqpatch-\w+\.yml)", uses)
        assert m and (CI / m.group(1)).is_file(), uses


@pytest.mark.parametrize("path", [p for p in FILES if p.name != "tqpatch.yml"], ids=lambda p: p.name)
def test_backend_workflow_builds_and_verifies_its_backend(path):
    backend = re.fullmatch(r"tqpatch-(\w+)\.yml", path.name).group(1)
    assert backend in BACKENDS, path.name
    runs = "\n".join(step.get("run", "") for job in _load(path)["jobs"].values()
                     for step in job.get("steps", []))
    compiles = f"tqpatch doctor --compile-check {backend}" in runs
    builds = f"tqpatch build --backend {backend}" in runs and f"tqpatch verify --backend {backend}" in runs
    assert builds or compiles, path.name
