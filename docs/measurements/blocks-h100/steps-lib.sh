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
