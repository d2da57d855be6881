"""build: cmake invocation, reconfigure rules, progress parsing, toolchain errors,
doctor output and find_binary. Nothing here builds llama.cpp."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest

import backend_params
from click.testing import CliRunner

from tqpatch import build, paths, toolchain, ui
from tqpatch.cli import main
from tqpatch.errors import TqpatchError
from tqpatch import backends
from tqpatch.backends import cmake, cuda, hip
from tqpatch import build_record


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TQPATCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---------------------------------------------------------------- cmake args

COMMON = ["-DLLAMA_BUILD_TESTS=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_EXAMPLES=OFF",
          "-DBUILD_SHARED_LIBS=OFF"]


def test_cmake_args_cpu():
    args = cmake.configure_args(backends.get("cpu"))
    assert args[:3] == ["-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release"]
    for a in COMMON:
        assert a in args
    assert "-DGGML_CCACHE=OFF" in args
    assert not any(a.startswith(("-DGGML_CUDA", "-DGGML_VULKAN", "-DGGML_HIP", "-DGGML_METAL"))
                   for a in args)


def test_cmake_args_ccache_debug_and_extra_last():
    args = cmake.configure_args(backends.get("cuda"), "sm_90", build_type="Debug", ccache=True, options={"fa-quants": "all"},
                            extra=["-DGGML_CUDA_GRAPHS=OFF"])
    assert "-DCMAKE_BUILD_TYPE=Debug" in args
    assert "-DGGML_CCACHE=ON" in args
    assert args[-4:] == ["-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=90",
                         "-DGGML_CUDA_FA_QUANTS=all", "-DGGML_CUDA_GRAPHS=OFF"]


@pytest.mark.parametrize("backend, flag", [
    ("vulkan", "-DGGML_VULKAN=ON"), ("metal", "-DGGML_METAL=ON"), ("hip", "-DGGML_HIP=ON")])
def test_cmake_args_other_backends(backend, flag):
    assert flag in cmake.configure_args(backends.get(backend), "gfx1100" if backend == "hip" else None)


def test_cmake_args_bad_build_type():
    with pytest.raises(TqpatchError, match="Release or Debug"):
        cmake.configure_args(backends.get("cpu"), build_type="Fast")


# ---------------------------------------------------------------- reconfigure


def _configured(build_dir: Path):
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / "CMakeCache.txt").write_text("CMAKE_MAKE_PROGRAM:FILEPATH=ninja\n")
    (build_dir / "build.ninja").write_text("")


def test_needs_configure_only_when_args_change(tmp_path):
    tree, bdir = tmp_path / "tree", tmp_path / "b"
    tree.mkdir()
    args = cmake.configure_args(backends.get("cpu"))
    assert build.needs_configure(bdir, tree, args)  # nothing there yet
    _configured(bdir)
    assert build.needs_configure(bdir, tree, args)  # configured, but not by us
    build.remember_configure(bdir, tree, args)
    assert not build.needs_configure(bdir, tree, args)
    assert build.needs_configure(bdir, tree, cmake.configure_args(backends.get("cpu"), build_type="Debug"))
    assert build.needs_configure(bdir, tree, args + ["-DX=1"])
    other = tmp_path / "tree2"
    other.mkdir()
    assert build.needs_configure(bdir, other, args)
    (bdir / "build.ninja").unlink()
    assert build.needs_configure(bdir, tree, args)


# ---------------------------------------------------------------- progress


@pytest.mark.parametrize("line, expected", [
    ("[1/250] Building C object ggml/src/CMakeFiles/ggml-base.dir/ggml.c.o", (1, 250)),
    ("[250/250] Linking CXX executable bin/llama-cli\n", (250, 250)),
    ("  [12/34] Generating build details", (12, 34)),
    ("FAILED: ggml/src/CMakeFiles/ggml.dir/x.c.o", None),
    ("ninja: build stopped: subcommand failed.", None),
    ("-- Configuring done", None),
    ("[0/0] nothing", None),
    ("", None),
])
def test_parse_progress(line, expected):
    assert build.parse_progress(line) == expected


def test_ninja_lines_move_the_progress():
    lines: list[str] = []
    with ui.Progress("compile", tty=False, echo=lines.append) as p:
        feed = build._progress_feed(p)
        for i in range(1, 201):
            feed(f"[{i}/200] Building CXX object x{i}.o\n")
            feed("some compiler warning\n")
    assert 10 <= len(lines) <= 11
    assert lines[-1].endswith("100% (200/200)")
    assert p.done == 200 and p.total == 200


def test_parse_targets():
    text = ("bin/llama-cli: CXX_EXECUTABLE_LINKER__llama-cli_Release\n"
            "llama-cli: phony\nbuild.ninja: RERUN_CMAKE\nall: phony\n")
    assert {"llama-cli", "bin/llama-cli", "all", "build.ninja"} == build.parse_targets(text)


# ---------------------------------------------------------------- toolchain


def test_missing_toolchain_names_packages(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(TqpatchError) as exc:
        toolchain.find_toolchain()
    msg = str(exc.value)
    assert "cmake" in msg and "ninja" in msg and "C++ compiler" in msg
    assert "pip install cmake ninja" in msg
    assert "apt-get install cmake ninja-build build-essential" in msg
    assert "ccache" not in msg.splitlines()[0]  # optional


def test_only_compiler_missing(monkeypatch):
    real = shutil.which
    monkeypatch.setattr(shutil, "which",
                        lambda n, *a, **k: None if n in ("cc", "gcc", "clang") else real(n))
    monkeypatch.delenv("CC", raising=False)
    if real("cmake") is None or real("ninja") is None:
        pytest.skip("cmake/ninja not installed here")
    with pytest.raises(TqpatchError) as exc:
        toolchain.find_toolchain()
    msg = str(exc.value)
    assert "C compiler" in msg and "apt-get install build-essential" in msg
    assert "pip install" not in msg


def test_old_cmake_is_reported(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda n, *a, **k: f"/fake/{n}")
    monkeypatch.setattr(toolchain.os, "access", lambda p, m: True)
    monkeypatch.setattr(toolchain, "run_capture", lambda cmd, timeout=15: {
        "/fake/cmake": "cmake version 3.10.2\n"}.get(cmd[0], "1.11.1"))
    probe = toolchain.CMAKE.probe()
    assert not probe.ok and "3.10.2 is too old" in probe.problem and "pip install cmake" in probe.problem


def test_backend_requirement_missing_message():
    reqs = __import__("tqpatch.backends.vulkan", fromlist=["x"]).requirements()
    probes = [toolchain.Probe(r.name, "", None, None, False, problem="not found; " + r.hint())
              for r in reqs]
    msg = toolchain.missing_message(probes, "vulkan build requirements", reqs)
    assert "glslc" in msg and "apt-get install glslc libvulkan-dev spirv-headers" in msg


# ---------------------------------------------------------------- the build, faked


def _fake_apply(monkeypatch, ensure_applied):
    """Stand in for the apply stage as the build sees it."""
    fake_module = types.SimpleNamespace(ensure_applied=ensure_applied,
                                        tree_inputs=lambda tree: {"digest": "d", "render": {}})
    monkeypatch.setattr(build, "apply", fake_module)


def _probe(name, path, version="1.0"):
    return toolchain.Probe(name, "", path, version, True)


REAL_RUN = ui.run


class FakeRunner:
    """Stands in for cmake/ninja: records commands, fakes their effects."""

    def __init__(self, targets, fail_build=False):
        self.targets = set(targets)
        self.commands: list[list[str]] = []
        self.fail_build = fail_build

    def run(self, cmd, *, log=None, on_line=None, env=None, what=None, **kw):
        """ui.run as cmake and ninja would answer it (other programs really run)."""
        cmd = list(cmd)
        if cmd[1:2] not in (["-S"], ["--build"]):
            return REAL_RUN(cmd, log=log, on_line=on_line, env=env, what=what, **kw)
        self.commands.append(cmd)
        if "-S" in cmd:
            bdir = Path(cmd[cmd.index("-B") + 1])
            _configured(bdir)
            return ui.Result(0, "")
        if cmd[-1] == "build.ninja":
            return ui.Result(0, "")
        bdir = Path(cmd[2])
        wanted = cmd[cmd.index("--target") + 1: cmd.index("-j")]
        out = []
        for i, t in enumerate(wanted, 1):
            out.append(f"[{i}/{len(wanted)}] Linking CXX executable bin/{t}\n")
            if on_line:
                on_line(out[-1])
        if self.fail_build:
            out += [f"error line {i}\n" for i in range(60)]
            raise ui.failure(what, 1, "".join(out), log)
        (bdir / "bin").mkdir(exist_ok=True)
        for t in wanted:
            (bdir / "bin" / t).write_text("#!/bin/sh\n")
        return ui.Result(0, "".join(out))

    def capture(self, cmd, timeout=15, **kw):
        self.commands.append(list(cmd))
        return "".join(f"{t}: phony\nbin/{t}: CXX_EXECUTABLE_LINKER\n" for t in self.targets)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    tree = tmp_path / "llama.cpp"
    tree.mkdir()
    calls = []

    def ensure_applied(t):
        calls.append(t)
        return t or tree

    _fake_apply(monkeypatch, ensure_applied)
    tc = toolchain.Toolchain(_probe("cmake", "/usr/bin/cmake", "3.28.1"),
                             _probe("ninja", "/usr/bin/ninja", "1.11.1"),
                             _probe("C compiler", "/usr/bin/cc", "12.2.0"),
                             _probe("C++ compiler", "/usr/bin/c++", "12.2.0"),
                             toolchain.Probe("ccache", "", None, None, False, optional=True))
    monkeypatch.setattr(toolchain, "find_toolchain", lambda: tc)
    runner = FakeRunner(set(build.DEFAULT_TARGETS) - {"tqpatch-verify"})
    monkeypatch.setattr(build.ui, "run", runner.run)
    monkeypatch.setattr(build.ui, "capture", runner.capture)
    runner.tree = tree
    runner.apply_calls = calls
    return runner


def _run(**kw):
    kw["backend"] = backends.get(kw["backend"])
    out: list[str] = []
    record = build.build(build.BuildRequest(**kw), echo=lambda m="", **k: out.append(str(m)))
    return record, "\n".join(out)


def _configures(runner):
    return [c for c in runner.commands if "-S" in c]


def test_build_configures_once_then_only_on_change(fake):
    record, out = _run(backend="cpu", jobs=3)
    bdir = paths.default_build_dir("cpu").resolve()
    assert len(_configures(fake)) == 1
    conf = _configures(fake)[0]
    assert conf[:5] == ["/usr/bin/cmake", "-S", str(fake.tree.resolve()), "-B", str(bdir)]
    assert "-DGGML_CCACHE=OFF" in conf
    compile_cmd = fake.commands[-1]
    assert compile_cmd[:4] == ["/usr/bin/cmake", "--build", str(bdir), "--target"]
    assert compile_cmd[-2:] == ["-j", "3"]
    assert "tqpatch-verify" not in compile_cmd  # the tree lacks it
    assert "no tqpatch-verify target" in out
    assert "next: tqpatch verify --backend cpu" in out
    assert str(bdir / "bin") in out
    assert record["skipped_targets"] == ["tqpatch-verify"]
    assert (bdir / build.LOG_NAME).is_file()
    saved = json.loads((bdir / build.RECORD_NAME).read_text())
    assert saved["backend"] == "cpu" and saved["cmake_args"] == conf[5:]
    assert saved["tools"]["cmake"]["version"] == "3.28.1"
    assert "seconds" in saved and saved["tree"] == str(fake.tree.resolve())

    _run(backend="cpu")  # same args: no configure
    assert len(_configures(fake)) == 1
    assert "up to date" in _run(backend="cpu")[1]
    _run(backend="cpu", extra_cmake_args=["-DGGML_NATIVE=OFF"])  # changed: configure again
    assert len(_configures(fake)) == 2
    assert _configures(fake)[-1][-1] == "-DGGML_NATIVE=OFF"
    assert fake.apply_calls == [None] * 4


def test_build_passes_tree_and_build_dir(fake, tmp_path):
    other = tmp_path / "mytree"
    other.mkdir()
    bdir = tmp_path / "mybuild"
    record, out = _run(backend="cuda", arch="86,89", tree=other, build_dir=bdir,
                       targets=["llama-cli"], build_type="Debug", options={"fa-quants": "all"})
    assert fake.apply_calls == [other]
    conf = _configures(fake)[0]
    assert conf[2] == str(other.resolve()) and conf[4] == str(bdir.resolve())
    assert "-DCMAKE_CUDA_ARCHITECTURES=86;89" in conf and "-DGGML_CUDA_FA_QUANTS=all" in conf
    assert "-DCMAKE_BUILD_TYPE=Debug" in conf
    assert record["arch"] == "86;89" and record["targets"] == ["llama-cli"]
    assert f"--build-dir {bdir.resolve()}" in out


def test_build_rejects_bad_arch_before_any_work(fake):
    with pytest.raises(TqpatchError, match="accepted"):
        _run(backend="cuda", arch="hopper")
    assert fake.commands == [] and fake.apply_calls == []


def test_build_unknown_target_suggests(fake):
    with pytest.raises(TqpatchError, match="did you mean llama-server"):
        _run(backend="cpu", targets=["llama-sever"])


def test_build_with_verify_target_present(fake):
    fake.targets.add("tqpatch-verify")
    record, out = _run(backend="cpu")
    assert "tqpatch-verify" in fake.commands[-1] and record["skipped_targets"] == []


def test_build_failure_names_tail_and_log(fake):
    fake.fail_build = True
    with pytest.raises(TqpatchError) as exc:
        build.build(build.BuildRequest(backend=backends.get("cpu")), echo=lambda m="", **k: None)
    log = paths.default_build_dir("cpu").resolve() / build.LOG_NAME
    text = str(exc.value)
    assert text.startswith(f"build failed (exit 1); full log: {log}")
    assert "error line 59" in text and "error line 5\n" not in text
    assert not (log.parent / build.RECORD_NAME).exists()


def test_build_missing_backend_tools(fake, monkeypatch):
    monkeypatch.setattr(toolchain.Requirement, "find", lambda self: None)
    with pytest.raises(TqpatchError, match="apt-get install glslc"):
        _run(backend="vulkan")
    assert fake.commands == []


def test_build_metal_refused_off_macos(fake, monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.raises(TqpatchError, match="macOS"):
        _run(backend="metal")


def test_build_cli_invokes_build(fake, monkeypatch):
    seen = {}
    monkeypatch.setattr(build, "build", lambda req: seen.setdefault("req", req))
    result = CliRunner().invoke(main, ["build", "--backend", "cuda", "--arch", "sm_90",
                                       "--targets", "llama-cli,llama-bench", "-j", "2", "--debug",
                                       "--cmake-arg", "-DGGML_CUDA_GRAPHS=OFF", "--fa-quants", "all"])
    assert result.exit_code == 0, result.output
    req = seen["req"]
    assert (req.backend.name, req.arch, req.targets, req.jobs, req.build_type) == (
        "cuda", "sm_90", ["llama-cli", "llama-bench"], 2, "Debug")
    assert req.extra_cmake_args == ("-DGGML_CUDA_GRAPHS=OFF",) and req.options == {"fa-quants": "all"}


@pytest.mark.parametrize("given, passed", [
    ([], "default"),
    (["--fa-quants", "all"], "all"),
    (["--fa-quants", "Q8_0-turbo3;turbo3-turbo3"], "q8_0-turbo3;turbo3-turbo3"),
])
def test_build_cli_fa_quants(fake, monkeypatch, given, passed):
    seen = {}
    monkeypatch.setattr(build, "build", lambda req: seen.setdefault("req", req))
    result = CliRunner().invoke(main, ["build", "--backend", "cuda", "--arch", "90", *given])
    assert result.exit_code == 0, result.output
    assert seen["req"].options == {"fa-quants": passed}  # the backend's parsed build options


def test_build_cli_backend_option_for_another_backend_is_clean_error(fake):
    result = CliRunner().invoke(main, ["build", "--backend", "cpu", "--fa-quants", "all"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "--fa-quants applies to the cuda, hip backend(s), not cpu" in result.output


def test_build_cli_without_backend_says_what_it_chose(fake, monkeypatch):
    seen = {}
    monkeypatch.setattr(build, "build", lambda req: seen.setdefault("req", req))
    monkeypatch.setattr(backends, "detect", lambda: (backends.get("cuda"), "NVIDIA H100 with nvcc 13.0"))
    result = CliRunner().invoke(main, ["build"])
    assert result.exit_code == 0, result.output
    assert "backend: cuda (NVIDIA H100 with nvcc 13.0; --backend overrides)" in result.output
    assert seen["req"].backend.name == "cuda" and seen["req"].options == {"fa-quants": "default"}


def test_build_cli_fa_quants_bad_pair_is_clean_error(fake):
    result = CliRunner().invoke(main, ["build", "--backend", "cuda", "--fa-quants", "q8_0-q6_k"])
    assert result.exit_code == 2
    assert "--fa-quants" in result.output and "unknown cache type 'q6_k'" in result.output
    assert "turbo3" in result.output and "Traceback" not in result.output
    assert fake.commands == [] and fake.apply_calls == []


def test_build_cmake_invocation_cuda(fake, monkeypatch):
    """The configure argv for CUDA: one element per -D option, semicolons and commas kept inside."""

    monkeypatch.setattr(cuda, "nvcc_gpu_archs", lambda path=None: (75, 80, 86, 89, 90, 120))
    record, out = _run(backend="cuda", arch="89;86", options={"fa-quants": "q8_0-turbo3;turbo3-turbo3"})
    conf = _configures(fake)[0]
    assert conf[:2] == ["/usr/bin/cmake", "-S"]
    assert conf[5:8] == ["-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release"]
    for a in ("-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=86;89",
              "-DGGML_CUDA_FA_QUANTS=q8_0-turbo3,turbo3-turbo3", "-DLLAMA_BUILD_TESTS=ON",
              "-DBUILD_SHARED_LIBS=OFF"):
        assert conf.count(a) == 1, a
    assert not any("FA_ALL_QUANTS" in a or "GGML_HIP" in a for a in conf)
    assert record["cmake_args"] == conf[5:] and record["arch"] == "86;89"
    _run(backend="cuda", arch="89;86")  # the default selection: reconfigure with 27 pairs
    conf = _configures(fake)[-1]
    fa = [a for a in conf if a.startswith("-DGGML_CUDA_FA_QUANTS=")]
    assert fa == ["-DGGML_CUDA_FA_QUANTS=" + ",".join(cuda.DEFAULT_FA_PAIRS)]
    assert "turbo3-turbo3" in fa[0] and "q8_0-turbo4" in fa[0] and "bf16-bf16" in fa[0]


def test_build_cuda_arch_nvcc_cannot_compile_fails_before_configure(fake, monkeypatch):

    monkeypatch.setattr(cuda, "nvcc_gpu_archs", lambda path=None: (75, 80, 86, 89, 90, 120))
    monkeypatch.setattr(cuda.NVCC.__class__, "find", lambda self: "/usr/local/cuda/bin/nvcc")
    with pytest.raises(TqpatchError, match=r"cannot compile for --arch 35: it supports 75 80"):
        _run(backend="cuda", arch="35")
    assert _configures(fake) == []


def test_build_cmake_invocation_hip(fake, monkeypatch):

    # as if ROCm >= 6.1 were here
    backend_params.patch(monkeypatch, "hip", unsupported_reason=lambda: None, requirements=lambda: [])
    monkeypatch.setattr(hip, "hip_compiler", lambda: "/opt/rocm/llvm/bin/clang")
    record, out = _run(backend="hip", arch="gfx1100,gfx90a", options={"fa-quants": "all"})
    conf = _configures(fake)[0]
    for a in ("-DGGML_HIP=ON", "-DCMAKE_HIP_COMPILER=/opt/rocm/llvm/bin/clang",
              "-DGPU_TARGETS=gfx1100;gfx90a", "-DGGML_CUDA_FA_QUANTS=all"):
        assert conf.count(a) == 1, a
    assert not any(a.startswith("-DGGML_CUDA=") for a in conf)
    assert record["ggml_backend_name"] == "ROCm0"
    assert "next: tqpatch verify --backend hip" in out


def test_build_hip_without_rocm_says_not_built(fake, monkeypatch):

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(hip.HIPCONFIG.__class__, "find", lambda self: None)
    with pytest.raises(TqpatchError, match="ROCm not found: HIP not built"):
        _run(backend="hip", arch="gfx1100")
    assert fake.commands == [] and fake.apply_calls == []
    result = CliRunner().invoke(main, ["doctor", "--json"])
    why = json.loads(result.output)["backends"]["hip"]["why_not"]
    assert why.startswith("ROCm not found: HIP not built")
    assert "HIP not built" in CliRunner().invoke(main, ["doctor"]).output


@pytest.mark.skipif(not shutil.which("cmake"), reason="needs cmake")
def test_semicolon_lists_reach_cmake_as_one_value(tmp_path):
    """The build passes an argv list (no shell): 'a;b' arrives as a two-item cmake list."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.14)\nproject(toy NONE)\n"
        "list(LENGTH CMAKE_CUDA_ARCHITECTURES n)\n"
        'message(STATUS "ARCHS=${CMAKE_CUDA_ARCHITECTURES} n=${n}")\n'
        'string(REPLACE "," ";" fa "${GGML_CUDA_FA_QUANTS}")\nlist(LENGTH fa m)\n'
        'message(STATUS "FA=${GGML_CUDA_FA_QUANTS} m=${m}")\n')
    log_path = tmp_path / "log"
    rc = ui.run(["cmake", "-S", str(tree), "-B", str(tmp_path / "b"),
                 "-DCMAKE_CUDA_ARCHITECTURES=86;89",
                 "-DGGML_CUDA_FA_QUANTS=q8_0-turbo3,turbo3-turbo3;f16-f16"], log=log_path,
                check=False).returncode
    text = log_path.read_text()
    assert rc == 0, text
    assert "ARCHS=86;89 n=2" in text and "FA=q8_0-turbo3,turbo3-turbo3;f16-f16 m=3" in text


