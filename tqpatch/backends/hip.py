"""HIP backend (AMD GPUs via ROCm): the CUDA sources compiled by ROCm's clang; needs ROCm >= 6.1.

Variable names checked in the pinned tree (ggml/src/ggml-hip/CMakeLists.txt,
docs/build.md): GGML_HIP turns it on; GPU_TARGETS (or the older
AMDGPU_TARGETS) becomes CMAKE_HIP_ARCHITECTURES; the HIP compiler is ROCm's
clang (docs/build.md: HIPCXX="$(hipconfig -l)/clang"); hip_VERSION < 6.1 is a
configure error; the FlashAttention vector instances are the CUDA ones, chosen
by the same GGML_CUDA_FA_QUANTS. Device names are "ROCm<N>"
(ggml/include/ggml-cuda.h under GGML_USE_HIP).

Where ROCm >= 6.1 is not installed, `--toolchain debian-sid` builds in a Debian
sid root with ROCm 6.4 that tqpatch makes itself (tqpatch/backends/debian_sid.py);
the compile check uses that root whenever this machine has no ROCm >= 6.1.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from ..errors import TqpatchError
from ..toolchain import run_capture, version_tuple
from . import cpu, cuda, debian_sid, kernel_resources
from .base import Backend, BuildEnvironment, BuildOption, CompileCheck, EndToEnd, Requirement
from .compile_check import compile_objects

name = "hip"

MIN_ROCM = "6.1"
ROCM_URL = "https://rocm.docs.amd.com/projects/install-on-linux/"

# gfx1100, gfx90a, gfx942, gfx1030, gfx90a:xnack-; generic targets gfx11-generic, gfx10-3-generic
_ONE = re.compile(r"^(?:gfx[0-9a-f]{3,4}(?::(?:xnack|sramecc)[+-])*|gfx\d{1,2}(?:-\d)?-generic)$")
ACCEPTED = ("gfx targets such as gfx1100, gfx90a, gfx942 or lists gfx1100;gfx1030 / "
            "gfx1100,gfx1030, or native (the GPUs rocminfo finds)")


def normalize_arch(arch: str | None) -> str | None:
    if arch is None:
        return None
    text = arch.strip().lower()
    if text == "native":
        return text
    items = [i for i in re.split(r"[;,\s]+", text) if i]
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


def hip_compiler() -> str | None:
    """ROCm's clang, as docs/build.md sets HIPCXX: $(hipconfig -l)/clang; None if not found."""
    path = HIPCONFIG.find()
    if not path:
        return None
    out = run_capture([path, "-l"])
    if not out:
        return None
    clang = Path(out.strip().splitlines()[-1].strip()) / "clang"
    return str(clang) if clang.exists() else None


# ---------------------------------------------------------------- toolchains

HOST = "host"
TOOLCHAINS = (HOST, debian_sid.NAME)


def parse_toolchain(text: str) -> str:
    value = text.strip().lower()
    if value not in TOOLCHAINS:
        raise TqpatchError(f"unknown HIP toolchain {text!r}; choose {' or '.join(TOOLCHAINS)}")
    return value


TOOLCHAIN = BuildOption(
    "toolchain",
    help=(f"where ROCm comes from: '{HOST}' (ROCm >= {MIN_ROCM} installed here) or "
          f"'{debian_sid.NAME}' (a Debian sid root with ROCm 6.4 that tqpatch makes under its "
          "cache with mmdebstrap, 5 GB, and builds in; needs root; its binaries link "
          "that root's ROCm libraries)."),
    default=HOST, metavar="|".join(TOOLCHAINS), parse=parse_toolchain,
)


def _sid_prepare(echo) -> str:
    info = debian_sid.make_root(echo)
    return f"Debian sid root {debian_sid.root_dir()} (ROCm {info['rocm_version']})"


def _sid_wrap(argv, binds, env=None) -> list[str]:
    return debian_sid.inside(argv, binds, env=env)


SID = BuildEnvironment(name=debian_sid.NAME, prepare=_sid_prepare, wrap=_sid_wrap)


def build_environment(options) -> BuildEnvironment | None:
    """The Debian sid root for --toolchain debian-sid; None: ROCm installed here."""
    return SID if (options or {}).get("toolchain") == debian_sid.NAME else None


# The same FlashAttention instance files and selection as CUDA (HIP compiles its sources).
build_options = (*cuda.build_options, TOOLCHAIN)
# the CPU backend runs what the GPU does not take: its AMX workaround too (cpu.py)
e2e = EndToEnd(marker="gpu", tool_args=("-ngl", "99", *cpu.AMX_WORKAROUND), bench_args=cpu.AMX_BENCH_WORKAROUND)


