"""Small helpers every bench part shares: K/V pair labels, list parsing, numbers, progress, raw files."""

from __future__ import annotations

import math
import re
from pathlib import Path

import click

from .. import formats
from ..errors import TqpatchError


def log(msg: str) -> None:
    """Progress, on stderr (the tables go to stdout)."""
    click.echo(msg, err=True)


def pair(k: str, v: str) -> str:
    return f"{k}/{v}"


def parse_config_list(text: str) -> list[tuple[str, str]]:
    """'f16/f16,q8_0/turbo3' -> [('f16', 'f16'), ('q8_0', 'turbo3')]; TqpatchError on a bad pair."""
    out = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        k, sep, v = item.partition("/")
        if not sep or not k or not v:
            raise TqpatchError(f"malformed K/V pair {item!r}: write K/V, e.g. q8_0/turbo3")
        for t in (k, v):
            formats.type_info(t)  # TqpatchError naming the known types
        out.append((k, v))
    if not out:
        raise TqpatchError("no K/V pair given")
    return out


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TqpatchError(f"{what} must be comma-separated whole numbers (got {text!r})") from None
    if not vals or any(v < 0 for v in vals):
        raise TqpatchError(f"{what} must be comma-separated whole numbers >= 0 (got {text!r})")
    return vals


def to_float(s) -> float | None:
    try:
        v = float(s)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def to_int(s) -> int | None:
    try:
        return int(s)
    except (TypeError, ValueError):
        return None


def save(out_dir: Path | None, name: str, text: str) -> None:
    """A raw output kept under --out (nothing without it)."""
    if out_dir is not None:
        (out_dir / name).write_text(text)


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-") or "model"
