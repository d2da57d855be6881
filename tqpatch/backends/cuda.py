"""CUDA backend (NVIDIA GPUs): nvcc builds ggml-cuda for the chosen compute capabilities.

Also home of the FlashAttention vector-kernel selection (GGML_CUDA_FA_QUANTS)
that the HIP backend shares: checked against the pinned tree's
ggml/cmake/common.cmake (ggml_cuda_fattn_vec_instances), which accepts "all"
or a comma/semicolon list of <type_K>-<type_V> pairs and always adds f16-f16.
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path

from .. import formats
from .. import precision as _precision
from ..errors import TqpatchError
from ..toolchain import run_capture, version_tuple
from .base import Backend, BuildOption, CompileCheck, EndToEnd, Requirement
from .compile_check import compile_objects
from .cpu import AMX_BENCH_WORKAROUND, AMX_WORKAROUND

name = "cuda"

_SPECIAL = ("native", "all", "all-major")
# 90, 90a, 100f, sm_90, compute_90, 90-real, 90-virtual
_ONE = re.compile(r"^(?:sm_|compute_)?([1-9]\d{1,2}[af]?)(-real|-virtual)?$")
ACCEPTED = ("a compute capability number or list: 90, 89;86, 86,89, sm_90, 90a, 90-real; "
            "or one of native, all, all-major")


def _arch_number(arch: str) -> int:
    """The compute capability of a normalised --arch entry ('90a', '90-real' -> 90)."""
    m = re.match(r"\d+", arch)
    if m is None:  # normalize_arch lets none through
        raise TqpatchError(f"--arch entry {arch!r} names no compute capability")
    return int(m.group())


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
    out.sort(key=lambda a: (_arch_number(a), a))
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


# ---------------------------------------------------------------- FlashAttention K/V pairs

# Type names ggml_cuda_fattn_vec_instances knows once the turbo FA patch is in:
# upstream's seven (ggml/cmake/common.cmake FA_TYPES, in its order) plus ours.
UPSTREAM_FA_TYPES: tuple[str, ...] = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "bf16", "f16")
FA_TYPES: tuple[str, ...] = (*UPSTREAM_FA_TYPES, *formats.TURBO_TYPES)
UPSTREAM_DEFAULT_FA: tuple[str, ...] = ("q4_0-q4_0", "q8_0-q8_0", "f16-f16", "bf16-bf16")


def fa_head_sizes(k: str, v: str) -> list[int]:
    """The head sizes the vector kernel is instantiated for, K type k and V type v: those
    of formats.HEAD_SIZES (upstream's vec kernel sizes) at which a cache really pairs
    them (a turbo type only where its family picks it, formats.serving_heads)."""
    def serves(t: str, d: int) -> bool:
        if t in formats.TURBO_FORMATS:
            return d in formats.serving_heads(t)
        return d % formats.type_info(t).block_size == 0
    return [d for d in formats.HEAD_SIZES if serves(k, d) and serves(v, d)]


# Every K cache type with every V cache type that a head size of the vector kernel
# pairs (the block variants of heads 32 and 96 have no vector kernel), plus
# upstream's defaults.
DEFAULT_FA_PAIRS: tuple[str, ...] = tuple(dict.fromkeys(
    [f"{k}-{v}" for k, v in formats.cache_pairs(turbo_only=False) if fa_head_sizes(k, v)]
    + list(UPSTREAM_DEFAULT_FA)))
FA_QUANTS_FORMS = (f"'default' (every K/V pair of {', '.join(formats.USER_CACHE_TYPES)}, plus "
                   "q4_0-q4_0 and bf16-bf16), 'all' (every pair of every type: slow to build), "
                   "or a comma list of K-V pairs such as q8_0-turbo3,turbo3-turbo3 "
                   "(may include 'default')")


def fa_pairs(selection: str | None = None) -> list[str] | None:
    """The K-V pairs a --fa-quants value selects (None for 'all'); TqpatchError if invalid.

    None / 'default' -> DEFAULT_FA_PAIRS; 'all' -> None (every pair);
    otherwise 'k-v' items separated by commas, semicolons or spaces, where the item
    'default' stands for DEFAULT_FA_PAIRS. Order is kept, duplicates dropped.
    """
    if selection is None:
        return list(DEFAULT_FA_PAIRS)
    text = str(selection).strip().lower()
    if text == "all":
        return None
    items = [i for i in re.split(r"[;,\s]+", text) if i]
    if not items:
        raise TqpatchError(f"no FlashAttention K/V pairs in {selection!r}; give {FA_QUANTS_FORMS}")
    out: list[str] = []
    for item in items:
        if item == "default":
            out.extend(DEFAULT_FA_PAIRS)
            continue
        if item == "all":
            raise TqpatchError(f"'all' cannot be combined with a list of pairs ({selection!r})")
        m = re.fullmatch(r"([a-z0-9_]+)-([a-z0-9_]+)", item)
        if not m:
            raise TqpatchError(f"{item!r} is not a <K type>-<V type> FlashAttention pair; "
                               f"give {FA_QUANTS_FORMS}")
        for t in m.groups():
            if t not in FA_TYPES:
                raise TqpatchError(f"unknown cache type {t!r} in FlashAttention pair {item!r}; "
                                   f"types: {', '.join(FA_TYPES)}")
        out.append(item)
    return list(dict.fromkeys(out))


def fa_quants_value(selection: str | None = None) -> str:
    """The GGML_CUDA_FA_QUANTS value for a --fa-quants selection: 'all' or 'k-v,k-v,...'.

    Commas, not semicolons: upstream accepts both, and a comma survives being
    pasted into a shell from the build log.
    """
    pairs = fa_pairs(selection)
    return "all" if pairs is None else ",".join(pairs)


def fa_instance_pairs() -> list[dict]:
    """Every flash-attention vector-kernel K/V pair that involves a turbo type (each
    gets an instance file: upstream's cmake expects one for every pair of FA_TYPES).

    Each item: slug 'turbo3-q8_0', the cmake/macro names (K, V upper case), the
    ggml enums and the head sizes (fa_head_sizes). The block variants of heads 32
    and 96 have none: heads of 96 take the tensor-core kernel on K/V converted to
    f16, heads of 32 have no CUDA flash-attention kernel (the op runs on the CPU).
    """
    pairs = []
    for k in FA_TYPES:
        for v in FA_TYPES:
            if k not in formats.TURBO_FORMATS and v not in formats.TURBO_FORMATS:
                continue
            pairs.append({
                "slug": f"{k}-{v}", "K": k.upper(), "V": v.upper(),
                "k_enum": "GGML_TYPE_" + k.upper(), "v_enum": "GGML_TYPE_" + v.upper(),
                "head_sizes": fa_head_sizes(k, v),
            })
    return pairs


def quant_lanes(fmt: formats.TurboFormat) -> int:
    """Lanes per block of the CUDA quantizer: the fewest (a power of two, at least 8 so
    a byte of a 1-bit plane has its own lanes, at most a warp of 32) that leave at most
    4 values per lane: 8 for blocks of 32, 16 for 64, 32 for 96."""
    lanes = 8
    while fmt.block % lanes or fmt.block // lanes > 4:
        lanes *= 2
        if lanes > 32:
            raise TqpatchError(f"{fmt.name}: no CUDA quantizer lane group for blocks of {fmt.block}")
    return lanes


def render_context() -> dict:
    pairs = fa_instance_pairs()
    return {"fa_pairs": pairs,
            # (pair, head size) of every compiled vector-kernel instance, for the dispatch macros
            "fa_vec_cases": [(p, d) for p in pairs for d in p["head_sizes"]],
            "quant_lanes": {n: quant_lanes(f) for n, f in formats.TURBO_FORMATS.items()},
            "fa_layout_env": FA_LAYOUT_ENV}


def render_expansions() -> dict:
    # one instance file per turbo K/V pair, so GGML_CUDA_FA_QUANTS can pick them
    return {"fa_pair": fa_instance_pairs}


def _parse_fa_quants(text: str) -> str:
    fa_pairs(text)  # TqpatchError when invalid
    return text.strip().lower()


FA_QUANTS = BuildOption(
    "fa-quants", default="default", metavar="default|all|K-V,...", parse=_parse_fa_quants,
    help="FlashAttention vector-kernel K/V pairs to compile (GGML_CUDA_FA_QUANTS). default: "
         "every pair of " + ", ".join(formats.CACHE_TYPES) + ", plus q4_0-q4_0 and bf16-bf16; "
         "all: every pair of every type (slow to build); or a list such as "
         "q8_0-turbo3,turbo3-turbo3.")
build_options = (FA_QUANTS,)


# ---------------------------------------------------------------- nvcc and the driver


@functools.lru_cache(maxsize=8)
def _list_gpu_arch(path: str) -> tuple[int, ...] | None:
    out = run_capture([path, "--list-gpu-arch"])
    nums = sorted({int(n) for n in re.findall(r"compute_(\d+)", out or "")})
    return tuple(nums) or None


def nvcc_gpu_archs(path: str | None = None) -> tuple[int, ...] | None:
    """Compute capabilities the nvcc a build would use can compile for (nvcc --list-gpu-arch).

    None when there is no nvcc or it cannot say (nvcc < 11.0 has no --list-gpu-arch).
    """
    path = path or NVCC.find()
    return _list_gpu_arch(path) if path else None


def check_arch(arch: str | None) -> None:
    """A clear TqpatchError for an arch this machine's nvcc (or GPU set) cannot build for."""
    if arch is None or arch in ("all", "all-major"):
        return
    if arch == "native":
        if not detected_archs():
            raise TqpatchError("--arch native builds for the GPUs found here, and nvidia-smi "
                               "found none: name the compute capability instead, e.g. --arch 90 "
                               "(H100), 89 (RTX 40xx/L4), 86 (RTX 30xx/A10), 80 (A100)")
        return
    path = NVCC.find()
    supported = nvcc_gpu_archs(path) if path else None
    if path is None or not supported:
        return  # no nvcc (the requirement check says so) or it cannot list: cmake will tell
    bad = [a for a in arch.split(";") if _arch_number(a) not in supported]
    if bad:
        version = NVCC.version(path) or "?"
        lo, hi = supported[0], supported[-1]
        nums = [_arch_number(a) for a in bad]
        if any(n < lo for n in nums):
            hint = (f"a GPU older than compute capability {lo} needs an older CUDA toolkit "
                    "(CUDA 12.x builds 50 and up, 11.x 35 and up)")
        elif any(n > hi for n in nums):
            hint = f"compute capability above {hi} needs a newer CUDA toolkit"
        else:
            hint = ("this nvcc knows no GPU of that compute capability (a GPU's own: "
                    "nvidia-smi --query-gpu=compute_cap)")
        raise TqpatchError(
            f"nvcc {version} ({path}) cannot compile for --arch {';'.join(bad)}: it supports "
            f"{' '.join(str(n) for n in supported)} (nvcc --list-gpu-arch); {hint}. "
            "Put another toolkit's nvcc first on PATH or set CUDACXX")


def cmake_args(arch: str | None, options=None) -> list[str]:
    """-DGGML_CUDA=ON, the architectures and the FlashAttention K/V pairs.

    options["fa-quants"]: a --fa-quants value (default, all, or a pair list; see
    fa_pairs). Raises TqpatchError for a bad --arch / --fa-quants, or an arch the
    nvcc found here cannot compile for.
    """
    fa_quants = (options or {}).get("fa-quants")
    arch = normalize_arch(arch) if arch is not None else default_arch()
    check_arch(arch)
    args = ["-DGGML_CUDA=ON"]
    if arch is not None:
        args.append(f"-DCMAKE_CUDA_ARCHITECTURES={arch}")
    else:
        # No GPU to detect and no --arch: GGML_NATIVE would ask CMake for 'native',
        # which fails without a GPU; OFF makes ggml build its portable architecture list.
        args.append("-DGGML_NATIVE=OFF")
    args.append(f"-DGGML_CUDA_FA_QUANTS={fa_quants_value(fa_quants)}")
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
    """Why binaries from this nvcc may not run on this driver; None when they will."""
    if not nvcc or not driver:
        return None
    n, d = version_tuple(nvcc)[:2], version_tuple(driver)[:2]
    fix = (f"Update the NVIDIA driver, or install a CUDA toolkit <= {driver} (put its nvcc "
           "first on PATH or set CUDACXX)")
    if n[0] > d[0]:
        return (f"nvcc is CUDA {nvcc} but the driver supports at most CUDA {driver}: binaries "
                "built here will fail with 'CUDA driver version is insufficient for CUDA runtime "
                f"version'. {fix}")
    if n > d:
        return (f"nvcc is CUDA {nvcc} but the driver supports at most CUDA {driver}: binaries "
                "built here run only through CUDA minor-version compatibility, i.e. when the "
                "build holds machine code for the GPU (e.g. --arch 90, not 90-virtual); PTX "
                "would fail to load with 'the provided PTX was compiled with an unsupported "
                f"toolchain'. {fix}")
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


def detect() -> tuple[bool, str]:
    gpus = hardware()
    if not gpus:
        return False, ""
    path = NVCC.find()
    if not path:
        return False, f"{gpus} found but no nvcc (install the CUDA toolkit to build for it)"
    return True, f"{gpus} with nvcc {NVCC.version(path) or '?'}"


def unsupported_reason() -> str | None:
    if sys.platform == "darwin":
        return "CUDA is not available on macOS"
    return None


# ---------------------------------------------------------------- tests and checks

def _no_gpu() -> str | None:
    return None if detected_archs() else "no NVIDIA GPU here (nvidia-smi found none)"


# Head sizes whose turbo flash attention ggml-cuda leaves to the CPU backend (it reports
# the op unsupported): upstream has no CUDA flash-attention kernel for heads of 32. Heads
# of 64, 128 and 256 have the vector kernel, 96 and 512 the tensor-core one on K/V
# converted to f16 (verify's head-96 cases pass on the H100).
FA_HEADS_ON_CPU = frozenset({32})


def precision() -> _precision.Precision:
    return _precision.gpu(fa_heads_on_cpu=FA_HEADS_ON_CPU)


# Turbo decode attention has three kernels (fattn-turbo.cuh, ggml_cuda_turbo_fa_kernel): one
# block per query head; one per KV head decoding for its GQA group, in the vector kernel or on
# tensor cores (Turing and newer), where that grid fills the GPU (long caches). verify's decode
# checks are short, so the automatic choice takes the first; these run them once more in each
# of the others.
FA_LAYOUT_ENV = "GGML_CUDA_TURBO_FA_KERNEL"  # =head|gqa|mma|mma4 forces a decode kernel (rendered into the kernel)
GQA_VARIANT = {"GQA kernel": {FA_LAYOUT_ENV: "gqa"}}
verify_variants = {**GQA_VARIANT, "tensor-core kernel": {FA_LAYOUT_ENV: "mma"}}


# the CPU backend runs what the GPU does not take: its AMX workaround too (cpu.py)
e2e = EndToEnd(marker="gpu", tool_args=("-ngl", "99", *AMX_WORKAROUND), bench_args=AMX_BENCH_WORKAROUND,
               runnable=_no_gpu,
               unsupported_ok=rf"FLASH_ATTN_EXT\(hsk=({'|'.join(map(str, sorted(FA_HEADS_ON_CPU)))}),")

# A stand-in cuBLAS for toolkits that lack it (the compile check links nothing).
_CUBLAS_STUB = Path(__file__).resolve().parent / "cuda-stub" / "stub-cublas.cmake"


def _compile(tree: Path, touched: frozenset[str], work_dir: Path | None) -> dict:
    nvcc = NVCC.find()
    extra = [f"-DCMAKE_CUDA_COMPILER={nvcc}"]
    if _CUBLAS_STUB.is_file():
        extra.append(f"-DCMAKE_PROJECT_INCLUDE={_CUBLAS_STUB}")
    return compile_objects(tree, touched, BACKEND, "90", "ggml-cuda", "ggml/src/ggml-cuda/", extra, work_dir)


def _nvcc_missing() -> str | None:
    return None if NVCC.find() else ("no nvcc found (PATH, $CUDACXX, /usr/local/cuda/bin): "
                                     "CUDA compile check not run")


compile_check = CompileCheck(run=_compile, unavailable=_nvcc_missing)


BACKEND = Backend(
    name=name, ggml_backend_name="CUDA0", cmake_args=cmake_args, build_options=build_options,
    normalize_arch=normalize_arch, default_arch=default_arch, requirements=requirements,
    notes=notes, unsupported_reason=unsupported_reason, detect=detect, hardware=hardware,
    compile_check=compile_check, render_context=render_context,
    render_expansions=render_expansions, precision=precision, verify_variants=verify_variants,
    e2e=e2e,
)
