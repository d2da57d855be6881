#!/bin/bash
# device side: tqpatch from the committed snapshot (.carry/repo.tgz), cache in
# /tmp/tqv, and the Vulkan loader, glslc and headers from the carried .gl/*.deb
# (fetch-debs.sh lists them), unpacked into / (dpkg -x: no maintainer scripts).
set -u
C=$PWD/.carry
export TQPATCH_CACHE=/tmp/tqv R=/tmp/repo
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
# device 0: the H100 (the only ICD named); the same variable the tests set for lavapipe
export GGML_VK_VISIBLE_DEVICES=0
if [ ! -d $R ]; then
  mkdir -p $R /tmp/pylib && tar xzf $C/repo.tgz -C $R
  python3 -m zipfile -e $C/wheels/gguf-*.whl /tmp/pylib
fi
export PYTHONPATH=$R:/tmp/pylib
T() { (cd $R && python3 -m tqpatch.cli "$@"); }
