#!/bin/sh
# Every turbo FA vector kernel of the compile check's three instance files, as patched and
# with the proposals of docs/hip.md, for gfx1100 and gfx942 (usage: proposals-matrix.sh DIR,
# DIR prepared as in one-kernel.sh). P1: EXP_STATIC_SINK=1, P2: EXP_UNROLL_V=4 (or 8),
# P3: EXP_GQA_KQ_Q=8.
here=$(dirname "$0"); DIR=$1
for a in gfx1100 gfx942; do
for kv in "TURBO3 TURBO3" "Q8_0 TURBO3" "TURBO4 F16"; do set -- $kv; K=$1; V=$2
  for c in "128 1 false" "128 2 false" "128 4 true" "256 1 false" "256 2 false" "256 4 true"; do set -- $c
    [ "$V" = F16 ] && [ "$3" = true ] && continue
    for p in "as-patched 64 0 0" "P1+P2(unroll8) 8 1 0" "P1+P2(unroll4) 4 1 0" "P1+P2(unroll4)+P3 4 1 8"; do set -- $c $p
      sh "$here/one-kernel.sh" "$DIR" $a "K=$K V=$V D=$1 ncols=$2 gqa=$3 $4" -DEXP_D=$1 -DEXP_NCOLS=$2 -DEXP_GQA=$3 \
        -DEXP_UNROLL_V=$5 -DEXP_STATIC_SINK=$6 -DEXP_GQA_KQ_Q=$7 -DEXP_K=GGML_TYPE_$K -DEXP_V=GGML_TYPE_$V
    done
  done
done; done
