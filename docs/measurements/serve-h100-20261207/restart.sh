#!/bin/bash
# device: stop every session, eval, serve and llama-server, put the capture's default text
# (docs/build.md, left out of pristine.tgz) in the pristine tree, start both sessions again
for p in $(pgrep -f "sess\.sh") $(pgrep -f "tqpatch\.cli (eval|serve)") $(pgrep -f "bin/llama-server"); do
  [ "$p" != $$ ] && [ "$p" != $PPID ] && kill $p 2>/dev/null; done
sleep 2; ps aux | grep "[l]lama-\|[t]qpatch.cli" | cut -c1-150
mkdir -p /tmp/tqc/src/llama.cpp-0c1e57098/docs && cp .carry/c7/build.md /tmp/tqc/src/llama.cpp-0c1e57098/docs/build.md
rm -rf /tmp/res/smollm2 /tmp/res/gemma
S=/tmp/repo/docs/measurements/serve-h100-20261207/sess.sh
(setsid nohup bash -c "bash $S smollm2 /tmp/mp/smol/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/res/smollm2; bash $S gemma /tmp/tqc/models/gemma-3-270m-Q4_K_M.gguf /tmp/res/gemma" > /tmp/res/sess2.out 2>&1 < /dev/null &)
sleep 25; cat /tmp/res/smollm2/progress; tail -3 /tmp/res/smollm2/serve-smollm2-cold.log
