"""`tqpatch build`: configure and build the patched llama.cpp tree for one backend."""

from __future__ import annotations

from pathlib import Path

import click

from .. import backends
from .. import build as build_mod
from ..backends import build_options
from ..errors import TqpatchError
from .options import backend_option


def _split_targets(ctx, param, value):
    if value is None:
        return None
    targets = [t.strip() for t in value.replace(";", ",").split(",") if t.strip()]
    if not targets:
        raise click.BadParameter("give at least one target, e.g. --targets llama-cli,llama-bench")
    return targets


def _backend_option(opt, takers):
    """A click option for a backend-specific build option (validated by the backend)."""
    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            return opt.parse(value)
        except TqpatchError as exc:
            raise click.BadParameter(exc.message) from None

    return click.option(f"--{opt.name}", "backend_opt_" + opt.name.replace("-", "_"), default=None,
                        metavar=opt.metavar, callback=parse,
                        help=f"{'/'.join(b.upper() for b in takers)} only: {opt.help} "
                             f"Default: {opt.default}.")


def _with_backend_options(f):
    for opt, takers in reversed(list(build_options().values())):
        f = _backend_option(opt, takers)(f)
    return f


@click.command("build")
@backend_option(
              help="Which ggml backend to build (default: the GPU and toolchain found here: "
                   "CUDA, then ROCm, Vulkan, Metal on macOS, else CPU; the choice is printed).")
@click.option("--arch", default=None,
              help="GPU architecture(s): CUDA 90 | 89;86 | 86,89 | sm_90 | native; HIP gfx1100. "
                   "Default: the GPUs found here.")
@click.option("--targets", callback=_split_targets, default=None,
              help="Comma-separated cmake targets (default: llama-server, llama-cli, "
                   "llama-perplexity, llama-bench, test-backend-ops, test-quantize-fns, "
                   "tqpatch-verify, tqpatch-capture).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Parallel compile jobs (default: all CPUs).")
@click.option("--build-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Build directory (default: the tqpatch cache's build/<backend>).")
@click.option("--release/--debug", default=True, help="CMAKE_BUILD_TYPE (default: Release).")
@click.option("--tree", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="llama.cpp tree to patch and build (default: the tqpatch work tree).")
@_with_backend_options
@click.option("--boundary-k", type=click.IntRange(min=0, max=999_999), default=0, metavar="N",
              help="Build-time default: keep the first and last N layers of a turbo K cache at "
                   "q8_0 (LLAMA_TURBO_BOUNDARY_K in the environment overrides it). Default 0.")
@click.option("--boundary-v", type=click.IntRange(min=0, max=999_999), default=0, metavar="N",
              help="The same for a turbo V cache (LLAMA_TURBO_BOUNDARY_V). Default 0.")
@click.option("--cmake-arg", "cmake_extra", multiple=True, metavar="X",
              help="Extra cmake configure argument, e.g. --cmake-arg=-DGGML_NATIVE=OFF (repeatable).")
def command(backend, arch, targets, jobs, build_dir, release, tree, boundary_k, boundary_v,
            cmake_extra, **backend_opts):
    """Build llama.cpp binaries for this machine's GPU (or one --backend).

    \b
    Applies the turbo patches if needed, configures with cmake + Ninja (again
    only when the cmake arguments change) and builds; binaries land in
    <build-dir>/bin and the full log in <build-dir>/tqpatch-build.log.
    \b
    Examples:
      tqpatch build                      # the GPU found here, else the CPU
      tqpatch build --backend cpu
      tqpatch build --backend cuda --arch 90 --targets llama-server,test-backend-ops
      tqpatch build --backend cuda --arch 86,89 --fa-quants q8_0-turbo3,turbo3-turbo3
    """
    if backend is None:
        backend, why = backends.detect()
        click.echo(f"backend: {backend.name} ({why}; --backend overrides)")
    options = {}
    for name, (opt, takers) in build_options().items():
        value = backend_opts.get("backend_opt_" + name.replace("-", "_"))
        if value is not None and backend.name not in takers:
            raise TqpatchError(f"--{name} applies to the {', '.join(takers)} backend(s), "
                               f"not {backend.name}")
        if opt in backend.build_options:
            options[name] = value if value is not None else opt.parse(opt.default)
    build_mod.build(build_mod.BuildRequest(
        backend=backend, arch=arch, targets=targets, jobs=jobs, build_dir=build_dir,
        build_type="Release" if release else "Debug", tree=tree, options=options,
        extra_cmake_args=tuple(cmake_extra), boundary_k=boundary_k, boundary_v=boundary_v,
    ))
