"""Backends: cmake arguments, --arch normalisation, hardware and version probes."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tqpatch import backends, paths
from tqpatch.backends import cpu, cuda, hip, metal, vulkan
from tqpatch.errors import TqpatchError


def _fake_capture(outputs: dict[str, str | None]):
    """A run_capture stand-in: the first word(s) of a command -> its output."""

    def run(cmd, timeout=15):
        key = " ".join(cmd)
        for prefix, out in outputs.items():
            if key.startswith(prefix):
                return out
        return None

    return run


@pytest.fixture
def no_gpus(monkeypatch):
    for mod in (cuda, hip, vulkan, metal):
        monkeypatch.setattr(mod, "run_capture", _fake_capture({}))


def test_registry_has_every_backend_behind_one_interface():
    assert list(backends.BACKENDS) == ["cpu", "cuda", "hip", "metal", "vulkan"]
    for name, b in backends.BACKENDS.items():
        assert b.name == name
        assert isinstance(b.ggml_backend_name, str) and b.ggml_backend_name
        for fn in ("default_arch", "normalize_arch", "cmake_args", "requirements",
                   "hardware", "unsupported_reason", "notes"):
            assert callable(getattr(b, fn)), (name, fn)


def test_get_unknown_backend_lists_choices():
    with pytest.raises(TqpatchError, match="cpu, cuda, hip, metal, vulkan"):
        backends.get("sycl")


def test_ggml_backend_names_match_pinned_tree():
    assert cpu.ggml_backend_name == "CPU"
    assert cuda.ggml_backend_name == "CUDA0"
    assert hip.ggml_backend_name == "ROCm0"  # GGML_CUDA_NAME under GGML_USE_HIP
    assert vulkan.ggml_backend_name == "Vulkan0"
    assert metal.ggml_backend_name == "MTL0"


# ---------------------------------------------------------------- cmake args


def test_cpu_has_no_extra_flags():
    assert cpu.cmake_args(None, False) == []
    assert cpu.cmake_args("native", True) == []


def test_cpu_rejects_gpu_arch():
    with pytest.raises(TqpatchError, match="does not apply to the cpu backend"):
        cpu.cmake_args("90", False)


@pytest.mark.parametrize("arch, expected", [
    ("90", "90"),
    ("89;86", "86;89"),
    ("86,89", "86;89"),
    ("86, 89", "86;89"),
    ("native", "native"),
    ("sm_90", "90"),
    ("SM_90", "90"),
    ("compute_90a", "90a"),
    ("90-real", "90-real"),
    ("120a-real", "120a-real"),
    ("90,90,sm_90", "90"),
    ("all-major", "all-major"),
])
def test_cuda_arch_forms(arch, expected):
    assert cuda.normalize_arch(arch) == expected
    assert cuda.cmake_args(arch, False) == ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={expected}"]


@pytest.mark.parametrize("arch", ["foo", "9", "sm90", "sm_9x", "90;bar", "", ";", "native;90",
                                  "gfx1100", "0x90"])
def test_cuda_rejects_garbage_with_accepted_forms(arch):
    with pytest.raises(TqpatchError) as exc:
        cuda.cmake_args(arch, False)
    msg = str(exc.value)
    assert "accepted" in msg
    for form in ("90", "89;86", "86,89", "sm_90", "native"):
        assert form in msg


def test_cuda_all_fa_quants():
    assert cuda.cmake_args("90", True) == [
        "-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=90", "-DGGML_CUDA_FA_ALL_QUANTS=ON"]
    assert "-DGGML_CUDA_FA_ALL_QUANTS=ON" not in cuda.cmake_args("90", False)


def test_cuda_default_arch_from_detected_gpus(monkeypatch):
    monkeypatch.setattr(cuda, "run_capture", _fake_capture({
        "nvidia-smi --query-gpu=compute_cap": "9.0\n8.6\n9.0\n"}))
    assert cuda.default_arch() == "86;90"
    assert cuda.cmake_args(None, False) == ["-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=86;90"]


def test_cuda_without_gpu_or_arch_builds_portable_list(no_gpus):
    assert cuda.default_arch() is None
    assert cuda.cmake_args(None, False) == ["-DGGML_CUDA=ON", "-DGGML_NATIVE=OFF"]


@pytest.mark.parametrize("arch, expected", [
    ("gfx1100", "gfx1100"),
    ("gfx1100,gfx1030", "gfx1030;gfx1100"),
    ("gfx90a;gfx942", "gfx90a;gfx942"),
    ("GFX1100", "gfx1100"),
    ("gfx90a:xnack-", "gfx90a:xnack-"),
])
def test_hip_targets(arch, expected):
    assert hip.cmake_args(arch, False) == ["-DGGML_HIP=ON", f"-DGPU_TARGETS={expected}"]
    assert hip.cmake_args(arch, True)[-1] == "-DGGML_CUDA_FA_ALL_QUANTS=ON"


@pytest.mark.parametrize("arch", ["90", "sm_90", "gfx", "navi31", ""])
def test_hip_rejects_garbage(arch):
    with pytest.raises(TqpatchError, match="gfx1100"):
        hip.normalize_arch(arch)


ROCMINFO = """\
*******
Agent 1
*******
  Name:                    AMD Ryzen 9 7950X
  Marketing Name:          AMD Ryzen 9 7950X
  Device Type:             CPU
