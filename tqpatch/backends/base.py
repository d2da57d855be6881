"""The Backend object every backend module builds, and the vocabulary of its declarations.

A backend module (cpu.py, cuda.py, ...) owns everything about one llama.cpp
backend and ends by building its `BACKEND = Backend(...)`: the fields below,
each with a default a backend overrides only where it differs. Everything
above this package (render, build, verify, the CLI, tests, benches) receives
such an object, resolved once from a --backend name by `backends.get`, and
reads nothing else about the backend. Nothing here knows any backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from .. import precision as _precision
from ..errors import TqpatchError
from ..toolchain import Requirement

__all__ = ["Backend", "BuildOption", "BuildEnvironment", "EndToEnd", "CompileCheck", "Requirement",
           "reject_arch"]


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
    """How the end-to-end tests and the benches run this backend's binaries.

    marker:     the pytest marker of its end-to-end tests ("gpu", "vulkan"; None: plain slow)
    tool_args:  what puts llama-cli / llama-server / llama-perplexity on this
                backend (e.g. -ngl 99), `--device none` for the CPU
    bench_args: llama-bench's spelling of what tool_args works around (it has
                its own argument parser), e.g. `--repack 0`
    env:        environment the binaries need (e.g. GGML_VK_VISIBLE_DEVICES)
    ops_filter: test-backend-ops `-p` filter per op, for slow devices (None: all turbo cases)
    ppl_rel:    allowed |PPL_backend / PPL_cpu - 1| floor (then a quarter of the
                configuration's own PPL increase over f16, if that is larger)
    runnable:   why the binaries cannot run here (no device); None if they can
    verify_args: extra `tqpatch verify` options of the end-to-end test (e.g.
                a smaller case set on a slow device; the full run is documented)
    skip_model: why the end-to-end test does not run the real-model checks
                here (PPL against the CPU, llama-server coherence; None: it does)
    unsupported_ok: regex of the test-backend-ops turbo cases the backend reports
                "not supported" by design (llama.cpp runs them on the CPU); any
                other unsupported case fails the end-to-end test
    """
    marker: str | None = None
    tool_args: tuple[str, ...] = ()
    bench_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    ops_filter: Mapping[str, str] | None = None
    ppl_rel: float = 0.015
    runnable: Callable[[], str | None] = lambda: None
    verify_args: tuple[str, ...] = ()
    skip_model: Callable[[], str | None] = lambda: None
    unsupported_ok: str | None = None


@dataclass(frozen=True)
class CompileCheck:
    """The CI compile check of the translation units the turbo work touches.

    run(tree, touched, work_dir) compiles the backend's units among `touched`
    (tree-relative paths the patches and the render placed, from the tree's
    manifest) and returns a report dict (units, seconds, warnings, ...);
    unavailable() says why it cannot run here.
    """
    run: Callable[[Path, frozenset[str], Path | None], dict]
    unavailable: Callable[[], str | None]


# A verify runner replaces the built tqpatch-verify harness: cases -> a harness run.
# A backend's make_verify_runner(record, tree, run_harness) returns one, or None to run
# the built harness; `tree` gives the applied tree, run_harness(binary, device, cases)
# runs a harness binary (verify passes both: this package sits below apply and verify).
VerifyRunnerFactory = Callable[[dict | None, Callable[[], Path], Callable], Callable | None]


def _no_runner(record: dict | None, tree: Callable[[], Path], run_harness: Callable) -> None:
    return None


def _none() -> None:
    return None


def _no_list() -> list:
    return []


def _no_dict() -> dict:
    return {}


def _here(options: Mapping[str, object]) -> BuildEnvironment | None:
    return None


def _not_detected() -> tuple[bool, str]:
    return False, ""


def _any_arch(arch: str | None) -> str | None:
    return arch


@dataclass(frozen=True)
class Backend:
    """One llama.cpp backend, as render, build, verify, the CLI and the tests see it."""
    name: str                 # the --backend value
    ggml_backend_name: str    # its first device's ggml name (verify harness, test-backend-ops -b, benches)
    cmake_args: Callable[[str | None, Mapping[str, object]], list[str]]
    """(normalized arch or None, parsed build options) -> the -D options that select it."""

    # ---- build
    build_options: tuple[BuildOption, ...] = ()   # extra `tqpatch build` options it takes
    normalize_arch: Callable[[str | None], str | None] = _any_arch
    """Validate and canonicalise a user --arch; TqpatchError listing the accepted forms."""
    default_arch: Callable[[], str | None] = _none   # the arch without --arch (None: its own default)
    build_environment: Callable[[Mapping[str, object]], BuildEnvironment | None] = _here
    requirements: Callable[[], list[Requirement]] = _no_list   # tools beyond cmake, ninja, compilers
    notes: Callable[[], list[str]] = _no_list             # warnings worth showing before a build
    unsupported_reason: Callable[[], str | None] = _none   # why it cannot be built here at all
    detect: Callable[[], tuple[bool, str]] = _not_detected  # (build it by default here?, why)
    hardware: Callable[[], str | None] = _none             # its device here, in words; None if none
    compile_check: CompileCheck | None = None

    # ---- render: templates see render_context() as `<name>.<var>`; render_expansions()
    # gives the `[name]` file-name expansions of its templates (e.g. CUDA's FA instances)
    render_context: Callable[[], dict] = _no_dict
    render_expansions: Callable[[], dict[str, Callable[[], list[dict]]]] = _no_dict

    # ---- verify
    precision: Callable[[], _precision.Precision] = _precision.gpu
    verify_label: str = ""    # carried by every verify report ("host-emulated, ..." or "")
    # kernel layouts picked at run time by size, each forced by an environment variable:
    # verify runs its decode attention checks once more per entry (name -> env)
    verify_variants: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    make_verify_runner: VerifyRunnerFactory = _no_runner

    # ---- serving: where its cache lives
    memory_is_ram: bool = False   # this machine's RAM (else the device's own report)

    # ---- tests and benches
    e2e: EndToEnd = EndToEnd()


def reject_arch(backend: str, arch: str | None, why: str) -> str | None:
    """normalize_arch of backends that build for no particular device arch: no --arch
    or 'native' normalise to None; anything else is a clear error saying why."""
    if arch is None or arch.strip().lower() in ("", "native"):
        return None
    raise TqpatchError(
        f"--arch {arch!r} does not apply to the {backend} backend {why}; "
        "accepted: no --arch, or 'native'"
    )
