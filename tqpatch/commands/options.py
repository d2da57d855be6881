"""The options several commands share: --backend and --of-build, resolved to Backend objects."""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem

from .. import backends
from ..backends.base import Backend
from ..errors import TqpatchError


class BackendType(click.ParamType):
    """A backend name, converted once to its Backend object; the choices are the registry's
    at the time of parsing (so a backend registered later is offered too)."""
    name = "backend"

    def get_metavar(self, param, ctx=None) -> str:
        return "[" + "|".join(backends.names()) + "]"

    def convert(self, value, param, ctx) -> Backend:
        if isinstance(value, Backend):
            return value
        try:
            return backends.get(str(value))
        except TqpatchError as exc:
            self.fail(exc.message, param, ctx)

    def shell_complete(self, ctx, param, incomplete):
        return [CompletionItem(n) for n in backends.names() if n.startswith(incomplete)]


BACKEND = BackendType()


def backend_option(help: str, default: str | None = None):
    """--backend / -b NAME, passed to the command as a Backend (or None)."""
    return click.option("--backend", "-b", type=BACKEND, default=default, help=help)


def of_build_option(help: str):
    """--of-build NAME: another backend's build that holds --backend's device code."""
    return click.option("--of-build", type=BACKEND, default=None, help=help)
