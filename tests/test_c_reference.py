"""The rendered C reference (ggml-turbo.c) against tqpatch.reference, byte for byte.

Compiled on its own under a small shim (tests/c_shim: stand-ins for
ggml-common.h, ggml.h, ggml-impl.h) with the system C compiler, so a template
or codebook change that breaks the kernels' reference fails here in seconds,
before any llama.cpp build. Every turbo type in tqpatch.formats is covered
(the driver loops over the rendered X-macro list).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tqpatch import formats, reference, render, verify
from tqpatch import backends

SHIM = Path(__file__).resolve().parent / "c_shim"
CLASSES = ("gaussian", "outliers", "zeros", "constant", "tiny", "huge", "alternating",
           "mixed-blocks", "nan", "inf")


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("no C compiler (cc/gcc) on PATH: the fast suite needs one")
    out = tmp_path_factory.mktemp("cref")
    for rel, data in render.render_all(backends.all_backends()).files.items():  # what the templates render now
        if rel.startswith(("ggml/src/ggml-turbo", "ggml/include/ggml-turbo")):
            (out / Path(rel).name).write_bytes(data)
    exe = out / "turbo-ref"
    subprocess.run([cc, "-std=c11", "-O2", "-Wall", "-Werror", "-Wno-unused-function",
                    f"-I{SHIM}", f"-I{out}", str(out / "ggml-turbo.c"), str(SHIM / "driver.c"),
                    "-lm", "-o", str(exe)], check=True, capture_output=True, text=True)
    return exe


def _run(exe: Path, name: str, op: str, k: int, data: bytes) -> bytes:
    return subprocess.run([str(exe), name, op, str(k)], input=data, capture_output=True,
                          check=True).stdout


def _rows(name: str, seed: int) -> np.ndarray:
    block = formats.TURBO_FORMATS[name].block
    rng = np.random.default_rng(seed)
    k = 4 * block
    return np.stack([verify.make_rows(rng, kind, k, block) for kind in CLASSES for _ in range(8)])


@pytest.mark.parametrize("name", formats.TURBO_TYPES)
def test_c_quantize_gives_the_reference_bytes(driver, name):
    x = _rows(name, seed=1)
    got = np.frombuffer(_run(driver, name, "quantize", x.shape[1], x.tobytes()), dtype=np.uint8)
    want = reference.quantize_rows(x, name, nonfinite="poison")
    assert got.size == want.size
    bad = np.flatnonzero(got != want.reshape(-1))
    assert bad.size == 0, f"{bad.size} bytes differ, first at byte {bad[0]} of row {bad[0] // want.shape[1]}"


@pytest.mark.parametrize("name", formats.TURBO_TYPES)
def test_c_dequantize_is_exact(driver, name):
    x = _rows(name, seed=2)
    blocks = reference.quantize_rows(x, name, nonfinite="poison")
    got = np.frombuffer(_run(driver, name, "dequantize", x.shape[1], blocks.tobytes()), dtype=np.float32)
    want = reference.dequantize_rows(blocks, name, x.shape[1]).reshape(-1)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    assert same.all(), f"{(~same).sum()} values differ"


def test_a_wrong_kernel_is_caught(driver, tmp_path):
    """The comparison above can fail: a swapped plane shift in the rendered C is detected."""
    name = next(n for n, f in formats.TURBO_FORMATS.items() if any(p.bits == 4 for p in f.planes))
    src = driver.parent / "ggml-turbo.c"
    broken = tmp_path / "ggml-turbo.c"
    text = src.read_text()
    assert "<< (4*((j)%2))" in text
    broken.write_text(text.replace("<< (4*((j)%2))", "<< (4*(1 - (j)%2))"))
    for f in driver.parent.glob("ggml-turbo*.h"):
        shutil.copy(f, tmp_path / f.name)
    exe = tmp_path / "turbo-ref"
    subprocess.run(["cc", "-std=c11", "-O2", f"-I{SHIM}", f"-I{tmp_path}", str(broken),
                    str(SHIM / "driver.c"), "-lm", "-o", str(exe)], check=True)
    x = _rows(name, seed=3)
    got = np.frombuffer(_run(exe, name, "quantize", x.shape[1], x.tobytes()), dtype=np.uint8)
    assert (got != reference.quantize_rows(x, name, nonfinite="poison").reshape(-1)).any()
