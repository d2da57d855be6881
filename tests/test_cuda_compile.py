"""Compile check of the CUDA (and HIP) translation units the turbo work touches.

CI has no GPU but has nvcc: the patched tree (`tqpatch apply`) is configured
with the cmake invocation `tqpatch build --backend cuda --arch 90` uses, and
ninja builds only the object files of
  - the ggml-cuda .cu files that patches/*.patch change or generated/ provides,
  - at most MAX_INSTANCES FlashAttention vector instances with a turbo type
    (PREFERRED_INSTANCES first), when the tree compiles any.
Nothing is linked. Where the toolkit has no cuBLAS, tests/data/cuda-stub/
stands in for it (compile only). The HIP check does the same with ROCm's
clang and runs only where ROCm >= 6.1 is installed.

Objects go to <tqpatch cache>/build/cuda-compile-check (kept between runs, so
a rerun recompiles only what changed).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tqpatch import paths
from tqpatch.backends import cuda, hip

REPO = Path(__file__).resolve().parent.parent
STUB = REPO / "tests" / "data" / "cuda-stub" / "stub-cublas.cmake"
CUDA_DIR = "ggml/src/ggml-cuda/"
INSTANCE_RE = re.compile(r"^template-instances/fattn-vec-instance-([a-z0-9_]+)-([a-z0-9_]+)\.cu$")
PREFERRED_INSTANCES = ("turbo3-turbo3", "q8_0-turbo3", "turbo4-f16")
MAX_INSTANCES = 3


# ---------------------------------------------------------------- which sources (fast, pure)


def patched_cuda_files(patch_dir: Path = REPO / "patches") -> set[str]:
    """Paths under ggml/src/ggml-cuda/ (relative to it) that the patches in series touch."""
    series = patch_dir / "series"
    names = [ln.strip() for ln in series.read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    out = set()
    for name in names:
        for line in (patch_dir / name).read_text(errors="replace").splitlines():
            m = re.match(r"^\+\+\+ b/(\S+)", line)
            if m and m.group(1).startswith(CUDA_DIR):
                out.add(m.group(1)[len(CUDA_DIR):])
    return out


def generated_cuda_files(gen_dir: Path = REPO / "generated") -> set[str]:
    base = gen_dir / CUDA_DIR
    return {p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()} \
        if base.is_dir() else set()


def turbo_instances(tree: Path) -> list[str]:
    """fattn-vec instance files of the tree with a turbo K or V type (relative to ggml-cuda/)."""
    base = Path(tree) / CUDA_DIR / "template-instances"
    return sorted(f"template-instances/{p.name}" for p in base.glob("fattn-vec-instance-*.cu")
                  if "turbo" in p.name) if base.is_dir() else []


def pick_instances(instances: list[str], limit: int = MAX_INSTANCES) -> list[str]:
    """PREFERRED_INSTANCES that exist, then the rest in name order, at most `limit`."""
    by_pair = {}
    for rel in instances:
        m = INSTANCE_RE.match(rel)
        if m:
            by_pair[f"{m.group(1)}-{m.group(2)}"] = rel
    chosen = [by_pair[p] for p in PREFERRED_INSTANCES if p in by_pair]
    chosen += [r for r in sorted(by_pair.values()) if r not in chosen]
    return chosen[:limit]


def touched_sources(tree: Path) -> tuple[list[str], list[str]]:
    """(translation units other than FA instances, chosen turbo FA instances), relative to ggml-cuda/."""
    files = patched_cuda_files() | generated_cuda_files()
    units = sorted(f for f in files if f.endswith(".cu") and not INSTANCE_RE.match(f))
    return units, pick_instances(turbo_instances(tree))


def object_targets(ninja_targets: str, sources: list[str], library: str) -> dict[str, str]:
    """source -> its object target in `ninja -t targets all` output, for ggml-cuda or ggml-hip."""
    names = [ln.rsplit(": ", 1)[0].strip() for ln in ninja_targets.splitlines() if ": " in ln]
    out = {}
    for src in sources:
        for name in names:
            if f"/{library}.dir/" in name and name.endswith(f"/{src}.o"):
                out[src] = name
                break
    return out


def test_touched_sources_from_the_patch_set():
    units = sorted(f for f in patched_cuda_files() | generated_cuda_files() if f.endswith(".cu"))
    # patch 0008 wires the turbo types into these translation units
    for f in ("convert.cu", "cpy.cu", "getrows.cu", "set-rows.cu", "fattn.cu", "ggml-cuda.cu"):
        assert f in units
    assert "turbo.cuh" in generated_cuda_files()


def test_pick_instances_prefers_the_common_pairs_and_caps():
    many = [f"template-instances/fattn-vec-instance-{k}-{v}.cu"
            for k in ("f16", "q8_0", "turbo2", "turbo3", "turbo4")
            for v in ("f16", "q8_0", "turbo2", "turbo3", "turbo4") if "turbo" in k + v]
    assert pick_instances(many) == [
        "template-instances/fattn-vec-instance-turbo3-turbo3.cu",
        "template-instances/fattn-vec-instance-q8_0-turbo3.cu",
        "template-instances/fattn-vec-instance-turbo4-f16.cu"]
    assert pick_instances(["template-instances/fattn-vec-instance-turbo2-f16.cu"]) == [
        "template-instances/fattn-vec-instance-turbo2-f16.cu"]
    assert pick_instances([]) == []


def test_object_targets_cuda_and_hip_layouts():
    listing = ("ggml/src/ggml-cuda/CMakeFiles/ggml-cuda.dir/convert.cu.o: CUDA_COMPILER__ggml-cuda\n"
               "ggml/src/ggml-cuda/CMakeFiles/ggml-cuda.dir/template-instances/"
               "fattn-vec-instance-q8_0-turbo3.cu.o: CUDA_COMPILER__ggml-cuda\n"
               "ggml/src/ggml-hip/CMakeFiles/ggml-hip.dir/__/ggml-cuda/convert.cu.o: HIP_COMPILER\n"
               "ggml/src/ggml-cuda/CMakeFiles/ggml-cuda.dir/fattn-convert.cu.o: CUDA_COMPILER\n")
    inst = "template-instances/fattn-vec-instance-q8_0-turbo3.cu"
    assert object_targets(listing, ["convert.cu", inst, "cpy.cu"], "ggml-cuda") == {
        "convert.cu": "ggml/src/ggml-cuda/CMakeFiles/ggml-cuda.dir/convert.cu.o",
        inst: f"ggml/src/ggml-cuda/CMakeFiles/ggml-cuda.dir/{inst}.o"}
    assert object_targets(listing, ["convert.cu"], "ggml-hip") == {
        "convert.cu": "ggml/src/ggml-hip/CMakeFiles/ggml-hip.dir/__/ggml-cuda/convert.cu.o"}


# ---------------------------------------------------------------- the compile (slow)


def _run(cmd, log: Path, timeout=3600, keep_output=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    with open(log, "a") as f:
        f.write("$ " + " ".join(str(c) for c in cmd) + "\n")
        if keep_output or proc.returncode != 0:
            f.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd[0]} exited {proc.returncode}; log {log}\n"
                             f"{(proc.stdout + proc.stderr)[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def tree() -> Path:
    from tqpatch import apply

    return Path(apply.ensure_applied(None))


def _compile_check(tree: Path, backend: str, arch: str, library: str, extra: list[str]) -> dict:
    from tqpatch import build

    if not (shutil.which("cmake") and shutil.which("ninja")):
        pytest.skip("needs cmake and ninja")
    units, instances = touched_sources(tree)
    # The FA pairs tqpatch builds by default, less any type this tree's cmake does not know
    # yet (a turbo name there is a configure error before the native turbo FA patch).
    fa = cuda.fa_quants_for_tree(None, tree)
    args = build.cmake_args(backend, arch, fa_quants=fa, ccache=bool(shutil.which("ccache")))
    bdir = paths.cache_root() / "build" / f"{backend}-compile-check"
    bdir.mkdir(parents=True, exist_ok=True)
    log = bdir / "compile-check.log"
    log.write_text("")
    t0 = time.monotonic()
    _run(["cmake", "-S", tree, "-B", bdir, *args, *extra], log)
    t_conf = time.monotonic() - t0
    listing = _run(["ninja", "-C", bdir, "-t", "targets", "all"], log, keep_output=False).stdout
    objs = object_targets(listing, units + instances, library)
    missing_units = [u for u in units if u not in objs]
    assert not missing_units, f"no {library} object for {missing_units} in {bdir}"
    # instances are compiled only where the tree's FA_TYPES lists turbo (and the pair is selected)
    built_instances = [i for i in instances if i in objs]
    targets = [objs[s] for s in units + built_instances]
    for t in targets:
        (bdir / t).unlink(missing_ok=True)  # compile for real each run (ccache may still serve)
    t1 = time.monotonic()
    _run(["ninja", "-C", bdir, "-j", str(os.cpu_count() or 1), *targets], log)
    t_build = time.monotonic() - t1
    for t in targets:
        assert (bdir / t).is_file() and (bdir / t).stat().st_size > 0, t
    text = log.read_text(errors="replace")
    warnings = sorted({ln.strip() for ln in text.splitlines()
                       if re.search(r"\bwarning\b", ln, re.I) and "ggml-cuda" in ln})
    report = {"units": units, "instances": built_instances,
              "instances_not_in_build": [i for i in instances if i not in objs],
              "fa_quants": fa, "configure_s": round(t_conf, 1), "compile_s": round(t_build, 1),
              "jobs": os.cpu_count(), "warnings": warnings, "log": str(log)}
    print(f"\n{backend} compile check: {len(targets)} objects in {t_build:.0f} s "
          f"(configure {t_conf:.0f} s, {os.cpu_count()} jobs): {', '.join(units + built_instances)}")
    if report["instances_not_in_build"]:
        print("  turbo FA instances present but not in this tree's build (FA_TYPES lacks turbo): "
              + ", ".join(report["instances_not_in_build"]))
    for w in warnings[:20]:
        print("  " + w)
    return report


@pytest.mark.slow
@pytest.mark.skipif(cuda.NVCC.find() is None,
                    reason="no nvcc found (PATH, $CUDACXX, /usr/local/cuda/bin): CUDA compile "
                           "check not run")
def test_cuda_turbo_sources_compile_with_nvcc(tree):
    nvcc = cuda.NVCC.find()
    report = _compile_check(tree, "cuda", "90", "ggml-cuda",
                            [f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DCMAKE_PROJECT_INCLUDE={STUB}"])
    assert "convert.cu" in report["units"] and "fattn.cu" in report["units"]
    if turbo_instances(tree) and "turbo" in " ".join(cuda.tree_fa_types(tree) or ()):
        assert report["instances"], "the tree builds turbo FA instances, none compiled"


@pytest.mark.slow
@pytest.mark.skipif(hip.rocm_problem() is not None,
                    reason=f"{hip.rocm_problem()}: HIP compile check not run")
def test_hip_turbo_sources_compile_with_rocm(tree):
    report = _compile_check(tree, "hip", "gfx1100", "ggml-hip", [])
    assert "convert.cu" in report["units"]
