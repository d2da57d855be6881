"""A Debian sid root with ROCm >= 6.1 (hipcc, hipBLAS, rocBLAS) that tqpatch makes for HIP builds and the HIP compile check (`--toolchain debian-sid`).

The pinned llama.cpp needs ROCm >= 6.1. Debian bookworm ships 5.2; sid ships
ROCm 6.4 (hipcc, libamdhip64-dev, libhipblas-dev, librocblas-dev) with clang 21.
`make_root()` has mmdebstrap build a minimal sid root holding just PACKAGES
under <tqpatch cache>/toolchains/debian-sid-rocm (5.0 GB, 2-3 minutes on a
2-core machine with a fast mirror), once; later builds reuse it. Nothing is
installed into this machine itself.

`inside()` gives the command line that runs a program in the root: unshare
puts it in a private mount namespace and its own PID namespace, where /proc,
/dev and the directories the build needs (source tree, build directory) are
mounted at their own paths, then chroot. Those mounts exist only in that
namespace: they vanish with its last process, whether the command ends, fails,
or tqpatch is stopped by Ctrl-C, SIGTERM or SIGKILL (setpriv --pdeathsig takes
unshare down with tqpatch, --kill-child the namespace's processes with
unshare), and the host never sees them.
mmdebstrap runs in such a namespace too, for the same reason.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence, TypeGuard

from .. import lock, paths, ui
from ..errors import TqpatchError

NAME = "debian-sid"
SUITE = "sid"
# What a HIP build of llama.cpp needs: ROCm's compiler driver and clang, hipBLAS and
# rocBLAS (ggml-hip links them), the CMake packages, and the host-side toolchain.
PACKAGES = ("hipcc", "libhipblas-dev", "librocblas-dev", "rocm-cmake", "cmake", "ninja-build", "g++")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
MIRROR_ENV = "TQPATCH_DEBIAN_MIRROR"  # another Debian mirror (a proxy, a local one)
# A snapshot archive serves sid's Release file past its Valid-Until date.
APT_OPTIONS = ('Acquire::Check-Valid-Until "false"',)
STAMP = ".tqpatch-root.json"
MAKE_TIMEOUT_S = 3600
NEEDS_BYTES = 6 * 2**30  # the root is 5.0 GB; the packages pass through it while it is made
PATH_IN_ROOT = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FORWARDED_ENV = ("NINJA_STATUS", "TERM", "SOURCE_DATE_EPOCH")  # host variables the root sees

# Run by the host's /bin/sh inside the new namespaces: $1 root, $2 the number of
# directories to bind, then those directories, then the command.
_ENTER_SCRIPT = r"""root=$1; n=$2; shift 2
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
while [ "$n" -gt 0 ]; do
    mkdir -p "$root$1"
    mount --rbind "$1" "$root$1"
    shift; n=$((n - 1))
done
exec chroot "$root" "$@"
"""
# setpriv: unshare dies with tqpatch (even on SIGKILL); --kill-child: the namespace's
# processes die with unshare (which itself ignores SIGINT and SIGTERM while it waits).
_UNSHARE = ("setpriv", "--pdeathsig", "KILL", "--",
            "unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child")


def root_dir() -> Path:
    return paths.cache_root() / "toolchains" / "debian-sid-rocm"


def mirror() -> str:
    return os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR


# --------------------------------------------------------------------------- entering


def bind_set(dirs: Sequence[Path | str]) -> list[str]:
    """Absolute, resolved directories to bind, without those inside another one."""
    resolved = sorted({str(Path(d).resolve()) for d in dirs})
    out: list[str] = []
    for d in resolved:
        if d == "/" or any(d == o or d.startswith(o.rstrip("/") + "/") for o in out):
            continue
        out.append(d)
    return out


def inside(argv: Sequence, binds: Sequence[Path | str] = (), *, cwd: Path | str | None = None,
           env: Mapping[str, str] | None = None, root: Path | None = None) -> list[str]:
    """The command line that runs argv in the root, with `binds` at their own paths.

    The command starts in `cwd` (default: the first bind, else /) with a clean
    environment: PATH, HOME, LANG, FORWARDED_ENV from this process, then `env`.
    """
    root = Path(root or root_dir())
    dirs = bind_set(binds)
    start = str(cwd) if cwd is not None else (dirs[0] if dirs else "/")
    values = {"PATH": PATH_IN_ROOT, "HOME": "/root", "LANG": "C.UTF-8"}
    values.update({k: os.environ[k] for k in FORWARDED_ENV if k in os.environ})
    values.update(env or {})
    return [*_UNSHARE, "--", "/bin/sh", "-euc", _ENTER_SCRIPT, "tqpatch-root", str(root),
            str(len(dirs)), *dirs, "/usr/bin/env", "-i", "-C", start,
            *(f"{k}={v}" for k, v in values.items()), *(str(a) for a in argv)]


def mounts_under(path: Path, mountinfo: str | None = None) -> list[str]:
    """Mount points at or below path in this process's mount namespace (or in `mountinfo`)."""
    base = str(Path(path).resolve())
    found: list[str] = []
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return found
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = fields[4].encode().decode("unicode_escape")  # \040 for spaces, etc.
        if point == base or point.startswith(base.rstrip("/") + "/"):
            found.append(point)
    return found


