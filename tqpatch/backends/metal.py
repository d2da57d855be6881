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

import functools
import shutil
import sys
from dataclasses import dataclass

from .. import formats
from ._base import *  # noqa: F403  (the defaults this backend keeps)
from ._base import CompileCheck, EndToEnd, Requirement, reject_arch
from ..toolchain import run_capture

name = "metal"
ggml_backend_name = "MTL0"
e2e = EndToEnd(tool_args=("-ngl", "99"))

HOST_EMULATED = "host-emulated, not run on Apple hardware"


def emulated() -> bool:
    """Whether verify checks this backend by host emulation (everywhere but macOS)."""
    return sys.platform != "darwin"


verify_label = HOST_EMULATED if emulated() else ""


def normalize_arch(arch: str | None) -> str | None:
    return reject_arch(name, arch, "(kernels are compiled for the device at run time)")


def cmake_args(arch, options, tree=None) -> list[str]:
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


def _compile_check(tree, work_dir) -> dict:
    from .metal_host import check

    return check.run(tree, work_dir)


def _compile_check_unavailable() -> str | None:
    from .metal_host import check

    return check.unavailable()


# the turbo Metal libraries as embedded, the host C++ and supports_op, compiled with g++ (metal_host/check.py)
compile_check = CompileCheck(run=_compile_check, unavailable=_compile_check_unavailable)


def verify_runner(record: dict | None):
    """Host emulation where there is no Metal; None on macOS (the built harness runs)."""
    if not emulated():
        return None
    from .metal_host import emulate

    return emulate.runner()


# ---------------------------------------------------------------- what the templates read

@dataclass(frozen=True)
class KVType:
    """How ggml-metal's flash-attention and conversion kernels read one cache type.

    f16 and q8_0 use upstream's names (kernels/dequantize.h); the turbo types
    use the dequantizers kernels/turbo.h renders. `deq` yields 16 values per
    call (nl calls per block, the regular kernel), `deq4` 4 values (nl4 calls,
    the vector kernel).
    """
    name: str
    block: str      # what the regular kernel reads from device memory
    deq: str
    nl: int
    block4: str     # what the vector kernel reads
    deq4: str
    nl4: int
    block_size: int
    quantized: bool  # has a kernel_flash_attn_ext_kv_<name>_f16 conversion kernel

    @property
    def lib_suffix(self) -> str:
        return self.name.upper()


def kv_types() -> dict[str, KVType]:
    out = {
        "f16": KVType("f16", "half4x4", "dequantize_f16", 1, "half4", "dequantize_f16_t4", 1, 1,
                      False),
        "q8_0": KVType("q8_0", "block_q8_0", "dequantize_q8_0", 2, "block_q8_0",
                       "dequantize_q8_0_t4", 8, 32, True),
    }
    for f in formats.TURBO_FORMATS.values():
        out[f.name] = KVType(f.name, f.struct, f"dequantize_{f.name}", f.block // 16, f.struct,
                             f"dequantize_{f.name}_t4", f.block // 4, f.block, True)
    assert tuple(out) == formats.CACHE_TYPES, "every cache type needs its Metal reader"
    return out


# The vector kernel's elements per thread that ggml-metal-tuning.cpp's
# fa_vec_baseline_ne() gives each head size at the pin: the host names the
# baseline pipeline without a _q<Q>_ne<NE> suffix, and turbo pairs always run
# the baseline configuration.
FA_VEC_BASELINE_NE = {32: 4, 64: 2, 96: 4, 128: 1, 256: 1}


@functools.cache
def fa_instances() -> tuple[tuple[int, str, str], ...]:
    """(head size, K, V) of every turbo flash-attention kernel pair the Metal sources
    instantiate: at each head size of formats.fa_cases(), every K/V pair that head
    produces (formats.served_pairs). Metal instantiates per head size, so the family
    types at heads of 32 and 96 (turbo4, paired with f16, q8_0 or itself) need their
    own instances too. Other head sizes (192, 512, ...) have no turbo kernel:
    supports_op refuses them and ggml runs that attention on the CPU."""
    heads = sorted({h for h, _, _ in formats.fa_cases()})
    return tuple((h, k, v) for h in heads for k, v in formats.served_pairs(h))


def fa_head_sizes() -> list[int]:
    """The head sizes that have turbo flash-attention kernels."""
    return sorted({h for h, _, _ in fa_instances()})


def fa_heads(k: str, v: str) -> list[int]:
    return [h for h, kk, vv in fa_instances() if (kk, vv) == (k, v)]


def fa_k_files() -> list[dict]:
    """One flash-attention file pair (regular + vector) per K type: its turbo pairs."""
    kv = kv_types()
    out = []
    for k in formats.CACHE_TYPES:
        vs = dict.fromkeys(vv for _, kk, vv in fa_instances() if kk == k)
        pairs = [{"k": kv[k], "v": kv[v], "heads": fa_heads(k, v), "name": k if k == v else f"{k}_{v}"}
                 for v in vs]
        if pairs:
            out.append({"slug": k, "k": kv[k], "pairs": pairs})
    return out


def libraries() -> list[tuple[str, str]]:
    """(enum suffix, kernels/<name>.metal) of every turbo Metal library."""
    libs = [("TURBO", "turbo")]
    for f in fa_k_files():
        libs.append((f"FA_TURBO_{f['k'].lib_suffix}", f"fa_turbo_{f['slug']}"))
        libs.append((f"FA_VEC_TURBO_{f['k'].lib_suffix}", f"fa_vec_turbo_{f['slug']}"))
    return libs


def render_context() -> dict:
    return {
        "kv": kv_types(),
        "fa_files": fa_k_files(),
        "vec_ne": FA_VEC_BASELINE_NE,
        "fa_instances": fa_instances(),
        "fa_heads": fa_head_sizes(),
        "libraries": libraries(),
    }


def render_expansions() -> dict:
    return {"metal_fa_k": fa_k_files}
