"""How many samples: deep-ei's doubling rules and its extrapolation, as plain functions.

These only decide; the measures do the counting. Schedules are in samples, the estimates in bits.
"""
from __future__ import annotations

import numpy as np

FIRST_STEP = 10_000
EXTRAPOLATION_INTERVAL = 100_000
EXTRAPOLATION_POINTS = 20
EXTRAPOLATION_FIRST_FIT_POINT = 4  # fit from 500k samples on, as deep-ei


def doubling_totals(first: int = FIRST_STEP, limit: int | None = None):
    """Yields the running totals 10k, 20k, 40k, ... (up to `limit` inclusive, if given)."""
    total = first
    while limit is None or total <= limit:
        yield total
        total *= 2


def parts_converged(estimates: list[tuple[int, float]], threshold: float) -> bool:
    """deep-ei's rule for EI_parts: the extrapolated drop from doubling again, relative to the
    estimate.

    With (n1, e1), (n2, e2) the last two (samples, estimate) points, the estimate falls by
    (e1 - e2) / (n2 - n1) per sample; doubling n2 would move it by that slope times n2. Converged
    when that, as a fraction of e2, is at most `threshold`. An estimate of 0 has converged.
    """
    if len(estimates) < 2:
        return False
    (n1, e1), (n2, e2) = estimates[-2:]
    if e2 <= 0:
        return True
    return (e1 - e2) / (n2 - n1) * n2 / e2 <= threshold


def vector_converged(estimates: list[tuple[int, float]], threshold: float) -> bool:
    """deep-ei's rule for vector EI: the last doubling moved the estimate by less than threshold
    bits."""
    if len(estimates) < 2:
        return False
    return abs(estimates[-1][1] - estimates[-2][1]) < threshold


def extrapolation_totals():
    """The sample counts at which extrapolation evaluates EI_parts: 100k, 200k, ..., 2M."""
    return [EXTRAPOLATION_INTERVAL * (i + 1) for i in range(EXTRAPOLATION_POINTS)]


def fit_asymptote(samples, estimates) -> float:
    """Fits estimate = a / n**e + C (a, e, C >= 0) by least squares and returns C.

    For a fixed exponent e the model is linear in (a, C), so it is solved exactly (with the
    non-negativity constraints checked on the boundary); e is found by a grid and then a golden
    section search on the residual.
    """
    n = np.asarray(samples, np.float64)
    y = np.asarray(estimates, np.float64)

    def solve(e):
        u = n ** -e
        candidates = []
        design = np.stack([u, np.ones_like(u)], 1)
        (a, c), *_ = np.linalg.lstsq(design, y, rcond=None)
        if a >= 0 and c >= 0:
            candidates.append((a, c))
        a0 = max(float(u @ y / (u @ u)), 0.0)  # C = 0
        candidates.append((a0, 0.0))
        candidates.append((0.0, max(float(y.mean()), 0.0)))  # a = 0
        best = min(candidates, key=lambda ac: float(np.sum((ac[0] * u + ac[1] - y) ** 2)))
        return float(np.sum((best[0] * u + best[1] - y) ** 2)), best

    grid = np.linspace(0.0, 3.0, 301)
    losses = [solve(e)[0] for e in grid]
    i = int(np.argmin(losses))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(60):
        m1, m2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if solve(m1)[0] <= solve(m2)[0]:
            hi = m2
        else:
            lo = m1
    return float(solve((lo + hi) / 2)[1][1])
