"""Free memory where the cache will live, as the backend itself reports it, and the
context that fits in it.

GPU backends (CUDA, HIP, Vulkan, Metal's unified memory): the build's own
`llama-server --list-devices` (ggml_backend_dev_memory: "CUDA0: NVIDIA H100 ...
(81079 MiB, 80537 MiB free)"), summed over that backend's devices, as llama.cpp
splits layers over all of them. The CPU: the RAM the kernel says is available
(MemAvailable; sysconf elsewhere).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .. import ui
from ..errors import TqpatchError
from ..plan import CTX_PAD, MIB, ModelInfo, kv_bytes, max_ctx
from ..plan.kv import fmt_bytes
from ..plan.modelinfo import MAX_CTX

_DEVICE_LINE = re.compile(r"^\s*(?P<name>[A-Za-z]+)\d+:\s.*\((?P<total>\d+) MiB, (?P<free>\d+) MiB free\)\s*$")
OVERHEAD_MIB = 1024        # compute buffers and the runtime's own, as `plan` allows


@dataclass(frozen=True)
class Memory:
    free: int        # bytes
    where: str       # in words, for the report


def parse_devices(text: str, prefix: str) -> list[tuple[str, int]]:
    """(line, free bytes) of every listed device whose name starts with prefix ('CUDA')."""
    out = []
    for line in text.splitlines():
        m = _DEVICE_LINE.match(line)
        if m and m.group("name") == prefix:
            out.append((line.strip(), int(m.group("free")) * MIB))
    return out


def device_memory(server: Path, prefix: str, env: Mapping[str, str] | None = None) -> Memory:
    try:
        proc = ui.run([server, "--list-devices"], timeout=120, env=dict(env or {}), merge=False,
                      check=False)
    except TqpatchError as exc:
        raise TqpatchError(f"cannot ask {server} for its devices: {exc.message}") from None
    if proc.timed_out:
        raise TqpatchError(f"cannot ask {server} for its devices: no answer within 120 s")
    devices = parse_devices(proc.stdout, prefix)
    if not devices:
        raise TqpatchError(f"{server} --list-devices shows no {prefix} device (is the GPU "
                           f"visible here?): {' | '.join(proc.stdout.split(chr(10))[:6])}")
    return Memory(sum(f for _, f in devices), "; ".join(d for d, _ in devices))


def ram_available() -> Memory:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return Memory(int(line.split()[1]) * 1024, "RAM available (/proc/meminfo)")
    except (OSError, ValueError, IndexError):
        pass
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        raise TqpatchError("cannot tell how much RAM is free here: pass --ctx N") from None
    return Memory(free, "free RAM (sysconf)")


def kv_budget(info: ModelInfo, memory: Memory, overhead_mib: int = OVERHEAD_MIB) -> int:
    """Bytes left for the cache: free memory - the weights - the compute allowance."""
    return memory.free - info.weight_bytes - overhead_mib * MIB


def pick_ctx(info: ModelInfo, k: str, v: str, memory: Memory, requested: int | None = None,
             **kw) -> tuple[int, str]:
    """The context to serve: `requested` if it fits (else TqpatchError naming the largest
    that does), else the largest that fits, at most the trained context."""
    budget = kv_budget(info, memory)
    limit = min(info.ctx_train or MAX_CTX, MAX_CTX)
    best = max_ctx(info, k, v, max(budget, 0), limit=limit, **kw) if budget > 0 else 0
    room = (f"{fmt_bytes(memory.free)} free ({memory.where}), weights "
            f"{fmt_bytes(info.weight_bytes)}, {OVERHEAD_MIB} MiB for compute")
    if requested is not None:
        if requested > MAX_CTX:
            raise TqpatchError(f"--ctx {requested}: llama.cpp takes at most {MAX_CTX}")
        if info.ctx_train and requested > info.ctx_train:
            raise TqpatchError(f"--ctx {requested} is more than the model's trained context "
                               f"({info.ctx_train}): pass at most {info.ctx_train}")
        need = kv_bytes(info, requested, k, v, **kw)
        if need > budget:
            raise TqpatchError(
                f"--ctx {requested} does not fit: {k}/{v} needs {fmt_bytes(need)} of KV, "
                f"and {room} leave {fmt_bytes(max(budget, 0))}; "
                + (f"the largest that fits is --ctx {best}" if best else
                   f"not even {CTX_PAD} tokens fit"))
        return requested, f"--ctx {requested} as asked ({fmt_bytes(need)} of KV)"
    if best == 0:
        raise TqpatchError(f"not even {CTX_PAD} tokens of {k}/{v} cache fit: {room}")
    why = ("the model's trained context" if best == limit else
           f"the largest that fits: {room}")
    return best, why
