"""Vulkan backend: shaders compiled by glslc; needs the Vulkan headers/loader and SPIR-V headers."""

from __future__ import annotations

import re
import struct

from .. import formats
from ..toolchain import read_file_version, run_capture
from .base import Backend, EndToEnd, Requirement, reject_arch
from .cpu import AMX_BENCH_WORKAROUND, AMX_WORKAROUND

name = "vulkan"

_LIB_DIRS = ("/usr/lib/*", "/usr/lib", "/usr/lib64", "/usr/local/lib", "$VULKAN_SDK/lib")


def normalize_arch(arch: str | None) -> str | None:
    return reject_arch(name, arch, "(SPIR-V runs on any device)")


def cmake_args(arch, options) -> list[str]:
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


def _only_cpu_driver() -> str | None:
    found = devices()
    if found and all(cpu for _, cpu in found):
        return ("the only Vulkan device is a CPU driver (lavapipe), too slow for the real model "
                "(~4 tokens/s; one 512-token chunk moved f16/f16's PPL by 6.4% against the CPU, "
                "noise the bound cannot take); measured on NVIDIA's driver: docs/vulkan.md")
    return None


# llama.cpp skips CPU-type Vulkan devices (lavapipe) unless they are named: device 0
# is lavapipe on a CI machine and the GPU on a GPU machine without Mesa's drivers.
# The end-to-end case sets are sized for lavapipe, where every new shader pipeline
# is compiled by LLVM (measured on 2 cores: ~13 s per flash-attention pipeline at
# head size 128, ~40 s at 256): every K/V pair of head size 128 (a KV length the
# block size does not divide, 1 and 3 queries: one pipeline each), every pair of
# the block variants at head sizes 32 and 96 (1 query), turbo4 V at head size 64
# and q8_0/turbo3 at 256; SET_ROWS / GET_ROWS / CPY run all their cases; verify
# runs turbo3_b32's quick set (every op); the real-model checks need a Vulkan GPU.
# The whole sets run on a GPU (docs/vulkan.md, "Verified where").
FA_SUBSET = (r"^(?=.*type_[KV]=turbo)(hsk=128,.*kv=113,nb=[13],"
             r"|hsk=(32|96),.*kv=113,nb=1,"
             r"|hsk=64,.*kv=113,nb=1,.*type_K=(f16|turbo4),type_V=turbo4,"
             r"|hsk=256,.*kv=113,nb=1,.*type_K=q8_0,type_V=turbo3,)")
e2e = EndToEnd(
    marker="vulkan",
    # the CPU backend runs what the device does not take: its AMX workaround too (cpu.py;
    # without it llama.cpp's AMX matmul died of SIGILL in a lavapipe run on this CI machine)
    tool_args=("-ngl", "99", *AMX_WORKAROUND),
    bench_args=AMX_BENCH_WORKAROUND,
    env={"GGML_VK_VISIBLE_DEVICES": "0"},
    ops_filter={"SET_ROWS": "turbo", "GET_ROWS": "turbo", "CPY": "turbo",
                "FLASH_ATTN_EXT": FA_SUBSET},
    runnable=_no_device,
    # turbo3_b32: every op, both index planes, the 4-thread quantizer, flash attention at
    # head 32 (cheap lavapipe pipelines); turbo3's quick set now has 9 FA pairs at head 128
    # and did not finish in verify's 30 min on lavapipe (docs/vulkan.md)
    verify_args=("--quick", "--types", "turbo3_b32"),
    skip_model=_only_cpu_driver,
    # a copy of a turbo tensor into the same turbo type has no Vulkan shader (the CPU runs it)
    unsupported_ok=r"CPY\(type_src=(turbo\w*),type_dst=\1,",
)


# ---------------------------------------------------------------- shaders

# The quantize shader (turbo_quantize.comp) lets up to this many threads share
# one block; each takes whole bytes of every index plane (blocks are 1-byte
# aligned and written byte by byte).
QUANT_THREADS_PER_BLOCK = 8


def quant_geometry(fmt: formats.TurboFormat) -> dict:
    """Threads per block (tpb: a power of two, at most QUANT_THREADS_PER_BLOCK) and
    consecutive values per thread (vpt: whole bytes of every plane) of the quantizer."""
    tpb = QUANT_THREADS_PER_BLOCK
    while tpb >= 1:
        if fmt.block % tpb == 0 and (fmt.block // tpb) % fmt.group == 0:
            return {"tpb": tpb, "vpt": fmt.block // tpb}
        tpb //= 2
    raise ValueError(f"{fmt.name}: a block of {fmt.block} is not a whole number of {fmt.group}-value groups")


def float32_bits(v: float) -> int:
    """The IEEE float32 bits of v (NaN: the quiet NaN 0x7FC00000)."""
    return struct.unpack("<I", struct.pack("<f", v))[0]


def log_scale_tables() -> dict:
    """Per log scale kind of formats.SCALES: its decode, re-index and encode tables as
    float32 bits (the shaders hold them as uint constants: exact, NaN included)."""
    return {s.kind: {"scale": [float32_bits(v) for v in s.table],
                     "inv": [float32_bits(v) for v in s.inverse],
                     "bounds": [float32_bits(v) for v in s.boundaries],
                     "nan_code": s.NAN_CODE}
            for s in formats.SCALES.values() if s.is_log}


def render_context() -> dict:
    return {"quant": {name: quant_geometry(fmt) for name, fmt in formats.TURBO_FORMATS.items()},
            "log": log_scale_tables()}


BACKEND = Backend(
    name=name, ggml_backend_name="Vulkan0", cmake_args=cmake_args, normalize_arch=normalize_arch,
    requirements=requirements, hardware=hardware, detect=detect, render_context=render_context,
    e2e=e2e,
)
