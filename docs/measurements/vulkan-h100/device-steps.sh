#!/bin/bash
# device steps (docs/vulkan.md "On the H100"): bash docs/measurements/vulkan-h100/device-steps.sh STEP
# Every step writes its logs to $OUT and fits the 10-minute limit of one device
# command (16 cores). Order: V0 V1 V2 V3 V4 V5 V6 (V1 builds; the rest need it).
source "$(dirname "$0")/device-setup.sh"
mkdir -p /tmp/mp; cp $C/p*/m.0* /tmp/mp/ 2>/dev/null
B=$TQPATCH_CACHE/build/vulkan/bin
cd $R
case "$1" in
V0) # the driver and the tools found: one NVIDIA device, glslc, headers 1.3.239 (the guard in patch 0011)
    vulkaninfo --summary > $OUT/vulkaninfo.txt 2>&1; echo "vulkaninfo rc=$?"; grep -E "deviceName|driverName|apiVersion" $OUT/vulkaninfo.txt
    T doctor > $OUT/doctor.txt 2>&1; grep -iE "vulkan|glslc|spir" $OUT/doctor.txt ;;
V1) T fetch --from $C/pristine.tgz | tail -1; T apply | tail -1
    T0=$(date +%s); timeout 560 python3 -m tqpatch.cli build --backend vulkan > $OUT/build.log 2>&1
    echo "build rc=$? $(( $(date +%s) - T0 )) s"; tail -3 $OUT/build.log ;;
V2) # every turbo type, block variants included: the full verify (every op, fa_cases at every head size)
    T verify --backend vulkan > $OUT/verify.txt 2>&1; echo "verify rc=$?"; tail -3 $OUT/verify.txt
    for op in SET_ROWS GET_ROWS CPY; do
      timeout 120 $B/test-backend-ops test -b Vulkan0 -o $op -p turbo > $OUT/tbo_$op.log 2>&1; echo "$op rc=$? $(grep 'tests passed' $OUT/tbo_$op.log)"
    done ;;
V3) # every turbo FLASH_ATTN_EXT case (formats.fa_cases: heads 64/128/256, the variants at 32/96), against the CPU backend
    timeout 560 $B/test-backend-ops test -b Vulkan0 -o FLASH_ATTN_EXT -p turbo > $OUT/tbo_FLASH_ATTN_EXT.log 2>&1
    echo "FLASH_ATTN_EXT rc=$? $(grep 'tests passed' $OUT/tbo_FLASH_ATTN_EXT.log)"; grep -c FAIL $OUT/tbo_FLASH_ATTN_EXT.log
    for hs in 32 96; do echo "hsk=$hs: $(grep "hsk=$hs," $OUT/tbo_FLASH_ATTN_EXT.log | grep -c OK) OK, $(grep "hsk=$hs," $OUT/tbo_FLASH_ATTN_EXT.log | grep -c -E 'FAIL|not supported') FAIL/not supported"; done ;;
V4) # decode attention microbenchmark (head 128 and 256, every K/V pair) and KV sizes
    timeout 560 python3 benchmarks/bench_kv.py --backend vulkan --parts fa,kv --no-default-model --synth --out $OUT/c --json $OUT/fa-kv-synth.json --markdown $OUT/fa-kv-synth.md 2>$OUT/c.err; echo "rc=$?"; tail -2 $OUT/c.err; rm -rf $OUT/c ;;
V5) # llama-bench pp512 / tg128 at depths 0, 8192, 32768 on the synthetic 8B-attention model
    timeout 560 python3 benchmarks/bench_kv.py --backend vulkan --parts bench --no-default-model --synth --out $OUT/d --json $OUT/bench-synth.json --markdown $OUT/bench-synth.md 2>$OUT/d.err; echo "rc=$?"; tail -2 $OUT/d.err; rm -rf $OUT/d ;;
V6) # Gemma 3 270M: PPL on the H100 = CPU, greedy continuations = CPU's, then llama-bench
    mkdir -p $TQPATCH_CACHE/models && cat /tmp/mp/m.0* > $TQPATCH_CACHE/models/gemma-3-270m-Q4_K_M.gguf; T model | tail -1
    timeout 400 python3 -m pytest -q -s -m vulkan tests/test_integration_gpu.py -k "perplexity or server" -p no:cacheprovider > $OUT/pytest_V6.log 2>&1; echo "pytest V6 rc=$?"; grep -E "vulkan .*cpu|passed|failed" $OUT/pytest_V6.log | head -20
    timeout 150 python3 benchmarks/bench_kv.py --backend vulkan --parts bench --depths 0,8192 --out $OUT/f --json $OUT/bench-gemma.json --markdown $OUT/bench-gemma.md 2>$OUT/f.err; echo "rc=$?"; tail -2 $OUT/f.err; rm -rf $OUT/f ;;
esac
