"""Vulkan backend: shaders compiled by glslc; needs the Vulkan headers/loader and SPIR-V headers."""

from __future__ import annotations

import re
from math import lcm

from .. import formats
from ._base import *  # noqa: F403  (the defaults this backend keeps)
from ._base import EndToEnd, Requirement, reject_arch
from ..toolchain import read_file_version, run_capture

name = "vulkan"
ggml_backend_name = "Vulkan0"

_LIB_DIRS = ("/usr/lib/*", "/usr/lib", "/usr/lib64", "/usr/local/lib", "$VULKAN_SDK/lib")


def normalize_arch(arch: str | None) -> str | None:
    return reject_arch(name, arch, "(SPIR-V runs on any device)")


def cmake_args(arch, options, tree=None) -> list[str]:
    normalize_arch(arch)
    return ["-DGGML_VULKAN=ON"]


def requirements() -> list[Requirement]:
    return [
        Requirement(
            "glslc", "compiles the GLSL compute shaders to SPIR-V",
            programs=("glslc",), files=("$VULKAN_SDK/bin/glslc",),
            version_re=r"shaderc v?(\d+\.\d+(?:\.\d+)?)", debian="glslc",
            vendor="https://vulkan.lunarg.com/sdk/home",
        ),
        Requirement(
            "Vulkan headers", "vulkan/vulkan.h",
            files=("/usr/include/vulkan/vulkan_core.h", "/usr/local/include/vulkan/vulkan_core.h",
                   "$VULKAN_SDK/include/vulkan/vulkan_core.h"),
            version_fn=read_file_version([
                r"VK_HEADER_VERSION_COMPLETE\s+VK_MAKE_API_VERSION\(\s*0\s*,\s*(\d+)",
                r"VK_HEADER_VERSION_COMPLETE\s+VK_MAKE_API_VERSION\(\s*0\s*,\s*\d+\s*,\s*(\d+)",
                r"#define\s+VK_HEADER_VERSION\s+(\d+)",
            ]),
            min_version="1.2", debian="libvulkan-dev", vendor="https://vulkan.lunarg.com/sdk/home",
        ),
        Requirement(
            "Vulkan loader", "libvulkan.so to link against",
            files=tuple(f"{d}/libvulkan.so" for d in _LIB_DIRS) + ("/usr/local/lib/libvulkan.dylib",),
            version_args=(), debian="libvulkan-dev", vendor="https://vulkan.lunarg.com/sdk/home",
        ),
        Requirement(
            "SPIR-V headers", "spirv/unified1/spirv.hpp (CMake package SPIRV-Headers)",
            files=("/usr/include/spirv/unified1/spirv.hpp",
                   "/usr/local/include/spirv/unified1/spirv.hpp",
                   "$VULKAN_SDK/include/spirv/unified1/spirv.hpp"),
            version_args=(), debian="spirv-headers", vendor="https://vulkan.lunarg.com/sdk/home",
        ),
    ]


def devices() -> list[tuple[str, bool]]:
    """(name, is a CPU driver) of every Vulkan device `vulkaninfo --summary` lists."""
    out = run_capture(["vulkaninfo", "--summary"], timeout=20)
    found = []
    for block in re.split(r"\n(?=GPU\d+:)", out or ""):
        m = re.search(r"deviceName\s*=\s*(.+)", block)
        if not m:
            continue
        name = m.group(1).strip()
        cpu = ("PHYSICAL_DEVICE_TYPE_CPU" in block or "llvmpipe" in name.lower()
               or "lavapipe" in name.lower())
        found.append((name, cpu))
    return found


def hardware() -> str | None:
    names = [name + (" (CPU Vulkan driver)" if cpu else "") for name, cpu in devices()]
    return "; ".join(names) or None


def detect() -> tuple[bool, str]:
    gpus = [name for name, cpu in devices() if not cpu]  # lavapipe alone is no reason to build Vulkan
    if not gpus:
        return False, ""
    missing = [p.name for p in (r.probe() for r in requirements()) if p.blocking]
    if missing:
        return False, f"Vulkan device {gpus[0]} found but {', '.join(missing)} missing"
    return True, f"Vulkan device {'; '.join(gpus)}"


# ---------------------------------------------------------------- tests

def _no_device() -> str | None:
    if devices():
        return None
    return ("no Vulkan device here (vulkaninfo lists none); lavapipe, the CPU Vulkan driver, "
            "will do: apt-get install mesa-vulkan-drivers vulkan-tools")


# llama.cpp skips CPU-type Vulkan devices (lavapipe) unless they are named: device 0
# is lavapipe on a CI machine and the GPU on a GPU machine without Mesa's drivers.
# On lavapipe the flash-attention cases are a subset (the whole set takes over an
# hour): every K type with every V type at head size 128 with a KV length the
# block size does not divide (113) and 1 and 3 queries, plus head sizes 64 and
# 256 for the pairs with turbo V at one query; SET_ROWS / GET_ROWS / CPY run all.
FA_SUBSET = (r"^(?=.*type_[KV]=turbo)"
             r"(hsk=128,.*kv=113,nb=[13],|hsk=(64|256),.*kv=113,nb=1,.*type_V=turbo)")
e2e = EndToEnd(
    tool_args=("-ngl", "99"),
    env={"GGML_VK_VISIBLE_DEVICES": "0"},
    ops_filter={"SET_ROWS": "turbo", "GET_ROWS": "turbo", "CPY": "turbo",
                "FLASH_ATTN_EXT": FA_SUBSET},
    runnable=_no_device,
)


# ---------------------------------------------------------------- shaders

# The quantize shader (turbo_quantize.comp) lets this many threads share one
# block; each takes whole 16-bit words of every index plane.
QUANT_THREADS_PER_BLOCK = 8


def quant_geometry(fmt: formats.TurboFormat) -> dict:
    """Threads per block (tpb) and consecutive values per thread (vpt) of the quantizer."""
    words = lcm(*(16 // p.bits for p in fmt.planes))  # values filling whole words of every plane
    vpt = max(words, fmt.block // QUANT_THREADS_PER_BLOCK)
    if fmt.block % vpt:
        raise ValueError(f"{fmt.name}: a block of {fmt.block} is not a whole number of {vpt}-value runs")
    return {"tpb": fmt.block // vpt, "vpt": vpt}


def render_context() -> dict:
    return {"quant": {name: quant_geometry(fmt) for name, fmt in formats.TURBO_FORMATS.items()}}
