"""The pin's fingerprint scope covers everything the CMake build reads.

A tree holding only the files under pin.TREE_SCOPE (what fetch checks, so all
a source has to carry) must configure, list no build input outside itself, and
run the build's script steps; the scope before scripts/ui-assets.cmake was
added configures but fails the llama-server UI step, which this shows too.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tqpatch import build, fetch, pin
from tqpatch import backends
from tqpatch.backends import cmake

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("ninja") is None,
                       reason="cmake and ninja are needed (pip install '.[build]')"),
]


def _restricted_copy(src: Path, dest: Path, scope) -> Path:
    for rel in fetch.tree_index(src):
        if any(rel == s or rel.startswith(s + "/") for s in scope):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dest / rel)
    return dest


def _configure(tree: Path, build_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["cmake", "-S", str(tree), "-B", str(build_dir),
                           *cmake.configure_args(backends.get("cpu"), None, ccache=False)],
                          capture_output=True, text=True)


def _ui_step(build_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["cmake", "--build", str(build_dir), "--target", "llama-ui-assets"],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def pristine():
    return fetch.ensure_pristine()


def test_a_tree_of_only_the_scope_configures_and_builds_its_script_steps(pristine, tmp_path):
    tree = _restricted_copy(pristine, tmp_path / "tree", pin.TREE_SCOPE)
    assert fetch.verify_tree(tree) == pin.TREE_FINGERPRINT  # exactly what fetch accepts
    r = _configure(tree, tmp_path / "b")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # Every input of every build edge that lies in the tree is in the copy.
    inputs = subprocess.run(["ninja", "-C", str(tmp_path / "b"), "-t", "inputs", "all"],
                            capture_output=True, text=True, check=True).stdout.split()
    root = str(tree.resolve()) + "/"
    missing = [p for p in inputs if p.startswith(root) and not Path(p).exists()]
    assert missing == []
    r = _ui_step(tmp_path / "b")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def test_the_scope_without_ui_assets_fails_at_build_time(pristine, tmp_path):
    old_scope = [s for s in pin.TREE_SCOPE if s != "scripts/ui-assets.cmake"]
    tree = _restricted_copy(pristine, tmp_path / "tree", old_scope)
    assert _configure(tree, tmp_path / "b").returncode == 0  # configure alone cannot tell
    r = _ui_step(tmp_path / "b")
    assert r.returncode != 0 and "scripts/ui-assets.cmake" in r.stdout + r.stderr
