#!/bin/bash
# Vulkan on the H100 (NVIDIA's Vulkan driver), prebuilt binaries of h/vulkan (lavapipe build of 06:42)
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json GGML_VK_VISIBLE_DEVICES=0
mkdir -p /tmp/vk/repo /tmp/vk/bin && tar xzf .carry/vk/repo.tgz -C /tmp/vk/repo && xz -dc .carry/vk/bins.tar.xz | tar xf - -C /tmp/vk/bin
vulkaninfo --summary > $OUT/vulkaninfo.txt 2>&1; grep -E "deviceName|driverName|apiVersion|driverInfo" $OUT/vulkaninfo.txt
python3 -c "import numpy, click, jinja2; print('py ok', numpy.__version__)"
B=/tmp/vk/bin
for op in SET_ROWS GET_ROWS CPY; do
  timeout 120 $B/test-backend-ops test -b Vulkan0 -o $op -p turbo > $OUT/tbo_$op.log 2>&1; echo "$op rc=$? $(grep -a 'tests passed' $OUT/tbo_$op.log) FAIL=$(grep -ac FAIL $OUT/tbo_$op.log)"
done
T0=$(date +%s)
timeout 300 $B/test-backend-ops test -b Vulkan0 -o FLASH_ATTN_EXT -p turbo > $OUT/tbo_FLASH_ATTN_EXT.log 2>&1
echo "FLASH_ATTN_EXT rc=$? $(grep -a 'tests passed' $OUT/tbo_FLASH_ATTN_EXT.log) FAIL=$(grep -ac FAIL $OUT/tbo_FLASH_ATTN_EXT.log) $(( $(date +%s) - T0 )) s"
grep -a "Vulkan0\|ggml_vulkan: 0" $OUT/tbo_FLASH_ATTN_EXT.log | head -3
cd /tmp/vk/repo && T0=$(date +%s) && timeout 200 python3 - > $OUT/verify.txt 2>&1 <<'PY'
from pathlib import Path
from tqpatch import verify
rep = verify.verify("vulkan", runner=lambda cases: verify.run_harness(Path("/tmp/vk/bin/tqpatch-verify"), "Vulkan0", cases))
print(verify.render_table(rep))
print("PASSED" if rep.passed else "FAILED")
PY
echo "verify rc=$? $(( $(date +%s) - T0 )) s"; tail -4 $OUT/verify.txt
