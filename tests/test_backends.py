"""Backends: cmake arguments, --arch normalisation, hardware and version probes."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tqpatch import backends, formats, paths
from tqpatch.backends import cpu, cuda, hip, metal, vulkan
from tqpatch.errors import TqpatchError
from tqpatch.backends import cmake


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


NVCC13_ARCHS = (75, 80, 86, 87, 88, 89, 90, 100, 103, 110, 120, 121)  # nvcc 13.0 --list-gpu-arch


@pytest.fixture(autouse=True)
def nvcc13(monkeypatch):
    """cmake_args asks nvcc which archs it supports: pretend nvcc 13.0, whatever is installed."""
    monkeypatch.setattr(cuda, "nvcc_gpu_archs", lambda path=None: NVCC13_ARCHS)
    real_version = cuda.NVCC.__class__.version
    monkeypatch.setattr(cuda.NVCC.__class__, "version",
                        lambda self, path: "13.0" if self.name == "nvcc" else real_version(self, path))


DEFAULT_FA = "-DGGML_CUDA_FA_QUANTS=" + ",".join(cuda.DEFAULT_FA_PAIRS)


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
    assert cpu.BACKEND.ggml_backend_name == "CPU"
    assert cuda.BACKEND.ggml_backend_name == "CUDA0"
    assert hip.BACKEND.ggml_backend_name == "ROCm0"  # GGML_CUDA_NAME under GGML_USE_HIP
    assert vulkan.BACKEND.ggml_backend_name == "Vulkan0"
    assert metal.BACKEND.ggml_backend_name == "MTL0"


# ---------------------------------------------------------------- cmake args


def test_cpu_has_no_extra_flags():
    assert cpu.cmake_args(None, {}) == []
    assert cpu.cmake_args("native", {"fa-quants": "all"}) == []


def test_cpu_rejects_gpu_arch():
    with pytest.raises(TqpatchError, match="does not apply to the cpu backend"):
        cpu.cmake_args("90", {})


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
def test_cuda_arch_forms(arch, expected, monkeypatch):
    monkeypatch.setattr(cuda, "detected_archs", lambda: ["90"])  # 'native' needs a GPU
    assert cuda.normalize_arch(arch) == expected
    assert cuda.cmake_args(arch, {}) == ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={expected}",
                                            DEFAULT_FA]


@pytest.mark.parametrize("arch", ["foo", "9", "sm90", "sm_9x", "90;bar", "", ";", "native;90",
                                  "gfx1100", "0x90"])
def test_cuda_rejects_garbage_with_accepted_forms(arch):
    with pytest.raises(TqpatchError) as exc:
        cuda.cmake_args(arch, {})
    msg = str(exc.value)
    assert "accepted" in msg
    for form in ("90", "89;86", "86,89", "sm_90", "native"):
        assert form in msg


# ---------------------------------------------------------------- FlashAttention K/V pairs


def test_default_fa_pairs_cover_every_cache_type_pair_plus_upstream_defaults():
    pairs = cuda.fa_pairs(None)
    # every pair users can name; the block variants (heads 32/96) have no vector kernel
    assert len(pairs) == len(formats.USER_CACHE_TYPES) ** 2 + 2 == len(set(pairs))
    types = ("f16", "q8_0", "turbo2", "turbo3", "turbo4")
    assert {f"{k}-{v}" for k in types for v in types} <= set(pairs)
    assert not [p for p in pairs if "_b" in p]
    assert all(cuda.fa_head_sizes(*p.split("-")) for p in pairs)
    assert set(cuda.UPSTREAM_DEFAULT_FA) <= set(pairs)  # what upstream builds by default stays
    assert cuda.fa_pairs(None) == cuda.fa_pairs("default") == cuda.fa_pairs(" Default ") == pairs


@pytest.mark.parametrize("value, expected", [
    (None, ",".join(cuda.DEFAULT_FA_PAIRS)),
    ("default", ",".join(cuda.DEFAULT_FA_PAIRS)),
    ("all", "all"),
    ("ALL", "all"),
    ("q8_0-turbo3", "q8_0-turbo3"),
    ("q8_0-turbo3;turbo3-turbo3", "q8_0-turbo3,turbo3-turbo3"),
    ("q8_0-turbo3, turbo3-turbo3,q8_0-turbo3", "q8_0-turbo3,turbo3-turbo3"),
    ("Q4_1-BF16 q5_0-q5_1", "q4_1-bf16,q5_0-q5_1"),
    ("default,q4_0-q8_0", ",".join(cuda.DEFAULT_FA_PAIRS) + ",q4_0-q8_0"),
])
def test_fa_quants_values(value, expected):
    assert cuda.fa_quants_value(value) == expected


@pytest.mark.parametrize("value, words", [
    ("q6_k-f16", ["unknown cache type 'q6_k'", "turbo3", "q8_0", "bf16"]),
    ("turbo5-turbo3", ["unknown cache type 'turbo5'"]),
    ("q8_0", ["not a <K type>-<V type>", "default", "all", "q8_0-turbo3"]),
    ("q8_0-turbo3-f16", ["not a <K type>-<V type>"]),
    ("all,q8_0-q8_0", ["'all' cannot be combined"]),
    (" ; ", ["no FlashAttention K/V pairs"]),
])
def test_fa_quants_rejects_with_clear_error(value, words):
    with pytest.raises(TqpatchError) as exc:
        cuda.fa_quants_value(value)
    for w in words:
        assert w in str(exc.value)
    with pytest.raises(TqpatchError):
        cuda.cmake_args("90", {"fa-quants": value})
    with pytest.raises(TqpatchError):
        hip.cmake_args("gfx1100", {"fa-quants": value})


def test_cuda_fa_quants_in_cmake_args():
    assert cuda.cmake_args("90", {"fa-quants": "all"}) == [
        "-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=90", "-DGGML_CUDA_FA_QUANTS=all"]
    assert cuda.cmake_args("90", {"fa-quants": "q8_0-turbo3"})[-1] == "-DGGML_CUDA_FA_QUANTS=q8_0-turbo3"
    assert cuda.cmake_args("90", {})[-1] == DEFAULT_FA
    # the deprecated upstream switch is never passed (it would override the selection)
    for sel in (None, "all", "q8_0-q8_0"):
        assert not any("FA_ALL_QUANTS" in a for a in cuda.cmake_args("90", {"fa-quants": sel}))


# ---------------------------------------------------------------- CUDA arch vs nvcc


@pytest.mark.parametrize("arch, bad", [("35", "35"), ("52", "52"), ("70;90", "70"),
                                       ("sm_61", "61"), ("130", "130"), ("91", "91")])
def test_cuda_arch_nvcc_cannot_build_is_clear(arch, bad, monkeypatch):
    monkeypatch.setattr(cuda.NVCC.__class__, "find", lambda self: "/usr/local/bin/nvcc")
    with pytest.raises(TqpatchError) as exc:
        cuda.cmake_args(arch, {})
    msg = str(exc.value)
    assert f"cannot compile for --arch {bad}" in msg
    assert "nvcc 13.0" in msg and "75 80 86" in msg and "--list-gpu-arch" in msg
    if int(bad) < 75:
        assert "older CUDA toolkit" in msg
    elif int(bad) > 121:
        assert "newer CUDA toolkit" in msg


@pytest.mark.parametrize("arch", ["90", "90a", "100f", "120a-real", "86;89", "75-virtual", "all",
                                  "all-major"])
def test_cuda_arch_nvcc_can_build(arch, monkeypatch):
    monkeypatch.setattr(cuda.NVCC.__class__, "find", lambda self: "/usr/local/bin/nvcc")
    assert cuda.cmake_args(arch, {})[0] == "-DGGML_CUDA=ON"


def test_cuda_arch_check_skipped_without_nvcc(monkeypatch):
    monkeypatch.setattr(cuda, "nvcc_gpu_archs", lambda path=None: None)
    assert "-DCMAKE_CUDA_ARCHITECTURES=35" in cuda.cmake_args("35", {})


def test_nvcc_gpu_archs_parses_list_gpu_arch(monkeypatch):
    monkeypatch.undo()  # the real function, with a fake nvcc
    cuda._list_gpu_arch.cache_clear()
    monkeypatch.setattr(cuda, "run_capture", _fake_capture({
        "/x/nvcc --list-gpu-arch": "compute_75\ncompute_80\ncompute_90\ncompute_100\ncompute_120\n",
        "/old/nvcc --list-gpu-arch": None}))
    assert cuda.nvcc_gpu_archs("/x/nvcc") == (75, 80, 90, 100, 120)
    assert cuda.nvcc_gpu_archs("/old/nvcc") is None
    cuda._list_gpu_arch.cache_clear()


def test_cuda_native_needs_a_gpu(no_gpus):
    with pytest.raises(TqpatchError, match="nvidia-smi found none.*--arch 90"):
        cuda.cmake_args("native", {})


def test_cuda_default_arch_from_detected_gpus(monkeypatch):
    monkeypatch.setattr(cuda, "run_capture", _fake_capture({
        "nvidia-smi --query-gpu=compute_cap": "9.0\n8.6\n9.0\n"}))
    assert cuda.default_arch() == "86;90"
    assert cuda.cmake_args(None, {}) == ["-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=86;90",
                                            DEFAULT_FA]
    assert cuda.cmake_args("native", {})[1] == "-DCMAKE_CUDA_ARCHITECTURES=native"


def test_cuda_without_gpu_or_arch_builds_portable_list(no_gpus):
    assert cuda.default_arch() is None
    assert cuda.cmake_args(None, {}) == ["-DGGML_CUDA=ON", "-DGGML_NATIVE=OFF", DEFAULT_FA]


@pytest.mark.parametrize("arch, expected", [
    ("gfx1100", "gfx1100"),
    ("gfx1100,gfx1030", "gfx1030;gfx1100"),
    ("gfx90a;gfx942", "gfx90a;gfx942"),
    ("GFX1100", "gfx1100"),
    ("gfx90a:xnack-", "gfx90a:xnack-"),
    ("gfx942", "gfx942"),
    ("gfx1030 gfx1100 gfx1030", "gfx1030;gfx1100"),
    ("gfx11-generic", "gfx11-generic"),
])
def test_hip_targets(arch, expected, no_gpus):
    assert hip.cmake_args(arch, {}) == ["-DGGML_HIP=ON", f"-DGPU_TARGETS={expected}", DEFAULT_FA]
    assert hip.cmake_args(arch, {"fa-quants": "all"})[-1] == "-DGGML_CUDA_FA_QUANTS=all"
    assert hip.cmake_args(arch, {"fa-quants": "q8_0-turbo3"})[-1] == "-DGGML_CUDA_FA_QUANTS=q8_0-turbo3"


@pytest.mark.parametrize("arch", ["90", "sm_90", "gfx", "gfx11", "gfx12345", "gfxzzz", "navi31",
                                  "", "gfx1100;sm_90"])
def test_hip_rejects_garbage(arch):
    with pytest.raises(TqpatchError, match="gfx1100"):
        hip.normalize_arch(arch)


def test_hip_compiler_from_hipconfig(monkeypatch, tmp_path):
    """docs/build.md: HIPCXX="$(hipconfig -l)/clang" -> -DCMAKE_HIP_COMPILER."""
    (tmp_path / "llvm" / "bin").mkdir(parents=True)
    (tmp_path / "llvm" / "bin" / "clang").write_text("")
    hipconfig = str(tmp_path / "bin" / "hipconfig")
    monkeypatch.setattr(hip.HIPCONFIG.__class__, "find",
                        lambda self: hipconfig if self.name == "hipconfig" else None)
    monkeypatch.setattr(hip, "run_capture", _fake_capture({
        f"{hipconfig} -l": f"{tmp_path}/llvm/bin\n", "rocminfo": None}))
    args = hip.cmake_args("gfx942", {})
    assert args[:3] == ["-DGGML_HIP=ON", f"-DCMAKE_HIP_COMPILER={tmp_path}/llvm/bin/clang",
                        "-DGPU_TARGETS=gfx942"]


def test_hip_native(monkeypatch, no_gpus):
    with pytest.raises(TqpatchError, match="rocminfo found none.*gfx1100"):
        hip.cmake_args("native", {})
    monkeypatch.setattr(hip, "run_capture", _fake_capture({"rocminfo": ROCMINFO}))
    assert "-DGPU_TARGETS=gfx1100" in hip.cmake_args("native", {})


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
    assert hip.cmake_args(None, {}) == ["-DGGML_HIP=ON", "-DGPU_TARGETS=gfx1100", DEFAULT_FA]
    assert hip.hardware() == "Radeon RX 7900 XTX (gfx1100)"


def test_hip_without_gpu(no_gpus):
    assert hip.hardware() is None
    assert hip.cmake_args(None, {}) == ["-DGGML_HIP=ON", DEFAULT_FA]


def test_hip_needs_rocm_61():
    reqs = {r.name: r for r in hip.requirements()}
    assert reqs["hipconfig"].min_version == "6.1"


def _fake_rocm(monkeypatch, tmp_path, hipconfig_version, info_version=None):
    root = tmp_path / "rocm"
    (root / "bin").mkdir(parents=True)
    hipconfig = str(root / "bin" / "hipconfig")
    if info_version is not None:
        (root / ".info").mkdir()
        (root / ".info" / "version").write_text(info_version + "\n")
    monkeypatch.setattr(hip.HIPCONFIG.__class__, "find",
                        lambda self: hipconfig if self.name == "hipconfig" else None)
    monkeypatch.setattr(hip, "run_capture", _fake_capture({
        f"{hipconfig} --version": hipconfig_version}))
    monkeypatch.delenv("ROCM_PATH", raising=False)
    return hipconfig


def test_rocm_not_found_says_hip_not_built(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(hip.HIPCONFIG.__class__, "find", lambda self: None)
    reason = hip.unsupported_reason()
    assert reason.startswith("ROCm not found: HIP not built")
    assert "6.1" in reason and "rocm.docs.amd.com" in reason


@pytest.mark.parametrize("hipconfig_out, info, version, ok", [
    ("6.1.40091-a8dbc0c19", None, "6.1.40091", True),
    ("6.0.32830-d62f6a171", None, "6.0.32830", False),
    (None, "6.2.0-66", "6.2.0", True),  # hipconfig --version fails: /opt/rocm/.info/version
    (None, "5.7.1-98", "5.7.1", False),
])
def test_rocm_version_and_minimum(monkeypatch, tmp_path, hipconfig_out, info, version, ok):
    monkeypatch.setattr(sys, "platform", "linux")
    path = _fake_rocm(monkeypatch, tmp_path, hipconfig_out, info)
    assert hip.rocm_version(path) == version
    probe = hip.HIPCONFIG.probe()
    assert probe.version == version and probe.ok == ok
    reason = hip.unsupported_reason()
    if ok:
        assert reason is None
    else:
        assert f"ROCm {version} found" in reason and "needs ROCm >= 6.1: HIP not built" in reason


def test_rocm_version_unreadable(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "linux")
    _fake_rocm(monkeypatch, tmp_path, None, None)
    monkeypatch.setattr(hip, "_rocm_roots", lambda h: [tmp_path / "rocm"])
    assert "version is unreadable" in hip.unsupported_reason()
    assert "HIP not built" in hip.unsupported_reason()


def test_metal_and_vulkan_args():
    assert metal.cmake_args(None, {}) == ["-DGGML_METAL=ON", "-DGGML_METAL_EMBED_LIBRARY=ON"]
    assert vulkan.cmake_args(None, {"fa-quants": "all"}) == ["-DGGML_VULKAN=ON"]
    with pytest.raises(TqpatchError, match="vulkan"):
        vulkan.cmake_args("90", {})


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


_VULKANINFO_H100_AND_LAVAPIPE = """Devices:
========
GPU0:
\tapiVersion         = 1.3.277
\tdeviceType         = PHYSICAL_DEVICE_TYPE_DISCRETE_GPU
\tdeviceName         = NVIDIA H100 80GB HBM3
\tdriverName         = NVIDIA
GPU1:
\tapiVersion         = 1.3.230
\tdeviceType         = PHYSICAL_DEVICE_TYPE_CPU
\tdeviceName         = llvmpipe (LLVM 15.0.6, 256 bits)
\tdriverName         = llvmpipe
"""


def test_vulkan_devices_tell_lavapipe_from_a_gpu(monkeypatch):
    monkeypatch.setattr(vulkan, "run_capture", _fake_capture({"vulkaninfo --summary": _VULKANINFO_H100_AND_LAVAPIPE}))
    assert vulkan.devices() == [("NVIDIA H100 80GB HBM3", False), ("llvmpipe (LLVM 15.0.6, 256 bits)", True)]
    assert vulkan.hardware() == "NVIDIA H100 80GB HBM3; llvmpipe (LLVM 15.0.6, 256 bits) (CPU Vulkan driver)"
    assert vulkan.e2e.runnable() is None


def test_vulkan_lavapipe_alone_is_no_reason_to_build_vulkan(monkeypatch):
    lavapipe = _VULKANINFO_H100_AND_LAVAPIPE.split("GPU1:")[1]
    monkeypatch.setattr(vulkan, "run_capture", _fake_capture({"vulkaninfo --summary": "GPU0:" + lavapipe}))
    assert vulkan.detect() == (False, "")
    assert vulkan.e2e.runnable() is None  # but the end-to-end tests run on it
    monkeypatch.setattr(vulkan, "run_capture", _fake_capture({}))
    assert "mesa-vulkan-drivers" in vulkan.e2e.runnable()


def _fa_case_vars(hs, kv, nb, k, v):
    """test_flash_attn_ext::vars() of the turbo cases (templates/tests/test-backend-ops-turbo.inc.j2)."""
    return (f"hsk={hs},hsv={hs},nh=4,nr23=[2,1],kv={kv},nb={nb},mask=1,sinks=0,max_bias=0.000000,"
            f"logit_softcap=0.000000,prec=f32,type_K={k},type_V={v},permute=[0,1,2,3],kv_view=0,"
            f"v_is_view_of_k=0,n_kv_max=0")


def test_vulkan_fa_subset_keeps_every_kv_pair():
    from tqpatch import formats

    pattern = re.compile(vulkan.e2e.ops_filter["FLASH_ATTN_EXT"])
    # the cases test-backend-ops has (templates/tests/test-backend-ops-turbo.inc.j2)
    cases = [(hs, kv, nb, k, v) for hs, k, v in formats.fa_cases() for nb in (1, 3, 32) for kv in (113, 512)]
    kept = [c for c in cases if pattern.search(_fa_case_vars(*c))]
    # every K/V pair a head size produces runs, the block variants' at the heads they serve
    assert {(k, v) for *_, k, v in kept} == {(k, v) for _, k, v in formats.fa_cases()}
    assert {hs for hs, *_ in kept} == {hs for hs, _, _ in formats.fa_cases()}
    assert all(kv == 113 and nb in (1, 3) for _, kv, nb, _, _ in kept)
    assert len(kept) < len(cases) / 4
    # upstream's own cases (no turbo type) are never picked
    assert not pattern.search(_fa_case_vars(128, 113, 1, "q8_0", "q8_0"))
    assert not pattern.search(_fa_case_vars(96, 113, 1, "f16", "f16"))
    assert vulkan.e2e.env == {"GGML_VK_VISIBLE_DEVICES": "0"}


def test_vulkan_quantizer_threads_own_whole_bytes_of_every_plane():
    from tqpatch import formats

    for fmt in formats.TURBO_FORMATS.values():
        g = vulkan.quant_geometry(fmt)
        assert g["tpb"] * g["vpt"] == fmt.block
        assert 128 % g["tpb"] == 0  # the shader's 128 threads hold whole blocks
        for p in fmt.planes:  # blocks are written byte by byte: no two threads share a byte
            assert g["vpt"] * p.bits % 8 == 0, (fmt.name, p.field)
    # a 96-value block of a 1-bit plane is 12 bytes: 4 threads of 3 bytes, not 8 of 1.5
    assert vulkan.quant_geometry(formats.TURBO_FORMATS["turbo3_b96"]) == {"tpb": 4, "vpt": 24}
    assert vulkan.render_context()["quant"].keys() == formats.TURBO_FORMATS.keys()


def test_vulkan_log_tables_are_the_formats_float32_bits():
    import struct

    from tqpatch import formats

    tables = vulkan.render_context()["log"]
    assert tables.keys() == {s.kind for s in formats.SCALES.values() if s.is_log}
    t, s = tables["log8"], formats.LOG8
    assert t["scale"][s.NAN_CODE] == 0x7FC00000 and t["scale"][s.ZERO_CODE] == 0
    assert len(t["scale"]) == len(t["inv"]) == 256 and len(t["bounds"]) == 253
    f32 = lambda b: struct.unpack("<f", struct.pack("<I", b))[0]  # noqa: E731
    assert [f32(b) for b in t["scale"][:-1]] == list(s.table[:-1])
    assert [f32(b) for b in t["inv"]] == list(s.inverse)
    assert [f32(b) for b in t["bounds"]] == list(s.boundaries)


def test_no_hardware_is_none(no_gpus):
    assert cuda.hardware() is None
    assert vulkan.hardware() is None


# ---------------------------------------------------------------- versions


def test_nvcc_newer_than_driver_is_reported():
    msg = cuda.version_mismatch("13.0", "12.4")
    assert "13.0" in msg and "12.4" in msg and "driver" in msg
    assert "driver version is insufficient" in msg and "CUDACXX" in msg
    msg = cuda.version_mismatch("12.8", "12.4")  # same major: minor-version compatibility
    assert "minor-version compatibility" in msg and "PTX" in msg and "12.4" in msg
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
    text += "\n".join(p.read_text(errors="replace") for p in tree.rglob("*.cmake"))
    # ... or added by our own patches (e.g. LLAMA_TURBO_BOUNDARY_K, patch 0010)
    text += "\n".join(p.read_text(errors="replace")
                      for p in (Path(__file__).parent.parent / "patches").glob("*.patch"))
    names = set()
    for b in backends.BACKENDS.values():
        arch = {"cuda": "90", "hip": "gfx1100"}.get(b.name)
        for arg in cmake.configure_args(backends.get(b.name), arch, options={"fa-quants": "all"}, ccache=True):
            m = re.match(r"-D([A-Z_]+)=", arg)
            if m:
                names.add(m.group(1))
    assert "GGML_CUDA_FA_QUANTS" in names
    for name in sorted(names - {"CMAKE_BUILD_TYPE", "CMAKE_CUDA_ARCHITECTURES",
                                "CMAKE_HIP_COMPILER"}):
        assert re.search(rf"\b{name}\b", text), f"{name} not used in the pinned tree"
