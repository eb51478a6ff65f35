"""EI_parts statistics from the samples themselves: every (input, output) pair's estimate in one
pass over its samples, with no table kept per pair.

The dense path counts a table of in_bins x out_bins cells for every pair and reduces the tables
afterwards: its cost and memory grow with pairs x bins^2, which dwarfs the samples of a wide layer
(784 -> 1000 at 64 bins: 3.3e9 cells for 7.8e9 samples x pairs; 5000 -> 5000: 1e11 cells for
2.5e10). Here the bins of all samples are kept instead (`SampleBins`: samples x (inputs + outputs)
bytes), and `pair_statistics` computes each pair's sums

    A = sum over occupied cells of n ln n,  m = occupied cells,  P = sum of n psi(n)

in a scratch table small enough for a core's L1 cache, which is then read and cleared: by a
second walk over the pair's samples when they are few (the first sample of a cell takes its count
and clears it), else by a scan of the cells that can be occupied (the output's occupied columns
only), whichever is cheaper. So a pair costs about samples + min(2 samples, cells), and there is
no jump where the two meet. With
the margins' sums (per input and per output, computed once), each estimate is a closed form:

    N I = A - B - C + N ln N      (B, C: the rows' and the columns' sum of n ln n)

plug-in (deep-ei's), Miller-Madow, the jackknife (`estimators`' closed form), the G-test statistic
and the delta-method standard error, exactly the dense path's formulas on the same integers, in
float64 (the dense path reduces in float32: the two agree to float32 rounding).
"""
from __future__ import annotations

import math

import numpy as np

from . import estimators as _estimators
from .histogram import NEEDS_NUMBA, numba

SUPPORTED_ESTIMATORS = ("plugin", "miller_madow", "jackknife")  # closed forms of the sums
_LN2 = math.log(2)
# work (pairs x samples) per kernel call: ~0.1 s on this project's 2-core CPU, so that progress
# moves and a KeyboardInterrupt is taken between calls
CALL_PAIR_SAMPLES = 2 ** 27
# Reading a pair back by one of its samples (a random load and store, then a lookup) costs about
# as much as scanning this many cells (a streamed load and a lookup): measured ~1.2 vs ~0.5 ns on
# this project's CPU. A pair is read back by its samples below samples = cells / this.
SAMPLE_READ_CELLS = 2


class SampleBins:
    """The bins of a sample range, kept on the host for `pair_statistics`: inputs [n_in, S] and
    outputs [n_out, S] (narrow unsigned, sample-minor), the code `sentinel` where an output entry
    is left out. Grown chunk by chunk (`append`) in sample order."""

    def __init__(self, num_inputs: int, num_outputs: int, dtype, capacity: int = 1024):
        self.x = np.empty((num_inputs, capacity), dtype)
        self.y = np.empty((num_outputs, capacity), dtype)
        self.length = 0

    def append(self, x_bins: np.ndarray, y_bins: np.ndarray, first: int, stop: int) -> None:
        """Adds samples first..stop-1 of a chunk's bins ([n_in, S], [n_out, S])."""
        rows = stop - first
        if self.length + rows > self.x.shape[1]:
            capacity = max(self.length + rows, 2 * self.x.shape[1])
            self.x = _grown(self.x, capacity, self.length)
            self.y = _grown(self.y, capacity, self.length)
        self.x[:, self.length:self.length + rows] = x_bins[:, first:stop]
        self.y[:, self.length:self.length + rows] = y_bins[:, first:stop]
        self.length += rows

    @property
    def nbytes(self) -> int:
        return self.x.nbytes + self.y.nbytes


def _grown(array: np.ndarray, capacity: int, length: int) -> np.ndarray:
    grown = np.empty((array.shape[0], capacity), array.dtype)
    grown[:, :length] = array[:, :length]
    return grown


def bytes_per_sample(num_inputs: int, num_outputs: int, dtype) -> int:
    """Host bytes `SampleBins` keeps per sample."""
    return (num_inputs + num_outputs) * np.dtype(dtype).itemsize


def lookup_tables(samples: int):
    """(ln n, n ln n, n psi(n)) for n = 0..samples, float64 (0 at n = 0)."""
    n = np.arange(samples + 1, dtype=np.float64)
    log = np.log(np.where(n > 0, n, 1.0))
    return log, n * log, n * _estimators.jackknife_psi(n)


# ---------------------------------------------------------------- numba kernels

