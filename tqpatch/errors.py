"""One exception type for every user-facing failure.

The CLI turns it into a clean one-line message and exit code 1; library users
can catch it. Never let a traceback reach a user for a bad input.
"""

import click


class TqpatchError(click.ClickException):
    """A failure the user can act on; the message says what and how."""

    exit_code = 1
