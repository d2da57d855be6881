#!/bin/bash
# GPU steps for the coherence check (issue 10 item 10), for whoever holds the GPU machine.
# Needs: a CUDA build (`tqpatch build --backend cuda --arch 90`, targets llama-server
# included) and the test model in $TQPATCH_CACHE/models (`tqpatch model`).
# Takes ~3-5 min. Writes into $OUT (default ./out); bring coherence.json back and
# commit it as tqpatch/data/coherence.json (it keeps the CPU measurement beside it).
set -u
OUT=${OUT:-./out}; mkdir -p "$OUT"
# 1. measure every formats.KV_CONFIGS entry with all layers and the KV cache on the GPU,
#    and merge the measurement (backend cuda, with model sha256, date, machine, command)
timeout 900 python3 benchmarks/coherence_table.py --backend cuda --threads 8 \
    --extra-arg=-ngl --extra-arg=99 2>&1 | tee "$OUT/coherence-cuda.txt"
cp tqpatch/data/coherence.json "$OUT/coherence.json"
# 2. the GPU end-to-end test: anchors coherent, every configuration plan offers for
#    Gemma 3 coherent on CUDA, turbo2/turbo2 caught
timeout 900 python3 -m pytest -q -s -m gpu tests/test_integration_gpu.py -k coherence \
    -p no:cacheprovider 2>&1 | tee "$OUT/pytest_coherence_gpu.log"
