#!/bin/bash
# (Run at commits 40c32aa / 36ed0e3, whose kernels read GGML_CUDA_TURBO_FA_GQA=0/1; the variable is
# GGML_CUDA_TURBO_FA_KERNEL=head|gqa|mma since the tensor-core decode kernel.)
# Issue 13, the decode-layout choice on one H100, call 3 of 3: llama-bench on Gemma 3 270M
# (bench_kv.py --parts bench: pp512 and tg128 at depths 0, 8192, 32768, 3 repetitions), then
# tg128 at 0 and 32768 with the GQA layout forced everywhere (the layout before this change).
#   OUT=/path bash docs/measurements/decode-h100/gemma-steps.sh
set -u
NAME=gemma
source "$(dirname "$0")/../blocks-h100/steps-lib.sh"
exec > >(tee -a "$L/steps.log") 2>&1
BIN=$TQPATCH_CACHE/build/cuda/bin
G=$TQPATCH_CACHE/models/gemma-3-270m-Q4_K_M.gguf
export LLAMA_TURBO_BOUNDARY_K=0 LLAMA_TURBO_BOUNDARY_V=0
step bench_gemma 400 python3 benchmarks/bench_kv.py --backend cuda --parts bench \
    --model "$G" --reps 3 --out "$L/gemma" --json "$OUT/bench-gemma.json" --markdown "$OUT/bench-gemma.md"
grep -E "PASS|MISS|n/a" "$OUT/bench-gemma.md" | grep -v "^| K/V" | tee -a "$S"
export GGML_CUDA_TURBO_FA_GQA=1
for p in q8_0/turbo3 turbo3/turbo3; do
    k=${p%/*}; v=${p#*/}
    step "gqa1-$k-$v" 70 "$BIN/llama-bench" -m "$G" -fa 1 -ngl 99 -p 0 -n 128 -d 0,32768 -r 3 -ctk $k -ctv $v -o md
    grep -E "tg128" "$L/gqa1-$k-$v.log" | tee -a "$S"
done
unset GGML_CUDA_TURBO_FA_GQA
say "total $(( $(date +%s) - T0 )) s"
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$L"
