"""Kernel time by kernel name from `ncu --csv --page raw --metrics gpu__time_duration.sum` logs.

Usage: python3 ncu_sum.py ncu-K-V.csv ...   One table per file: launches, total us and
share, largest first; the file's total is the kernel time of the whole profiled run.
"""
import csv
import sys
from collections import defaultdict


def rows(path):
    with open(path, errors="replace") as f:
        lines = [ln for ln in f if ln.startswith('"')]  # ncu's CSV lines; the program's own output is not quoted
    reader = csv.DictReader(lines)
    for r in reader:
        val = r.get("gpu__time_duration.sum", "")
        try:
            yield r.get("Kernel Name", "?"), float(val.replace(",", ""))
        except ValueError:
            continue  # the units row


def main(paths):
    for path in paths:
        t, n = defaultdict(float), defaultdict(int)
        for name, ns in rows(path):
            short = name.split("(")[0].strip()[:110]  # template arguments kept: they name the types
            t[short] += ns / 1000
            n[short] += 1
        tot = sum(t.values())
        print(f"== {path}: {sum(n.values())} launches, {tot:.1f} us kernel time")
        for k in sorted(t, key=t.get, reverse=True)[:25]:
            print(f"  {t[k]:10.1f} us {100 * t[k] / tot:5.1f}% {n[k]:6d}x  {k}")


if __name__ == "__main__":
    main(sys.argv[1:])
