"""The `tqpatch` command: a thin click layer over the pipeline stages.

Each subcommand lives in tqpatch/commands/<name>.py and is imported only when
used, so `tqpatch --help` stays fast and one broken stage cannot hide others.
"""

from __future__ import annotations

import importlib
import importlib.util
import signal
import threading

import click

from . import __version__

# name -> module under tqpatch.commands exposing `command`; order is the
# pipeline order shown by --help.
COMMANDS = {
    "codebook": "Generate or check Lloyd-Max codebooks.",
    "fetch": "Download and verify the pinned llama.cpp source.",
    "render": "Render kernel sources from templates and codebooks.",
    "apply": "Lay the turbo patches and rendered files onto a llama.cpp tree.",
    "status": "Say whether a tree is pristine, applied or drifted.",
    "revert": "Undo `tqpatch apply` on a tree.",
    "build": "Build llama.cpp binaries for one backend.",
    "doctor": "List what each backend needs and what was found.",
    "verify": "Check built kernels against the NumPy reference.",
    "model": "Fetch the default test model (Gemma 3 270M Q4_K_M).",
    "eval": "Measure PPL / KLD of K/V cache configurations.",
    "plan": "KV-cache memory per K/V configuration for a GGUF model.",
    "synth-model": "Write a random-weight GGUF with a chosen attention shape.",
    "calibrate": "Fit a turbo cache's calibration to a model (--turbo-calib FILE).",
    "serve": "Serve a model with the most compressed KV cache that keeps its quality.",
    "bench": "Speed and KV size of the turbo cache types on a build (tables, PASS / MISS).",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so every cleanup and rollback runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


def _raise_terminated(signum, frame):
    # Raise once; a second signal while cleaning up must not cut the cleanup short
    # (an interrupted transaction would still be rolled back by the next command).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)


def _install_signal_handlers() -> dict:
    """SIGTERM/SIGHUP -> Terminated; returns the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, signal.SIGHUP)}


class LazyGroup(click.Group):
    def invoke(self, ctx):
        previous = _install_signal_handlers()
        try:
            return super().invoke(ctx)
        except Terminated as e:
            # Cleanup ran on the way up (temp files removed, writes rolled back).
            click.echo(f"tqpatch: stopped by {e.name}", err=True)
            ctx.exit(128 + e.signum)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def list_commands(self, ctx):
        return [n for n in COMMANDS if _module_exists(n)]

    def get_command(self, ctx, name):
        if name not in COMMANDS or not _module_exists(name):
            return None
        module = importlib.import_module(_module_name(name))
        return module.command


def _module_name(name: str) -> str:
    return "tqpatch.commands." + name.replace("-", "_")


def _module_exists(name: str) -> bool:
    return importlib.util.find_spec(_module_name(name)) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tqpatch")
def main():
    """TurboQuant KV-cache compression for llama.cpp, on your GPU.

    \b
    The pipeline, one stage per command (each reads the last one's output):
      codebook -> render -> fetch -> apply -> build -> verify -> eval
    \b
    Typical use:
      tqpatch serve M.gguf                 # build, calibrate, probe, pick, run llama-server
      tqpatch build --backend cpu          # fetch, apply, build in one go
      tqpatch verify --backend cpu         # prove the built kernels right
      tqpatch plan M.gguf --ctx 32768      # KV memory and the -ctk/-ctv for M
      llama-server -m M.gguf -ctk q8_0 -ctv turbo4 -fa on   # the safe default
    \b
    K stays at q8_0 (K error is what hurts attention), V goes to turbo4:
    +1.1% PPL on Gemma 3 270M, 2.5x less KV than f16 (docs/quality.md);
    -ctv turbo3 when memory is tight. Symmetric low-bit K can turn a model
    incoherent: `tqpatch plan` offers it only where that was measured safe.
    """

if __name__ == "__main__":
    main()
