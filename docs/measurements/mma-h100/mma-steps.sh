#!/bin/bash
# Issue 13, the tensor-core turbo decode kernel (fattn-turbo-mma.cuh) on one H100.
#   OUT=/path bash docs/measurements/mma-h100/mma-steps.sh PART...
# build: the CUDA tree of this checkout (test-backend-ops, tqpatch-verify, llama-bench;
#        FAQ=pairs limits the FA instances, e.g. for a first try)
# check: test-backend-ops FLASH_ATTN_EXT's turbo cases with each decode kernel forced
#        (GGML_CUDA_TURBO_FA_KERNEL=head|gqa|mma) and chosen, `tqpatch verify --backend cuda`
# perf:  FA decode at kv 16384 (bench_kv.py) and the short-cache cases, per kernel
# gqa8:  the 70B-shape decode cases (GQA 8), tensor-core kernel (groups of 8, and of 4: mma4)
#        and vector GQA kernel
# profile: ncu of one tensor-core decode launch (turbo3, turbo4; heads 128, 256)
# synth: llama-bench tg128 at depth 32768 on the synthetic 8B-attention model (docs/benchmarks.md)
# gemma: bench_kv.py's llama-bench part on Gemma 3 270M (its parts joined from /tmp/mp/m.*, left
#        there by earlier calls on the same warm machine: .carry/mp50 holds 5 parts of 48 MiB, one per
#        call beside the tree), then `pytest -m gpu tests/test_integration_gpu.py`
set -u
NAME=mma
source "$(dirname "$0")/../blocks-h100/steps-lib.sh"
exec > >(tee -a "$L/steps.log") 2>&1
BIN=$TQPATCH_CACHE/build/cuda/bin
export LLAMA_TURBO_BOUNDARY_K=0 LLAMA_TURBO_BOUNDARY_V=0
kernel() { if [ "$1" = auto ]; then unset GGML_CUDA_TURBO_FA_KERNEL; else export GGML_CUDA_TURBO_FA_KERNEL=$1; fi; }
for part in "$@"; do case $part in
build)
    device_setup
    step fetch 120 $TQ fetch --from "$R/.carry/pristine.tgz"
    step build 500 $TQ build --backend cuda --arch 90 -j "$(nproc)" ${FAQ:+--fa-quants $FAQ} \
        --targets ${TARGETS:-test-backend-ops,tqpatch-verify,llama-bench}
    [ -x "$BIN/test-backend-ops" ] || { grep -E "error|Error" "$L/build.log" | head -30 | tee -a "$S"; }
    ;;
check)
    for k in ${CHECK_KERNELS:-mma gqa head auto}; do
        kernel $k
        step "fa_$k" 150 "$BIN/test-backend-ops" test -b CUDA0 -o FLASH_ATTN_EXT -p turbo
        say "    $k: $(grep -E 'tests passed' "$L/fa_$k.log" | head -1), FAIL $(grep -c 'FAIL' "$L/fa_$k.log"), not supported $(grep -c 'not supported' "$L/fa_$k.log")"
        grep -E "FAIL" "$L/fa_$k.log" | head -4 | cut -c1-260 | tee -a "$S"
    done
    kernel auto
    step verify 200 $TQ verify --backend cuda
    grep -E "passed|FAIL" "$L/verify.log" | tail -4 | cut -c1-200 | tee -a "$S"
    for v in "GQA kernel" "tensor-core kernel"; do
        say "    decode checks, $v: $(grep -c "$v.*PASS" "$L/verify.log") PASS, $(grep -c "$v.*FAIL" "$L/verify.log") FAIL"
    done
    ;;
perf)
    for k in ${KERNELS:-mma gqa}; do
        kernel $k
        step "fa16k_$k" 200 python3 benchmarks/bench_kv.py --backend cuda --parts fa --fa-types ${FATYPES:-f16,q8_0,turbo3,turbo4} \
            --json "$L/fa-$k.json" --markdown "$OUT/fa-$k.md"
        grep -E "^targets" "$OUT/fa-$k.md" | tee -a "$S"
    done
    for k in ${SHORT_KERNELS:-}; do
        kernel $k
        step "short_$k" 150 "$BIN/test-backend-ops" perf -b CUDA0 -o FLASH_ATTN_EXT -p 'nr23=\[4,1\],kv=(256|1024|4096|32768),nb=1,'
        grep -E "us/run" "$L/short_$k.log" > "$OUT/short-$k.txt"
    done
    kernel auto
    ;;
