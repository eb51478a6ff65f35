"""The benchmarks' one timing rule: a first call (compilation included), then the median of warm
repeats."""
from __future__ import annotations

import statistics
import time


def timed(fn, repeats: int):
    """(value of the last call, first-call seconds, median seconds of `repeats` further calls)."""
    start = time.perf_counter()
    value = fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return value, first, statistics.median(times) if times else first
