#!/bin/bash
# device: one model's serve session. sess.sh NAME MODEL RESDIR [WAIT_FOR_FILE]
set -m
N=$1; M=$2; D=$3; mkdir -p $D
export TQPATCH_CACHE=/tmp/tqc PYTHONPATH=/tmp/repo:/tmp/site PATH=/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1
cd /tmp/repo
while [ ! -f /tmp/build.done ]; do sleep 2; done
if [ -n "${4:-}" ]; then while [ ! -f $4 ]; do sleep 2; done; fi
echo "start $(date -u +%T)" > $D/progress
start() { tag=$1; shift; L=$D/serve-$N-$tag.log
  timeout 900 python3 -m tqpatch.cli serve "$M" --port 8190 "$@" > $L 2>&1 &
  P=$!
  for i in $(seq 1 900); do grep -q "^ready:" $L && break; kill -0 $P 2>/dev/null || break; sleep 1; done
  echo "$tag ready-or-dead $(date -u +%T)" >> $D/progress; }
stop() { kill -INT $P; wait $P; echo "tqpatch exit rc=$?" >> $L; sleep 1; ps aux | grep -c '[l]lama-server' | sed 's/^/llama-server processes left: /' >> $L; }
ask() { curl -s -m 60 http://127.0.0.1:8190/v1/chat/completions -H 'Content-Type: application/json' \
   -d '{"messages":[{"role":"user","content":"What is the capital of France? Answer in one sentence."}],"max_tokens":48,"temperature":0}' > $D/$N-$1-chat.json
  curl -s -m 60 http://127.0.0.1:8190/completion -H 'Content-Type: application/json' \
   -d '{"prompt":"The capital of France is","n_predict":24,"temperature":0}' > $D/$N-$1-completion.json; }
start cold; ask cold; stop
start warm; ask warm; stop
start lossless --quality lossless; stop
start small --quality small; stop
ps aux | grep '[l]lama' > $D/ps-after.txt; echo "ps rc=$?" >> $D/ps-after.txt
CH=$(grep -m1 '^chosen:' $D/serve-$N-cold.log | sed 's/^chosen: \([^ :]*\).*/\1/')
CAL=$(find /tmp/tqc/serve -name '*.gguf' | grep -i calib | head -1); [ -z "$CAL" ] && CAL=$(find /tmp/tqc/serve -name '*.gguf' | head -1)
echo "calib files:" >> $D/progress; find /tmp/tqc/serve -type f >> $D/progress
CFG="q8_0/q8_0,q8_0/turbo4"
if grep -m1 '^chosen:' $D/serve-$N-cold.log | grep -q 'with the calibration'; then CFG="$CFG,$CH:cal=$CAL"
elif [ "$CH" != q8_0/q8_0 ] && [ "$CH" != q8_0/turbo4 ]; then CFG="$CFG,$CH"; fi
echo "eval configs $CFG $(date -u +%T)" >> $D/progress
timeout 500 python3 -m tqpatch.cli eval --backend cuda --model "$M" --configs "$CFG" --markdown $D/eval-$N.md > $D/eval-$N.log 2>&1
echo "eval rc=$? $(date -u +%T)" >> $D/progress
T2=$(ls -d /tmp/tqc/src/llama.cpp-*/ | head -1)tools/completion/README.md
timeout 500 python3 -m tqpatch.cli eval --backend cuda --model "$M" -f "$T2" --configs "$CFG" --markdown $D/eval2-$N.md > $D/eval2-$N.log 2>&1
echo "eval2 (tools/completion/README.md) rc=$? $(date -u +%T)" >> $D/progress
touch $D/done
