"""Where tqpatch keeps things: one place so every stage agrees.

Data that ships with tqpatch (templates/, patches/, generated/) is found
inside the installed package (a wheel maps them to tqpatch/_data/<name>) or,
in a source checkout, at the repository root; codebooks live in the package.

Everything tqpatch downloads or builds lives under one cache root
($TQPATCH_CACHE, else the platform's user cache dir: ~/.cache/tqpatch on
Linux, ~/Library/Caches/tqpatch on macOS):
  downloads/              verified source archives and model parts
  src/llama.cpp-<pin>/    the pristine pinned tree (never modified)
  work/llama.cpp-<pin>/   the tree tqpatch patches (default for apply/build)
  build/<backend>/        cmake build directories; binaries in build/<backend>/bin
  models/                 assembled test models
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

import platformdirs

from . import pin
from .errors import TqpatchError

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGED_DATA = "_data"  # tqpatch/_data/<name> in a wheel (pyproject.toml, force-include)
SHIPPED = ("templates", "patches", "generated")


def cache_root() -> Path:
    env = os.environ.get("TQPATCH_CACHE")
    if env:
        return Path(env).expanduser()

    return Path(platformdirs.user_cache_dir("tqpatch", appauthor=False))


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


def _packaged(name: str) -> Path | None:
    resource = importlib.resources.files(__package__) / PACKAGED_DATA / name
    return Path(str(resource)) if resource.is_dir() else None


def is_source_checkout() -> bool:
    """True when tqpatch runs from its source tree (editable install or PYTHONPATH),
    where `render` and `codebook` may write generated/ and the shipped codebooks."""
    return _packaged("templates") is None and all((REPO_ROOT / n).is_dir() for n in SHIPPED) \
        and (REPO_ROOT / "pyproject.toml").is_file()


def shipped_dir(name: str) -> Path:
    """templates/, patches/ or generated/: inside the installed package, else the checkout."""
    path = _packaged(name) or REPO_ROOT / name
    if not path.is_dir():
        raise TqpatchError(
            f"tqpatch's {name}/ is missing (looked in the package's {PACKAGED_DATA}/ and in "
            f"{REPO_ROOT}): reinstall tqpatch (`pip install tqpatch` or `pip install .` from "
            "a clone)")
    return path


def templates_dir() -> Path:
    return shipped_dir("templates")


def patches_dir() -> Path:
    return shipped_dir("patches")


def generated_dir() -> Path:
    """The committed render output: generated/<path in the llama.cpp tree>."""
    return shipped_dir("generated")


def require_checkout(what: str, option: str = "--out") -> None:
    """Refuse to write into an installed package: only a source checkout is edited in place."""
    if not is_source_checkout():
        raise TqpatchError(
            f"{what} writes into tqpatch's source tree, and this tqpatch is installed from a "
            f"package ({package_dir()}); give {option} DIR to write elsewhere, or run it from a "
            "clone of tqpatch (`pip install -e .`)")
