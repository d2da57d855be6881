"""`tqpatch serve`, step by step: build, calibration, probe, choice, context, server.

Each step says what it does and reuses what an earlier start left: the
verified build, the model's calibration and the probe (tqpatch.serve.store).
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import click

from .. import backends, build, build_record, calibrate, quality, verify
from ..backends.base import Backend
from ..errors import TqpatchError
from ..plan import MIB, ModelInfo, kv_bytes, read_model
from ..plan.gguf_file import require_gguf
from ..verify import record as verified
from . import candidates as cand
from . import launch, memory, probe, store

# what serve runs from a build
NEEDED_TARGETS = ("llama-server", "llama-perplexity", "tqpatch-capture", "tqpatch-verify")


@dataclass
class Request:
    model: Path
    ctx: int | None = None            # None: the largest that fits
    level: str = quality.DEFAULT_LEVEL
    host: str = "127.0.0.1"
    port: int = 8080
    extra: Sequence[str] = ()
    calibrate: bool = True
    recalibrate: bool = False
    backend: Backend | None = None    # the device served on (default: detected)
    build_of: Backend | None = None   # whose build (default: the backend's own)
    build_dir: Path | None = None
    threads: int | None = None


@dataclass
class Plan:
    """What serve decided, before the server starts."""

    backend: Backend
    build_of: Backend
    record: dict
    info: ModelInfo
    calib: Path | None
    rows: list[quality.ProbeRow]
    choice: quality.Choice
    ctx: int
    ctx_reason: str
    argv: list[str]
    timings: dict = field(default_factory=dict)   # step -> seconds (absent: reused)


def _echo(msg: str = "") -> None:
    click.echo(msg)


def check_model(model: Path):
    """The model's ModelInfo; one line for a missing or non-GGUF file."""
    model = Path(model).expanduser()
    if not model.is_file():
        raise TqpatchError(f"model file {model} not found")
    require_gguf(model)
    return read_model(model)


def ensure_build(backend: Backend, build_of: Backend, build_dir: Path | None,
                 echo: Callable[[str], None] = _echo) -> dict:
    """A build of `build_of` with NEEDED_TARGETS, fresh, whose `backend` passed verify:
    built and verified here when it is not (with build's and verify's progress)."""
    try:
        record = build_record.load_record(build_of, build_dir)
        build_record.check_fresh(record)
        bin_dir = Path(record.get("bin_dir") or "")
        missing = [t for t in NEEDED_TARGETS if not (bin_dir / t).is_file()]
        why = f"it lacks {', '.join(missing)}" if missing else ""
    except TqpatchError as exc:
        record, why = None, exc.message
    if record is None or why:
        echo(f"build: {why}; building {build_of.name} (tqpatch build --backend {build_of.name})")
        record = build.build(build.BuildRequest(backend=build_of, build_dir=build_dir), echo=echo)
    state = verified.status(backend.name, record)
    if state == "failed":
        raise TqpatchError(_verify_fix(backend, build_of, "failed on this build"))
    if state != "passed":
        echo(f"verify: the {backend.name} kernels of this build against the NumPy reference")
        report = verify.verify(backend, build_dir=build_dir,
                               of_build=build_of if build_of.name != backend.name else None)
        if not report.passed:
            raise TqpatchError(_verify_fix(backend, build_of, "fails on this build") + ": "
                               + f"{report.counts['FAIL']} cases failed")
        echo(f"verify: {report.counts['PASS']} cases passed"
             + (f" ({report.label})" if report.label else ""))
    return record


def _verify_fix(backend: Backend, build_of: Backend, what: str) -> str:
    of = f" --of-build {build_of.name}" if build_of.name != backend.name else ""
    return (f"`tqpatch verify --backend {backend.name}{of}` {what}: serve only runs verified "
            f"kernels; see its report, rebuild with `tqpatch build --backend {build_of.name}`")


def ensure_calibration(req: Request, model_sha: str, record: dict, build_of: Backend,
                       timings: dict, echo: Callable[[str], None] = _echo) -> Path | None:
    if not req.calibrate:
        return None
    path = store.calib_path(model_sha, record)
    if path.is_file() and not req.recalibrate:
        echo(f"calibration: reusing {path}")
        return path
    echo(f"calibration: running {req.model.name} through the {build_of.name} build's "
         "tqpatch-capture (once per model)")
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    calibrate.calibrate_model(req.model, path, backend=build_of, build_dir=req.build_dir,
                              threads=req.threads)
    timings["calibration"] = time.monotonic() - started
    echo(f"calibration: wrote {path} in {timings['calibration']:.0f} s")
    return path


def ensure_probe(req: Request, info, model_sha: str, record: dict, backend: Backend,
                 build_of: Backend, calib: Path | None, timings: dict,
                 echo: Callable[[str], None] = _echo) -> list[quality.ProbeRow]:
    path = store.probe_path(model_sha, record, backend, calibrated=calib is not None)
    fp = probe.fingerprint()
    cached = store.load_json(path)
    if cached and cached.get("fingerprint") == fp and not req.recalibrate:
        try:
            rows = [quality.ProbeRow.from_dict(r) for r in cached["rows"]]
            echo(f"probe: reusing {path}")
            return rows
        except (KeyError, TypeError, TqpatchError):
            pass
    todo = cand.candidates(info, calibrated=calib is not None)
    echo(f"probe: {len(todo)} configurations, KLD against f16 on {probe.PROBE_CHUNKS} x "
         f"{probe.PROBE_CTX} tokens of {probe.PROBE_TEXT.name} and the coherence prompts")
    started = time.monotonic()
    rows = probe.run(todo, model=req.model, backend=backend, build_of=build_of,
                     build_dir=req.build_dir, calib=calib, threads=req.threads,
                     say=lambda m: echo("  " + m))
    timings["probe"] = time.monotonic() - started
    store.save_json(path, {"fingerprint": fp, "model": req.model.name, "backend": backend.name,
                           "seconds": round(timings["probe"], 1),
                           "rows": [r.to_dict() for r in rows]})
    echo(f"probe: done in {timings['probe']:.0f} s")
    return rows


