"""`tqpatch build`: configure and build the patched llama.cpp tree for one backend."""

from __future__ import annotations

from pathlib import Path

import click

from ..backends import BACKENDS


def _split_targets(ctx, param, value):
    if value is None:
        return None
    targets = [t.strip() for t in value.replace(";", ",").split(",") if t.strip()]
    if not targets:
        raise click.BadParameter("give at least one target, e.g. --targets llama-cli,llama-bench")
    return targets


def _fa_quants(ctx, param, value):
    from ..backends import cuda
    from ..errors import TqpatchError

    try:
        cuda.fa_pairs(value)
    except TqpatchError as exc:
        raise click.BadParameter(str(exc)) from None
    return value.strip().lower()


@click.command("build")
@click.option("--backend", "-b", required=True, type=click.Choice(list(BACKENDS)),
              help="Which ggml backend to build.")
@click.option("--arch", default=None,
              help="GPU architecture(s): CUDA 90 | 89;86 | 86,89 | sm_90 | native; HIP gfx1100. "
                   "Default: the GPUs found here.")
@click.option("--targets", callback=_split_targets, default=None,
              help="Comma-separated cmake targets (default: llama-server, llama-cli, "
                   "llama-perplexity, llama-bench, test-backend-ops, test-quantize-fns, "
                   "tqpatch-verify).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Parallel compile jobs (default: all CPUs).")
@click.option("--build-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Build directory (default: the tqpatch cache's build/<backend>).")
@click.option("--release/--debug", default=True, help="CMAKE_BUILD_TYPE (default: Release).")
@click.option("--tree", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="llama.cpp tree to patch and build (default: the tqpatch work tree).")
@click.option("--fa-quants", default="default", show_default=True, callback=_fa_quants,
              metavar="default|all|K-V,...",
              help="CUDA/HIP: FlashAttention vector-kernel K/V pairs to compile "
                   "(GGML_CUDA_FA_QUANTS). default: every pair of f16, q8_0, turbo2, turbo3, "
                   "turbo4, plus q4_0-q4_0 and bf16-bf16; all: every pair of every type (slow "
                   "to build); or a list such as q8_0-turbo3,turbo3-turbo3.")
@click.option("--all-fa-quants", is_flag=True, hidden=True,
              help="Deprecated: same as --fa-quants all.")
@click.option("--boundary-k", type=click.IntRange(min=0, max=999_999), default=0, metavar="N",
              help="Build-time default: keep the first and last N layers of a turbo K cache at "
                   "q8_0 (LLAMA_TURBO_BOUNDARY_K in the environment overrides it). Default 0.")
@click.option("--boundary-v", type=click.IntRange(min=0, max=999_999), default=0, metavar="N",
              help="The same for a turbo V cache (LLAMA_TURBO_BOUNDARY_V). Default 0.")
@click.option("--cmake-arg", "cmake_extra", multiple=True, metavar="X",
              help="Extra cmake configure argument, e.g. --cmake-arg=-DGGML_NATIVE=OFF (repeatable).")
def command(backend, arch, targets, jobs, build_dir, release, tree, all_fa_quants, fa_quants,
            boundary_k, boundary_v, cmake_extra):
    """Build llama.cpp binaries for one backend.

    \b
    Applies the turbo patches if needed, configures with cmake + Ninja (again
    only when the cmake arguments change) and builds; binaries land in
    <build-dir>/bin and the full log in <build-dir>/tqpatch-build.log.
    \b
    Examples:
      tqpatch build --backend cpu
      tqpatch build --backend cuda --arch 90 --targets llama-server,test-backend-ops
      tqpatch build --backend cuda --arch 86,89 --fa-quants q8_0-turbo3,turbo3-turbo3
    """
    from .. import build as build_mod

    if all_fa_quants:
        click.echo("warning: --all-fa-quants is deprecated; use --fa-quants all", err=True)
        fa_quants = "all"
    build_mod.build(build_mod.BuildRequest(
        backend=backend, arch=arch, targets=targets, jobs=jobs, build_dir=build_dir,
        build_type="Release" if release else "Debug", tree=tree, fa_quants=fa_quants,
        extra_cmake_args=tuple(cmake_extra), boundary_k=boundary_k, boundary_v=boundary_v,
    ))
