"""HIP without ROCm here: the Debian sid root (tqpatch/toolchains/debian_sid.py), the
--toolchain build option, and the kernel resource report parsed from clang's remarks.

Fast tests check the command lines and the parsing (on remarks captured from a real
clang 21 compile of fattn-vec-instance-turbo3-turbo3.cu for gfx1100;gfx942, trimmed
to three kernels per target); the slow ones enter a real root.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tqpatch import backends, build, ui
from tqpatch.backends import debian_sid, hip
from tqpatch.backends import kernel_resources as kr
from tqpatch.errors import TqpatchError

DATA = Path(__file__).parent / "data"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TQPATCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---------------------------------------------------------------- entering the root


def _after_script(argv):
    """The part of an inside() command line after the shell script's own arguments."""
    i = argv.index("tqpatch-root")
    root, n = argv[i + 1], int(argv[i + 2])
    return root, argv[i + 3:i + 3 + n], argv[i + 3 + n:]


def test_inside_runs_in_private_namespaces_that_die_with_tqpatch(tmp_path, monkeypatch):
    monkeypatch.setenv("NINJA_STATUS", "[%f/%t] ")
    monkeypatch.setenv("SECRET_TOKEN", "x")
    tree, bdir = tmp_path / "tree", tmp_path / "tree" / "build"
    argv = debian_sid.inside(["cmake", "--build", bdir], [bdir, tree, tmp_path / "other"],
                             env={"CCACHE_DIR": "/c"}, root=tmp_path / "root")
    assert argv[:4] == ["setpriv", "--pdeathsig", "KILL", "--"]
    unshare = argv[4:argv.index("--", 4)]
    for flag in ("--mount", "--pid", "--fork", "--kill-child"):
        assert flag in unshare
    assert unshare[unshare.index("--propagation") + 1] == "private"
    root, binds, rest = _after_script(argv)
    assert root == str(tmp_path / "root")
    assert binds == sorted([str((tmp_path / "other").resolve()), str(tree.resolve())])  # nested dropped
    assert rest[:4] == ["/usr/bin/env", "-i", "-C", binds[0]]
    assert "NINJA_STATUS=[%f/%t] " in rest and "CCACHE_DIR=/c" in rest
    assert not any(a.startswith("SECRET_TOKEN") for a in rest)  # a clean environment
    assert rest[-3:] == ["cmake", "--build", str(bdir)]
    script = argv[argv.index("-euc") + 1]
    for step in ('mount -t proc proc "$root/proc"', 'mount --rbind /dev "$root/dev"',
                 'mount --rbind "$1" "$root$1"', 'exec chroot "$root" "$@"'):
        assert step in script


def test_mounts_under_reads_mountinfo(tmp_path):
    info = (f"36 35 98:0 / {tmp_path}/root/proc rw - proc proc rw\n"
            f"37 35 98:0 / {tmp_path}/root\\040x/dev rw - devtmpfs udev rw\n"
            "38 35 98:0 / /elsewhere rw - ext4 /dev/vda rw\n")
    assert debian_sid.mounts_under(tmp_path / "root", info) == [f"{tmp_path}/root/proc"]
    assert debian_sid.mounts_under(tmp_path / "root x", info) == [f"{tmp_path}/root x/dev"]
    assert debian_sid.mounts_under(tmp_path / "ro", info) == []


def test_a_stale_root_with_mounts_is_never_deleted(tmp_path, monkeypatch):
    (tmp_path / "root").mkdir()
    monkeypatch.setattr(debian_sid, "mounts_under", lambda p: [f"{p}/dev"])
    with pytest.raises(TqpatchError, match="umount -R"):
        debian_sid._remove(tmp_path / "root")
    assert (tmp_path / "root").is_dir()


def test_problem_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in debian_sid.problem()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(debian_sid, "_namespaces_work", lambda: True)
    monkeypatch.setattr(debian_sid.shutil, "which",
                        lambda t: None if t == "mmdebstrap" else f"/usr/bin/{t}")
    assert "apt-get install mmdebstrap" in debian_sid.problem(need_mmdebstrap=True)
    assert debian_sid.problem(need_mmdebstrap=False) is None
    monkeypatch.setattr(debian_sid, "_namespaces_work", lambda: False)
    assert "CAP_SYS_ADMIN" in debian_sid.problem(need_mmdebstrap=False)


def _fake_mmdebstrap(monkeypatch, calls):
    def run(cmd, **kw):
        calls.append(list(cmd))
        if "mmdebstrap" in cmd:
            Path(cmd[-2]).mkdir(parents=True)
            return debian_sid.ui.Result(0, "I: success\n")
        return debian_sid.ui.Result(0, "6.4.43484-9999\n" if "--version" in cmd
                                    else "/usr/lib/llvm-21/bin\n")
    monkeypatch.setattr(debian_sid.ui, "run", run)
    monkeypatch.setattr(debian_sid, "problem", lambda need_mmdebstrap=None: None)


