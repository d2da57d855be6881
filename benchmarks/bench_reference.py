"""Speed of the NumPy reference quantizer (a benchmark that prints, not a timed test).

    python benchmarks/bench_reference.py
"""
import time

import numpy as np

from tqpatch import reference


def main(n_values: int = 1 << 20, repeats: int = 5) -> None:
    x = np.random.default_rng(0).standard_normal((n_values // 128, 128)).astype(np.float32)
    for name in ("turbo2", "turbo3", "turbo4", "q8_0"):
        reference.quantize_rows(x[:8], name)  # load codebooks
        best = min(_time(lambda: reference.quantize_rows(x, name)) for _ in range(repeats))
        data = reference.quantize_rows(x, name)
        dbest = min(_time(lambda: reference.dequantize_rows(data, name, 128)) for _ in range(repeats))
        print(f"{name:7s} quantize {n_values / best / 1e6:7.1f} M values/s ({best * 1e3:6.1f} ms per 1M)"
              f"   dequantize {dbest * 1e3:6.1f} ms per 1M")


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
