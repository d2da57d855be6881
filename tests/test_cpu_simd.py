"""The CPU turbo kernels on each of their code paths (AVX2, scalar, NEON).

The rendered ggml-cpu/turbo-cpu.c is compiled standalone with
tests/data/turbo_cpu_simd_check.c and the reference ggml-turbo.c, once per
path the flags select, and its dot product and fused V accumulation are
checked against float64 sums over the reference dequantization. The NEON
path needs an aarch64 cross compiler and qemu-user (skipped without them).
`tqpatch verify --backend cpu` covers the path of the build itself.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from tqpatch import formats

DATA = Path(__file__).parent / "data"
GENERATED = Path(__file__).resolve().parent.parent / "generated" / "ggml" / "src"

CHECKS = "".join(f"bad|=CHECK({n},{f.enum});" for n, f in formats.TURBO_FORMATS.items())


@pytest.fixture(scope="module")
def tree() -> Path:
    from tqpatch import apply

    return Path(apply.ensure_applied(None))


def _build_and_run(tree: Path, out: Path, cc: list[str], flags: list[str], runner: list[str]) -> str:
    g = tree / "ggml"
    cmd = [*cc, "-O2", "-std=c11", *flags, f"-DTURBO_SIMD_CHECKS={CHECKS}",
           f"-I{GENERATED}", f"-I{GENERATED / 'ggml-cpu'}", f"-I{g / 'include'}", f"-I{g / 'src'}",
           f"-I{g / 'src' / 'ggml-cpu'}", str(DATA / "turbo_cpu_simd_check.c"),
           str(GENERATED / "ggml-cpu" / "turbo-cpu.c"), str(GENERATED / "ggml-turbo.c"), "-o", str(out), "-lm"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    res = subprocess.run([*runner, str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.strip()


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 paths")
@pytest.mark.parametrize("flags,path", [
    (["-mavx2", "-mfma", "-mf16c"], "avx2"),
    (["-mno-avx2", "-mno-fma"], "scalar"),
])
def test_x86_paths(tree, tmp_path, flags, path):
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    assert _build_and_run(tree, tmp_path / f"check-{path}", ["gcc"], flags, []) == f"OK {path}"


@pytest.mark.slow
def test_neon_path(tree, tmp_path):
    cc, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if platform.machine() in ("aarch64", "arm64"):
        cc, qemu = shutil.which("gcc"), None
    if cc is None or (qemu is None and platform.machine() not in ("aarch64", "arm64")):
        pytest.skip("no aarch64 compiler or qemu-aarch64 (Debian: gcc-aarch64-linux-gnu qemu-user)")
    runner = [qemu] if qemu else []
    flags = ["-march=armv8.2-a", *(["-static"] if qemu else [])]
    assert _build_and_run(tree, tmp_path / "check-neon", [cc], flags, runner) == "OK neon"