def test_make_root_once_then_reuse(cache, monkeypatch):
    calls: list[list[str]] = []
    _fake_mmdebstrap(monkeypatch, calls)
    info = debian_sid.make_root(echo=lambda m: None)
    root = debian_sid.root_dir()
    assert root == cache / "toolchains" / "debian-sid-rocm" and root.is_dir()
    assert not root.with_name(root.name + ".partial").exists()
    mm = calls[0][calls[0].index("mmdebstrap"):]
    assert mm[:2] == ["mmdebstrap", "--variant=apt"]
    assert '--aptopt=Acquire::Check-Valid-Until "false"' in mm
    assert f"--include={','.join(debian_sid.PACKAGES)}" in mm
    assert mm[-3:] == ["sid", str(root.with_name(root.name + ".partial")), debian_sid.DEFAULT_MIRROR]
    assert calls[0][:4] == ["setpriv", "--pdeathsig", "KILL", "--"]  # its mounts die with it
    assert info["rocm_version"] == "6.4.43484-9999"
    assert info["hip_compiler"] == "/usr/lib/llvm-21/bin/clang"
    assert json.loads((root / debian_sid.STAMP).read_text())["packages"] == list(debian_sid.PACKAGES)
    assert debian_sid.hip_compiler() == "/usr/lib/llvm-21/bin/clang"

    calls.clear()
    assert debian_sid.make_root(echo=lambda m: None) == info
    assert calls == []  # ready: nothing run


def test_make_root_needs_disk_space(cache, monkeypatch):
    monkeypatch.setattr(debian_sid, "problem", lambda need_mmdebstrap=None: None)
    monkeypatch.setattr(debian_sid.shutil, "disk_usage", lambda p: type("U", (), {"free": 2**30})())
    with pytest.raises(TqpatchError, match="needs about 6 GiB.*1.0 GiB are free"):
        debian_sid.make_root(echo=lambda m: None)


def test_make_root_refuses_clearly(cache, monkeypatch):
    monkeypatch.setattr(debian_sid, "problem", lambda need_mmdebstrap=None: "no mmdebstrap: x")
    with pytest.raises(TqpatchError, match="cannot make the Debian sid root for HIP: no mmdebstrap"):
        debian_sid.make_root(echo=lambda m: None)


# ---------------------------------------------------------------- --toolchain


def test_toolchain_option():
    assert hip.TOOLCHAIN in hip.build_options
    assert hip.parse_toolchain(" Debian-Sid ") == "debian-sid"
    with pytest.raises(TqpatchError, match="host or debian-sid"):
        hip.parse_toolchain("rocm")
    assert hip.build_environment({"toolchain": "host"}) is None
    assert hip.build_environment({"toolchain": "debian-sid"}) is hip.SID


def test_sid_cmake_args_use_the_roots_compiler_and_need_targets(cache, monkeypatch):
    monkeypatch.setattr(hip, "run_capture", lambda cmd, timeout=15: None)  # no rocminfo, hipconfig
    sid = {"toolchain": "debian-sid"}
    with pytest.raises(TqpatchError, match="needs the GPU targets.*--arch gfx1100"):
        hip.cmake_args(None, sid)
    assert hip.cmake_args("gfx942,gfx1100", sid)[:2] == ["-DGGML_HIP=ON", "-DGPU_TARGETS=gfx1100;gfx942"]
    root = debian_sid.root_dir()
    root.mkdir(parents=True)
    (root / debian_sid.STAMP).write_text(json.dumps({"hip_compiler": "/usr/lib/llvm-21/bin/clang"}))
    assert hip.cmake_args("gfx1100", sid)[1] == "-DCMAKE_HIP_COMPILER=/usr/lib/llvm-21/bin/clang"


def test_without_rocm_the_message_says_what_to_install(monkeypatch):
    monkeypatch.setattr(hip.HIPCONFIG.__class__, "find", lambda self: None)
    msg = hip.rocm_problem()
    assert "HIP not built" in msg and "ROCm >= 6.1" in msg
    assert "--toolchain debian-sid" in msg and "apt-get install mmdebstrap" in msg


