#!/bin/bash
# Here (not on the device): fill .carry/ for device-steps.sh. Run from the
# repository root with TQPATCH_CACHE pointing at a cache that holds the
# verified pristine tree (`tqpatch fetch`). .carry/ must be git-ignored (it is,
# in .gitignore) and named in the run tool's `carry` list.
#   .carry/pristine.tgz   the tree's fingerprinted folders plus scripts/ (~15 MB;
#                         the PyPI sdist itself is 77 MB, over the 64 MiB a call carries)
#   .carry/wheels/        gguf (the synthetic model's writer; not installed there)
# Gemma 3 270M (250 MB) cannot travel in one call: device-steps.sh joins
# /tmp/mp/m.0* if earlier calls on the same warm machine left the parts there
# (split -b 60m -d MODEL m.), else it measures the synthetic model alone.
set -eu
: "${TQPATCH_CACHE:?set TQPATCH_CACHE}"
SRC=$TQPATCH_CACHE/src/llama.cpp-0c1e57098
[ -f "$SRC/CMakeLists.txt" ] || { echo "no pristine tree at $SRC: run tqpatch fetch first"; exit 1; }
mkdir -p .carry/wheels
SCOPE=$(python3 -c "from tqpatch import pin; print(' '.join(pin.TREE_SCOPE))")
# shellcheck disable=SC2086
tar czf .carry/pristine.tgz -C "$TQPATCH_CACHE/src" \
    $(for d in $SCOPE scripts; do [ -e "$SRC/$d" ] && echo "llama.cpp-0c1e57098/$d"; done)
python3 -m pip download --no-deps -q -d .carry/wheels "gguf==$(python3 -c 'import importlib.metadata as m; print(m.version("gguf"))')"
du -sh .carry/pristine.tgz .carry/wheels
