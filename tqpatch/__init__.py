"""tqpatch: TurboQuant KV-cache types (turbo2/3/4) for a pinned llama.cpp."""

__version__ = "0.1.0"
