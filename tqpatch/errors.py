"""One exception type for every user-facing failure.

The CLI turns it into a clean one-line message and exit code 1; library users
can catch it. Never let a traceback reach a user for a bad input.
"""

from __future__ import annotations

from typing import Mapping, TypeVar

import click

T = TypeVar("T")


class TqpatchError(click.ClickException):
    """A failure the user can act on; the message says what and how."""

    exit_code = 1


def lookup(table: Mapping[str, T], name: str, unknown: str) -> T:
    """table[name]; else a TqpatchError "<unknown> <the names it has>" (the choices named)."""
    try:
        return table[name]
    except KeyError:
        raise TqpatchError(f"{unknown} {', '.join(table)}") from None
