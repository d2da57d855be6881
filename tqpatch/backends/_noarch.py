"""The --arch handling shared by backends that build for no particular device arch."""

from __future__ import annotations

from ..errors import TqpatchError


def default_arch() -> str | None:
    return None


def reject_arch(backend: str, arch: str | None, why: str) -> None:
    """Accept no --arch or 'native'; anything else is a clear error saying why."""
    if arch is None or arch.strip().lower() in ("", "native"):
        return None
    raise TqpatchError(
        f"--arch {arch!r} does not apply to the {backend} backend {why}; "
        "accepted: no --arch, or 'native'"
    )