def free_memory(backend: Backend, record: dict) -> memory.Memory:
    if backend.memory_is_ram:
        return memory.ram_available()
    prefix = backend.ggml_backend_name.rstrip("0123456789")
    server = Path(record["bin_dir"]) / "llama-server"
    return memory.device_memory(server, prefix, backend.e2e.env)


def server_argv(record: dict, backend: Backend, req: Request, k: str, v: str, ctx: int,
                calib: Path | None) -> list[str]:
    argv = [str(Path(record["bin_dir"]) / "llama-server"), "-m", str(req.model),
            "--host", req.host, "--port", str(req.port), "-c", str(ctx),
            "-ctk", k, "-ctv", v, "-fa", "on"]
    if calib is not None:
        argv += ["--turbo-calib", str(calib)]
    return argv + [*backend.e2e.tool_args, *req.extra]


def prepare(req: Request, echo: Callable[[str], None] = _echo) -> Plan:
    """Everything up to the server's command line."""
    if req.level not in quality.LEVELS:
        raise TqpatchError(f"unknown --quality {req.level!r}: choose from {', '.join(quality.LEVELS)}")
    info = check_model(req.model)
    cand.candidates(info)  # a model no turbo type serves is refused before any work
    if req.ctx and info.ctx_train and req.ctx > info.ctx_train:
        raise TqpatchError(f"--ctx {req.ctx} is more than the model's trained context "
                           f"({info.ctx_train}): pass at most {info.ctx_train}")
    launch.check_port(req.host, req.port)
    backend = req.backend
    if backend is None:
        backend, why = backends.detect()
        echo(f"backend: {backend.name} ({why}; --backend overrides)")
    build_of = req.build_of or backend
    timings: dict = {}
    record = ensure_build(backend, build_of, req.build_dir, echo)
    model_sha = store.model_sha256(req.model, on_hash=lambda p: echo(f"model: hashing {p.name}"))
    calib = ensure_calibration(req, model_sha, record, build_of, timings, echo)
    rows = ensure_probe(req, info, model_sha, record, backend, build_of, calib, timings, echo)
    choice = quality.choose(rows, req.level)
    k, v = choice.pair
    mem = free_memory(backend, record)
    ctx, ctx_reason = memory.pick_ctx(info, k, v, mem, req.ctx)
    argv = server_argv(record, backend, req, k, v, ctx, calib if choice.calibrated else None)
    return Plan(backend, build_of, record, info, calib, rows, choice, ctx, ctx_reason, argv,
                timings)


def render_table(p: Plan) -> str:
    """What was measured: configuration, bits per value, probe KLD, coherent, KV MiB."""
    lines = [f"{'configuration':<22} {'bits/value':>10} {'probe KLD':>10} {'coherent':>9} "
             f"{'KV MiB @ ' + str(p.ctx):>14}"]
    for r in quality.order(p.rows):
        kld = f"{r.kld:.4f}" if r.ok else "failed"
        kv = kv_bytes(p.info, p.ctx, r.k, r.v) / MIB
        mark = "  <- chosen" if p.choice.row is r else ""
        lines.append(f"{r.label:<22} {r.bits:>10.2f} {kld:>10} {r.coherence or '-':>9} "
                     f"{kv:>14.1f}{mark}")
    return "\n".join(lines)


def describe(p: Plan) -> list[str]:
    k, v = p.choice.pair
    out = [f"quality {p.choice.level}: {quality.LEVELS[p.choice.level]}",
           f"chosen: {k}/{v}{' with the calibration' if p.choice.calibrated else ''}: "
           f"{p.choice.reason}",
           f"context: {p.ctx} ({p.ctx_reason})",
           "command: " + " ".join(shlex.quote(a) for a in p.argv)]
    return out


def run(req: Request, echo: Callable[[str], None] = _echo) -> int:
    """prepare(), print it, run the server in the foreground; the exit status."""
    started = time.monotonic()
    p = prepare(req, echo)
    echo("")
    echo(render_table(p))
    for line in describe(p):
        echo(line)
    launch.check_port(req.host, req.port)
    with launch.Server(p.argv, req.host, req.port) as server:
        try:
            up = server.wait_ready()
            text = server.self_check()
            echo(f"self-check: {launch.SELF_CHECK_PROMPT!r} -> {text!r}")
            first = time.monotonic() - started
            spent = ", ".join(f"{k} {v:.0f} s" for k, v in p.timings.items()) or \
                "calibration and probe reused"
            echo(f"ready: {server.url} in {first:.0f} s from start ({spent}; server up in "
                 f"{up:.0f} s); Ctrl-C stops it. The server's log follows.")
            server.stream(echo)
            rc = server.wait()
        except KeyboardInterrupt:
            echo("stopping llama-server")
            server.stop()
            echo("stopped")
            return 0
    if rc != 0:
        raise server.crashed()
    return 0