def cmake_args(arch: str | None, options=None) -> list[str]:
    """-DGGML_HIP=ON, the HIP compiler, GPU_TARGETS and the FlashAttention K/V pairs."""
    fa_quants = (options or {}).get("fa-quants")
    in_root = build_environment(options) is not None
    arch = normalize_arch(arch) if arch is not None else default_arch()
    if arch == "native":
        arch = default_arch()
        if arch is None:
            raise TqpatchError("--arch native builds for the AMD GPUs found here, and rocminfo "
                               "found none: name the target instead, e.g. --arch gfx1100 "
                               "(RX 7900), gfx942 (MI300), gfx90a (MI200)")
    if arch is None and in_root:
        raise TqpatchError(f"--toolchain {debian_sid.NAME} needs the GPU targets (no AMD GPU "
                           "found here): name them, e.g. --arch gfx1100 (RX 7900), gfx942 "
                           "(MI300), gfx90a (MI200), or a list gfx1100,gfx942")
    args = ["-DGGML_HIP=ON"]
    clang = debian_sid.hip_compiler() if in_root else hip_compiler()
    if clang:
        args.append(f"-DCMAKE_HIP_COMPILER={clang}")
    if arch is not None:
        args.append(f"-DGPU_TARGETS={arch}")
    args.append(f"-DGGML_CUDA_FA_QUANTS={cuda.fa_quants_value(fa_quants)}")
    return args


# ---------------------------------------------------------------- ROCm version


def _rocm_roots(hipconfig: str | None) -> list[Path]:
    roots = []
    if hipconfig:
        roots.append(Path(hipconfig).resolve().parent.parent)
    if os.environ.get("ROCM_PATH"):
        roots.append(Path(os.environ["ROCM_PATH"]))
    roots.append(Path("/opt/rocm"))
    return list(dict.fromkeys(roots))


def _version_in(text: str | None) -> str | None:
    m = re.search(r"(\d+\.\d+(?:\.\d+)?)", text or "")
    return m.group(1) if m else None


def rocm_version(hipconfig: str | None) -> str | None:
    """ROCm's version: `hipconfig --version` (e.g. 6.1.40091-a8dbc0c19), else <root>/.info/version."""
    if hipconfig:
        v = _version_in(run_capture([hipconfig, "--version"]))
        if v:
            return v
    for root in _rocm_roots(hipconfig):
        try:
            v = _version_in((root / ".info" / "version").read_text(errors="replace"))
        except OSError:
            continue
        if v:
            return v
    return None


# Debian's and Ubuntu's own hipcc / libhipblas-dev are older than 6.1 except in Debian sid,
# so the hint is AMD's packages or tqpatch's sid root, never a plain apt-get install.
ROCM_GET = (f"install ROCm >= {MIN_ROCM} from {ROCM_URL} (distribution packages are older, "
            "except Debian sid's), or build with --toolchain debian-sid")

HIPCONFIG = Requirement(
    "hipconfig", f"ROCm/HIP >= {MIN_ROCM} (hipconfig --version or /opt/rocm/.info/version)",
    programs=("hipconfig",), files=("$ROCM_PATH/bin/hipconfig", "/opt/rocm/bin/hipconfig"),
    version_fn=rocm_version, min_version=MIN_ROCM, vendor=ROCM_GET,
)


def requirements() -> list[Requirement]:
    return [
        HIPCONFIG,
        Requirement(
            "hipBLAS", "hipblas/rocblas CMake packages",
            files=("$ROCM_PATH/lib/cmake/hipblas/hipblas-config.cmake",
                   "/opt/rocm/lib/cmake/hipblas/hipblas-config.cmake",
                   "/usr/lib/*/cmake/hipblas/hipblas-config.cmake"),
            version_args=(), vendor=ROCM_GET,
        ),
        Requirement(
            "cmake (HIP)", "CMake >= 3.21 for enable_language(HIP)", programs=("cmake",),
            version_re=r"cmake version (\d+\.\d+(?:\.\d+)?)", min_version="3.21",
            pip="cmake", debian="cmake",
        ),
    ]


SID_HINT = (f"or build in a Debian sid root with ROCm 6.4 that tqpatch makes: --toolchain "
            f"{debian_sid.NAME} (Linux, root, apt-get install mmdebstrap, ~6 GB)")


def rocm_problem() -> str | None:
    """'ROCm not found: HIP not built ...' (or too old / unreadable); None when ROCm >= 6.1 is here."""
    path = HIPCONFIG.find()
    if path is None:
        return (f"ROCm not found: HIP not built (no hipconfig on PATH, in $ROCM_PATH/bin or "
                f"/opt/rocm/bin; install ROCm >= {MIN_ROCM}: {ROCM_URL}; {SID_HINT})")
    version = rocm_version(path)
    if version is None:
        return (f"ROCm found ({path}) but its version is unreadable (hipconfig --version, "
                f"/opt/rocm/.info/version): HIP not built; it needs ROCm >= {MIN_ROCM}")
    if version_tuple(version) < version_tuple(MIN_ROCM):
        return (f"ROCm {version} found ({path}), HIP needs ROCm >= {MIN_ROCM}: HIP not built; "
                f"upgrade ROCm: {ROCM_URL}; {SID_HINT}")
    return None


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