gqa8)
    # the 70B shape (8 KV heads x 8 of 128, kv 16384): groups of 8 (mma) against groups of 4
    # (mma4) and the vector GQA kernel
    for k in mma mma4 gqa; do
        kernel $k
        step "gqa8_$k" 150 "$BIN/test-backend-ops" perf -b CUDA0 -o FLASH_ATTN_EXT -p 'nr23=\[8,1\],kv=16384,nb=1,'
        grep -E "us/run" "$L/gqa8_$k.log" > "$OUT/gqa8-$k.txt"
    done
    kernel auto
    ;;
profile)
    # ncu of one tensor-core decode launch per pair and head size (kv 16384, 8 KV heads x 4)
    for hs in 128 256; do for p in ${PROFILE_PAIRS:-turbo3/turbo3 turbo4/turbo4}; do
        k=${p%/*}; v=${p#*/}
        step "ncu-$hs-$k-$v" 200 ncu --kernel-name regex:flash_attn_ext_turbo_mma --launch-count 1 \
            --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
            --section WarpStateStats --section Occupancy --section LaunchStats --section InstructionStats \
            "$BIN/test-backend-ops" perf -b CUDA0 -o FLASH_ATTN_EXT \
            -p "^hsk=$hs,hsv=$hs,nh=8,nr23=\[4,1\],kv=16384,nb=1,mask=1,sinks=0,.*,type_K=$k,type_V=$v,"
        cp "$L/ncu-$hs-$k-$v.log" "$OUT/ncu-$hs-$k-$v.txt"
        grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|Registers Per|Achieved Occupancy|Issue Slots Busy|Executed Ipc A" \
            "$L/ncu-$hs-$k-$v.log" | head -12 | sed 's/^/    /' | tee -a "$S"
    done; done
    ;;
synth)
    M=/tmp/synth-8b.gguf
    [ -f $M ] || step synth_model 120 $TQ synth-model $M --layers 8 --ff 1024 --vocab 512 --ctx-train 65536 --type q8_0 --seed 0
    for p in ${PAIRS:-f16/f16 q8_0/q8_0 turbo3/turbo3 q8_0/turbo4 q8_0/turbo3 turbo4/turbo4}; do
        k=${p%/*}; v=${p#*/}
        step "synth-$k-$v" 120 "$BIN/llama-bench" -m $M -fa 1 -ngl 99 -p 0 -n 128 -d 32768 -r ${REPS:-3} -ctk $k -ctv $v -o md
        grep -E "tg128" "$L/synth-$k-$v.log" | sed "s|^|$p |" | tee -a "$S" "$OUT/synth.md"
    done
    ;;
gemma)
    G=$TQPATCH_CACHE/models/gemma-3-270m-Q4_K_M.gguf
    mkdir -p "$TQPATCH_CACHE/models"
    [ -f "$G" ] || cat /tmp/mp/m.* > "$G"
    say "gemma: $(sha256sum "$G" | cut -c1-16) (a5fd3b62230aa5ec expected)"
    step bench_gemma 400 python3 benchmarks/bench_kv.py --backend cuda --parts bench \
        --model "$G" --reps ${REPS:-3} --out "$L/gemma" --json "$OUT/bench-gemma.json" --markdown "$OUT/bench-gemma.md"
    grep -E "PASS|MISS|n/a" "$OUT/bench-gemma.md" | grep -v "^| K/V" | tee -a "$S"
    step pytest_gpu 400 python3 -m pytest -q -m gpu tests/test_integration_gpu.py
    tail -3 "$L/pytest_gpu.log" | tee -a "$S"
    ;;
esac; done
say "total $(( $(date +%s) - T0 )) s"
