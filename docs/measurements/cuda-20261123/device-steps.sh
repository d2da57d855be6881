#!/bin/bash
# device steps (docs/cuda.md "On the H100"): bash .carry/dev.sh STEP
source .carry/dev-setup.sh
mkdir -p /tmp/mp; cp $C/p*/m.0* /tmp/mp/ 2>/dev/null
B=$TQPATCH_CACHE/build/cuda/bin
cd $R
case "$1" in
X1) nvidia-smi -L
    T fetch --from $C/pristine.tgz | tail -1; T apply | tail -1
    T0=$(date +%s); timeout 420 python3 -m tqpatch.cli build --backend cuda --arch 90 > $OUT/build.log 2>&1; echo "build rc=$? $(( $(date +%s) - T0 )) s"; tail -3 $OUT/build.log
    timeout 150 python3 -m pytest -q -s -m gpu tests/test_integration_gpu.py -k "backend_ops or verify" -p no:cacheprovider > $OUT/pytest_X1.log 2>&1; echo "pytest X1 rc=$?"; tail -3 $OUT/pytest_X1.log ;;
X2) timeout 300 python3 benchmarks/bench_kv.py --backend cuda --parts fa,kv --no-default-model --synth --out $OUT/c --json $OUT/fa-kv-synth.json --markdown $OUT/fa-kv-synth.md 2>$OUT/c.err; echo "rc=$?"; tail -2 $OUT/c.err; rm -rf $OUT/c ;;
X3) timeout 300 python3 benchmarks/bench_kv.py --backend cuda --parts bench --no-default-model --synth --out $OUT/d --json $OUT/bench-synth.json --markdown $OUT/bench-synth.md 2>$OUT/d.err; echo "rc=$?"; tail -2 $OUT/d.err; rm -rf $OUT/d ;;
X4) T verify --backend cuda > $OUT/verify.txt 2>&1; echo "verify rc=$?"; tail -3 $OUT/verify.txt ;;
X5) mkdir -p $TQPATCH_CACHE/models && cat /tmp/mp/m.0* > $TQPATCH_CACHE/models/gemma-3-270m-Q4_K_M.gguf; ls -la /tmp/mp; T model | tail -1
    timeout 500 python3 -m pytest -q -s -m gpu tests/test_integration_gpu.py -k "perplexity or server" -p no:cacheprovider > $OUT/pytest_X5.log 2>&1; echo "pytest X5 rc=$?"; grep -E "gpu .*cpu|f16/f16:|/turbo3:|passed|failed" $OUT/pytest_X5.log | head -20 ;;
X6) timeout 540 python3 benchmarks/bench_kv.py --backend cuda --parts bench,kv --out $OUT/f --json $OUT/bench-gemma.json --markdown $OUT/bench-gemma.md 2>$OUT/f.err; echo "rc=$?"; tail -2 $OUT/f.err; rm -rf $OUT/f ;;
esac
