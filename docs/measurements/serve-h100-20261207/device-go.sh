#!/bin/bash
# device, call 1: tqpatch from the travelling working tree, wheels into /tmp/site,
# the pinned tree from .carry/c1/pristine.tgz, apply, then build + verify for CUDA
# in a setsid background job that touches /tmp/build.done (later calls carry models).
set -u; C=$PWD/.carry/c1
export TQPATCH_CACHE=/tmp/tqc PATH=/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1
nvidia-smi -L; python3 --version; nproc
rm -rf /tmp/repo; mkdir -p /tmp/repo /tmp/site /tmp/mp /tmp/res
tar cf - --exclude=./.carry . | tar xf - -C /tmp/repo
for w in $C/wheels/*.whl; do python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$w" >/dev/null 2>&1 || echo "skip $(basename $w)"; done
cp $C/smolA /tmp/mp/smolA
export PYTHONPATH=/tmp/repo:/tmp/site
python3 -c "import click,jinja2,numpy,gguf,platformdirs; print('imports ok', numpy.__version__)"
cd /tmp/repo
python3 -m tqpatch.cli fetch --from $C/pristine.tgz 2>&1 | tail -2; python3 -m tqpatch.cli apply 2>&1 | tail -1
setsid nohup bash -c 'T0=$(date +%s); timeout 560 python3 -m tqpatch.cli build --backend cuda --arch 90 > /tmp/res/build.log 2>&1; echo "build rc=$? $(( $(date +%s)-T0 )) s" >> /tmp/res/build.log; timeout 300 python3 -m tqpatch.cli verify --backend cuda > /tmp/res/verify.txt 2>&1; echo "verify rc=$? $(( $(date +%s)-T0 )) s" >> /tmp/res/verify.txt; touch /tmp/build.done' > /dev/null 2>&1 < /dev/null &
sleep 3; echo launched; cmake --version | head -1; which ninja
