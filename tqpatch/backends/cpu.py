"""CPU backend: ggml's default; GGML_NATIVE (on by default) tunes for this machine's CPU."""

from __future__ import annotations

import os
import platform

from .. import precision as _precision
from .base import Backend, EndToEnd, reject_arch

name = "cpu"


def has_amx() -> bool:
    """Whether this CPU has AMX: the pinned llama.cpp's AMX matmul (an extra buffer
    type that repacks Q4_K weights) segfaults in ggml_backend_amx_mul_mat there
    (upstream ggml-org/llama.cpp#20824); --no-repack keeps weights off it."""
    try:
        with open("/proc/cpuinfo", errors="replace") as f:
            return "amx_int8" in f.read()
    except OSError:
        return False


AMX_WORKAROUND = ("--no-repack",) if has_amx() else ()
AMX_BENCH_WORKAROUND = ("--repack", "0") if has_amx() else ()  # llama-bench's spelling
# llama.cpp tools on the CPU alone, even in a GPU build (which also holds the CPU backend)
e2e = EndToEnd(tool_args=("--device", "none", *AMX_WORKAROUND), bench_args=AMX_BENCH_WORKAROUND)


def normalize_arch(arch: str | None) -> str | None:
    return reject_arch(name, arch, "(it builds for this machine's CPU with GGML_NATIVE; "
                       "--cmake-arg -DGGML_NATIVE=OFF gives a portable build)")


def cmake_args(arch, options) -> list[str]:
    normalize_arch(arch)
    return []  # the CPU backend is always built; GGML_NATIVE keeps its default (ON)


def notes() -> list[str]:
    if has_amx():
        return ["this CPU has AMX: llama.cpp 0c1e57098 crashes in its AMX matmul with Q4_K "
                "weights (ggml-org/llama.cpp#20824); run llama.cpp tools with --no-repack "
                "(tqpatch eval and the tests do)"]
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


BACKEND = Backend(
    name=name, ggml_backend_name="CPU", cmake_args=cmake_args, normalize_arch=normalize_arch,
    notes=notes, hardware=hardware, precision=_precision.ggml_cpu, memory_is_ram=True, e2e=e2e,
)
