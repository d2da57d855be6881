"""HIP backend (AMD GPUs via ROCm): the CUDA sources compiled by ROCm's clang; needs ROCm >= 6.1.

Variable names checked in the pinned tree (ggml/src/ggml-hip/CMakeLists.txt):
GGML_HIP turns it on; GPU_TARGETS (or the older AMDGPU_TARGETS) becomes
CMAKE_HIP_ARCHITECTURES; hip_VERSION < 6.1 is a configure error. Device names
are "ROCm<N>" (ggml/include/ggml-cuda.h under GGML_USE_HIP).
"""

from __future__ import annotations

import re
import sys

from ..errors import TqpatchError
from ..toolchain import Requirement, run_capture

name = "hip"
ggml_backend_name = "ROCm0"

_ONE = re.compile(r"^gfx[0-9a-f]{3,4}(?::(?:xnack|sramecc)[+-])*$")
ACCEPTED = "gfx targets such as gfx1100, gfx90a, gfx942 or lists gfx1100;gfx1030 / gfx1100,gfx1030"


def normalize_arch(arch: str | None) -> str | None:
    if arch is None:
        return None
    items = [i for i in re.split(r"[;,\s]+", arch.strip().lower()) if i]
    out: list[str] = []
    for item in items:
        if not _ONE.match(item):
            raise TqpatchError(f"invalid AMD GPU target {item!r} in --arch {arch!r}; "
                               f"accepted: {ACCEPTED}")
        if item not in out:
            out.append(item)
    if not out:
        raise TqpatchError(f"empty --arch {arch!r}; accepted: {ACCEPTED}")
    return ";".join(sorted(out))


def detected_archs() -> list[str]:
    out = run_capture(["rocminfo"], timeout=20)
    archs: list[str] = []
    for m in re.finditer(r"^\s*Name:\s*(gfx[0-9a-f]+)\s*$", out or "", re.M):
        if m.group(1) not in archs:
            archs.append(m.group(1))
    return archs


def default_arch() -> str | None:
    archs = detected_archs()
    return ";".join(sorted(archs)) if archs else None


def cmake_args(arch: str | None, all_fa_quants: bool) -> list[str]:
    arch = normalize_arch(arch) if arch is not None else default_arch()
    args = ["-DGGML_HIP=ON"]
    if arch is not None:
        args.append(f"-DGPU_TARGETS={arch}")
    if all_fa_quants:
        args.append("-DGGML_CUDA_FA_ALL_QUANTS=ON")
    return args


def _hip_version(path: str) -> str | None:
    out = run_capture([path, "--version"])
    m = re.search(r"(?:HIP version:\s*)?(\d+\.\d+(?:\.\d+)?)", out or "")
    return m.group(1) if m else None


def requirements() -> list[Requirement]:
    rocm = "https://rocm.docs.amd.com/projects/install-on-linux/"
    return [
        Requirement(
            "hipconfig", "ROCm/HIP >= 6.1 (hipconfig --version)",
            programs=("hipconfig",), files=("$ROCM_PATH/bin/hipconfig", "/opt/rocm/bin/hipconfig"),
            version_fn=_hip_version, min_version="6.1", debian="hipcc", vendor=rocm,
        ),
        Requirement(
            "hipBLAS", "hipblas/rocblas CMake packages",
            files=("$ROCM_PATH/lib/cmake/hipblas/hipblas-config.cmake",
                   "/opt/rocm/lib/cmake/hipblas/hipblas-config.cmake",
                   "/usr/lib/*/cmake/hipblas/hipblas-config.cmake"),
            version_args=(), debian="libhipblas-dev", vendor=rocm,
        ),
        Requirement(
            "cmake (HIP)", "CMake >= 3.21 for enable_language(HIP)", programs=("cmake",),
            version_re=r"cmake version (\d+\.\d+(?:\.\d+)?)", min_version="3.21",
            pip="cmake", debian="cmake",
        ),
    ]


def hardware() -> str | None:
    out = run_capture(["rocminfo"], timeout=20)
    if not out:
        return None
    names = []
    for agent in re.split(r"\*{3,}\s*\n\s*Agent \d+", out):
        if re.search(r"Device Type:\s*GPU", agent):
            m = re.search(r"Marketing Name:\s*(.+)", agent)
            g = re.search(r"^\s*Name:\s*(gfx[0-9a-f]+)", agent, re.M)
            label = (m.group(1).strip() if m else "AMD GPU") + (f" ({g.group(1)})" if g else "")
            names.append(label)
    return ", ".join(names) or None


def unsupported_reason() -> str | None:
    if sys.platform == "darwin":
        return "ROCm/HIP is not available on macOS"
    return None


def notes() -> list[str]:
    return []