def test_build_cli_bad_arch_is_clean_error(fake):
    result = CliRunner().invoke(main, ["build", "--backend", "cuda", "--arch", "sm90x"])
    assert result.exit_code == 1
    assert "accepted" in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------- find_binary


def test_find_binary_without_build():
    with pytest.raises(TqpatchError, match=r"tqpatch build --backend cuda"):
        build_record.find_binary("llama-cli", backends.get("cuda"))


def test_find_binary_after_build(fake):
    _run(backend="cpu", targets=["llama-cli"])
    path = build_record.find_binary("llama-cli", backends.get("cpu"))
    assert path == paths.default_build_dir("cpu").resolve() / "bin" / "llama-cli"
    with pytest.raises(TqpatchError, match=r"--targets llama-bench") as exc:
        build_record.find_binary("llama-bench", backends.get("cpu"))
    assert "built: llama-cli" in str(exc.value)


def test_find_binary_skipped_target_and_custom_dir(fake, tmp_path):
    bdir = tmp_path / "b"
    _run(backend="cpu", build_dir=bdir)
    with pytest.raises(TqpatchError) as exc:
        build_record.find_binary("tqpatch-verify", backends.get("cpu"), bdir)
    assert "no tqpatch-verify target" in str(exc.value)
    assert f"--build-dir {bdir.resolve()}" in str(exc.value)
    with pytest.raises(TqpatchError, match="holds a 'cpu' build"):
        build_record.find_binary("llama-cli", backends.get("cuda"), bdir)