*******
Agent 2
*******
  Name:                    gfx1100
  Marketing Name:          Radeon RX 7900 XTX
  Device Type:             GPU
"""


def test_hip_detects_targets_and_hardware(monkeypatch):
    monkeypatch.setattr(hip, "run_capture", _fake_capture({"rocminfo": ROCMINFO}))
    assert hip.default_arch() == "gfx1100"
    assert hip.cmake_args(None, False) == ["-DGGML_HIP=ON", "-DGPU_TARGETS=gfx1100"]
    assert hip.hardware() == "Radeon RX 7900 XTX (gfx1100)"


def test_hip_without_gpu(no_gpus):
    assert hip.hardware() is None
    assert hip.cmake_args(None, False) == ["-DGGML_HIP=ON"]


def test_hip_needs_rocm_61():
    reqs = {r.name: r for r in hip.requirements()}
    assert reqs["hipconfig"].min_version == "6.1"


def test_metal_and_vulkan_args():
    assert metal.cmake_args(None, False) == ["-DGGML_METAL=ON"]
    assert vulkan.cmake_args(None, True) == ["-DGGML_VULKAN=ON"]
    with pytest.raises(TqpatchError, match="vulkan"):
        vulkan.cmake_args("90", False)


def test_metal_is_macos_only(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    assert "macOS" in metal.unsupported_reason()
    assert metal.hardware() is None
    monkeypatch.setattr(sys, "platform", "darwin")
    assert metal.unsupported_reason() is None


def test_vulkan_requirements_name_debian_packages():
    debs = {r.debian for r in vulkan.requirements()}
    assert {"glslc", "libvulkan-dev"} <= debs


def test_nvidia_and_vulkan_hardware(monkeypatch):
    monkeypatch.setattr(cuda, "run_capture", _fake_capture({
        "nvidia-smi -L": "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1234)\n"}))
    assert cuda.hardware() == "GPU 0: NVIDIA H100 80GB HBM3"
    monkeypatch.setattr(vulkan, "run_capture", _fake_capture({
        "vulkaninfo --summary": "GPU0:\n\tdeviceName         = llvmpipe (LLVM 15.0.6, 256 bits)\n"}))
    assert vulkan.hardware() == "llvmpipe (LLVM 15.0.6, 256 bits) (CPU Vulkan driver)"


def test_no_hardware_is_none(no_gpus):
    assert cuda.hardware() is None
    assert vulkan.hardware() is None


# ---------------------------------------------------------------- versions


def test_nvcc_newer_than_driver_is_reported():
    msg = cuda.version_mismatch("13.0", "12.4")
    assert "13.0" in msg and "12.4" in msg and "driver" in msg
    assert cuda.version_mismatch("12.4", "12.8") is None
    assert cuda.version_mismatch("12.8", "12.8") is None
    assert cuda.version_mismatch(None, "12.8") is None
    assert cuda.version_mismatch("13.0", None) is None


def test_cuda_notes_report_mismatch(monkeypatch):
    monkeypatch.setattr(cuda.NVCC.__class__, "find", lambda self: "/opt/cuda/bin/nvcc")
    monkeypatch.setattr(cuda, "run_capture", _fake_capture({
        "/opt/cuda/bin/nvcc --version": "Cuda compilation tools, release 13.0, V13.0.48",
        "nvidia-smi --query-gpu": "9.0\n",
        "nvidia-smi": "| NVIDIA-SMI 550.54  Driver Version: 550.54  CUDA Version: 12.4 |",
    }))
    notes = cuda.notes()
    assert len(notes) == 1 and "CUDA 13.0" in notes[0] and "CUDA 12.4" in notes[0]


# ---------------------------------------------------------------- pinned tree


def _pinned_tree() -> Path | None:
    for candidate in (paths.pristine_tree(),
                      Path("/tmp/dl/llama_cpp_python-0.3.36/vendor/llama.cpp")):
        if (candidate / "ggml" / "CMakeLists.txt").is_file():
            return candidate
    return None


def test_option_names_exist_in_pinned_tree():
    from tqpatch import build

    tree = _pinned_tree()
    if tree is None:
        pytest.skip("no pinned llama.cpp tree here (run `tqpatch fetch`)")
    text = "\n".join(p.read_text(errors="replace") for p in tree.rglob("CMakeLists.txt"))
    names = set()
    for b in backends.BACKENDS.values():
        arch = {"cuda": "90", "hip": "gfx1100"}.get(b.name)
        for arg in build.cmake_args(b.name, arch, all_fa_quants=True, ccache=True):
            m = re.match(r"-D([A-Z_]+)=", arg)
            if m:
                names.add(m.group(1))
    for name in sorted(names - {"CMAKE_BUILD_TYPE", "CMAKE_CUDA_ARCHITECTURES"}):
        assert re.search(rf"\b{name}\b", text), f"{name} not used in the pinned tree"
