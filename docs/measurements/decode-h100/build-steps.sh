#!/bin/bash
# Issue 13, the decode-layout choice (fattn-turbo.cuh ggml_cuda_turbo_fa_use_gqa) on one H100,
# call 1 of 3 on one warm machine: join Gemma's parts (left in /tmp/mp by earlier calls), build
# the CUDA tree of this checkout, check it: `tqpatch verify --backend cuda` (its decode checks
# in both layouts) and test-backend-ops' turbo FLASH_ATTN_EXT cases.
#   OUT=/path bash docs/measurements/decode-h100/build-steps.sh
set -u
NAME=build
source "$(dirname "$0")/../blocks-h100/steps-lib.sh"
exec > >(tee -a "$L/steps.log") 2>&1
TQ="python3 -m tqpatch.cli"
mkdir -p /tmp/pylib "$TQPATCH_CACHE/models"
for w in "$R"/.carry/wheels/*.whl; do [ -f "$w" ] && python3 -m zipfile -e "$w" /tmp/pylib; done
say "device: $(nvidia-smi -L 2>&1 | head -1)"
G=$TQPATCH_CACHE/models/gemma-3-270m-Q4_K_M.gguf
[ -f "$G" ] || cat /tmp/mp/m.0* > "$G"
say "gemma: $(sha256sum "$G" | cut -c1-16)"
step fetch 120 $TQ fetch --from "$R/.carry/pristine.tgz"
step build 450 $TQ build --backend cuda --arch 90 -j "$(nproc)" \
    --targets test-backend-ops,tqpatch-verify,llama-bench,llama-cli
BIN=$TQPATCH_CACHE/build/cuda/bin
[ -x "$BIN/tqpatch-verify" ] || { tail -30 "$L/build.log" | tee -a "$S"; tar czf "$OUT/logs.tgz" -C "$OUT" logs; exit 1; }
step verify 200 $TQ verify --backend cuda
grep -E "passed|PASS|FAIL" "$L/verify.log" | head -8 | cut -c1-200 | tee -a "$S"
say "    decode checks in the GQA layout: $(grep -c 'GQA kernel.*PASS' "$L/verify.log") PASS, $(grep -c 'GQA kernel.*FAIL' "$L/verify.log") FAIL"
step tbo_fa 200 "$BIN/test-backend-ops" test -b CUDA0 -o FLASH_ATTN_EXT -p turbo
say "    FLASH_ATTN_EXT: OK $(grep -c ': OK' "$L/tbo_fa.log"), FAIL $(grep -c 'FAIL' "$L/tbo_fa.log"), not supported $(grep -c 'not supported' "$L/tbo_fa.log")"
say "total $(( $(date +%s) - T0 )) s"
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$L"
