#!/bin/bash
# device, 2026-12-08: the full `tqpatch verify --backend vulkan` on the H100 through
# NVIDIA's Vulkan driver (issue 27 item 3). Carries .gl (fetch-debs.sh), .carry/c1/wheels
# and .carry/c1/pristine.tgz; the build and the verify run in a setsid job (poll.sh waits).
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export TQPATCH_CACHE=/tmp/tqv PYTHONUNBUFFERED=1
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json GGML_VK_VISIBLE_DEVICES=0
rm -rf /tmp/repo /tmp/vres; mkdir -p /tmp/repo /tmp/site /tmp/vres
tar cf - --exclude=./.carry --exclude=./.gl . | tar xf - -C /tmp/repo
for w in .carry/c1/wheels/*.whl; do python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$w" >/dev/null 2>&1; done
export PYTHONPATH=/tmp/repo:/tmp/site
vulkaninfo --summary 2>&1 | grep -E "deviceName|driverName|apiVersion" | head -4; glslc --version | head -1
cd /tmp/repo
python3 -m tqpatch.cli fetch --from $OLDPWD/.carry/c1/pristine.tgz | tail -1; python3 -m tqpatch.cli apply | tail -1
setsid nohup bash -c 'T0=$(date +%s); timeout 470 python3 -m tqpatch.cli build --backend vulkan > /tmp/vres/build.log 2>&1; echo "build rc=$? $(( $(date +%s)-T0 )) s" >> /tmp/vres/build.log; timeout 400 python3 -m tqpatch.cli verify --backend vulkan > /tmp/vres/verify.txt 2>&1; echo "verify rc=$? $(( $(date +%s)-T0 )) s" >> /tmp/vres/verify.txt; touch /tmp/vres/done' > /dev/null 2>&1 < /dev/null &
sleep 2; echo launched
