"""CUDA backend (NVIDIA GPUs): nvcc builds ggml-cuda for the chosen compute capabilities."""

from __future__ import annotations

import re

from ..errors import TqpatchError
from ..toolchain import Requirement, run_capture, version_tuple

name = "cuda"
ggml_backend_name = "CUDA0"

_SPECIAL = ("native", "all", "all-major")
# 90, 90a, 100f, sm_90, compute_90, 90-real, 90-virtual
_ONE = re.compile(r"^(?:sm_|compute_)?([1-9]\d{1,2}[af]?)(-real|-virtual)?$")
ACCEPTED = ("a compute capability number or list: 90, 89;86, 86,89, sm_90, 90a, 90-real; "
            "or one of native, all, all-major")


def normalize_arch(arch: str | None) -> str | None:
    """'sm_90' -> '90'; '89,86' / '89;86' / '89 86' -> '86;89'; native/all/all-major kept."""
    if arch is None:
        return None
    text = arch.strip().lower()
    if text in _SPECIAL:
        return text
    items = [i for i in re.split(r"[;,\s]+", text) if i]
    out: list[str] = []
    for item in items:
        m = _ONE.match(item)
        if not m:
            raise TqpatchError(f"invalid CUDA architecture {item!r} in --arch {arch!r}; "
                               f"accepted: {ACCEPTED}")
        norm = m.group(1) + (m.group(2) or "")
        if norm not in out:
            out.append(norm)
    if not out:
        raise TqpatchError(f"empty --arch {arch!r}; accepted: {ACCEPTED}")
    out.sort(key=lambda a: (int(re.match(r"\d+", a).group()), a))
    return ";".join(out)


def detected_archs() -> list[str]:
    """Compute capabilities of the GPUs here, from nvidia-smi ('9.0' -> '90')."""
    out = run_capture(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"])
    archs: list[str] = []
    for line in (out or "").splitlines():
        m = re.match(r"\s*(\d+)\.(\d+)\s*$", line)
        if m and (a := m.group(1) + m.group(2)) not in archs:
            archs.append(a)
    return archs


def default_arch() -> str | None:
    """The GPUs present (e.g. '90'); None without one (ggml then builds its portable list)."""
    archs = detected_archs()
    return ";".join(sorted(archs, key=int)) if archs else None


def cmake_args(arch: str | None, all_fa_quants: bool) -> list[str]:
    arch = normalize_arch(arch) if arch is not None else default_arch()
    args = ["-DGGML_CUDA=ON"]
    if arch is not None:
        args.append(f"-DCMAKE_CUDA_ARCHITECTURES={arch}")
    else:
        # No GPU to detect and no --arch: GGML_NATIVE would ask CMake for 'native',
        # which fails without a GPU; OFF makes ggml build its portable architecture list.
        args.append("-DGGML_NATIVE=OFF")
    if all_fa_quants:
        args.append("-DGGML_CUDA_FA_ALL_QUANTS=ON")
    return args


def _nvcc_version(path: str) -> str | None:
    out = run_capture([path, "--version"])
    m = re.search(r"release (\d+\.\d+)", out or "")
    return m.group(1) if m else None


NVCC = Requirement(
    "nvcc", "CUDA compiler (CUDA toolkit)",
    programs=("nvcc",), env="CUDACXX",
    files=("$CUDA_HOME/bin/nvcc", "$CUDA_PATH/bin/nvcc", "/usr/local/cuda/bin/nvcc",
           "/usr/local/cuda-*/bin/nvcc"),
    version_fn=_nvcc_version, min_version="11.7",
    debian="nvidia-cuda-toolkit", vendor="https://developer.nvidia.com/cuda-downloads",
)


def requirements() -> list[Requirement]:
    return [NVCC]


def driver_cuda_version() -> str | None:
    """The newest CUDA version the installed driver supports (nvidia-smi's header)."""
    out = run_capture(["nvidia-smi"])
    m = re.search(r"CUDA Version:\s*(\d+\.\d+)", out or "")
    return m.group(1) if m else None


def hardware() -> str | None:
    out = run_capture(["nvidia-smi", "-L"])
    gpus = [re.sub(r"\s*\(UUID:.*\)$", "", line.strip()) for line in (out or "").splitlines()
            if line.strip().startswith("GPU ")]
    return "; ".join(gpus) or None


def version_mismatch(nvcc: str | None, driver: str | None) -> str | None:
    if not nvcc or not driver:
        return None
    if version_tuple(nvcc)[:2] > version_tuple(driver)[:2]:
        return (f"nvcc is CUDA {nvcc} but the driver supports at most CUDA {driver}: binaries "
                "built here will fail with 'CUDA driver version is insufficient'. Update the "
                f"NVIDIA driver, or install a CUDA toolkit <= {driver} (put its nvcc first on PATH "
                "or set CUDACXX)")
    return None


def notes() -> list[str]:
    out = []
    path = NVCC.find()
    nvcc = NVCC.version(path) if path else None
    problem = version_mismatch(nvcc, driver_cuda_version())
    if problem:
        out.append(problem)
    if path and not detected_archs():
        out.append("no NVIDIA GPU found: binaries can be compiled but not run here; without "
                   "--arch the build covers ggml's portable architecture list (slow), "
                   "pass e.g. --arch 90 to build one")
    return out


def unsupported_reason() -> str | None:
    import sys

    if sys.platform == "darwin":
        return "CUDA is not available on macOS"
    return None
