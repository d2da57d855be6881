#!/bin/bash
# Issue 13 (decode speed) on one H100 (16 cores): build the CUDA tree of this
# checkout, check it (tqpatch verify, test-backend-ops turbo cases, a byte check
# of the quantizer against the C reference on adversarial blocks) and measure
# it (flash-attention decode microbenchmark, SET_ROWS cost per token,
# llama-bench on the synthetic 8B-attention model and on Gemma 3 270M).
# About 8-9 minutes; one call of the device machine.
#
#   OUT=/path bash docs/measurements/cuda-speed/device-steps.sh
#
# Run from the repository root. $OUT (default ./out-speed) gets summary.txt
# (read it first), the benchmark tables fa.md, bench-synth.md, bench-gemma.md,
# and logs.tgz (every step's log and the benchmark JSON): 5 files, within
# what a device call brings back. A failed step is reported and the next one runs.
# Inputs (environment; each has a default):
#   TQPATCH_CACHE  tqpatch cache (default /tmp/tqc)
#   PRISTINE       llama.cpp source for `tqpatch fetch --from` (llama-cpp-python
#                  0.3.36 sdist or a tarball of the pristine tree; default the first
#                  of .carry/llama_cpp_python-0.3.36.tar.gz, .carry/pristine.tgz);
#                  not needed when $TQPATCH_CACHE already holds the verified tree
#   WHEELS         folder of wheels unpacked onto PYTHONPATH (gguf, for the
#                  synthetic model; default .carry/wheels)
#   GEMMA          Gemma 3 270M Q4_K_M GGUF (default $TQPATCH_CACHE/models/
#                  gemma-3-270m-Q4_K_M.gguf, else /tmp/mp/m.0* parts are joined
#                  there); without it the Gemma benchmark is skipped
#   BUDGET         seconds the script may use (default 540): the benchmarks
#                  after the checks are skipped once it is spent
set -u
R=$(pwd)
OUT=${OUT:-$R/out-speed}
L=$OUT/logs
mkdir -p "$L"
export TQPATCH_CACHE=${TQPATCH_CACHE:-/tmp/tqc}
export PATH=/usr/local/cuda/bin:$PATH
export LLAMA_TURBO_BOUNDARY_K=0 LLAMA_TURBO_BOUNDARY_V=0
BUDGET=${BUDGET:-540}
T0=$(date +%s)
S=$OUT/summary.txt
: > "$S"
exec > >(tee -a "$L/steps.log") 2>&1