def _columns(y, first, stop, sentinel, compact, col_counts, widths, dirty):
    """Per output: its occupied columns renumbered 0..k-1 in `compact` ([n_out, stop - first],
    k for a left-out entry), their counts in col_counts[b, :k], k in widths[b], and whether any
    entry is left out in dirty[b]."""
    for b in numba.prange(y.shape[0]):
        counts = np.zeros(sentinel + 1, np.int64)
        for s in range(first, stop):
            counts[y[b, s]] += 1
        rank = np.empty(sentinel + 1, np.int64)
        k = 0
        for j in range(sentinel):
            if counts[j]:
                rank[j] = k
                col_counts[b, k] = counts[j]
                k += 1
        rank[sentinel] = k
        widths[b] = k
        dirty[b] = counts[sentinel] > 0
        for s in range(first, stop):
            compact[b, s - first] = rank[y[b, s]]


def _rows(x, first, stop, in_bins, row_counts):
    """Per input, the counts of its bins over samples first..stop-1: row_counts [n_in, in_bins]."""
    for a in numba.prange(x.shape[0]):
        for s in range(first, stop):
            row_counts[a, x[a, s]] += 1


def _margin_sums(counts, log, g, p):
    """(sum n ln n, occupied, sum n psi(n), sum n) of a margin's counts."""
    total_g = total_p = 0.0
    occupied = total = 0
    for c in counts:
        if c:
            total_g += g[c]
            total_p += p[c]
            occupied += 1
            total += c
    return total_g, occupied, total_p, total


def _count(table, xa, yb, width, n):
    """Counts the pair's samples into `table` (cells x * width + y)."""
    for s in range(n):
        table[np.uint32(xa[s]) * width + np.uint32(yb[s])] += 1


def _take(table, xa, yb, width, s):
    """The count of sample s's cell, which is then cleared."""
    key = np.uint32(xa[s]) * width + np.uint32(yb[s])
    c = table[key]
    table[key] = 0
    return c


def _read_by_samples(table, xa, yb, width, n, g, p, with_psi):
    """(sum n ln n, occupied, sum n psi(n) (0 unless with_psi)) over the cells the samples
    touched, clearing them as it goes: a cell's first sample reads its count, the others read
    the 0 left behind, which adds nothing (g[0] = p[0] = 0). Branch-free: cost ~ samples."""
    total_g = total_p = 0.0
    occupied = 0
    for s in range(n):
        c = _take(table, xa, yb, width, s)
        total_g += g[c]
        occupied += c > 0
        if with_psi:
            total_p += p[c]
    return total_g, occupied, total_p


def _scan(table, cells, g, p, with_psi):
    """(sum n ln n, occupied, sum n psi(n) (0 unless with_psi)) over table[:cells], clearing
    it. Branch-free: cost ~ cells."""
    total_g = total_p = 0.0
    occupied = 0
    for i in range(cells):
        c = table[i]
        total_g += g[c]
        if with_psi:
            total_p += p[c]
        occupied += c > 0
        table[i] = 0
    return total_g, occupied, total_p


def _spare_column(table, in_bins, width, k, g, p):
    """(sum n ln n, occupied, sum n psi(n)) of the spare column (the left-out entries)."""
    total_g = total_p = 0.0
    occupied = 0
    for i in range(in_bins):
        c = table[i * width + k]
        total_g += g[c]
        total_p += p[c]
        occupied += c > 0
    return total_g, occupied, total_p


def _log_ratios(table, in_bins, width, k, log, ln_rows, ln_cols, ln_total):
    """(sum n lr, sum n lr^2) over the cells of columns < k, lr = ln(n N / (r c)) (the delta
    method's terms)."""
    s1 = s2 = 0.0
    for i in range(in_bins):
        for j in range(k):
            c = table[i * width + j]
            if c != 0:
                lr = log[c] - ln_rows[i] + ln_total - ln_cols[j]
                s1 += c * lr
                s2 += c * lr * lr
    return s1, s2


def _pair_sums(table, xa, yb, k, n, in_bins, g, p, log, ln_rows, ln_cols, ln_total, want_se,
               with_psi, dirty):
    """Counts one pair and returns its joint table's (sum n ln n, occupied, sum n psi(n), sum
    n lr, sum n lr^2) over the cells of columns < k (lr only with want_se), leaving `table`
    clear: read back by the samples when that is cheaper than one scan of the cells (with
    want_se, always scanned)."""
    width = np.uint32(k + 1)
    cells = in_bins * (k + 1)
    s1 = s2 = 0.0
    _count(table, xa, yb, width, n)
    spare_g = spare_p = 0.0
    spare_m = 0
    if dirty:  # entries left out, in the spare column: read (cleared below), not counted
        spare_g, spare_m, spare_p = _spare_column(table, in_bins, width, k, g, p)
    if SAMPLE_READ_CELLS * n < cells and not want_se:
        total_g, occupied, total_p = _read_by_samples(table, xa, yb, width, n, g, p, with_psi)
    else:
        if want_se:
            s1, s2 = _log_ratios(table, in_bins, width, k, log, ln_rows, ln_cols, ln_total)
        total_g, occupied, total_p = _scan(table, cells, g, p, with_psi)
    return total_g - spare_g, occupied - spare_m, total_p - spare_p, s1, s2


