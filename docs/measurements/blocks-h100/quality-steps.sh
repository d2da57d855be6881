#!/bin/bash
# Issue 14 quality on one H100, after device-steps.sh on the same warm machine
# (the CUDA build in $TQPATCH_CACHE): PPL / KLD / coherence of every K/V
# configuration on Gemma 3 270M (head 256) and SmolLM2 135M (head 64), 20 x 512
# tokens against the same build's f16/f16, without and with the model's K
# calibration (LLAMA_TURBO_CALIB; files made here with `tqpatch calibrate`).
#
#   OUT=/path bash docs/measurements/blocks-h100/quality-steps.sh
#
# Models: /tmp/mp/m.0* (Gemma) and /tmp/sp/s.0* (SmolLM2) parts left by earlier
# calls, joined here; calibration files in .carry/blocks/*.calib.gguf.
set -u
NAME=quality
source "$(dirname "$0")/steps-lib.sh"
M=$TQPATCH_CACHE/models
mkdir -p "$M"
[ -f "$M/gemma-3-270m-Q4_K_M.gguf" ] || cat /tmp/mp/m.0* > "$M/gemma-3-270m-Q4_K_M.gguf"
[ -f "$M/smollm2-135m-q4_1.gguf" ] || cat /tmp/sp/s.0* > "$M/smollm2-135m-q4_1.gguf"
sha256sum "$M"/*.gguf | cut -c1-16 | tee -a "$S"
GPU=(--backend cuda --extra-arg=-ngl --extra-arg=99 --chunks 20)
CAL_CONFIGS=turbo4/turbo4,turbo3/turbo3,turbo2/turbo2,turbo3/turbo2
run_eval() { # name model calib configs...
    local name=$1 model=$2 calib=$3; shift 3
    local t=$(date +%s)
    LLAMA_TURBO_CALIB=$calib timeout 280 python3 -m tqpatch.cli eval -m "$model" "${GPU[@]}" "$@" \
        --markdown "$OUT/$name.md" > "$L/$name.log" 2>&1
    say "[$name] rc=$? $(( $(date +%s) - t )) s"
    grep -E "^\| *(f16|q8_0|q4_0|turbo)" "$OUT/$name.md" 2>/dev/null | tee -a "$S"
}
run_eval gemma "$M/gemma-3-270m-Q4_K_M.gguf" ""
run_eval gemma-cal "$M/gemma-3-270m-Q4_K_M.gguf" "$R/.carry/blocks/gemma.calib.gguf" --configs "$CAL_CONFIGS"
run_eval smol "$M/smollm2-135m-q4_1.gguf" "" --no-coherence
run_eval smol-cal "$M/smollm2-135m-q4_1.gguf" "$R/.carry/blocks/smol.calib.gguf" --configs "$CAL_CONFIGS" --no-coherence
say "total $(( $(date +%s) - T0 )) s"
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$L"
