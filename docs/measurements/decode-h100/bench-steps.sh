#!/bin/bash
# (Run at commits 40c32aa / 36ed0e3, whose kernels read GGML_CUDA_TURBO_FA_GQA=0/1; the variable is
# GGML_CUDA_TURBO_FA_KERNEL=head|gqa|mma since the tensor-core decode kernel.)
# Issue 13, the decode-layout choice on one H100, call 2 of 3 (after build-steps.sh on the same
# warm machine): FA decode at short caches (Gemma's shape: 4 query heads on one KV head of 256;
# an 8B model's: 8 KV heads x 4 of 128; kv 256..32768) with the layout chosen automatically and
# forced either way (GGML_CUDA_TURBO_FA_GQA), then bench_kv.py's kv-16384 microbenchmark.
#   OUT=/path bash docs/measurements/decode-h100/bench-steps.sh
set -u
NAME=bench
source "$(dirname "$0")/../blocks-h100/steps-lib.sh"
exec > >(tee -a "$L/steps.log") 2>&1
BIN=$TQPATCH_CACHE/build/cuda/bin
export LLAMA_TURBO_BOUNDARY_K=0 LLAMA_TURBO_BOUNDARY_V=0
for mode in auto 1 0; do
    if [ $mode = auto ]; then unset GGML_CUDA_TURBO_FA_GQA; else export GGML_CUDA_TURBO_FA_GQA=$mode; fi
    step "short-$mode" 150 "$BIN/test-backend-ops" perf -b CUDA0 -o FLASH_ATTN_EXT -p 'nr23=\[4,1\],kv=(256|1024|4096|32768),nb=1,'
    grep -E "us/run" "$L/short-$mode.log" > "$OUT/short-$mode.txt"
done
unset GGML_CUDA_TURBO_FA_GQA
step fa 150 python3 benchmarks/bench_kv.py --backend cuda --parts fa --fa-types f16,q8_0,turbo3,turbo4 \
    --json "$L/fa.json" --markdown "$OUT/fa.md"
grep -E "^targets" "$OUT/fa.md" | tee -a "$S"
say "total $(( $(date +%s) - T0 )) s"
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$L"
