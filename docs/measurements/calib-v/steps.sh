#!/bin/bash
# V channel scales in the calibration (issue 14) on one H100: the CUDA build of
# this checkout (llama-perplexity, llama-server), then Gemma 3 270M's quality
# table (every K/V configuration, 20 x 512 tokens, against the same build's
# f16/f16) without and with the calibration file .carry/calv/gemma.calib.gguf
# (`tqpatch calibrate`, K and V parts).
#   OUT=/path bash docs/measurements/calib-v/steps.sh build
#   OUT=/path bash docs/measurements/calib-v/steps.sh quality
# The model's parts (.carry/mp50/m.0*, one per call beside the tree) are copied
# to /tmp/mp by earlier calls on the same warm machine and joined here.
set -u
NAME=calib-v
source "$(dirname "$0")/../blocks-h100/steps-lib.sh"
exec > >(tee -a "$L/steps.log") 2>&1
M=$TQPATCH_CACHE/models
GPU=(--backend cuda --extra-arg=-ngl --extra-arg=99 --chunks 20)
CAL_CONFIGS=q8_0/turbo2,q8_0/turbo3,q8_0/turbo4,turbo4/turbo4,turbo3/turbo3,turbo3/turbo2,turbo2/turbo2
for part in "$@"; do case $part in
build)
    device_setup
    step fetch 120 $TQ fetch --from "$R/.carry/pristine.tgz"
    step build 560 $TQ build --backend cuda --arch 90 -j "$(nproc)" --targets llama-perplexity,llama-server
    ;;
quality)
    device_setup
    G=$M/gemma-3-270m-Q4_K_M.gguf
    mkdir -p "$M"
    [ -f "$G" ] || cat /tmp/mp/m.* > "$G"
    say "gemma: $(sha256sum "$G" | cut -c1-16) (a5fd3b62230aa5ec expected)"
    for run in "gemma:" "gemma-cal:$R/.carry/calv/gemma.calib.gguf"; do
        name=${run%%:*} cal=${run#*:}
        args=()
        [ -n "$cal" ] && args=(--configs "$CAL_CONFIGS")
        LLAMA_TURBO_CALIB=$cal step "$name" 290 $TQ eval -m "$G" "${GPU[@]}" "${args[@]}" --markdown "$OUT/$name.md"
        grep -E "^\| *(f16|q8_0|q4_0|turbo)" "$OUT/$name.md" 2>/dev/null | tee -a "$S"
    done
    ;;
esac; done
say "total $(( $(date +%s) - T0 )) s"
