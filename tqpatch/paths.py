"""Where tqpatch keeps things: one place so every stage agrees.

Everything lives under one cache root (XDG cache dir, or $TQPATCH_CACHE):
  downloads/              verified source archives and model parts
  src/llama.cpp-<pin>/    the pristine pinned tree (never modified)
  work/llama.cpp-<pin>/   the tree tqpatch patches (default for apply/build)
  build/<backend>/        cmake build directories; binaries in build/<backend>/bin
  models/                 assembled test models
"""

from __future__ import annotations

import os
from pathlib import Path

from . import pin

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_root() -> Path:
    env = os.environ.get("TQPATCH_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "tqpatch"


def downloads_dir() -> Path:
    return cache_root() / "downloads"


def pristine_tree() -> Path:
    return cache_root() / "src" / f"llama.cpp-{pin.LLAMA_CPP_COMMIT}"


def default_work_tree() -> Path:
    return cache_root() / "work" / f"llama.cpp-{pin.LLAMA_CPP_COMMIT}"


def default_build_dir(backend: str) -> Path:
    return cache_root() / "build" / backend


def models_dir() -> Path:
    return cache_root() / "models"


def package_dir() -> Path:
    return Path(__file__).resolve().parent


def _repo_dir(name: str) -> Path:
    # templates/ and patches/ sit at the repository root (DESIGN.md layout);
    # tqpatch is installed editable from a checkout (`pip install -e .`).
    path = REPO_ROOT / name
    if not path.is_dir():
        from .errors import TqpatchError

        raise TqpatchError(
            f"{path} is missing: tqpatch reads its templates and patches from its "
            "source checkout; install it with `pip install -e .` from a clone"
        )
    return path


def templates_dir() -> Path:
    return _repo_dir("templates")


def patches_dir() -> Path:
    return _repo_dir("patches")


def generated_dir() -> Path:
    """Committed render output: generated/<path in the llama.cpp tree>."""
    return REPO_ROOT / "generated"
