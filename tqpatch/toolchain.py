"""Find the tools a build needs (cmake, ninja, C/C++ compilers, ccache) and their versions.

A `Requirement` is data: what the tool is called, where to look for it, how to
read its version, the minimum version, and how a user gets it (Debian package,
pip package, vendor download). Backends describe their own extra tools (nvcc,
glslc, hipconfig, ...) with the same type, so `tqpatch doctor` treats them all
alike. `probe()` never raises; `find_toolchain()` raises one TqpatchError that
names every missing tool and the command that installs it.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from typing import Callable

from .errors import TqpatchError
from .ui import capture as run_capture  # noqa: F401  (the one runner; backends probe with it)

_VERSION_RE = r"(\d+\.\d+(?:\.\d+)?)"


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version)[:3])


@dataclass(frozen=True)
class Requirement:
    """One thing a build needs and how to find, version and install it."""

    name: str
    purpose: str = ""
    programs: tuple[str, ...] = ()  # executables looked up on PATH, in order
    env: str | None = None  # an environment variable naming the program (CC, CXX)
    files: tuple[str, ...] = ()  # globs (with $VARS) for headers, libraries, extra places
    version_args: tuple[str, ...] = ("--version",)
    version_re: str = _VERSION_RE
    version_fn: Callable[[str], str | None] | None = None  # path -> version, overrides
    min_version: str | None = None
    optional: bool = False
    debian: str | None = None  # apt-get install <debian>
    pip: str | None = None  # pip install <pip>
    vendor: str | None = None  # where to download it otherwise

    def hint(self) -> str:
        ways = []
        if self.pip:
            ways.append(f"pip install {self.pip}")
        if self.debian:
            ways.append(f"apt-get install {self.debian}")
        if self.vendor:
            ways.append(f"download from {self.vendor}" if self.vendor.startswith("http")
                        else self.vendor)
        return " or ".join(ways) if ways else "install it"

    def find(self) -> str | None:
        if self.env and os.environ.get(self.env):
            value = os.environ[self.env].split()[0]
            found = shutil.which(value)
            if found:
                return found
        for program in self.programs:
            found = shutil.which(program)
            if found:
                return found
        for pattern in self.files:
            expanded = os.path.expandvars(pattern)
            if "$" in expanded:
                continue  # an unset variable
            for match in sorted(glob.glob(expanded)):
                if os.path.exists(match):
                    return match
        return None

    def version(self, path: str) -> str | None:
        if self.version_fn is not None:
            try:
                return self.version_fn(path)
            except (OSError, ValueError):
                return None
        if not self.version_args or not os.access(path, os.X_OK):
            return None
        out = run_capture([path, *self.version_args])
        if out is None:
            return None
        match = re.search(self.version_re, out)
        return match.group(1) if match else None

    def probe(self) -> "Probe":
        path = self.find()
        if path is None:
            return Probe(self.name, self.purpose, None, None, False, self.optional,
                         f"not found; {self.hint()}", self.min_version)
        version = self.version(path)
        problem = None
        if self.min_version:
            if version is None:
                problem = f"cannot read its version (need >= {self.min_version})"
            elif version_tuple(version) < version_tuple(self.min_version):
                problem = f"version {version} is too old (need >= {self.min_version}); {self.hint()}"
        return Probe(self.name, self.purpose, path, version, problem is None, self.optional,
                     problem, self.min_version)


@dataclass
class Probe:
    """What was found for one Requirement."""

    name: str
    purpose: str
    path: str | None
    version: str | None
    ok: bool
    optional: bool = False
    problem: str | None = None
    min_version: str | None = None

    @property
    def blocking(self) -> bool:
        return not self.ok and not self.optional

    def to_json(self) -> dict:
        return asdict(self)


def read_file_version(regexes: list[str], join: str = ".") -> Callable[[str], str | None]:
    """A version_fn reading numbers out of a header file (one regex per component)."""

    def read(path: str) -> str | None:
        with open(path, errors="replace") as f:
            text = f.read()
        parts = []
        for rx in regexes:
            m = re.search(rx, text)
            if not m:
                return None
            parts.append(m.group(1))
        return join.join(parts)

    return read


_BUILD_ESSENTIAL = "build-essential"

CMAKE = Requirement(
    "cmake", "configures the build", programs=("cmake",), version_re=r"cmake version " + _VERSION_RE,
    min_version="3.18", debian="cmake", pip="cmake", vendor="https://cmake.org/download/",
)
NINJA = Requirement(
    "ninja", "runs the build", programs=("ninja", "ninja-build"), min_version="1.10",
    debian="ninja-build", pip="ninja", vendor="https://github.com/ninja-build/ninja/releases",
)
CC = Requirement(
    "C compiler", "compiles ggml", env="CC", programs=("cc", "gcc", "clang"),
    debian=_BUILD_ESSENTIAL,
)
CXX = Requirement(
    "C++ compiler", "compiles llama.cpp (C++17)", env="CXX", programs=("c++", "g++", "clang++"),
    debian=_BUILD_ESSENTIAL,
)
CCACHE = Requirement(
    "ccache", "caches compiles between builds (optional)", programs=("ccache",), optional=True,
    debian="ccache",
)

TOOLCHAIN: tuple[Requirement, ...] = (CMAKE, NINJA, CC, CXX, CCACHE)


@dataclass
class Toolchain:
    cmake: Probe
    ninja: Probe
    cc: Probe
    cxx: Probe
    ccache: Probe
    extra: list[Probe] = field(default_factory=list)

    def all(self) -> list[Probe]:
        return [self.cmake, self.ninja, self.cc, self.cxx, self.ccache, *self.extra]

    def versions(self) -> dict[str, str | None]:
        return {p.name: p.version for p in self.all() if p.path}


def probe_all(reqs: tuple[Requirement, ...] | list[Requirement] = TOOLCHAIN) -> list[Probe]:
    return [r.probe() for r in reqs]


def missing_message(probes: list[Probe], what: str = "build tools",
                    reqs: tuple[Requirement, ...] | list[Requirement] = TOOLCHAIN) -> str:
    """One message naming every blocking probe and the commands that install them."""
    bad = [p for p in probes if p.blocking]
    lines = [f"missing or unusable {what}: " + ", ".join(p.name for p in bad)]
    for p in bad:
        lines.append(f"  {p.name}: {p.problem}")
    bad_reqs = [r for r in reqs if any(p.name == r.name for p in bad)]
    pip_pkgs = _unique(r.pip for r in bad_reqs if r.pip)
    apt_pkgs = _unique(r.debian for r in bad_reqs if r.debian)
    ways = []
    if pip_pkgs:
        ways.append("`pip install " + " ".join(pip_pkgs) + "`")
    if apt_pkgs:
        ways.append("`apt-get install " + " ".join(apt_pkgs) + "`")
    if ways:
        lines.append("install with " + " or ".join(ways))
    return "\n".join(lines)


def _unique(items) -> list[str]:
    out: list[str] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def find_toolchain() -> Toolchain:
    """Probe cmake, ninja, cc, c++ and ccache; raise naming what to install if any is missing."""
    probes = probe_all(TOOLCHAIN)
    if any(p.blocking for p in probes):
        raise TqpatchError(missing_message(probes))
    cmake, ninja, cc, cxx, ccache = probes
    return Toolchain(cmake, ninja, cc, cxx, ccache)
