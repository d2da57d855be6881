"""Metal backend (Apple GPUs): macOS only; the Metal library is embedded (GGML_METAL_EMBED_LIBRARY)."""

from __future__ import annotations

import sys

from ._base import *  # noqa: F403  (the defaults this backend keeps)
from ._base import Requirement, reject_arch
from ..toolchain import run_capture

name = "metal"
ggml_backend_name = "MTL0"


def normalize_arch(arch: str | None) -> str | None:
    return reject_arch(name, arch, "(kernels are compiled for the device at run time)")


def cmake_args(arch, options, tree=None) -> list[str]:
    normalize_arch(arch)
    return ["-DGGML_METAL=ON"]


def requirements() -> list[Requirement]:
    return [
        Requirement(
            "xcrun", "Xcode command line tools (Metal and Foundation frameworks)",
            programs=("xcrun",), version_args=("--version",),
            vendor="run `xcode-select --install` (Apple Xcode command line tools)",
        ),
    ]


def hardware() -> str | None:
    if sys.platform != "darwin":
        return None
    out = run_capture(["system_profiler", "SPDisplaysDataType"], timeout=20)
    if out:
        names = [line.split(":", 1)[1].strip() for line in out.splitlines()
                 if line.strip().startswith("Chipset Model:")]
        if names:
            return ", ".join(names)
    brand = run_capture(["sysctl", "-n", "machdep.cpu.brand_string"])
    return brand.strip() if brand else "Apple GPU"


def unsupported_reason() -> str | None:
    if sys.platform != "darwin":
        return "Metal builds need macOS (this is " + sys.platform + ")"
    return None



def detect() -> tuple[bool, str]:
    if sys.platform != "darwin":
        return False, ""
    return True, f"macOS with {hardware() or 'an Apple GPU'}"
