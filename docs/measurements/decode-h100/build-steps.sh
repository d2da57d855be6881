#!/bin/bash
# Issue 13, the decode-layout choice (fattn-turbo.cuh ggml_cuda_turbo_fa_use_gqa) on one H100,
# call 1 of 3 on one warm machine: join Gemma's parts (left in /tmp/mp by earlier calls), build
# the CUDA tree of this checkout, check it: `tqpatch verify --backend cuda` (its decode checks
# in both layouts), test-backend-ops' turbo cases, the quantizer's bytes against the C
# reference (turbo-cuda-bytes), and time SET_ROWS (one token, 512 tokens).
#   OUT=/path bash docs/measurements/decode-h100/build-steps.sh
set -u
NAME=build
source "$(dirname "$0")/../blocks-h100/steps-lib.sh"
exec > >(tee -a "$L/steps.log") 2>&1
device_setup
mkdir -p "$TQPATCH_CACHE/models"
G=$TQPATCH_CACHE/models/gemma-3-270m-Q4_K_M.gguf
[ -f "$G" ] || cat /tmp/mp/m.0* > "$G"
say "gemma: $(sha256sum "$G" | cut -c1-16)"
step fetch 120 $TQ fetch --from "$R/.carry/pristine.tgz"
step build 450 $TQ build --backend cuda --arch 90 -j "$(nproc)" \
    --targets test-backend-ops,tqpatch-verify,llama-bench,llama-cli,llama-perplexity,llama-server
BIN=$TQPATCH_CACHE/build/cuda/bin
[ -x "$BIN/tqpatch-verify" ] || { tail -30 "$L/build.log" | tee -a "$S"; tar czf "$OUT/logs.tgz" -C "$OUT" logs; exit 1; }
step verify 200 $TQ verify --backend cuda
grep -E "passed|PASS|FAIL" "$L/verify.log" | head -8 | cut -c1-200 | tee -a "$S"
say "    decode checks in the GQA layout: $(grep -c 'GQA kernel.*PASS' "$L/verify.log") PASS, $(grep -c 'GQA kernel.*FAIL' "$L/verify.log") FAIL"
for op in SET_ROWS GET_ROWS CPY FLASH_ATTN_EXT; do
    step "tbo_$op" 200 "$BIN/test-backend-ops" test -b CUDA0 -o $op -p turbo
    say "    $op: $(grep -E 'tests passed' "$L/tbo_$op.log" | head -1), FAIL $(grep -c "$op.*FAIL" "$L/tbo_$op.log"), not supported $(grep -c 'not supported' "$L/tbo_$op.log")"
done
byte_check
step perf_set_rows 60 "$BIN/test-backend-ops" perf -b CUDA0 -o SET_ROWS -p 'ne=\[1024,4096,1,1\]'
grep -E "SET_ROWS" "$L/perf_set_rows.log" | sed -E 's/ +/ /g; s/^/    /' | cut -c1-160 | tee -a "$S"
say "total $(( $(date +%s) - T0 )) s"
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$L"
