#!/bin/bash
# Needs the experiment build of 20261127/experiment.diff (applied on 2b0ff12): the landed kernel
# has one configuration and no GGML_CUDA_TURBO_MMA_CFG.
# Issue 13, tensor-core decode: one build with the kernel's configurations selectable
# (GGML_CUDA_TURBO_MMA_CFG, an experiment branch), FA decode perf per configuration.
set -u
NAME=cfg
source "$(dirname "$0")/../blocks-h100/steps-lib.sh"
exec > >(tee -a "$L/steps.log") 2>&1
BIN=$TQPATCH_CACHE/build/cuda/bin
if [ ! -x "$BIN/test-backend-ops" ] || [ "${REBUILD:-1}" = 1 ]; then
    device_setup
    step fetch 120 $TQ fetch --from "$R/.carry/pristine.tgz"
    step build 500 $TQ build --backend cuda --arch 90 -j "$(nproc)" --fa-quants ${FAQ:-f16-f16,q8_0-q8_0,turbo3-turbo3,turbo4-turbo4,q8_0-turbo3,q8_0-turbo4} --targets test-backend-ops,tqpatch-verify
    [ -x "$BIN/test-backend-ops" ] || { grep -E "error" "$L/build.log" | head -30 | tee -a "$S"; exit 1; }
fi
export GGML_CUDA_TURBO_FA_KERNEL=mma
for c in ${CFGS:-0 1 2 3 4 5 6 7 8}; do
    export GGML_CUDA_TURBO_MMA_CFG=$c
    step "perf_$c" 100 "$BIN/test-backend-ops" perf -b CUDA0 -o FLASH_ATTN_EXT -p '(kv=16384,nb=1,.*type_K=(turbo3|turbo4|q8_0),type_V=(turbo3|turbo4),|nh=1,nr23=\[4,1\],kv=32768,nb=1,.*type_K=turbo3,type_V=turbo3,)'
    grep "us/run" "$L/perf_$c.log" | sed -E 's/.*hsk=([0-9]+).*nh=([0-9]+).*kv=([0-9]+).*type_K=([a-z0-9_]+),type_V=([a-z0-9_]+).* ([0-9.]+) us\/run.*/cfg '$c' hs \1 nh \2 kv \3 \4\/\5 \6/' | tee -a "$S"
done
unset GGML_CUDA_TURBO_FA_KERNEL GGML_CUDA_TURBO_MMA_CFG
if [ -n "${CHECK_CFG:-}" ]; then
    export GGML_CUDA_TURBO_MMA_CFG=$CHECK_CFG
    GGML_CUDA_TURBO_FA_KERNEL=mma step check_fa 150 "$BIN/test-backend-ops" test -b CUDA0 -o FLASH_ATTN_EXT -p turbo
    say "    cfg $CHECK_CFG FA: $(grep -E 'tests passed' "$L/check_fa.log" | head -1), FAIL $(grep -c 'FAIL' "$L/check_fa.log")"
    grep FAIL "$L/check_fa.log" | head -3 | cut -c1-250 | tee -a "$S"
    if [ -x "$BIN/tqpatch-verify" ]; then
        step check_verify 150 $TQ verify --backend cuda
        grep -E "passed|FAIL" "$L/check_verify.log" | tail -3 | cut -c1-200 | tee -a "$S"
    fi
    unset GGML_CUDA_TURBO_MMA_CFG
fi
step base 100 "$BIN/test-backend-ops" perf -b CUDA0 -o FLASH_ATTN_EXT -p '(kv=16384,nb=1,.*type_K=(f16|q8_0),type_V=(f16|q8_0))'
grep "us/run" "$L/base.log" | sed -E 's/.*hsk=([0-9]+).*nh=([0-9]+).*kv=([0-9]+).*type_K=([a-z0-9_]+),type_V=([a-z0-9_]+).* ([0-9.]+) us\/run.*/base hs \1 nh \2 kv \3 \4\/\5 \6/' | tee -a "$S"
say "total $(( $(date +%s) - T0 )) s"
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$L"
