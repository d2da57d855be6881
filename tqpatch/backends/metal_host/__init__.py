"""Host emulation of the Metal backend (see emulate.py)."""
