"""Backends as the tests see them: pytest parameters from the registry, and patched copies."""

from __future__ import annotations

import dataclasses

import pytest

from tqpatch import backends


def params(*, marked: bool | None = None, where=None) -> list:
    """One pytest.param per registered backend, carrying its e2e marker (gpu, vulkan, ...).

    marked: True only backends with a marker, False only those without, None all;
    where(backend): a further filter. Read at collection time, from the registry."""
    out = []
    for b in backends.all_backends():
        if marked is not None and (b.e2e.marker is not None) != marked:
            continue
        if where is not None and not where(b):
            continue
        marks = [getattr(pytest.mark, b.e2e.marker)] if b.e2e.marker else []
        out.append(pytest.param(b.name, marks=marks, id=b.name))
    return out


def patch(monkeypatch, name: str, **fields) -> backends.Backend:
    """Put a copy of backend `name` with `fields` replaced into the registry (undone after the test)."""
    changed = dataclasses.replace(backends.get(name), **fields)
    monkeypatch.setitem(backends.BACKENDS, name, changed)
    return changed