def detect() -> tuple[bool, str]:
    gpus = hardware()
    if not gpus:
        return False, ""
    problem = rocm_problem()
    if problem:
        return False, f"{gpus} found but {problem}"
    return True, f"{gpus} with ROCm {rocm_version(HIPCONFIG.find())}"


def unsupported_reason() -> str | None:
    """Why HIP cannot be built here at all: macOS, or no ROCm >= 6.1 ('... HIP not built')."""
    if sys.platform == "darwin":
        return "ROCm/HIP is not available on macOS: HIP not built"
    return rocm_problem()



def verify_runner(record: dict | None, tree, run_harness) -> None:
    """A build made in the Debian sid root links that root's ROCm libraries: refuse to
    run it here with a clear message (None: run the built harness as usual, or say
    that there is none when record is None)."""
    if record is not None and debian_sid.NAME in (record.get("tools") or {}):
        raise TqpatchError(
            f"this HIP build was made with --toolchain {debian_sid.NAME}: its binaries link the "
            f"ROCm 6.4 libraries of {debian_sid.root_dir()}, not this machine's, so tqpatch "
            f"verify does not run them; on the AMD GPU machine install ROCm >= {MIN_ROCM} and "
            "build with --toolchain host (ci/tqpatch-hip.yml does so in AMD's ROCm container)")
    return None


# ---------------------------------------------------------------- CI compile check

# RDNA3 (wave32) and CDNA3 (wave64, AGPRs): the two wave sizes the turbo kernels must serve.
CHECK_ARCHS = ("gfx1100", "gfx942")
RESOURCE_REMARKS = "-Rpass-analysis=kernel-resource-usage"


def _check_environment() -> BuildEnvironment | None:
    """ROCm >= 6.1 here (None), else the Debian sid root."""
    return None if rocm_problem() is None else SID


def _compile(tree: Path, touched: frozenset[str], work_dir: Path | None) -> dict:
    """Compile the turbo translation units for CHECK_ARCHS; the report carries every
    turbo kernel's registers, spills and scratch per target (kernel_resources)."""
    where = _check_environment()
    options = {"toolchain": HOST if where is None else debian_sid.NAME}
    offered = where.prepare(print) if where is not None else f"ROCm {rocm_version(HIPCONFIG.find())}"
    report = compile_objects(tree, touched, BACKEND, ";".join(CHECK_ARCHS), "ggml-hip", "ggml/src/ggml-cuda/",
                             [f"-DCMAKE_HIP_FLAGS={RESOURCE_REMARKS}"], work_dir,
                             options=options, wrap=where.wrap if where is not None else None)
    kernels = kernel_resources.parse(Path(report["log"]).read_text(errors="replace"),
                                     list(CHECK_ARCHS))
    turbo = [k.to_json() for k in kernels if kernel_resources.is_turbo(k)]
    summary = kernel_resources.summary(kernels)
    out = Path(report["log"]).with_name("kernel-resources")
    out.with_suffix(".json").write_text(json.dumps({"summary": summary, "turbo": turbo}, indent=1))
    out.with_suffix(".md").write_text(kernel_resources.table(kernels) + "\n")
    lines = [f"{offered}; targets {', '.join(CHECK_ARCHS)}; registers: {out.with_suffix('.md')}"]
    for arch, s in summary.items():
        lines.append(f"{arch}: {s['turbo_spilling']} of {s['turbo_kernels']} turbo kernels spill "
                     f"({s['spilling']} of {s['kernels']} kernels in all)")
        lines += [f"  {w}" for w in s["worst"]]
    report.update(toolchain=offered, archs=list(CHECK_ARCHS), resources=turbo,
                  resource_summary=summary, resource_table=str(out.with_suffix(".md")),
                  summary=lines)
    return report


def _check_unavailable() -> str | None:
    if rocm_problem() is None:
        return None
    why = debian_sid.problem()
    return None if why is None else f"no ROCm >= {MIN_ROCM} here and {why}: HIP compile check not run"


compile_check = CompileCheck(run=_compile, unavailable=_check_unavailable)


BACKEND = Backend(
    name=name, ggml_backend_name="ROCm0", cmake_args=cmake_args, build_options=build_options,
    normalize_arch=normalize_arch, default_arch=default_arch,
    build_environment=build_environment, requirements=requirements,
    unsupported_reason=unsupported_reason, detect=detect, hardware=hardware,
    compile_check=compile_check,
    precision=cuda.precision,  # the same kernels: the same flash-attention head sizes
    verify_variants=cuda.GQA_VARIANT,  # the vector GQA kernel (the tensor-core one is NVIDIA's)
    make_verify_runner=verify_runner, e2e=e2e,
)
