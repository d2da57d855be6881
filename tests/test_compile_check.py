"""The CI compile check of each backend that declares one (compile_check in its module).

Pure helpers are tested fast; the compile itself is slow and runs for every
backend whose compiler is here (nvcc for CUDA, ROCm for HIP, ...), skipped
with the backend's own reason elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tqpatch import apply, backends, paths, patchset, render
from tqpatch.backends import BACKENDS
from tqpatch.backends import compile_check as cc

CHECKED = [name for name, b in BACKENDS.items() if b.compile_check is not None]


def test_touched_cuda_sources_are_the_placed_files_under_the_backend(tmp_path):
    """The units checked: the .cu files the patches and the render place (what an applied
    tree's manifest lists, apply.placed_files), under the backend's source folder."""
    placed = frozenset({fp.path for patch in patchset.load_series() for fp in patch.files}
                       | set(render.render_all(backends.all_backends()).files))
    units, instances = cc.touched_sources(tmp_path, placed, "ggml/src/ggml-cuda/")
    for f in ("convert.cu", "cpy.cu", "getrows.cu", "set-rows.cu", "fattn.cu", "ggml-cuda.cu"):
        assert f in units
    assert all(u.endswith(".cu") and "template-instances/" not in u for u in units)
    assert instances == []  # the tree has no instance files: none picked


def test_pick_instances_prefers_the_common_pairs_and_caps():
    many = [f"template-instances/fattn-vec-instance-{k}-{v}.cu"
            for k in ("f16", "q8_0", "turbo2", "turbo3", "turbo4")
            for v in ("f16", "q8_0", "turbo2", "turbo3", "turbo4") if "turbo" in k + v]
    assert cc.pick_instances(many) == [
        "template-instances/fattn-vec-instance-turbo3-turbo3.cu",
        "template-instances/fattn-vec-instance-q8_0-turbo3.cu",
        "template-instances/fattn-vec-instance-turbo4-f16.cu"]
    assert cc.pick_instances(["template-instances/fattn-vec-instance-turbo2-f16.cu"]) == [
        "template-instances/fattn-vec-instance-turbo2-f16.cu"]
    assert cc.pick_instances([]) == []


def test_object_targets_cuda_and_hip_layouts():
    listing = ("ggml/src/ggml-cuda/CMakeFiles/ggml-cuda.dir/convert.cu.o: CUDA_COMPILER__ggml-cuda\n"
               "ggml/src/ggml-cuda/CMakeFiles/ggml-cuda.dir/template-instances/"
               "fattn-vec-instance-q8_0-turbo3.cu.o: CUDA_COMPILER__ggml-cuda\n"
               "ggml/src/ggml-hip/CMakeFiles/ggml-hip.dir/__/ggml-cuda/convert.cu.o: HIP_COMPILER\n"
               "ggml/src/ggml-cuda/CMakeFiles/ggml-cuda.dir/fattn-convert.cu.o: CUDA_COMPILER\n")
    inst = "template-instances/fattn-vec-instance-q8_0-turbo3.cu"
    assert cc.object_targets(listing, ["convert.cu", inst, "cpy.cu"], "ggml-cuda") == {
        "convert.cu": "ggml/src/ggml-cuda/CMakeFiles/ggml-cuda.dir/convert.cu.o",
        inst: f"ggml/src/ggml-cuda/CMakeFiles/ggml-cuda.dir/{inst}.o"}
    assert cc.object_targets(listing, ["convert.cu"], "ggml-hip") == {
        "convert.cu": "ggml/src/ggml-hip/CMakeFiles/ggml-hip.dir/__/ggml-cuda/convert.cu.o"}


@pytest.fixture(scope="module")
def tree() -> Path:
    return Path(apply.ensure_applied(None))


@pytest.mark.slow
@pytest.mark.parametrize("backend", CHECKED)
def test_turbo_sources_compile(tree, backend, tmp_path_factory):
    check = BACKENDS[backend].compile_check
    why = check.unavailable()
    if why:
        pytest.skip(why)
    report = check.run(tree, apply.placed_files(tree), paths.cache_root() / "build" / f"{backend}-compile-check")
    assert report["units"], report
    assert report["instances"], f"no turbo FA instance compiled: {report}"
    print(f"\n{backend}: {len(report['units']) + len(report['instances'])} objects in "
          f"{report['compile_s']} s; warnings: {len(report['warnings'])}")
    for w in report["warnings"][:20]:
        print("  " + w)
    for line in report.get("summary", []):  # e.g. HIP: registers per target
        print("  " + line)
    if "resources" in report:
        assert report["resources"], f"no turbo kernel in the resource remarks: {report}"
