"""Toolchains that tqpatch makes itself, for backends whose compilers this machine lacks.

debian_sid: a Debian sid root with ROCm >= 6.1 (hipcc, hipBLAS, rocBLAS), in
which HIP builds and the HIP compile check run (`--toolchain debian-sid`).
"""
