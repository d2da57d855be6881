"""Compile, without linking, the translation units of a GPU backend that the turbo work touches.

For CI machines that have a backend's compiler but no device (nvcc, ROCm's
clang): the patched tree is configured with the cmake invocation `tqpatch build`
uses for that backend, then ninja builds only the object files of
  - the backend's source files that the patches change or the render places (the
    tree manifest's files, handed in by the caller),
  - at most MAX_INSTANCES FlashAttention vector instances with a turbo type
    (PREFERRED_INSTANCES first).
Backends declare their check (`compile_check` in their module) with this.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from .. import formats, paths
from ..errors import TqpatchError
from ..ui import run
from .base import Backend
from .cmake import configure_args

INSTANCE_RE = re.compile(r"^template-instances/fattn-vec-instance-([a-z0-9_]+)-([a-z0-9_]+)\.cu$")
PREFERRED_INSTANCES = ("turbo3-turbo3", "q8_0-turbo3", "turbo4-f16")
MAX_INSTANCES = 3


def turbo_instances(tree: Path, prefix: str) -> list[str]:
    """fattn-vec instance files of the tree with a turbo K or V type (relative to prefix)."""
    base = Path(tree) / prefix / "template-instances"
    if not base.is_dir():
        return []
    return sorted(f"template-instances/{p.name}" for p in base.glob("fattn-vec-instance-*.cu")
                  if any(t in p.name for t in formats.TURBO_TYPES))


def pick_instances(instances: list[str], limit: int = MAX_INSTANCES) -> list[str]:
    """PREFERRED_INSTANCES that exist, then the rest in name order, at most `limit`."""
    by_pair = {}
    for rel in instances:
        m = INSTANCE_RE.match(rel)
        if m:
            by_pair[f"{m.group(1)}-{m.group(2)}"] = rel
    chosen = [by_pair[p] for p in PREFERRED_INSTANCES if p in by_pair]
    chosen += [r for r in sorted(by_pair.values()) if r not in chosen]
    return chosen[:limit]


def touched_sources(tree: Path, touched: frozenset[str], prefix: str) -> tuple[list[str], list[str]]:
    """(translation units other than FA instances, chosen turbo FA instances), relative to
    prefix; `touched`: the tree-relative paths the patches and the render placed."""
    files = {rel[len(prefix):] for rel in touched if rel.startswith(prefix)}
    units = sorted(f for f in files if f.endswith(".cu") and not INSTANCE_RE.match(f))
    return units, pick_instances(turbo_instances(tree, prefix))


def object_targets(ninja_targets: str, sources: list[str], library: str) -> dict[str, str]:
    """source -> its object target in `ninja -t targets all` output (ggml-cuda or ggml-hip layout)."""
    names = [ln.rsplit(": ", 1)[0].strip() for ln in ninja_targets.splitlines() if ": " in ln]
    out = {}
    for src in sources:
        for name in names:
            if f"/{library}.dir/" in name and name.endswith(f"/{src}.o"):
                out[src] = name
                break
    return out


def compile_objects(tree: Path, touched: frozenset[str], backend: Backend, arch: str, library: str,
                    prefix: str, extra: list[str], work_dir: Path | None = None, echo=print,
                    options: dict | None = None, wrap=None) -> dict:
    """Configure `tree` for `backend` and compile the touched objects; a report dict.

    options: the backend's build options; wrap(argv, binds): where cmake and ninja
    run when not here (a backend's BuildEnvironment.wrap), None: on this machine.
    """
    if wrap is None and not (shutil.which("cmake") and shutil.which("ninja")):
        raise TqpatchError("the compile check needs cmake and ninja on PATH")
    units, instances = touched_sources(tree, touched, prefix)
    args = configure_args(backend, arch, options=options,
                          ccache=wrap is None and bool(shutil.which("ccache")))
    bdir = Path(work_dir or paths.cache_root() / "build" / f"{backend.name}-compile-check")
    bdir.mkdir(parents=True, exist_ok=True)
    here = (lambda argv: [str(a) for a in argv]) if wrap is None else \
        (lambda argv: wrap([str(a) for a in argv], [tree, bdir]))
    log = bdir / "compile-check.log"
    log.write_text("")
    t0 = time.monotonic()
    run(here(["cmake", "-S", tree, "-B", bdir, *args, *extra]), log=log, what="cmake")
    t_conf = time.monotonic() - t0
    listing = run(here(["ninja", "-C", bdir, "-t", "targets", "all"]), log=log, quiet_log=True,
                  what="ninja").stdout
    objs = object_targets(listing, units + instances, library)
    missing = [u for u in units if u not in objs]
    if missing:
        raise TqpatchError(f"no {library} object for {missing} in {bdir}")
    built_instances = [i for i in instances if i in objs]
    targets = [objs[s] for s in units + built_instances]
    for t in targets:
        (bdir / t).unlink(missing_ok=True)  # compile for real each run (ccache may still serve)
    t1 = time.monotonic()
    run(here(["ninja", "-C", bdir, "-j", str(os.cpu_count() or 1), *targets]), log=log,
        what="ninja")
    t_build = time.monotonic() - t1
    empty = [t for t in targets if not (bdir / t).is_file() or (bdir / t).stat().st_size == 0]
    if empty:
        raise TqpatchError(f"ninja succeeded but left no object for {empty}")
    text = log.read_text(errors="replace")
    warnings = sorted({ln.strip() for ln in text.splitlines()
                       if re.search(r"\bwarning\b", ln, re.I) and prefix.rstrip("/") in ln})
    echo(f"{backend.name} compile check: {len(targets)} objects in {t_build:.0f} s "
         f"(configure {t_conf:.0f} s, {os.cpu_count()} jobs): {', '.join(units + built_instances)}")
    return {"units": units, "instances": built_instances, "configure_s": round(t_conf, 1),
            "compile_s": round(t_build, 1), "jobs": os.cpu_count(), "warnings": warnings,
            "log": str(log)}
