#!/bin/bash
# device side: tqpatch from the committed snapshot (.carry/repo.tgz), cache in /tmp/tqc
set -u
C=$PWD/.carry
export TQPATCH_CACHE=/tmp/tqc R=/tmp/repo PATH=/usr/local/cuda/bin:$PATH
if true; then rm -rf $R;
  mkdir -p $R /tmp/pylib && tar xzf $C/repo.tgz -C $R
  python3 -m zipfile -e $C/wheels/gguf-*.whl /tmp/pylib
fi
export PYTHONPATH=$R:/tmp/pylib
T() { (cd $R && python3 -m tqpatch.cli "$@"); }
