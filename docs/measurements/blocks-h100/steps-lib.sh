# Sourced by the blocks-h100 device scripts: $OUT, the logs folder $L, the summary
# $S, the tqpatch cache, PYTHONPATH, and the say / step helpers. Set NAME first
# (the default OUT folder is out-$NAME).
R=$(pwd)
OUT=${OUT:-$R/out-$NAME}
L=$OUT/logs
mkdir -p "$L"
export TQPATCH_CACHE=${TQPATCH_CACHE:-/tmp/tqc}
export PATH=/usr/local/cuda/bin:$PATH
export PYTHONPATH=$R:$R/tests:/tmp/pylib${PYTHONPATH:+:$PYTHONPATH}
T0=$(date +%s)
S=$OUT/summary.txt
: > "$S"
say() { echo "$*" | tee -a "$S"; }
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
# device_setup: the wheels of .carry/wheels on PYTHONPATH (/tmp/pylib), $TQ, and the GPU's
# name in the summary (call after `exec > >(tee ...)`, so the lines reach the log)
TQ="python3 -m tqpatch.cli"
device_setup() {
    mkdir -p /tmp/pylib
    for w in "$R"/.carry/wheels/*.whl; do [ -f "$w" ] && python3 -m zipfile -e "$w" /tmp/pylib; done
    say "device: $(nvidia-smi -L 2>&1 | head -1)"
}
# byte_check: build docs/measurements/cuda-speed/turbo-cuda-bytes.cpp against the CUDA
# build's libraries and run it (the quantizer's bytes against the C reference)
byte_check() {
    local B=$TQPATCH_CACHE/build/cuda TREE=$TQPATCH_CACHE/work/llama.cpp-0c1e57098 LIBS
    LIBS=$(awk '/^build bin\/test-backend-ops:/{f=1} f&&/LINK_LIBRARIES/{sub(/.*LINK_LIBRARIES = /,""); print; exit}' "$B/build.ninja")
    ( cd "$B" && step bytes_build 120 g++ -O2 -std=c++17 -I "$TREE/ggml/include" -I "$R/tests/data" \
        "$R/docs/measurements/cuda-speed/turbo-cuda-bytes.cpp" -o bin/turbo-cuda-bytes $LIBS -fopenmp )
    step bytes 60 "$B/bin/turbo-cuda-bytes"
    grep -E "blocks|values|OK|FAIL" "$L/bytes.log" | head -20 | sed 's/^/    /' | tee -a "$S"
}