def test_build_runs_cmake_and_ninja_in_the_root(cache, tmp_path, monkeypatch):
    """tqpatch build --backend hip --toolchain debian-sid: every cmake/ninja call goes
    through the environment's wrap with the tree and build dir bound; no host ROCm check."""
    tree = tmp_path / "llama.cpp"
    tree.mkdir()
    monkeypatch.setattr(hip, "rocm_problem", lambda: pytest.fail("host ROCm checked"))
    prepared, wrapped = [], []

    def wrap(argv, binds, env=None):
        wrapped.append((list(argv), [str(b) for b in binds], env))
        return ["IN-ROOT", *argv]

    monkeypatch.setattr(hip, "SID", hip.BuildEnvironment(
        "debian-sid", prepare=lambda echo: prepared.append(1) or "a sid root", wrap=wrap))
    streamed = []

    def run(cmd, **kw):
        streamed.append(cmd)
        if "-S" in cmd:
            bdir = Path(cmd[cmd.index("-B") + 1])
            (bdir / "CMakeCache.txt").write_text("CMAKE_MAKE_PROGRAM:FILEPATH=/usr/bin/ninja\n")
            (bdir / "build.ninja").write_text("")
        elif "--target" in cmd and cmd[-1] != "build.ninja":
            (Path(cmd[3]) / "bin").mkdir(exist_ok=True)
        return ui.Result(0, "")

    monkeypatch.setattr(build.ui, "run", run)
    monkeypatch.setattr(build.ui, "capture", lambda cmd, timeout=15: "llama-cli: phony\n"
                        if cmd[0] == "IN-ROOT" else pytest.fail(f"ran here: {cmd}"))
    fake_apply = type(sys)("fake_apply")
    fake_apply.tree_inputs = lambda t: {"digest": "d", "render": {}}
    fake_apply.ensure_applied = lambda t: tree
    monkeypatch.setattr(build, "apply", fake_apply)
    record = build.build(build.BuildRequest(
        backend=backends.get("hip"), arch="gfx1100", targets=["llama-cli"],
        options={"toolchain": "debian-sid", "fa-quants": None}), echo=lambda *a, **k: None)
    assert prepared == [1]
    assert all(c[0] == "IN-ROOT" for c in streamed) and len(streamed) == 2
    bdir = Path(record["build_dir"])
    assert all(b == [str(tree.resolve()), str(bdir)] for _, b, _ in wrapped)
    assert streamed[0][1] == "cmake" and "-DGGML_CCACHE=OFF" in streamed[0]  # the root's cmake
    assert wrapped[-1][2] == {"NINJA_STATUS": "[%f/%t] "}
    assert record["tools"] == {"debian-sid": {"path": None, "version": "a sid root"}}


# ---------------------------------------------------------------- resource remarks


def test_resource_remarks_split_per_target():
    log = (DATA / "hip-resource-remarks.log").read_text()
    kernels = kr.parse(log, ["gfx942", "gfx1100"])
    assert [k.arch for k in kernels] == ["gfx1100"] * 3 + ["gfx942"] * 3
    by = {(k.arch, k.label): k for k in kernels}
    gqa = by["gfx1100", "flash_attn_ext_vec D=128 ncols=4 K=turbo3 V=turbo3 gqa"]
    assert (gqa.vgprs, gqa.vgpr_spill, gqa.scratch, gqa.occupancy, gqa.agprs) == (215, 0, 0, 7, None)
    one = by["gfx1100", "flash_attn_ext_vec D=128 ncols=1 K=turbo3 V=turbo3"]
    assert (one.vgprs, one.vgpr_spill, one.scratch, one.sgprs, one.lds) == (256, 72, 208, 56, 1408)
    cdna = by["gfx942", "flash_attn_ext_vec D=128 ncols=1 K=turbo3 V=turbo3"]
    assert (cdna.vgprs, cdna.agprs, cdna.vgpr_spill) == (256, 50, 0)
    assert all(k.object == "fattn-vec-instance-turbo3-turbo3.cu" for k in kernels)
    turbo = [k for k in kernels if kr.is_turbo(k)]
    assert len(turbo) == 4  # flash_attn_mask_to_KV_max is no turbo kernel
    s = kr.summary(kernels)
    assert s["gfx1100"]["turbo_spilling"] == 1 and s["gfx942"]["turbo_spilling"] == 0
    assert "72 spilled, 208 B/lane" in s["gfx1100"]["worst"][0]
    assert "| flash_attn_ext_vec D=128 ncols=1 K=turbo3 V=turbo3 | gfx1100 | 256 |  | 72 | 208 | 5 |" \
        in kr.table(kernels)


def test_resource_remarks_in_another_target_order_are_refused():
    log = (DATA / "hip-resource-remarks.log").read_text()
    with pytest.raises(ValueError, match="AGPRs"):
        kr.parse(log, ["gfx90a", "gfx942"])  # both have AGPRs: the first run has none
    with pytest.raises(ValueError, match="do not split"):
        kr.parse(log, ["gfx1100", "gfx942", "gfx90a", "gfx1030"])


