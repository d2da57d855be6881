"""One module per llama.cpp backend, all behind one interface (like cibuildwheel's platforms/).

Each module (cpu.py, cuda.py, ...) is itself the `Backend`: module-level
attributes and functions that satisfy the Protocol below. Adding a backend is
adding a module and one line in BACKENDS.
"""

from __future__ import annotations

from typing import Protocol

from ..errors import TqpatchError
from ..toolchain import Requirement


class Backend(Protocol):
    name: str  # the --backend value
    ggml_backend_name: str  # the first device's ggml name, as the verify harness sees it

    def default_arch(self) -> str | None:
        """The arch to build for when --arch is not given (None: the backend's own default)."""
        ...

    def normalize_arch(self, arch: str | None) -> str | None:
        """Validate and canonicalise a user --arch value; TqpatchError listing accepted forms."""
        ...

    def cmake_args(self, arch: str | None, fa_quants: str | bool | None) -> list[str]:
        """The -D options that select this backend (beyond the common ones).

        fa_quants is the --fa-quants selection (None/False/'default', True/'all', or a
        K-V pair list; see cuda.fa_pairs); backends without FlashAttention vector
        instances ignore it.
        """
        ...

    def requirements(self) -> list[Requirement]:
        """Tools beyond the common toolchain (cmake, ninja, compilers)."""
        ...

    def hardware(self) -> str | None:
        """What device of this kind is present here, in words; None if none."""
        ...

    def unsupported_reason(self) -> str | None:
        """Why this backend cannot be built here at all (wrong OS, or its SDK entirely
        missing, e.g. HIP without ROCm >= 6.1: '... HIP not built'); None if it can."""
        ...

    def notes(self) -> list[str]:
        """Warnings worth showing before a build (e.g. toolkit newer than the driver)."""
        ...


from . import cpu, cuda, hip, metal, vulkan  # noqa: E402  (modules implement Backend)

BACKENDS: dict[str, Backend] = {
    "cpu": cpu,
    "cuda": cuda,
    "hip": hip,
    "metal": metal,
    "vulkan": vulkan,
}


def get(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise TqpatchError(
            f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}"
        ) from None

