"""One module per llama.cpp backend, all behind one interface (like cibuildwheel's platforms/).

Each module (cpu.py, cuda.py, ...) is itself the `Backend`: module-level
attributes and functions that satisfy the Protocol below; `_base` supplies the
defaults of the optional parts. Adding a backend is one module here, one
template folder (templates/ggml/src/ggml-<name>/), one glue patch, and a line
in BACKENDS; render, build, verify and the tests read everything else from the
module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Protocol

from ..errors import TqpatchError
from ..precision import Precision
from ..toolchain import Requirement
from ._base import BuildEnvironment, BuildOption, CompileCheck, EndToEnd


class Backend(Protocol):
    name: str                # the --backend value
    ggml_backend_name: str   # the first device's ggml name, as the verify harness sees it
    build_options: tuple[BuildOption, ...]   # extra `tqpatch build` options this backend takes
    verify_label: str        # carried by every verify report ("" or e.g. "host-emulated, ...")
    verify_variants: Mapping[str, Mapping[str, str]]  # layouts verify also forces: name -> env
    compile_check: CompileCheck | None       # the CI compile check, if the backend has one
    e2e: EndToEnd            # how the end-to-end tests run its binaries

    def default_arch(self) -> str | None:
        """The arch to build for when --arch is not given (None: the backend's own default)."""

    def normalize_arch(self, arch: str | None) -> str | None:
        """Validate and canonicalise a user --arch value; TqpatchError listing accepted forms."""

    def cmake_args(self, arch: str | None, options: Mapping[str, object], tree: Path | None) -> list[str]:
        """The -D options that select this backend, given its parsed build options."""

    def build_environment(self, options: Mapping[str, object]) -> BuildEnvironment | None:
        """Where cmake and ninja run for these build options (None: on this machine)."""

    def requirements(self) -> list[Requirement]:
        """Tools beyond the common toolchain (cmake, ninja, compilers)."""

    def hardware(self) -> str | None:
        """What device of this kind is present here, in words; None if none."""

    def unsupported_reason(self) -> str | None:
        """Why this backend cannot be built here at all; None if it can."""

    def notes(self) -> list[str]:
        """Warnings worth showing before a build."""

    def render_context(self) -> dict:
        """Template variables this backend adds (seen by templates as `<name>.<var>`)."""

    def render_expansions(self) -> dict[str, Callable[[], list[dict]]]:
        """`[name]` expansions of template file names (e.g. CUDA's FA instance files)."""

    def precision(self) -> Precision:
        """The verify precision model of this backend's kernels."""

    def verify_runner(self, record: dict | None) -> Callable | None:
        """A replacement for the built tqpatch-verify harness (None: run the harness);
        record is None when the backend was not built (host emulation needs no build)."""

    def detect(self) -> tuple[bool, str]:
        """(build this backend by default here?, why / what is missing)."""


from . import cpu, cuda, hip, metal, vulkan  # noqa: E402  (modules implement Backend)

BACKENDS: dict[str, Backend] = {
    "cpu": cpu,
    "cuda": cuda,
    "hip": hip,
    "metal": metal,
    "vulkan": vulkan,
}


# The order `tqpatch build` without --backend tries them in; the CPU always works.
DETECT_ORDER = ("cuda", "hip", "vulkan", "metal")


def detect() -> tuple[str, str]:
    """(backend to build here, why), for `tqpatch build` without --backend."""
    missed = []
    for name in DETECT_ORDER:
        usable, why = BACKENDS[name].detect()
        if usable:
            return name, why
        if why:
            missed.append(why)
    return "cpu", "; ".join(missed) if missed else "no GPU and GPU toolchain found"


def get(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise TqpatchError(
            f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}"
        ) from None


def build_options() -> dict[str, tuple[BuildOption, list[str]]]:
    """Every backend-specific build option: name -> (option, backends that take it)."""
    out: dict[str, tuple[BuildOption, list[str]]] = {}
    for backend in BACKENDS.values():
        for opt in backend.build_options:
            out.setdefault(opt.name, (opt, []))[1].append(backend.name)
    return out
