#!/bin/bash
# Gemma 3 270M on NVIDIA's Vulkan driver vs the CPU backend of the same binaries (h/vulkan build of 06:42)
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json GGML_VK_VISIBLE_DEVICES=0
cp .carry/mp/m.0* /tmp/vkm/ 2>/dev/null
mkdir -p /tmp/vk/bin /tmp/vk/main && xz -dc /tmp/vkm/bins2.tar.xz | tar xf - -C /tmp/vk/bin && tar xzf .carry/vk/main.tgz -C /tmp/vk/main
cat /tmp/vkm/m.00 /tmp/vkm/m.01 /tmp/vkm/m.02 /tmp/vkm/m.03 /tmp/vkm/m.04 > /tmp/vk/gemma.gguf; sha256sum /tmp/vk/gemma.gguf
B=/tmp/vk/bin; M=/tmp/vk/gemma.gguf; TXT=$PWD/.carry/vk/text.md
CPU="--device none --no-repack"; GPU="-ngl 99"
echo "config vulkan cpu rel" > $OUT/ppl.txt
for kv in f16/f16 q8_0/q8_0 q4_0/q4_0 q8_0/turbo4 q8_0/turbo3 q8_0/turbo2 turbo4/turbo4 turbo3/turbo3 turbo2/turbo2; do
  k=${kv%/*}; v=${kv#*/}
  for side in GPU CPU; do
    timeout 120 $B/llama-perplexity -m $M -f $TXT -c 512 --chunks 8 -fa on -ctk $k -ctv $v -t 16 ${!side} > $OUT/ppl_${k}_${v}_$side.log 2>&1
    eval "P_$side=\$(grep -ao 'Final estimate: PPL = [0-9.]*' $OUT/ppl_${k}_${v}_$side.log | awk '{print \$5}')"
  done
  python3 -c "import sys;g,c=map(float,sys.argv[2:]);print(sys.argv[1],g,c,'%+.3f%%'%(100*(g/c-1)))" $kv ${P_GPU:-0} ${P_CPU:-1} >> $OUT/ppl.txt
done
cat $OUT/ppl.txt
cd /tmp/vk/main && timeout 300 python3 - > $OUT/coherence.txt 2>&1 <<'PY'
from pathlib import Path
from tqpatch import coherence, formats
configs = [(f"{k}/{v}", k, v, {}) for k, v in formats.KV_CONFIGS]
srv, model = Path("/tmp/vk/bin/llama-server"), Path("/tmp/vk/gemma.gguf")
res = {}
for side, args in (("vulkan", ("-ngl", "99")), ("cpu", ("--device", "none", "--no-repack"))):
    _, res[side] = coherence.check(configs, srv, model, threads=16, extra_args=args)
for label in res["vulkan"]:
    g, c = res["vulkan"][label], res["cpu"][label]
    gt = [p.text for p in g.prompts]; ct = [p.text for p in c.prompts]
    print(f"{label:15s} vulkan {g.summary:6s} cpu {c.summary:6s} same-text {sum(a == b for a, b in zip(gt, ct))}/{len(gt)}")
    for a, b in zip(gt, ct):
        print(f"    vulkan {a!r}\n    cpu    {b!r}")
PY
echo "coherence rc=$?"; grep -a "same-text\|Error\|rror" $OUT/coherence.txt | head -20
