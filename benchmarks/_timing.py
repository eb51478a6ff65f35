"""The benchmarks' one timing rule: a first call (compilation included), then the median of warm
repeats; and the compilation cache setting every benchmark runs with."""
from __future__ import annotations

import os
import statistics
import sys
import time

CACHE_ENV = "DEEP_EI_JAX_COMPILATION_CACHE"


def use_compilation_cache() -> None:
    """Benchmarks run with JAX's persistent compilation cache on, as the README's numbers were
    measured (first calls in brackets), unless DEEP_EI_JAX_COMPILATION_CACHE=0 says otherwise.

    Sets the variable (when unset) for the subprocesses a benchmark starts, which opt in when
    they import deep_ei_jax, and opts this process in if it has imported deep_ei_jax already.
    """
    os.environ.setdefault(CACHE_ENV, "1")
    if "deep_ei_jax" in sys.modules:
        from deep_ei_jax._cache import enable_from_environment
        enable_from_environment()


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
