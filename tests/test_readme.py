"""The README's set-up commands run literally as written on a fresh clone.

Each tqpatch command of the set-up block is parsed by the real CLI (options,
choices, required arguments) without running it; `pip install .` needs a
buildable project; `make test` needs the target. The commands themselves run
in CI (.ci/run runs `make test`; package-check runs the first line's pipeline
from a built wheel).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import click
import pytest

from tqpatch.cli import main

REPO = Path(__file__).resolve().parent.parent


def setup_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Set up", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    commands = []
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        for part in filter(None, (p.strip() for p in line.split("&&"))):
            commands.append(shlex.split(part))
    return commands


def test_readme_has_exactly_two_setup_lines():
    text = (REPO / "README.md").read_text()
    block = re.search(r"```\n(.*?)```", text.split("## Set up", 1)[1], re.S).group(1)
    assert len([ln for ln in block.splitlines() if ln.strip()]) == 2


@pytest.mark.parametrize("argv", [c for c in setup_commands() if c[0] == "tqpatch"],
                         ids=lambda c: " ".join(c))
def test_readme_tqpatch_commands_parse(argv):
    ctx = click.Context(main, info_name="tqpatch")
    cmd = main.get_command(ctx, argv[1])
    assert cmd is not None, argv
    cmd.make_context(argv[1], list(argv[2:]), parent=ctx)  # raises on a missing option or bad value


def test_readme_other_commands_are_runnable_here():
    others = [c for c in setup_commands() if c[0] != "tqpatch"]
    assert others, "expected pip install and make test"
    for argv in others:
        if argv[:2] == ["pip", "install"]:
            target = argv[-1]
            assert target in (".", ".[test]") and (REPO / "pyproject.toml").is_file(), argv
            assert "-e" not in argv, "users install the package, not an editable checkout"
        elif argv[0] == "make":
            proc = subprocess.run(["make", "-n", *argv[1:]], cwd=REPO, capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
        else:
            raise AssertionError(f"unexpected set-up command {argv}")