say()  { echo "$*" | tee -a "$S"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
# step NAME TIMEOUT CMD...: run with a time limit, log to $L/NAME.log, one summary line
step() {
    local name=$1 limit=$2; shift 2
    local t=$(date +%s)
    echo "+ [$name] $*"
    timeout "$limit" "$@" > "$L/$name.log" 2>&1
    local rc=$?
    say "[$name] rc=$rc $(( $(date +%s) - t )) s (t=$(( $(date +%s) - T0 )) s)"
    return $rc
}
TQ=${TQ:-"python3 -m tqpatch.cli"}   # word-split on purpose: `timeout` needs a program, not a function

# ---- 0. environment ----------------------------------------------------------
mkdir -p /tmp/pylib
WHEELS=${WHEELS:-$R/.carry/wheels}
for w in "$WHEELS"/*.whl; do [ -f "$w" ] && python3 -m zipfile -e "$w" /tmp/pylib; done
export PYTHONPATH=$R:/tmp/pylib${PYTHONPATH:+:$PYTHONPATH}
say "device: $(nvidia-smi -L 2>&1 | head -1)"
say "commit: $(git -C "$R" log -1 --format='%h %s' 2>/dev/null | cut -c1-100)"
python3 -c "import numpy, click, jinja2, gguf" 2>/dev/null || say "WARNING: a Python package is missing (numpy, click, jinja2, gguf): the synthetic model needs gguf"

# ---- 1. pristine tree, apply, build -------------------------------------------
if [ -z "${PRISTINE:-}" ]; then
    for p in "$R/.carry/llama_cpp_python-0.3.36.tar.gz" "$R/.carry/pristine.tgz"; do
        [ -f "$p" ] && PRISTINE=$p && break
    done
fi
if [ -n "${PRISTINE:-}" ]; then
    step fetch 120 $TQ fetch --from "$PRISTINE"
else
    step fetch 120 $TQ fetch
fi
# the FA vector-kernel pairs the checks and tables use (every pair of f16, q8_0,
# turbo3, turbo4, plus turbo2 with itself and with q8_0); other pairs take the f16 fallback
FAQ=f16-f16,f16-q8_0,q8_0-f16,q8_0-q8_0
for k in f16 q8_0 turbo3 turbo4; do for v in turbo3 turbo4; do FAQ=$FAQ,$k-$v; [ $k != $v ] && case $k in turbo*) ;; *) FAQ=$FAQ,$v-$k;; esac; done; done
FAQ=$FAQ,turbo2-turbo2,q8_0-turbo2
step build 480 $TQ build --backend cuda --arch 90 -j "$(nproc)" --fa-quants "$FAQ" \
    --targets test-backend-ops,llama-bench,tqpatch-verify
B=$TQPATCH_CACHE/build/cuda
BIN=$B/bin
if [ ! -x "$BIN/test-backend-ops" ]; then
    say "no test-backend-ops: the build failed (logs.tgz: build.log)"; tail -30 "$L/build.log"
    tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$L"; exit 1
fi

# ---- 2. correctness -------------------------------------------------------------
for op in SET_ROWS GET_ROWS CPY FLASH_ATTN_EXT; do
    step "tbo_$op" 150 "$BIN/test-backend-ops" test -b CUDA0 -o $op -p turbo
    f=$L/tbo_$op.log
    say "    $op: OK $(grep -c ': OK' "$f"), FAIL $(grep -c 'FAIL' "$f"), not supported $(grep -c 'not supported' "$f"); $(grep -E 'tests passed' "$f" | head -1)"
done
step verify 150 $TQ verify --backend cuda
say "    $(grep -E '^[0-9]+ passed' "$L/verify.log" | head -1)"
say "    $(grep -E '^(PASS|FAIL)' "$L/verify.log" | head -1 | cut -c1-150)"
# byte check: CUDA SET_ROWS/CPY quantizer == C reference on random and adversarial blocks
LIBS=$(awk '/^build bin\/test-backend-ops:/{f=1} f&&/LINK_LIBRARIES/{sub(/.*LINK_LIBRARIES = /,""); print; exit}' "$B/build.ninja")
TREE=$TQPATCH_CACHE/work/llama.cpp-0c1e57098
( cd "$B" && step bytes_build 120 g++ -O2 -std=c++17 -I "$TREE/ggml/include" -I "$R/tests/data" \
    "$R/docs/measurements/cuda-speed/turbo-cuda-bytes.cpp" -o bin/turbo-cuda-bytes $LIBS -fopenmp )
step bytes 60 "$BIN/turbo-cuda-bytes"
grep -E "blocks|values|OK|FAIL" "$L/bytes.log" | sed 's/^/    /' | tee -a "$S"

# ---- 3. speed ----------------------------------------------------------------------
# SET_ROWS into an 8 x 128 KV cache: one token (a per-token latency) and 512 tokens
if [ "$(left)" -gt 60 ]; then
    step perf_set_rows 60 "$BIN/test-backend-ops" perf -b CUDA0 -o SET_ROWS -p 'ne=\[1024,4096,1,1\]'
    grep -E "SET_ROWS" "$L/perf_set_rows.log" | sed -E 's/ +/ /g; s/^/    /' | tee -a "$S"
fi
# flash-attention decode: kv 16384, 8 KV heads x 4, head 128 and 256, every pair of these types
if [ "$(left)" -gt 60 ]; then
    step fa 150 python3 benchmarks/bench_kv.py --backend cuda --parts fa --fa-types f16,q8_0,turbo3,turbo4 \
        --json "$L/fa.json" --markdown "$OUT/fa.md"
    grep -E "^targets|^\| (f16/f16|q8_0/q8_0|q8_0/turbo3|q8_0/turbo4|turbo3/turbo3|turbo4/turbo4) " "$OUT/fa.md" | sed 's/^/    /' | tee -a "$S"
fi
# llama-bench, synthetic 8B attention (written once with NumPy + gguf)
if [ "$(left)" -gt 90 ]; then
    step bench_synth $(( $(left) - 30 )) python3 benchmarks/bench_kv.py --backend cuda --parts bench \
        --no-default-model --synth --reps 3 --out "$L/synth" --json "$L/bench-synth.json" --markdown "$OUT/bench-synth.md"
    grep -E "PASS|MISS|n/a" "$OUT/bench-synth.md" | grep -v "^| K/V" | sed 's/^/    /' | tee -a "$S"
fi
# llama-bench, Gemma 3 270M
GEMMA=${GEMMA:-$TQPATCH_CACHE/models/gemma-3-270m-Q4_K_M.gguf}
if [ ! -f "$GEMMA" ] && ls /tmp/mp/m.0* > /dev/null 2>&1; then
    mkdir -p "$(dirname "$GEMMA")" && cat /tmp/mp/m.0* > "$GEMMA"
fi
if [ ! -f "$GEMMA" ]; then
    say "[bench_gemma] skipped: no model at $GEMMA"
elif [ "$(left)" -gt 60 ]; then
    step bench_gemma $(( $(left) + 30 )) python3 benchmarks/bench_kv.py --backend cuda --parts bench \
        --model "$GEMMA" --reps 3 --out "$L/gemma" --json "$L/bench-gemma.json" --markdown "$OUT/bench-gemma.md"
    grep -E "PASS|MISS|n/a" "$OUT/bench-gemma.md" | grep -v "^| K/V" | sed 's/^/    /' | tee -a "$S"
else
    say "[bench_gemma] skipped: budget spent ($(left) s left)"
fi
say "total $(( $(date +%s) - T0 )) s"
sleep 1
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$L"
