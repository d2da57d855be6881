"""CPU backend: ggml's default; GGML_NATIVE (on by default) tunes for this machine's CPU."""

from __future__ import annotations

import os
import platform

from . import _noarch
from ..toolchain import Requirement

name = "cpu"
ggml_backend_name = "CPU"

default_arch = _noarch.default_arch


def normalize_arch(arch: str | None) -> str | None:
    return _noarch.reject_arch(name, arch, "(it builds for this machine's CPU with GGML_NATIVE; "
                               "--cmake-arg -DGGML_NATIVE=OFF gives a portable build)")


def cmake_args(arch: str | None, fa_quants: str | bool) -> list[str]:
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