def test_fa_vec_labels():
    name = "_ZL18flash_attn_ext_vecILi256ELi2EL9ggml_type8ELS0_44ELb1ELb0EEvPKc"
    assert kr.fa_vec_label(name) == "flash_attn_ext_vec D=256 ncols=2 K=q8_0 V=turbo3 softcap"
    assert kr.fa_vec_label("_ZL13k_set_rows_quant") is None


# ---------------------------------------------------------------- a real root (slow)


def _root_or_skip():
    why = debian_sid.problem()
    if why:
        pytest.skip(f"no Debian sid root here: {why}")
    debian_sid.make_root()


def _alive(marker: str) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if marker in (p / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(p.name))
            except OSError:
                pass
    return out


@pytest.mark.slow
def test_root_binds_dirs_and_leaves_no_mounts(tmp_path):
    _root_or_skip()
    root = debian_sid.root_dir()
    (tmp_path / "hello").write_text("from the host\n")
    argv = debian_sid.inside(["sh", "-c", "cat hello; grep -c . /proc/self/mountinfo; hipconfig --version"],
                             [tmp_path])
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert out.startswith("from the host\n")  # the directory at its own path, the cwd
    assert debian_sid.mounts_under(root) == []  # nothing leaked to this namespace


@pytest.mark.slow
def test_root_processes_die_with_tqpatch(tmp_path):
    """SIGKILL of the process that started the command (tqpatch) ends the command too."""
    _root_or_skip()
    marker = "299.4242"
    argv = debian_sid.inside(["sleep", marker], [tmp_path])
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); "
                               "time.sleep(600)", *argv])
    deadline = time.monotonic() + 30
    while not [p for p in _alive(marker) if p != parent.pid] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [p for p in _alive(marker) if p != parent.pid], "the command never started"
    assert debian_sid.mounts_under(debian_sid.root_dir()) == []  # its mounts are not ours
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive(marker) == []
    assert debian_sid.mounts_under(debian_sid.root_dir()) == []


def test_kernel_labels_without_and_with_cxxfilt():
    # binutils 2.40's c++filt cannot read C++20 auto template parameters (TnDa): own label
    name = ("_ZL16k_set_rows_quantIl12block_turbo3Li128ETnDaXadL_ZL21quantize_turbo3_blockI6__half"
            "EvPKT_PS0_EES2_EvPKT3_S5_PT0_llll")
    assert kr.short_label(name) == "k_set_rows_quant<block_turbo3, quantize_turbo3_block, int64 rows, from half>"
    demangled = ("void dequantize_block<128, 1, &(dequantize_turbo3(void const*, long, int, "
                 "HIP_vector_type<float, 2u>&)), __half>(void const*, __half*, long, long)")
    assert kr._strip_params(demangled) == "dequantize_block<128, 1, &dequantize_turbo3, __half>"


def test_verify_refuses_a_build_from_the_root():
    assert hip.verify_runner({"tools": {"cmake": {}}}, None, None) is None
    with pytest.raises(TqpatchError, match="toolchain debian-sid.*ROCm >= 6.1"):
        hip.verify_runner({"tools": {"debian-sid": {"path": None, "version": "root"}}}, None, None)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_stopping_tqpatch_stops_the_command_in_the_root(tmp_path, sig):
    """The CLI turns SIGTERM into an exception like Ctrl-C's KeyboardInterrupt; ui.run then
    kills the command (unshare itself ignores both while it waits)."""
    _root_or_skip()
    marker = f"298.{int(sig)}"
    script = ("import sys; from tqpatch import cli, ui; from tqpatch.backends import debian_sid; "
              "cli._install_signal_handlers(); "
              f"ui.run(debian_sid.inside(['sleep', '{marker}'], [sys.argv[1]]))")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not [p for p in _alive(marker) if p != proc.pid] and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(sig)
    assert proc.wait(timeout=20) != 0
    assert ("Terminated" if sig == signal.SIGTERM else "KeyboardInterrupt") in proc.stderr.read()
    deadline = time.monotonic() + 10
    while [p for p in _alive(marker) if p != proc.pid] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [p for p in _alive(marker) if p != proc.pid] == []


def test_sid_build_without_targets_fails_before_making_the_root(cache, monkeypatch):
    monkeypatch.setattr(hip, "run_capture", lambda cmd, timeout=15: None)  # no rocminfo
    monkeypatch.setattr(debian_sid, "make_root", lambda echo=print: pytest.fail("root made"))
    with pytest.raises(TqpatchError, match="needs the GPU targets"):
        build.build(build.BuildRequest(backend=backends.get("hip"), options={"toolchain": "debian-sid"}),
                    echo=lambda *a, **k: None)
