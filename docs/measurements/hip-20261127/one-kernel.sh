#!/bin/sh
# Registers of one flash_attn_ext_vec kernel, compiled device-only for one target in
# tqpatch's Debian sid root (ROCm 6.4, clang 21), as measured for docs/hip.md.
#
#   cp -r "$TQPATCH_CACHE/work/llama.cpp-0c1e57098/ggml" DIR/ && cp one-kernel.cu DIR/
#   (cd DIR && patch -p1 < fattn-vec-experiment-switches.diff)   # the EXP_* switches, defaults = as patched
#   sh one-kernel.sh DIR gfx1100 NAME -DEXP_D=256 -DEXP_NCOLS=4 -DEXP_GQA=true \
#       -DEXP_K=GGML_TYPE_TURBO3 -DEXP_V=GGML_TYPE_TURBO3 [-DEXP_UNROLL_V=4 -DEXP_STATIC_SINK=1 -DEXP_GQA_KQ_Q=8]
#
# Needs root and the root made by `tqpatch build --backend hip --toolchain debian-sid` (or the
# HIP compile check). About 6 s per kernel on 2 cores.
dir=$(cd "$1" && pwd); arch=$2; name=$3; shift 3
python3 - "$dir" "$arch" "$@" <<'PY' 2>&1 | grep -A12 "Function Name: _ZL18flash_attn_ext_vec" \
    | sed -e 's/.*remark: *//' -e 's/ \[-Rpass.*//' | grep -E "^(VGPRs|AGPRs|ScratchSize|VGPRs Spill|Occupancy)" \
    | tr '\n' ' ' | sed "s|^|$name $arch: |"; echo
import os, sys
from tqpatch.toolchains import debian_sid
d, arch, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
cmd = ["/usr/lib/llvm-21/bin/clang", "-DGGML_USE_HIP", "-D__HIP_PLATFORM_AMD__=1", "-D__HIP_ROCclr__=1",
       '-DGGML_CUDA_FA_QUANTS="all"', "-Iggml/src", "-Iggml/include", "-O3", "-DNDEBUG", "-std=gnu++17",
       f"--offload-arch={arch}", "--cuda-device-only", "-x", "hip", "-c", "one-kernel.cu", "-o", "/dev/null",
       "-Rpass-analysis=kernel-resource-usage", *extra]
argv = debian_sid.inside(cmd, [d])
os.execvp(argv[0], argv)
PY
