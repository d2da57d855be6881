#!/bin/bash
# device: wait up to $1 s for the build + verify job, then return /tmp/vres
for i in $(seq 1 ${1:-0}); do [ -f /tmp/vres/done ] && break; sleep 1; done
tail -2 /tmp/vres/build.log; tail -4 /tmp/vres/verify.txt 2>/dev/null; cp -r /tmp/vres $OUT/