def test_unknown_backend():
    with pytest.raises(TqpatchError, match="unknown backend"):
        backends.get("opencl")


# ---------------------------------------------------------------- a real tiny cmake project


@pytest.mark.skipif(not all(shutil.which(t) for t in ("cmake", "ninja", "cc")),
                    reason="needs cmake, ninja and a C compiler")
def test_real_cmake_on_tiny_tree(tmp_path, monkeypatch):
    """The real configure/compile/target-listing path, on a toy tree (seconds)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "main.c").write_text("int main(void) { return 0; }\n")
    (tree / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.14)\nproject(toy C)\n"
        "set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)\n"
        "foreach(t llama-cli llama-bench)\n  add_executable(${t} main.c)\nendforeach()\n")
    _fake_apply(monkeypatch, lambda t: t)
    bdir = tmp_path / "build"
    out: list[str] = []
    record = build.build(build.BuildRequest(backend=backends.get("cpu"), tree=tree, build_dir=bdir, jobs=2,
                                            targets=["llama-cli", "llama-bench", "tqpatch-verify"]),
                         echo=lambda m="", **k: out.append(str(m)))
    assert (bdir / "bin" / "llama-cli").is_file()
    assert record["skipped_targets"] == ["tqpatch-verify"]
    assert build_record.find_binary("llama-bench", backends.get("cpu"), bdir).is_file()
    log = (bdir / build.LOG_NAME).read_text()
    assert "[2/2]" in log or "[1/" in log
    build.build(build.BuildRequest(backend=backends.get("cpu"), tree=tree, build_dir=bdir, jobs=2,
                                   targets=["llama-cli"]), echo=lambda m="", **k: out.append(str(m)))
    assert sum("up to date" in line for line in out) == 1


# ---------------------------------------------------------------- doctor


def test_doctor_table_and_json():
    runner = CliRunner()
    result = runner.invoke(main, ["doctor"])
    assert result.exit_code == 0, result.output
    for word in ("cmake", "ninja", "BACKEND", "cpu", "cuda", "hip", "metal", "vulkan", "BUILD HERE"):
        assert word in result.output
    result = runner.invoke(main, ["doctor", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert set(data["backends"]) == {"cpu", "cuda", "hip", "metal", "vulkan"}
    for b in data["backends"].values():
        assert {"can_build", "why_not", "hardware", "ggml_backend_name", "requirements",
                "notes"} <= set(b)
    assert data["backends"]["cpu"]["hardware"]
    assert {p["name"] for p in data["toolchain"]} >= {"cmake", "ninja", "C compiler", "C++ compiler"}


def test_doctor_exits_0_with_nothing_installed(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda n, *a, **k: None)
    monkeypatch.setattr(toolchain.Requirement, "find", lambda self: None)
    result = CliRunner().invoke(main, ["doctor", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert not data["toolchain_ok"]
    assert all(not b["can_build"] for b in data["backends"].values())
    assert "cmake" in data["backends"]["cpu"]["why_not"]
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0 and "MISSING" in result.output
