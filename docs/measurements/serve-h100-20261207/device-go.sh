#!/bin/bash
# device: call 1 setup + background build/verify
set -u; C=$PWD/.carry/base
export TQPATCH_CACHE=/tmp/tqc PATH=/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1
nvidia-smi -L; python3 --version
rm -rf /tmp/repo; mkdir -p /tmp/repo /tmp/site /tmp/mp /tmp/res && tar xzf $C/repo.tgz -C /tmp/repo
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $C/wheels/*.whl || echo PIPFAIL
cp $C/sess.sh /tmp/sess.sh
export PYTHONPATH=/tmp/repo:/tmp/site
python3 -c "import click,jinja2,numpy,gguf,platformdirs; print('imports ok', numpy.__version__)"
cd /tmp/repo
python3 -m tqpatch.cli fetch --from $C/pristine.tgz 2>&1 | tail -2; python3 -m tqpatch.cli apply 2>&1 | tail -1
setsid nohup bash -c 'T0=$(date +%s); timeout 500 python3 -m tqpatch.cli build --backend cuda --arch 90 > /tmp/res/build.log 2>&1; echo "build rc=$? $(( $(date +%s)-T0 )) s" >> /tmp/res/build.log; timeout 200 python3 -m tqpatch.cli verify --backend cuda > /tmp/res/verify.txt 2>&1; echo "verify rc=$?" >> /tmp/res/verify.txt; touch /tmp/build.done' > /dev/null 2>&1 < /dev/null &
sleep 3; echo launched
