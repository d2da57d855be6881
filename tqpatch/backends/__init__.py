"""The registry of llama.cpp backends: one module each, every one a `Backend` object (base.py).

Each module (cpu.py, cuda.py, ...) owns everything about its backend and ends by
building its BACKEND. Adding a backend is one module here, one template folder
(templates/ggml/src/ggml-<name>/), one glue patch, and its entry in REGISTERED:
render, build, verify, the CLI's choices, the tests and the benches read the
registry and the object, nothing else.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from ..errors import lookup
from . import cpu, cuda, hip, metal, vulkan
from .base import Backend, BuildOption

REGISTERED: tuple[Backend, ...] = (cpu.BACKEND, cuda.BACKEND, hip.BACKEND, metal.BACKEND, vulkan.BACKEND)

# name -> backend; read through the functions below (tests swap it with registered())
BACKENDS: dict[str, Backend] = {b.name: b for b in REGISTERED}

# The order `tqpatch build` without --backend tries them in; the CPU always works.
DETECT_ORDER = ("cuda", "hip", "vulkan", "metal")


def get(name: str) -> Backend:
    """The backend named `name` (a --backend value); TqpatchError listing the known ones."""
    return lookup(BACKENDS, name, f"unknown backend {name!r}; choose one of:")


def names() -> list[str]:
    return list(BACKENDS)


def all_backends() -> list[Backend]:
    return list(BACKENDS.values())


def detect() -> tuple[Backend, str]:
    """(backend to build here, why), for `tqpatch build` without --backend: the first of
    DETECT_ORDER (then any other registered one) whose device and toolchain are here."""
    missed = []
    order = [*DETECT_ORDER, *(n for n in BACKENDS if n not in DETECT_ORDER and n != "cpu")]
    for name in order:
        if name not in BACKENDS:
            continue
        usable, why = BACKENDS[name].detect()
        if usable:
            return BACKENDS[name], why
        if why:
            missed.append(why)
    return BACKENDS["cpu"], "; ".join(missed) if missed else "no GPU and GPU toolchain found"


def build_options() -> dict[str, tuple[BuildOption, list[str]]]:
    """Every backend-specific build option: name -> (option, backends that take it)."""
    out: dict[str, tuple[BuildOption, list[str]]] = {}
    for backend in BACKENDS.values():
        for opt in backend.build_options:
            out.setdefault(opt.name, (opt, []))[1].append(backend.name)
    return out


@contextlib.contextmanager
def registered(*extra: Backend, replace: bool = False) -> Iterator[dict[str, Backend]]:
    """A temporary registry: the registered backends plus `extra` (a backend of the same
    name replaces its entry), or `extra` alone with replace=True; restored on exit."""
    saved = dict(BACKENDS)
    if replace:
        BACKENDS.clear()
    BACKENDS.update({b.name: b for b in extra})
    try:
        yield BACKENDS
    finally:
        BACKENDS.clear()
        BACKENDS.update(saved)
