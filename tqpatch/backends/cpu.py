"""CPU backend: ggml's default; GGML_NATIVE (on by default) tunes for this machine's CPU."""

from __future__ import annotations

import os
import platform

from ..errors import TqpatchError
from ..toolchain import Requirement

name = "cpu"
ggml_backend_name = "CPU"


def default_arch() -> str | None:
    return None


def normalize_arch(arch: str | None) -> str | None:
    if arch is None or arch.strip().lower() in ("", "native"):
        return None
    raise TqpatchError(
        f"--arch {arch!r} does not apply to the cpu backend: it builds for this machine's CPU "
        "(GGML_NATIVE); accepted: no --arch, or 'native'. Use --cmake-arg -DGGML_NATIVE=OFF "
        "for a portable build"
    )


def cmake_args(arch: str | None, all_fa_quants: bool) -> list[str]:
    normalize_arch(arch)
    return []  # the CPU backend is always built; GGML_NATIVE keeps its default (ON)


def requirements() -> list[Requirement]:
    return []


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or None


def hardware() -> str | None:
    model = _cpu_model() or "CPU"
    return f"{model} ({os.cpu_count() or '?'} threads)"


def unsupported_reason() -> str | None:
    return None


def notes() -> list[str]:
    return []
