#!/bin/bash
# Issue 13, where a decode token's GPU time goes on a Gemma-shaped model (18 layers,
# 4 query heads on 1 KV head of 256): build the CUDA tree of this checkout, then
#  1. llama-bench tg at depth 0 with CUDA graphs on and off (GGML_CUDA_DISABLE_GRAPHS=1):
#     if a turbo cache broke graph capture, its rate would not change when they are off;
#  2. ncu, one metric (gpu__time_duration), over a short tg run per configuration:
#     kernel time per token by kernel name (ncu-*.csv, summed by ncu_sum.py).
# One device call, ~8 min.   OUT=/path bash docs/measurements/decode-h100/diag-steps.sh
set -u
NAME=diag
source "$(dirname "$0")/../blocks-h100/steps-lib.sh"
exec > >(tee -a "$L/steps.log") 2>&1
device_setup
export LLAMA_TURBO_BOUNDARY_K=0 LLAMA_TURBO_BOUNDARY_V=0
step fetch 120 $TQ fetch --from "$R/.carry/pristine.tgz"
step build 450 $TQ build --backend cuda --arch 90 -j "$(nproc)" --targets llama-bench,test-backend-ops
BIN=$TQPATCH_CACHE/build/cuda/bin
[ -x "$BIN/llama-bench" ] || { tail -30 "$L/build.log" | tee -a "$S"; tar czf "$OUT/logs.tgz" -C "$OUT" logs; exit 1; }
M=/tmp/gemma-shape.gguf
step synth 120 $TQ synth-model --layers 18 --embd 640 --heads 4 --kv-heads 1 --head-dim 256 \
    --ff 2048 --vocab 4096 --type q8_0 "$M"
# llama-bench crosses -ctk and -ctv; run each pair on its own
PAIRS="f16/f16 q8_0/q8_0 q8_0/turbo4 q8_0/turbo3 turbo4/turbo4 turbo3/turbo3"
for g in on off; do
    for p in $PAIRS; do
        k=${p%/*}; v=${p#*/}
        if [ $g = off ]; then export GGML_CUDA_DISABLE_GRAPHS=1; else unset GGML_CUDA_DISABLE_GRAPHS; fi
        step "tg-$g-$k-$v" 120 "$BIN/llama-bench" -m "$M" -fa 1 -ngl 99 -p 0 -n 128 -r 5 -ctk $k -ctv $v -o csv
        say "    graphs $g $p: $(tail -1 "$L/tg-$g-$k-$v.log" | awk -F, '{print $(NF-1)" +- "$NF}')"
    done
done
unset GGML_CUDA_DISABLE_GRAPHS
for p in q8_0/q8_0 q8_0/turbo3 turbo3/turbo3 f16/f16; do
    k=${p%/*}; v=${p#*/}
    step "ncu-$k-$v" 150 ncu --metrics gpu__time_duration.sum --csv --page raw --print-units base \
        "$BIN/llama-bench" -m "$M" -fa 1 -ngl 99 -p 0 -n 8 -r 1 -ctk $k -ctv $v
    cp "$L/ncu-$k-$v.log" "$OUT/ncu-$k-$v.csv"
done
step ncu-sum 60 python3 "$(dirname "$0")/ncu_sum.py" "$OUT"/ncu-*.csv
cat "$L/ncu-sum.log" >> "$S"
say "total $(( $(date +%s) - T0 )) s"
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$L"
