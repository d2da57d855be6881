#!/bin/bash
# Vulkan on the H100 (NVIDIA's Vulkan driver): binaries of main's block design built on
# the lavapipe machine (fresh-clone `make test` build), the repo for verify's Python side.
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json GGML_VK_VISIBLE_DEVICES=0
mkdir -p /tmp/vk/repo /tmp/vk/bin && tar xzf .carry/vk3/repo.tgz -C /tmp/vk/repo && xz -dc .carry/vk3/bins.tar.xz | tar xf - -C /tmp/vk/bin
vulkaninfo --summary > $OUT/vulkaninfo.txt 2>&1; grep -E "deviceName|driverName|driverInfo" $OUT/vulkaninfo.txt | head -4
B=/tmp/vk/bin
for op in SET_ROWS GET_ROWS CPY FLASH_ATTN_EXT; do
  T0=$(date +%s)
  timeout 240 $B/test-backend-ops test -b Vulkan0 -o $op -p turbo > $OUT/tbo_$op.log 2>&1
  echo "$op rc=$? $(grep -a 'tests passed' $OUT/tbo_$op.log) FAIL=$(grep -ac FAIL $OUT/tbo_$op.log) unsupported=$(grep -ac 'not supported' $OUT/tbo_$op.log) $(( $(date +%s) - T0 )) s"
done
cd /tmp/vk/repo && T0=$(date +%s) && timeout 200 python3 - > $OUT/verify.txt 2>&1 <<'PY'
from pathlib import Path
from tqpatch import verify
rep = verify.verify("vulkan", runner=lambda cases: verify.run_harness(Path("/tmp/vk/bin/tqpatch-verify"), "Vulkan0", cases))
print(verify.render_table(rep))
print("PASSED" if rep.passed else "FAILED")
PY
echo "verify rc=$? $(( $(date +%s) - T0 )) s"; tail -4 $OUT/verify.txt | cut -c1-200
