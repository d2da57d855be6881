"""`tqpatch doctor`: what each backend needs, what was found here, and what can be built."""

from __future__ import annotations

import json
import sys

import click

from .. import apply, backends, toolchain
from ..backends.base import Backend
from ..errors import TqpatchError
from .options import BackendType


def diagnose() -> dict:
    """Everything doctor reports, as plain data (also the --json output)."""
    tc_probes = toolchain.probe_all(toolchain.TOOLCHAIN)
    tc_ok = not any(p.blocking for p in tc_probes)
    per_backend: dict[str, dict] = {}
    report = {
        "platform": sys.platform,
        "toolchain": [p.to_json() for p in tc_probes],
        "toolchain_ok": tc_ok,
        "backends": per_backend,
    }
    for backend in backends.all_backends():
        probes = [r.probe() for r in backend.requirements()]
        reason = backend.unsupported_reason()
        blocking = [p.name for p in probes if p.blocking]
        if not tc_ok:
            blocking = [p.name for p in tc_probes if p.blocking] + blocking
        if reason:
            why = reason
        elif blocking:
            why = "missing: " + ", ".join(blocking)
        else:
            why = None
        try:
            notes = backend.notes()
        except Exception as exc:  # a probe must never break the report
            notes = [f"could not check: {exc}"]
        per_backend[backend.name] = {
            "can_build": why is None,
            "why_not": why,
            "hardware": backend.hardware(),
            "ggml_backend_name": backend.ggml_backend_name,
            "default_arch": backend.default_arch(),
            "requirements": [p.to_json() for p in probes],
            "notes": notes,
        }
    return report


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    lines = [fmt.format(*header).rstrip(), fmt.format(*["-" * w for w in widths]).rstrip()]
    lines += [fmt.format(*[str(c) for c in r]).rstrip() for r in rows]
    return "\n".join(lines)


def _status(p: dict) -> str:
    if p["ok"]:
        return "ok"
    if p["path"] is None:
        return "optional, missing" if p["optional"] else "MISSING"
    return "TOO OLD" if "too old" in (p["problem"] or "") else "PROBLEM"


def _found(p: dict) -> str:
    if p["path"]:
        return p["path"]
    return p["problem"] or ""


def render(report: dict) -> str:
    out = []
    rows = [[p["name"], _status(p), p["version"] or "-", _found(p)] for p in report["toolchain"]]
    out.append("Common toolchain")
    out.append(_table(rows, ["TOOL", "STATUS", "VERSION", "PATH / HOW TO GET"]))
    out.append("")
    rows = []
    for name, b in report["backends"].items():
        rows.append([name, "yes" if b["can_build"] else "no", b["hardware"] or "none found",
                     b["ggml_backend_name"], b["why_not"] or ""])
    out.append("Backends")
    out.append(_table(rows, ["BACKEND", "BUILD HERE", "HARDWARE", "GGML NAME", "WHY NOT"]))
    out.append("")
    rows = []
    for name, b in report["backends"].items():
        for p in b["requirements"]:
            rows.append([name, p["name"], _status(p), p["version"] or "-", _found(p)])
    if rows:
        out.append("Backend requirements")
        out.append(_table(rows, ["BACKEND", "NEEDS", "STATUS", "VERSION", "PATH / HOW TO GET"]))
    notes = [(n, note) for n, b in report["backends"].items() for note in b["notes"]]
    if notes:
        out.append("")
        out.append("Notes")
        out += [f"  {n}: {note}" for n, note in notes]
    return "\n".join(out)


class _CompileCheckBackend(BackendType):
    """A backend that declares a compile check."""

    def convert(self, value, param, ctx) -> Backend:
        backend = super().convert(value, param, ctx)
        if backend.compile_check is None:
            have = [b.name for b in backends.all_backends() if b.compile_check is not None]
            self.fail(f"the {backend.name} backend has no compile check; these do: "
                      f"{', '.join(have)}", param, ctx)
        return backend


def run_compile_check(backend: Backend, as_json: bool) -> None:
    """Apply the tree and compile the backend's turbo translation units (no device needed)."""
    name = backend.name
    check = backend.compile_check
    assert check is not None  # the option's type accepts only backends that have one
    why = check.unavailable()
    if why:
        raise TqpatchError(f"the {name} compile check cannot run here: {why}")
    tree = apply.ensure_applied(None)
    report = check.run(tree, apply.placed_files(tree), None)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"{name}: compiled {len(report['units']) + len(report['instances'])} translation "
               f"units in {report['compile_s']} s: {', '.join(report['units'] + report['instances'])}")
    for w in report.get("warnings", [])[:20]:
        click.echo(f"  {w}")
    for line in report.get("summary", []):
        click.echo(f"  {line}")


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--compile-check", "compile_backend", type=_CompileCheckBackend(),
              default=None, help="Instead: apply the patches and compile this backend's turbo "
              "translation units with its compiler (no GPU needed); fails if they do not compile.")
def command(as_json, compile_backend):
    """List what each backend needs, what was found here, and what can be built.

    Always exits 0: it reports, it does not judge (except --compile-check,
    which fails when the backend's turbo sources do not compile).
    """
    if compile_backend:
        run_compile_check(compile_backend, as_json)
        return
    report = diagnose()
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(render(report))
