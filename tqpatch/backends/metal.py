"""Metal backend (Apple GPUs): macOS only; the Metal library is embedded (GGML_METAL_EMBED_LIBRARY).

The turbo kernels live in their own Metal libraries (kernels/turbo.metal for
SET_ROWS / GET_ROWS / CPY / the f16 conversion, one flash-attention file per K
type for the regular and the vector kernel), rendered from
templates/ggml/src/ggml-metal/. The flash-attention files instantiate
upstream's kernel templates (fa_common.metal, fa_vec_common.metal) with the
turbo dequantizers, for the (head size, K, V) triples of fa_instances(): every
K/V pair each head size of formats.fa_cases() produces. supports_op refuses
turbo attention at any other head size (ggml runs it on the CPU).

No Mac is reachable from where tqpatch is developed, so `tqpatch verify
--backend metal` on a machine without Metal compiles the rendered Metal
sources as C++ under a shim (metal_host/) and runs them through the same
verification contract, labelled host-emulated. On macOS with a build, verify
runs the real harness on the GPU.
"""

from __future__ import annotations

import shutil
import sys

from .. import formats
from ..toolchain import run_capture
from .base import Backend, CompileCheck, EndToEnd, Requirement, reject_arch
from .metal_host import check, emulate
from .metal_kernels import fa_head_sizes, render_context, render_expansions

name = "metal"
e2e = EndToEnd(marker="gpu", tool_args=("-ngl", "99"))

HOST_EMULATED = "host-emulated, not run on Apple hardware"


def emulated() -> bool:
    """Whether verify checks this backend by host emulation (everywhere but macOS)."""
    return sys.platform != "darwin"


verify_label = HOST_EMULATED if emulated() else ""


def normalize_arch(arch: str | None) -> str | None:
    return reject_arch(name, arch, "(kernels are compiled for the device at run time)")


def cmake_args(arch, options) -> list[str]:
    normalize_arch(arch)
    # the kernel sources travel inside the binaries: nothing to install next to them
    return ["-DGGML_METAL=ON", "-DGGML_METAL_EMBED_LIBRARY=ON"]


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
        return ("Metal builds need macOS (this is " + sys.platform + "); `tqpatch verify "
                "--backend metal` checks the Metal kernels here by host emulation instead")
    return None


def notes() -> list[str]:
    missing = [h for h in formats.SERVED_HEAD_SIZES if h not in fa_head_sizes()]
    out = []
    if missing:
        out.append("no turbo flash-attention kernels for heads of " + ", ".join(map(str, missing))
                   + ": Metal refuses those (supports_op) and ggml runs that attention on the CPU")
    if not emulated():
        return out
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx:
        return [f"no Metal here: `tqpatch verify --backend metal` runs the rendered Metal kernels "
                f"host-emulated (C++ compiler {cxx}); the real-device check is ci/tqpatch-metal.yml "
                "on a macOS arm64 runner", *out]
    return ["no Metal here, and no g++ for the host emulation of the Metal kernels "
            "(`apt install g++`)", *out]


def detect() -> tuple[bool, str]:
    if sys.platform != "darwin":
        return False, ""
    return True, f"macOS with {hardware() or 'an Apple GPU'}"


def _compile_check(tree, touched, work_dir) -> dict:
    return check.run(tree, work_dir)


# the turbo Metal libraries as embedded, the host C++ and supports_op, compiled with g++ (metal_host/check.py)
compile_check = CompileCheck(run=_compile_check, unavailable=check.unavailable)


def verify_runner(record: dict | None, tree, run_harness):
    """Host emulation where there is no Metal; None on macOS (the built harness runs)."""
    if not emulated():
        return None
    return emulate.runner(tree, run_harness, BACKEND.ggml_backend_name)


BACKEND = Backend(
    name=name, ggml_backend_name="MTL0", cmake_args=cmake_args, normalize_arch=normalize_arch,
    requirements=requirements, notes=notes, unsupported_reason=unsupported_reason,
    detect=detect, hardware=hardware, compile_check=compile_check,
    render_context=render_context, render_expansions=render_expansions,
    verify_label=verify_label, make_verify_runner=verify_runner, e2e=e2e,
)


