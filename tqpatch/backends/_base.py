"""What every backend module declares, and the defaults of the optional parts.

A backend is a module (cpu.py, cuda.py, ...) that owns everything about its
llama.cpp backend. It starts with `from ._base import *` and overrides what
differs; `backends.Backend` (the Protocol) lists every name. The types below
are the vocabulary those declarations use; nothing here knows any backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from .. import precision as _precision
from ..toolchain import Requirement

__all__ = [
    "BuildOption", "BuildEnvironment", "EndToEnd", "CompileCheck", "Requirement",
    "build_options", "build_environment", "default_arch", "render_context", "render_expansions", "precision",
    "verify_label", "verify_variants", "verify_runner", "compile_check", "e2e", "detect", "requirements", "notes",
    "unsupported_reason", "hardware",
]


@dataclass(frozen=True)
class BuildOption:
    """A `tqpatch build` option that only some backends take (e.g. --fa-quants).

    parse(text) validates and normalizes the value (TqpatchError when bad);
    the parsed value reaches the backend's cmake_args() under `name`.
    """
    name: str                       # option name without dashes: "fa-quants"
    help: str
    default: str
    metavar: str
    parse: Callable[[str], object]


@dataclass(frozen=True)
class BuildEnvironment:
    """Where cmake and ninja run when not on this machine itself (e.g. a chroot with ROCm).

    prepare(echo) makes it ready (e.g. creates the root) and returns what it
    offers in words, or raises TqpatchError saying what is missing;
    wrap(argv, binds, env) is the command line that runs argv there with the
    directories `binds` at their own paths and `env` set.
    """
    name: str
    prepare: Callable[[Callable[[str], None]], str]
    wrap: Callable[..., list[str]]


@dataclass(frozen=True)
class EndToEnd:
    """How the end-to-end tests run this backend's binaries.

    tool_args:  what puts llama-cli / llama-server / llama-perplexity on this
                backend (e.g. -ngl 99), `--device none` for the CPU
    env:        environment the binaries need (e.g. GGML_VK_VISIBLE_DEVICES)
    ops_filter: test-backend-ops `-p` filter per op, for slow devices (None: all turbo cases)
    ppl_rel:    allowed |PPL_backend / PPL_cpu - 1| floor (then a quarter of the
                configuration's own PPL increase over f16, if that is larger)
    verify_args: extra `tqpatch verify` options of the end-to-end test (e.g.
                a smaller case set on a slow device; the full run is documented)
    bench_args: llama-bench's spelling of what tool_args works around (it has
                its own argument parser), e.g. `--repack 0`
    skip_model: why the end-to-end test does not run the real-model checks
                here (PPL against the CPU, llama-server coherence; None: it does)
    unsupported_ok: regex of the test-backend-ops turbo cases the backend reports
                "not supported" by design (llama.cpp runs them on the CPU); any
                other unsupported case fails the end-to-end test
    """
    tool_args: tuple[str, ...] = ()
    bench_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    ops_filter: Mapping[str, str] | None = None
    ppl_rel: float = 0.015
    runnable: Callable[[], str | None] = lambda: None  # why it cannot run here; None if it can
    verify_args: tuple[str, ...] = ()
    skip_model: Callable[[], str | None] = lambda: None  # why the real-model checks are not run here
    unsupported_ok: str | None = None


@dataclass(frozen=True)
class CompileCheck:
    """The CI compile check of the translation units the turbo work touches.

    run(tree, work_dir) compiles them and returns a report dict
    (units, seconds, warnings, ...); unavailable() says why it cannot run here.
    """
    run: Callable[[Path, Path], dict]
    unavailable: Callable[[], str | None]


# ----------------------------------------------------------------- helpers


def reject_arch(backend: str, arch: str | None, why: str) -> None:
    """For backends that build for no particular device arch: accept no --arch or
    'native'; anything else is a clear error saying why."""
    from ..errors import TqpatchError

    if arch is None or arch.strip().lower() in ("", "native"):
        return None
    raise TqpatchError(
        f"--arch {arch!r} does not apply to the {backend} backend {why}; "
        "accepted: no --arch, or 'native'"
    )


# ----------------------------------------------------------------- defaults

build_options: tuple[BuildOption, ...] = ()


def build_environment(options: Mapping[str, object]) -> BuildEnvironment | None:
    """Where this build's cmake and ninja run, given its parsed build options (None: here)."""
    return None


def default_arch() -> str | None:
    """The arch to build for when --arch is not given (None: the backend's own default)."""
    return None


def render_context() -> dict:
    """Template variables this backend adds (templates see them as `<backend>.<name>`)."""
    return {}


def render_expansions() -> dict[str, Callable[[], list[dict]]]:
    """`[name]` file-name expansions this backend's templates use (see render.py)."""
    return {}


def precision() -> _precision.Precision:
    """The verify precision model: GPU-like unless the backend says otherwise."""
    return _precision.gpu()


verify_label = ""  # a label every verify report of this backend carries ("host-emulated, ...")

# Kernel layouts a backend picks at run time by size, each forced by an environment
# variable: verify runs its decode attention checks once more per entry (name -> env),
# so every layout is checked whatever the checks' sizes make the automatic choice.
verify_variants: dict[str, dict[str, str]] = {}


def verify_runner(record: dict | None) -> Callable | None:
    """A replacement for the built tqpatch-verify harness (None: run the harness).
    record is the build's tqpatch-build.json, None when the backend was not built."""
    return None


compile_check: CompileCheck | None = None
e2e = EndToEnd()


def detect() -> tuple[bool, str]:
    """(build this backend by default here?, why: the device and toolchain found, or
    what is missing when a device is here but its toolchain is not; "" otherwise)."""
    return False, ""


def requirements() -> list[Requirement]:
    """Tools beyond the common toolchain (cmake, ninja, compilers)."""
    return []


def notes() -> list[str]:
    """Warnings worth showing before a build (e.g. toolkit newer than the driver)."""
    return []


def unsupported_reason() -> str | None:
    """Why this backend cannot be built here at all; None if it can."""
    return None


def hardware() -> str | None:
    """What device of this kind is present here, in words; None if none."""
    return None