def _pairs(x, compact, first, n, widths, dirty, col_counts, row_counts, b_lo, b_hi, in_bins,
           log, g, p, estimator, want_se, out):
    """Every pair (a, b), b in b_lo..b_hi-1, into out [5, n_in, b_hi - b_lo]: the estimate
    (bits), the plug-in bias (bits), the G statistic, its degrees of freedom and the delta-method
    standard error (bits, with want_se). Parallel over chunks of inputs, each with its own
    scratch."""
    kmax = 1
    columns = np.zeros((b_hi - b_lo, 3))  # the outputs' margins: sum n ln n, occupied, n psi(n)
    for b in range(b_lo, b_hi):
        kmax = max(kmax, widths[b])
        col_g, col_m, col_p, _ = _margin_sums(col_counts[b, :widths[b]], log, g, p)
        columns[b - b_lo, 0], columns[b - b_lo, 1], columns[b - b_lo, 2] = col_g, col_m, col_p
    with_psi = estimator == 2
    chunk = 16  # inputs per task, outputs per task below: enough tasks for every core
    out_chunk = max(1, min(b_hi - b_lo, 64))
    out_tasks = (b_hi - b_lo + out_chunk - 1) // out_chunk
    for task in numba.prange(((x.shape[0] + chunk - 1) // chunk) * out_tasks):
        first_input, first_output = task // out_tasks, b_lo + (task % out_tasks) * out_chunk
        table = np.zeros(in_bins * (kmax + 1), np.int32)
        rows = np.zeros(in_bins, np.int64)
        ln_rows = np.zeros(in_bins)
        ln_cols = np.zeros(kmax + 1)
        for a in range(first_input * chunk, min((first_input + 1) * chunk, x.shape[0])):
            _input_pairs(a, x[a, first:first + n], compact, n, widths, dirty, col_counts,
                         row_counts[a], columns, b_lo, first_output,
                         min(first_output + out_chunk, b_hi), in_bins, log, g, p, estimator,
                         want_se, with_psi, table, rows, ln_rows, ln_cols, out)


def _input_pairs(a, xa, compact, n, widths, dirty, col_counts, row_counts, columns, b_lo, start,
                 stop, in_bins, log, g, p, estimator, want_se, with_psi, table, rows, ln_rows,
                 ln_cols, out):
    """Input a's pairs with outputs start..stop-1 (see `_pairs`; the call's outputs begin at
    b_lo), in the given scratch."""
    clean = _margin_sums(row_counts, log, g, p)
    for b in range(start, stop):
        j = b - b_lo
        k = widths[b]
        out[0, a, j] = out[1, a, j] = out[2, a, j] = out[3, a, j] = out[4, a, j] = 0.0
        if k <= 1:  # one occupied column (or none): every estimate is exactly 0
            continue
        yb = compact[b]
        if dirty[b]:  # the rows of the samples this output keeps
            for s in range(n):
                rows[xa[s]] += yb[s] != k
            row_g, row_m, row_p, total = _margin_sums(rows, log, g, p)
            source = rows
        else:
            row_g, row_m, row_p, total = clean
            source = row_counts
        if want_se:
            for i in range(in_bins):
                ln_rows[i] = log[source[i]]
            for jj in range(k):
                ln_cols[jj] = log[col_counts[b, jj]]
        joint_g, joint_m, joint_p, s1, s2 = _pair_sums(
            table, xa, yb, k, n, in_bins, g, p, log, ln_rows, ln_cols, log[total], want_se,
            with_psi, dirty[b])
        if dirty[b]:
            rows[:] = 0
        if total == 0:
            continue
        col_g, col_m, col_p = columns[j, 0], columns[j, 1], columns[j, 2]
        plugin = max(((joint_g - row_g) + (g[total] - col_g)) / total, 0.0)
        bias = (joint_m - row_m - col_m + 1) / (2.0 * total)
        value = plugin
        if estimator == 1:
            value = plugin - bias
        elif estimator == 2 and total > 1:
            value = plugin + (row_p + col_p - joint_p) / total - p[total] / total
        out[0, a, j] = value / _LN2
        out[1, a, j] = bias / _LN2
        out[2, a, j] = 2.0 * total * plugin
        out[3, a, j] = (row_m - 1) * (col_m - 1)
        if want_se:
            mean = s1 / total
            out[4, a, j] = math.sqrt(max(s2 / total - mean * mean, 0.0) / total) / _LN2


if numba is not None:
    _margin_sums = numba.njit(nogil=True, cache=True)(_margin_sums)
    _count = numba.njit(nogil=True, cache=True)(_count)
    _take = numba.njit(nogil=True, cache=True)(_take)
    _read_by_samples = numba.njit(nogil=True, cache=True)(_read_by_samples)
    _scan = numba.njit(nogil=True, cache=True)(_scan)
    _spare_column = numba.njit(nogil=True, cache=True)(_spare_column)
    _log_ratios = numba.njit(nogil=True, cache=True)(_log_ratios)
    _pair_sums = numba.njit(nogil=True, cache=True)(_pair_sums)
    _input_pairs = numba.njit(nogil=True, cache=True)(_input_pairs)
    _columns = numba.njit(parallel=True, nogil=True, cache=True)(_columns)
    _rows = numba.njit(parallel=True, nogil=True, cache=True)(_rows)
    _pairs = numba.njit(parallel=True, nogil=True, cache=True)(_pairs)


# ---------------------------------------------------------------- the statistics of a range

def pair_statistics(bins: SampleBins, start: int, stop: int, in_bins: int, sentinel: int, *,
                    estimator: str = "plugin", significance: bool = False,
                    pair_errors: bool = False, progress=None):
    """Every pair's statistics over samples start..stop-1 of `bins`.

    Args:
      bins: the samples' bins; output entries equal to `sentinel` (the tables' out_bins) are
        left out of that pair.
      estimator: one of SUPPORTED_ESTIMATORS.
      progress: None or a callable taking the number of outputs just done.

    Returns:
      (MI [n_in, n_out] bits by `estimator`, G-test p-values or (), delta-method standard errors
      or (), the estimated plug-in bias per pair), float64: what `kernels.block_statistics` gives
      for the same samples' tables.
    """
    if numba is None:
        raise ValueError(NEEDS_NUMBA)
    if estimator not in SUPPORTED_ESTIMATORS:
        raise ValueError(f"estimator must be one of {SUPPORTED_ESTIMATORS} to count by samples; "
                         f"got {estimator!r}")
    n = stop - start
    num_inputs, num_outputs = bins.x.shape[0], bins.y.shape[0]
    compact = np.empty((num_outputs, n), np.uint8 if sentinel < 256 else np.uint16)
    col_counts = np.zeros((num_outputs, min(sentinel, max(n, 1))), np.int64)  # k <= both
    widths = np.zeros(num_outputs, np.int64)
    dirty = np.zeros(num_outputs, np.bool_)
    _columns(bins.y, start, stop, sentinel, compact, col_counts, widths, dirty)
    row_counts = np.zeros((num_inputs, in_bins), np.int64)
    _rows(bins.x, start, stop, in_bins, row_counts)
    log, g, p = lookup_tables(n + 1)
    mi, bias = np.empty((num_inputs, num_outputs)), np.empty((num_inputs, num_outputs))
    pvalues = np.empty((num_inputs, num_outputs)) if significance else ()
    errors = np.empty((num_inputs, num_outputs)) if pair_errors else ()
    step = max(1, CALL_PAIR_SAMPLES // max(1, num_inputs * n))
    code = SUPPORTED_ESTIMATORS.index(estimator)
    for b_lo in range(0, num_outputs, step):
        b_hi = min(b_lo + step, num_outputs)
        block = np.empty((5, num_inputs, b_hi - b_lo))
        _pairs(bins.x, compact, start, n, widths, dirty, col_counts, row_counts, b_lo, b_hi,
               in_bins, log, g, p, code, pair_errors, block)
        mi[:, b_lo:b_hi], bias[:, b_lo:b_hi] = block[0], block[1]
        if significance:
            pvalues[:, b_lo:b_hi] = _estimators.chi2_upper_tail(block[2], block[3])
        if pair_errors:
            errors[:, b_lo:b_hi] = block[4]
        if progress is not None:
            progress(b_hi - b_lo)
    return mi, pvalues, errors, bias
