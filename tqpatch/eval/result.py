"""One configuration's eval result, and the shell line of a run."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Sequence

from ..coherence import Coherence
from .config import Config


@dataclass
class Result:
    config: Config
    ok: bool = False
    ppl: float | None = None
    ppl_err: float | None = None
    delta_ppl_pct: float | None = None
    kld_mean: float | None = None
    kld_err: float | None = None
    kld_p99: float | None = None
    top1: float | None = None
    top1_err: float | None = None
    kv_mib: float | None = None
    k_mib: float | None = None
    v_mib: float | None = None
    seconds: float = 0.0
    returncode: int | None = None
    command: list[str] = field(default_factory=list)
    base_command: list[str] | None = None  # the f16 base-logits run this one compared against
    error: str | None = None
    log_tail: str = ""
    env: dict[str, str] = field(default_factory=dict)  # environment settings of the run
    bpv_k: float | None = None  # over all layers (boundary layers included); None: the type's
    bpv_v: float | None = None
    coherence: Coherence | None = None  # tqpatch.coherence's check; None: not run

    @property
    def k(self) -> str:
        return self.config.k

    @property
    def v(self) -> str:
        return self.config.v

    @property
    def label(self) -> str:
        return self.config.label

    @property
    def eff_bpv_k(self) -> float:
        return self.config.bpv_k if self.bpv_k is None else self.bpv_k

    @property
    def eff_bpv_v(self) -> float:
        return self.config.bpv_v if self.bpv_v is None else self.bpv_v

    @property
    def avg_bpv(self) -> float:
        return (self.eff_bpv_k + self.eff_bpv_v) / 2

    def to_dict(self) -> dict:
        return {
            "config": self.label, "k": self.k, "v": self.v,
            "boundary_k": self.config.bk, "boundary_v": self.config.bv,
            "bpv_k": self.eff_bpv_k, "bpv_v": self.eff_bpv_v,
            "avg_bpv": self.avg_bpv,
            "ok": self.ok, "ppl": self.ppl, "ppl_err": self.ppl_err,
            "delta_ppl_pct": self.delta_ppl_pct,
            "kld_mean": self.kld_mean, "kld_err": self.kld_err, "kld_p99": self.kld_p99,
            "top1_pct": self.top1, "top1_err": self.top1_err,
            "kv_mib": self.kv_mib, "k_mib": self.k_mib, "v_mib": self.v_mib,
            "seconds": round(self.seconds, 2), "returncode": self.returncode,
            "command": command_line(self.command, self.env) if self.command else None,
            "env": dict(self.env) or None,
            "base_command": shlex.join(self.base_command) if self.base_command else None,
            "error": self.error, "log_tail": self.log_tail if not self.ok else None,
            "coherence": self.coherence.to_dict() if self.coherence else None,
        }


def command_line(cmd: Sequence[str], env: dict[str, str] | None = None) -> str:
    """A shell line: the environment settings, then the command."""
    pre = "".join(f"{k}={shlex.quote(v)} " for k, v in (env or {}).items())
    return pre + shlex.join(cmd)
