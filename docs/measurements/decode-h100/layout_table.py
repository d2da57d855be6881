"""Table of the short-cache FA decode cases of bench-steps.sh: us per call with the layout
chosen automatically and forced to the GQA kernel (=1) or one block per query head (=0).

Usage: python3 layout_table.py DIR   (DIR holds short-auto.txt, short-1.txt, short-0.txt)
"""
import re
import sys
from pathlib import Path

CASE = re.compile(r"hsk=(\d+),.*?nh=(\d+),nr23=\[4,1\],kv=(\d+),nb=1,.*?type_K=(\w+),type_V=(\w+),.*?([\d.]+) us/run")
PAIRS = ["f16/f16", "q8_0/q8_0", "q8_0/turbo4", "q8_0/turbo3", "turbo4/turbo4", "turbo3/turbo3"]


def load(path):
    out = {}
    for line in Path(path).read_text().splitlines():
        m = CASE.search(line)
        if m:
            hs, nh, kv, k, v, us = m.groups()
            out.setdefault((int(hs), int(nh), int(kv), f"{k}/{v}"), float(us))  # upstream's duplicate f16 case: first kept
    return out


def main(d):
    runs = {m: load(Path(d) / f"short-{m}.txt") for m in ("auto", "1", "0")}
    shapes = sorted({k[:3] for k in runs["auto"] if k[3] in PAIRS and (k[0], k[1]) in ((256, 1), (128, 8))})
    print("| head, KV heads, kv | K/V | auto us | GQA kernel us | per-head us | auto / q8_0/q8_0 |")
    print("|---|---|---:|---:|---:|---:|")
    for s in shapes:
        base = runs["auto"].get((*s, "q8_0/q8_0"))
        for p in PAIRS:
            a, g, h = (runs[m].get((*s, p)) for m in ("auto", "1", "0"))
            if a is None:
                continue
            turbo = "turbo" in p
            cell = lambda x: f"{x:.2f}" if (x is not None and turbo) else "—"
            print(f"| {s[0]}, {s[1]}, {s[2]} | {p} | {a:.2f} | {cell(g)} | {cell(h)} | {a / base:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1])