# --------------------------------------------------------------------------- the root


def stamp(root: Path | None = None) -> dict | None:
    try:
        return json.loads((Path(root or root_dir()) / STAMP).read_text())
    except (OSError, ValueError):
        return None


def ready(root: Path | None = None) -> bool:
    """A finished root with today's package list."""
    return _current(stamp(root))


def _current(s: dict | None) -> TypeGuard[dict]:
    """A stamp of a finished root with today's package list."""
    return s is not None and s.get("suite") == SUITE and s.get("packages") == list(PACKAGES)


def hip_compiler(root: Path | None = None) -> str | None:
    """The root's HIP compiler as docs/build.md sets HIPCXX ($(hipconfig -l)/clang)."""
    return (stamp(root) or {}).get("hip_compiler")


def rocm_version(root: Path | None = None) -> str | None:
    return (stamp(root) or {}).get("rocm_version")


def _namespaces_work() -> bool:
    return ui.capture([*_UNSHARE, "--", "true"], timeout=15) is not None


def problem(need_mmdebstrap: bool | None = None) -> str | None:
    """Why the root cannot be made or entered here; None when it can."""
    if not sys.platform.startswith("linux"):
        return "the Debian sid toolchain needs Linux (mount namespaces, chroot)"
    if os.geteuid() != 0:
        return ("the Debian sid toolchain needs root (it mounts /proc, /dev and the build "
                "directories into a chroot): run tqpatch as root")
    for tool, package in (("unshare", "util-linux"), ("setpriv", "util-linux"), ("chroot", "coreutils")):
        if not shutil.which(tool):
            return f"no {tool} here: apt-get install {package}"
    if not _namespaces_work():
        return ("unshare cannot create mount and PID namespaces here (a container without "
                "CAP_SYS_ADMIN? run it privileged)")
    if need_mmdebstrap is None:
        need_mmdebstrap = not ready()
    if need_mmdebstrap and not shutil.which("mmdebstrap"):
        return ("no mmdebstrap to make the Debian sid root: apt-get install mmdebstrap "
                "(a Debian/Ubuntu package; the root then needs ~6 GB of disk and the Debian archive)")
    return None


def _remove(path: Path) -> None:
    """Delete a stale root, never through a mount (a host /dev bound into it)."""
    if not path.exists():
        return
    mounted = mounts_under(path)
    if mounted:
        raise TqpatchError(f"{path} has mounts in it ({', '.join(mounted[:3])}): unmount them "
                           f"(umount -R {mounted[0]}) before tqpatch replaces it")
    shutil.rmtree(path)


def mmdebstrap_command(target: Path) -> list[str]:
    return ["mmdebstrap", "--variant=apt", *(f"--aptopt={o}" for o in APT_OPTIONS),
            f"--include={','.join(PACKAGES)}", SUITE, str(target), mirror()]


def make_root(echo: Callable[[str], None] = print) -> dict:
    """The root's stamp, after making the root if it is missing or outdated."""
    root = root_dir()
    with lock.hold(lock.lock_file("toolchain", root), f"the Debian sid root {root}", echo=echo):
        done = stamp(root)
        if _current(done):
            return done
        why = problem(need_mmdebstrap=True)
        if why:
            raise TqpatchError(f"cannot make the Debian sid root for HIP: {why}")
        root.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(root.parent).free
        if free < NEEDS_BYTES:
            raise TqpatchError(f"cannot make the Debian sid root for HIP: it needs about "
                               f"{NEEDS_BYTES / 2**30:.0f} GiB in {root.parent}, and "
                               f"{free / 2**30:.1f} GiB are free (TQPATCH_CACHE moves the cache)")
        partial = root.with_name(root.name + ".partial")
        _remove(partial)
        log = root.with_name(root.name + ".log")
        log.write_text("")
        echo(f"  making a Debian sid root with ROCm in {root} (mmdebstrap {SUITE} from {mirror()}: "
             f"{', '.join(PACKAGES)}; 5 GB, a few minutes; log: {log})")
        started = time.monotonic()
        ui.run([*_UNSHARE, "--", *mmdebstrap_command(partial)], log=log, timeout=MAKE_TIMEOUT_S,
               what="mmdebstrap")
        seconds = round(time.monotonic() - started, 1)
        version = ui.run(inside(["hipconfig", "--version"], root=partial), log=log,
                         what="hipconfig in the root").stdout.strip().splitlines()[-1]
        llvm_bin = ui.run(inside(["hipconfig", "-l"], root=partial), log=log,
                          what="hipconfig in the root").stdout.strip().splitlines()[-1]
        info = {
            "suite": SUITE, "mirror": mirror(), "packages": list(PACKAGES),
            "rocm_version": version.strip(), "hip_compiler": f"{llvm_bin.strip()}/clang",
            "seconds": seconds,
            "made": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        (partial / STAMP).write_text(json.dumps(info, indent=2) + "\n")
        _remove(root)
        partial.rename(root)
        echo(f"  Debian sid root ready in {seconds:.0f} s: ROCm {info['rocm_version']}, "
             f"HIP compiler {info['hip_compiler']}")
        return info
