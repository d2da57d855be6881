#!/bin/bash
# Issue 14 (block design) on one H100: build the CUDA tree of this checkout and
# check every turbo type, block variants included (test-backend-ops turbo cases,
# tqpatch verify, the quantizer's bytes against the C reference, a synthetic
# model per head size end to end). One device call, ~8 min.
#
#   OUT=/path bash docs/measurements/blocks-h100/device-steps.sh
#
# Run from the repository root; inputs as docs/measurements/cuda-speed/device-steps.sh
# (.carry/pristine.tgz, .carry/wheels). $OUT gets summary.txt and logs.tgz.
set -u
NAME=blocks
source "$(dirname "$0")/steps-lib.sh"
exec > >(tee -a "$L/steps.log") 2>&1
device_setup

step fetch 120 $TQ fetch --from "$R/.carry/pristine.tgz"
step build 450 $TQ build --backend cuda --arch 90 -j "$(nproc)" \
    --targets test-backend-ops,tqpatch-verify,llama-cli,llama-perplexity,llama-server,llama-bench
B=$TQPATCH_CACHE/build/cuda
BIN=$B/bin
if [ ! -x "$BIN/test-backend-ops" ]; then
    say "no test-backend-ops: the build failed"; tail -40 "$L/build.log" | tee -a "$S"
    tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$L"; exit 1
fi
for op in SET_ROWS GET_ROWS CPY FLASH_ATTN_EXT; do
    step "tbo_$op" 200 "$BIN/test-backend-ops" test -b CUDA0 -o $op -p turbo
    f=$L/tbo_$op.log
    say "    $op: OK $(grep -c ': OK' "$f"), FAIL $(grep -c 'FAIL' "$f"), not supported $(grep -c 'not supported' "$f"); $(grep -E 'tests passed' "$f" | head -1)"
    grep FAIL "$f" | head -5 | cut -c1-200 | tee -a "$S"
done
step verify 200 $TQ verify --backend cuda
grep -E "passed|PASS|FAIL" "$L/verify.log" | head -8 | cut -c1-200 | tee -a "$S"
byte_check
step heads 300 python3 -m pytest -q -m gpu tests/test_head_sizes.py -p no:cacheprovider
tail -5 "$L/heads.log" | tee -a "$S"
say "total $(( $(date +%s) - T0 )) s"
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$L"
