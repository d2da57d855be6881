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
TQ="python3 -m tqpatch.cli"
mkdir -p /tmp/pylib
for w in "$R"/.carry/wheels/*.whl; do [ -f "$w" ] && python3 -m zipfile -e "$w" /tmp/pylib; done
say "device: $(nvidia-smi -L 2>&1 | head -1)"

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
LIBS=$(awk '/^build bin\/test-backend-ops:/{f=1} f&&/LINK_LIBRARIES/{sub(/.*LINK_LIBRARIES = /,""); print; exit}' "$B/build.ninja")
TREE=$TQPATCH_CACHE/work/llama.cpp-0c1e57098
( cd "$B" && step bytes_build 120 g++ -O2 -std=c++17 -I "$TREE/ggml/include" -I "$R/tests/data" \
    "$R/docs/measurements/cuda-speed/turbo-cuda-bytes.cpp" -o bin/turbo-cuda-bytes $LIBS -fopenmp )
step bytes 60 "$BIN/turbo-cuda-bytes"
grep -E "blocks|values|OK|FAIL" "$L/bytes.log" | head -20 | sed 's/^/    /' | tee -a "$S"
step heads 300 python3 -m pytest -q -m gpu tests/test_head_sizes.py -p no:cacheprovider
tail -5 "$L/heads.log" | tee -a "$S"
say "total $(( $(date +%s) - T0 )) s"
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$L"
