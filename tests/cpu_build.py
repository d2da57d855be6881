"""The build whose CPU backend the slow CPU tests run.

Every llama.cpp build holds the CPU backend, so CI builds once, for Vulkan
(`make test BUILD=vulkan`), and runs the CPU tests on that build's CPU device
as well as the Vulkan tests on lavapipe. TQPATCH_TEST_CPU_BUILD names that
build (default `cpu`); llama.cpp tools get the CPU backend's tool arguments
(`--device none`, and the AMX workaround where the CPU needs it), so a GPU
build's tools stay on the CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

from tqpatch.backends import BACKENDS
from tqpatch import backends, build_record

BUILD = os.environ.get("TQPATCH_TEST_CPU_BUILD", "cpu")
TOOL_ARGS = tuple(BACKENDS["cpu"].e2e.tool_args)  # llama-cli, llama-server, llama-perplexity


def find(name: str) -> Path:
    """A binary of that build (TqpatchError saying how to build it when it is missing)."""
    from tqpatch import build

    return build_record.find_binary(name, backends.get(BUILD))


def build_dir() -> Path:
    from tqpatch import paths

    return paths.default_build_dir(BUILD).resolve()
