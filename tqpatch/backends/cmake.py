"""The cmake configure options of a llama.cpp build: what every build passes, then the backend's."""

from __future__ import annotations

from typing import Mapping, Sequence

from ..errors import TqpatchError
from .base import Backend

# Checked against the pinned tree's CMakeLists (llama.cpp 0c1e57098). LLAMA_CURL is
# left out on purpose: at the pin it is deprecated and ignored (a configure warning).
# LLAMA_USE_PREBUILT_UI=OFF keeps the build offline (it would fetch the web UI).
COMMON_CMAKE_ARGS: tuple[str, ...] = (
    "-DLLAMA_BUILD_TESTS=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
)


def configure_args(
    backend: Backend,
    arch: str | None = None,
    *,
    build_type: str = "Release",
    options: Mapping[str, object] | None = None,
    ccache: bool = False,
    extra: Sequence[str] = (),
    boundary_k: int = 0,
    boundary_v: int = 0,
) -> list[str]:
    """The full cmake configure options (without -S/-B) for one backend.

    options: the backend's parsed build options (e.g. {"fa-quants": "default"});
    boundary_k / boundary_v: the build-time default of LLAMA_TURBO_BOUNDARY_K / _V
    (patch 0010), always passed so that a rebuild without them resets them to 0.
    """
    if build_type not in ("Release", "Debug", "RelWithDebInfo"):
        raise TqpatchError(f"unknown build type {build_type!r}: use Release or Debug")
    return [
        "-G", "Ninja",
        f"-DCMAKE_BUILD_TYPE={build_type}",
        *COMMON_CMAKE_ARGS,
        f"-DGGML_CCACHE={'ON' if ccache else 'OFF'}",
        f"-DLLAMA_TURBO_BOUNDARY_K={int(boundary_k)}",
        f"-DLLAMA_TURBO_BOUNDARY_V={int(boundary_v)}",
        *backend.cmake_args(arch, options or {}),
        *extra,
    ]
