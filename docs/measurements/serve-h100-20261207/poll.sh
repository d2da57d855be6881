#!/bin/bash
# device: wait up to $1 s for $2 (a file), then copy /tmp/res to $OUT and show progress
W=${1:-0}; F=${2:-/nonexistent}
for i in $(seq 1 $W); do [ -f $F ] && break; sleep 1; done
tail -3 /tmp/res/build.log 2>/dev/null; tail -2 /tmp/res/verify.txt 2>/dev/null
for d in /tmp/res/*/; do [ -f $d/progress ] && { echo "== $d"; cat $d/progress; }; done
cp -r /tmp/res $OUT/ 2>/dev/null; nvidia-smi --query-gpu=memory.used --format=csv,noheader
tar czf $OUT/res.tgz -C /tmp res 2>/dev/null
