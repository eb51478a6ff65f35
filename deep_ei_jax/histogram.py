"""Exact integer counting: all pairwise joint tables at once, and joint-state counts of vectors.

Device kernels and host counters:

* `pairwise_counts`: the [n_in, n_out, in_bins, out_bins] tables of every (input, output) pair of
  one chunk, by scatter-add of a joint index (XLA on a CPU) or by one-hot matmul (tensor cores on
  a GPU). Both give identical int32 counts.
* `add_pairwise_counts_host`: the same tables counted on the host by a numba loop (the CPU
  default when numba is installed), inputs in pairs when their joint table is small.
* `pack_states`: each sample's tuple of bin indices packed into uint32 words, losslessly.
* `StateCounts`: a host-side exact counter of distinct packed states, merged across chunks in int64
  (a dense count when the state space is small; otherwise sorted, by a numba radix sort or
  `np.unique`, and runs counted; no hashing).
"""
from __future__ import annotations

import math
import threading
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

try:  # optional: a compiled host loop, the fastest counter on a CPU
    import numba
except ImportError:  # pragma: no cover - depends on the install
    numba = None

def scatter_pairwise_counts(x_bins: jax.Array, y_bins: jax.Array, y_valid: jax.Array,
                            in_bins: int, out_bins: int) -> jax.Array:
    """`pairwise_counts` by XLA's scatter-add of one joint index per (sample, pair)."""
    num_in, num_out = x_bins.shape[1], y_bins.shape[1]
    cells = num_in * num_out * in_bins * out_bins
    pair = (jnp.arange(num_in)[:, None] * num_out + jnp.arange(num_out)[None, :])
    # pair-major order: consecutive updates hit one pair's small table (cache friendly)
    joint = ((pair[:, :, None] * in_bins + x_bins.T[:, None, :]) * out_bins
             + y_bins.T[None, :, :])
    joint = jnp.where(y_valid.T[None, :, :], joint, cells)  # invalid -> one spare cell
    counts = jnp.bincount(joint.reshape(-1), length=cells + 1)[:cells]
    return counts.astype(jnp.int32).reshape(num_in, num_out, in_bins, out_bins)


def onehot_pairwise_counts(x_bins: jax.Array, y_bins: jax.Array, y_valid: jax.Array,
                           in_bins: int, out_bins: int) -> jax.Array:
    """`pairwise_counts` by one matmul of one-hot codes, one_hot(x)^T @ one_hot(y)."""
    # 0/1 values are exact in bfloat16; float32 accumulation is exact below 2^24 per cell,
    # which callers guarantee by keeping chunks under 2^24 samples.
    dtype = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    x_hot = jax.nn.one_hot(x_bins, in_bins, dtype=dtype)
    y_hot = jax.nn.one_hot(y_bins, out_bins, dtype=dtype) * y_valid[..., None].astype(dtype)
    counts = jnp.einsum("sai,sbj->abij", x_hot, y_hot, preferred_element_type=jnp.float32)
    return jnp.round(counts).astype(jnp.int32)


_DEVICE_COUNTERS = {"scatter": scatter_pairwise_counts, "onehot": onehot_pairwise_counts}


def pairwise_counts(x_bins: jax.Array, y_bins: jax.Array, y_valid: jax.Array, in_bins: int,
                    out_bins: int, method: str = "scatter") -> jax.Array:
    """Joint counts of every (input, output) pair over one chunk of samples.

    Args:
      x_bins: input bin indices, int32 [S, n_in], all valid.
      y_bins: output bin indices, int32 [S, n_out].
      y_valid: bool [S, n_out]; False entries are left out of that pair's table only.
      in_bins, out_bins: table sizes (static).
      method: "scatter" or "onehot" (static).

    Returns:
      int32 [n_in, n_out, in_bins, out_bins]; entry [a, b, i, j] counts the samples with
      x_bins[:, a] == i and y_bins[:, b] == j among those where y_valid[:, b].
    """
    if method not in _DEVICE_COUNTERS:
        raise ValueError(f"method must be one of {tuple(_DEVICE_COUNTERS)}; got {method!r}")
    return _DEVICE_COUNTERS[method](x_bins, y_bins, y_valid, in_bins, out_bins)


# ---------------------------------------------------------------- the host tables' layout
# The host counter adds into int32 tables [..., in_bins * (out_bins + 1)]: each input bin's row
# has a spare last cell where the entries marked left out (the code `out_bins`) land.

def host_table_cells(in_bins: int, out_bins: int) -> int:
    """Cells of one (input, output) pair's host table: a row of out_bins + 1 per input bin."""
    return in_bins * (out_bins + 1)


def host_tables_view(tables: np.ndarray, in_bins: int, out_bins: int) -> np.ndarray:
    """Host tables [..., host_table_cells] as counts [..., in_bins, out_bins] (a view)."""
    return tables.reshape(tables.shape[:-1] + (in_bins, out_bins + 1))[..., :out_bins]


def host_left_out(tables: np.ndarray, in_bins: int, out_bins: int) -> np.ndarray:
    """The entries of host tables [..., host_table_cells] marked left out, per table: [...]."""
    spare = tables.reshape(tables.shape[:-1] + (in_bins, out_bins + 1))[..., out_bins]
    return spare.sum(axis=-1, dtype=np.int64)


NEEDS_NUMBA = "method='numba' needs numba: pip install numba (or the [fast] extra)"


def host_bins_dtype(in_bins: int, out_bins: int):
    """The narrowest unsigned dtype for bins handed to the host counter (out_bins + 1 sentinel)."""
    return np.uint8 if max(in_bins, out_bins + 1) <= 256 else np.uint16 \
        if max(in_bins, out_bins + 1) <= 65536 else np.uint32


def _count_joint(x_codes, y_codes, stride, joint):
    """joint[x * stride + y] += 1 over the samples (unsigned, so no wraparound checks)."""
    for s in range(x_codes.shape[0]):
        joint[np.uint32(x_codes[s]) * stride + np.uint32(y_codes[s])] += 1


def _compact(spectrum, largest):
    """(values, multiplicities) of the nonzero entries 1..largest of `spectrum`, which is zeroed
    there for the next use."""
    m = 0
    for c in range(1, largest + 1):
        if spectrum[c]:
            m += 1
    values, multiplicity = np.empty(m, np.int64), np.empty(m, np.int64)
    m = 0
    for c in range(1, largest + 1):
        if spectrum[c]:
            values[m], multiplicity[m] = c, spectrum[c]
            spectrum[c] = 0
            m += 1
    return values, multiplicity


def _table_spectrum(keys, first, end, invalid, table, spectrum):
    """Adds to `spectrum` (count -> states) the counts of the distinct keys of keys[first:end]
    other than `invalid`, counted in the dense `table` (zero, left zero): each key is counted,
    then read back once and cleared. Returns (keys counted, the largest count)."""
    kept, largest = 0, 1
    for u in range(first, end):
        key = keys[u]
        if key != invalid:
            table[key] += 1
            kept += 1
    for u in range(first, end):
        key = keys[u]
        if key != invalid and table[key] != 0:
            count = table[key]
            spectrum[count] += 1
            largest = max(largest, count)
            table[key] = 0
    return kept, largest


if numba is not None:  # module-level helpers, so that the kernels calling them are cached on disk
    _count_joint = numba.njit(nogil=True, cache=True)(_count_joint)
    _compact = numba.njit(nogil=True, cache=True)(_compact)
    _table_spectrum = numba.njit(nogil=True, cache=True)(_table_spectrum)


def _host_pairwise_kernel(parallel: bool):
    def add_counts(x_bins, y_bins, row_bins, tables, first, stop, x_pairs, y_pairs):
        num_in, num_out = x_bins.shape[0], y_bins.shape[0]
        in_bins = tables.shape[2] // row_bins
        n = stop - first
        # The scattered increments are the cost. Inputs (x_pairs) and outputs (y_pairs) are
        # counted two at a time where asked: one pass over the samples counts a group's joint
        # code in a small scratch table (cache-resident), which is then summed into the tables
        # of every (input, output) pair it holds: a quarter of the increments with both.
        # Indices are kept unsigned so that numba leaves out its negative-index wraparound; a
        # group of one streams its own narrow row.
        x_groups = (num_in + 1) // 2 if x_pairs else num_in
        y_groups = (num_out + 1) // 2 if y_pairs else num_out
        x_codes = np.empty((num_in // 2 if x_pairs else 0, n), np.uint32)
        y_codes = np.empty((num_out // 2 if y_pairs else 0, n), np.uint32)
        for g in numba.prange(x_codes.shape[0] + y_codes.shape[0]):
            if g < x_codes.shape[0]:
                low, high = x_bins[2 * g, first:stop], x_bins[2 * g + 1, first:stop]
                codes, width = x_codes[g], np.uint32(in_bins)
            else:
                h = g - x_codes.shape[0]
                low, high = y_bins[2 * h, first:stop], y_bins[2 * h + 1, first:stop]
                codes, width = y_codes[h], np.uint32(row_bins)
            for s in range(n):
                codes[s] = np.uint32(low[s]) * width + np.uint32(high[s])
        for task in numba.prange(x_groups * y_groups):
            g, h = task // y_groups, task % y_groups
            a = 2 * g if x_pairs else g
            b = 2 * h if y_pairs else h
            x_two = x_pairs and a + 1 < num_in
            y_two = y_pairs and b + 1 < num_out
            if not (x_two or y_two):  # one input, one output: straight into its table
                _count_joint(x_bins[a, first:stop], y_bins[b, first:stop], np.uint32(row_bins),
                             tables[a, b])
                continue
            x_cells = in_bins * in_bins if x_two else in_bins
            y_cells = row_bins * row_bins if y_two else row_bins
            joint = np.zeros(x_cells * y_cells, np.int32)
            stride = np.uint32(y_cells)
            if x_two and y_two:
                _count_joint(x_codes[g], y_codes[h], stride, joint)
            elif x_two:
                _count_joint(x_codes[g], y_bins[b, first:stop], stride, joint)
            else:
                _count_joint(x_bins[a, first:stop], y_codes[h], stride, joint)
            x_second = in_bins if x_two else 1
            y_second = row_bins if y_two else 1
            cell = 0
            for xa in range(in_bins):
                for xb in range(x_second):
                    for ya in range(row_bins):
                        for yb in range(y_second):
                            count = joint[cell]
                            cell += 1
                            tables[a, b, xa * row_bins + ya] += count
                            if y_two:
                                tables[a, b + 1, xa * row_bins + yb] += count
                            if x_two:
                                tables[a + 1, b, xb * row_bins + ya] += count
                                if y_two:
                                    tables[a + 1, b + 1, xb * row_bins + yb] += count
    return numba.njit(parallel=parallel, nogil=True, cache=True)(add_counts)


_host_kernels: dict = {}
# Below this many pair-samples per call one thread counts: it runs beside XLA's threads, which
# compute the next chunk meanwhile, and a parallel loop's start-up outweighs small calls (measured
# ~10x slower on 20-pair chunks here). Large calls split their pairs over all cores.
PARALLEL_PAIR_SAMPLES = 2 ** 26
# Inputs are counted in pairs when the pair's joint scratch table (in_bins^2 x (out_bins + 1)
# int32) stays this small (cache-resident); measured here: 2.5x faster at 16 bins, slower once the
# table spills out of the core's fast caches.
PAIRED_TABLE_BYTES = 2 ** 17
# Outputs too when the scratch table of a group (in_bins^(1 or 2) x (out_bins + 1)^2 int32)
# stays within a core's L1 data cache (8 bins, inputs paired: 20 KiB).
PAIRED_OUTPUTS_BYTES = 2 ** 15


def add_pairwise_counts_host(x_bins_t: np.ndarray, y_bins_t: np.ndarray, out_bins: int,
                             tables: np.ndarray, first: int = 0, stop: int | None = None) -> None:
    """The numba counterpart of `pairwise_counts`, on the host, adding into `tables` in place.

    Args:
      x_bins_t: input bins, [n_in, S] (sample-minor, so each pair streams two rows).
      y_bins_t: output bins, [n_out, S]; the value `out_bins` marks an entry left out.
      out_bins: the table's output bins (its rows hold out_bins + 1 cells, the last one spare).
      tables: int32 [n_in, n_out, in_bins * (out_bins + 1)], updated in place (exact: callers keep
        a run below 2**31 samples).
      first, stop: only samples first..stop-1 are counted (default: all).
    """
    if numba is None:
        raise ValueError(NEEDS_NUMBA)
    num_samples = x_bins_t.shape[1]
    stop = num_samples if stop is None else stop
    if not 0 <= first <= stop <= num_samples:
        raise ValueError(f"samples first..stop must lie in 0..{num_samples}; got {first}..{stop}")
    in_bins = tables.shape[2] // (host_table_cells(1, out_bins))
    x_pairs = 4 * in_bins * in_bins * (out_bins + 1) <= PAIRED_TABLE_BYTES
    y_pairs = 4 * in_bins ** (2 if x_pairs else 1) * (out_bins + 1) ** 2 <= PAIRED_OUTPUTS_BYTES
    parallel = x_bins_t.shape[0] * y_bins_t.shape[0] * (stop - first) >= PARALLEL_PAIR_SAMPLES
    if parallel not in _host_kernels:
        _host_kernels[parallel] = _host_pairwise_kernel(parallel)
    _host_kernels[parallel](np.ascontiguousarray(x_bins_t), np.ascontiguousarray(y_bins_t),
                            out_bins + 1, tables, first, stop, x_pairs, y_pairs)


def bits_per_value(bins: int) -> int:
    """Bits that hold a bin index in [0, bins)."""
    return max(1, math.ceil(math.log2(bins)))


def pack_states(bin_indices: jax.Array, bins: int) -> jax.Array:
    """Packs each row of bin indices into uint32 words, losslessly.

    Args:
      bin_indices: int32 [S, n], each in [0, bins).
      bins: the largest number of bins of any column (static).

    Returns:
      uint32 [S, W] with W = ceil(n / (32 // bits)); equal rows give equal words and vice versa.
    """
    bits = bits_per_value(bins)
    per_word = 32 // bits
    num = bin_indices.shape[1]
    words = -(-num // per_word)
    padded = jnp.pad(bin_indices.astype(jnp.uint32), ((0, 0), (0, words * per_word - num)))
    shifts = (jnp.arange(per_word, dtype=jnp.uint32) * bits)[None, None, :]
    grouped = padded.reshape(padded.shape[0], words, per_word) << shifts
    return jax.lax.reduce(grouped, jnp.uint32(0), jax.lax.bitwise_or, (2,))


def state_bits(num_values: int, bins: int) -> int:
    """Bits of the packed state of `num_values` indices (the words' used bits)."""
    bits = bits_per_value(bins)
    per_word = 32 // bits
    full, rest = divmod(num_values, per_word)
    return 32 * full + rest * bits if full else rest * bits


# ---------------------------------------------------------------- numba kernels of the state
# counters (module-level, so numba caches them on disk; compiled on first use)

def _add_dense(words, valid, counts):
    for s in range(words.shape[0]):
        if valid[s]:
            counts[words[s, 0]] += 1

def _keys_of(words, valid):
    """The valid rows' states (one or two uint32 words) as uint64 keys."""
    keys = np.empty(words.shape[0], np.uint64)
    n = 0
    for s in range(words.shape[0]):
        if valid[s]:
            key = np.uint64(words[s, 0])
            if words.shape[1] == 2:
                key = (key << np.uint64(32)) | np.uint64(words[s, 1])
            keys[n] = key
            n += 1
    return keys[:n]

def _run_counts(keys, spare):
    """(distinct keys ascending, their counts) of uint64 `keys`: a least-significant-digit
    radix sort (10-bit digits, skipping digits that are the same for every key), then run
    lengths. Overwrites `keys` and `spare` (uint64, at least as long)."""
    n = keys.shape[0]
    source, target = keys, spare[:n]
    largest = np.uint64(0)
    for i in range(n):
        largest = max(largest, source[i])
    shift = 0
    while shift < 64 and (largest >> np.uint64(shift)) != 0:
        starts = np.zeros(1024, np.int64)
        for i in range(n):
            starts[(source[i] >> np.uint64(shift)) & np.uint64(1023)] += 1
        if starts.max() < n:  # (one digit value for every key: this pass keeps the order)
            total = 0
            for d in range(1024):
                total, starts[d] = total + starts[d], total
            for i in range(n):
                d = (source[i] >> np.uint64(shift)) & np.uint64(1023)
                target[starts[d]] = source[i]
                starts[d] += 1
            source, target = target, source
        shift += 10
    if n == 0:
        return source[:0].copy(), np.zeros(0, np.int64)
    # run lengths: distinct keys into the other buffer, counts over the sorted keys (the
    # write position never passes the read position)
    previous, run, m = source[0], 1, 0
    target[0] = previous
    for i in range(1, n):
        key = source[i]
        if key == previous:
            run += 1
        else:
            source[m] = np.uint64(run)
            m += 1
            target[m] = key
            previous, run = key, 1
    source[m] = np.uint64(run)
    return target[:m + 1].copy(), source[:m + 1].astype(np.int64)

def _merge(keys_a, counts_a, keys_b, counts_b):
    """Two ascending (distinct keys, counts) lists merged into one."""
    keys = np.empty(keys_a.shape[0] + keys_b.shape[0], np.uint64)
    counts = np.empty(keys.shape[0], np.int64)
    i = j = m = 0
    while i < keys_a.shape[0] or j < keys_b.shape[0]:
        if j == keys_b.shape[0] or (i < keys_a.shape[0] and keys_a[i] < keys_b[j]):
            keys[m], counts[m] = keys_a[i], counts_a[i]
            i += 1
        elif i == keys_a.shape[0] or keys_b[j] < keys_a[i]:
            keys[m], counts[m] = keys_b[j], counts_b[j]
            j += 1
        else:
            keys[m], counts[m] = keys_a[i], counts_a[i] + counts_b[j]
            i += 1
            j += 1
        m += 1
    return keys[:m].copy(), counts[:m].copy()

def _state_keys(codes, stop, bits, sentinel, keys):
    """Into `keys` (unsigned, zeros [stop]): one key per sample 0..stop-1 of bin codes [n, S]
    (value j at bits j*bits.., as `pack_states` packs one word), or all ones (the dtype's
    largest value, never a real key) where any code equals `sentinel`."""
    invalid = ~keys.dtype.type(0)
    for j in range(codes.shape[0]):
        row, shift = codes[j], keys.dtype.type(j * bits)
        for s in range(stop):
            code = row[s]
            if code == sentinel or keys[s] == invalid:
                keys[s] = invalid
            else:
                keys[s] |= keys.dtype.type(code) << shift
    return keys

def _sorted_order(keys, bits):
    """(keys ascending, the sample order that sorts them) of uint32 keys below 2**bits
    (bits <= 32): one counting sort for up to 16 bits, else two by 16-bit digits (stable)."""
    n = keys.shape[0]
    order = np.empty(n, np.int32)
    ordered = np.empty(n, np.uint32)
    digit_bits = bits if bits <= 16 else 16
    passes = 1 if bits <= 16 else 2
    mask = np.uint32((1 << digit_bits) - 1)
    source = np.arange(n).astype(np.int32)
    for p in range(passes):
        shift = np.uint32(p * digit_bits)
        starts = np.zeros((1 << digit_bits) + 1, np.int64)
        for s in range(n):
            starts[((keys[s] >> shift) & mask) + 1] += 1
        for d in range(1 << digit_bits):
            starts[d + 1] += starts[d]
        target = order if p == passes - 1 else np.empty(n, np.int32)
        for t in range(n):
            s = source[t]
            d = (keys[s] >> shift) & mask
            target[starts[d]] = s
            starts[d] += 1
        source = target
    for t in range(n):
        ordered[t] = keys[order[t]]
    return ordered, order

def _group_bounds(x_sorted):
    """Where each run of equal sorted keys starts, and the end: int64 [runs + 1]."""
    n = x_sorted.shape[0]
    bounds = np.empty(n + 1, np.int64)
    m = 0
    for t in range(n):
        if t == 0 or x_sorted[t] != x_sorted[t - 1]:
            bounds[m] = t
            m += 1
    bounds[m] = n
    return bounds[:m + 1].copy()

def _spectra(bounds, order, y_keys, table, spectrum):
    """Count spectra (`estimators.count_spectrum`) of the input states, the output states and
    the joint states of the samples whose y key is valid, exactly, without sorting y: the
    samples are walked in input-state order (`sorted_order`; `bounds` from `group_bounds`),
    so each input state's samples are consecutive, and their output states are counted in
    the dense `table` (int32 over every y key, all zero, left zero), then read back and
    cleared. `spectrum`: int64 [3, samples + 1] zeros, left zero."""
    n = order.shape[0]
    invalid = ~y_keys.dtype.type(0)
    largest_x = largest_xy = 1
    _, largest_y = _table_spectrum(y_keys, 0, n, invalid, table, spectrum[1])
    gathered = np.empty(n, y_keys.dtype)  # y keys in input-state order
    for t in range(n):
        gathered[t] = y_keys[order[t]]
    for g in range(bounds.shape[0] - 1):
        first, end = bounds[g], bounds[g + 1]
        if end - first == 1:  # one sample: a state of its own (common with wide inputs)
            if gathered[first] != invalid:
                spectrum[0, 1] += 1
                spectrum[2, 1] += 1
            continue
        if end - first <= 4:  # a few samples (most states of wide inputs): sorted in
            # registers by a min/max network, left-out samples (the largest key) last
            v0, v1 = gathered[first], gathered[first + 1]
            v2 = gathered[first + 2] if end - first > 2 else invalid
            v3 = gathered[first + 3] if end - first > 3 else invalid
            v0, v1 = min(v0, v1), max(v0, v1)
            v2, v3 = min(v2, v3), max(v2, v3)
            v0, v2 = min(v0, v2), max(v0, v2)
            v1, v3 = min(v1, v3), max(v1, v3)
            v1, v2 = min(v1, v2), max(v1, v2)
            kept = (v0 != invalid) + (v1 != invalid) + (v2 != invalid) + (v3 != invalid)
            if kept:
                spectrum[0, kept] += 1
                largest_x = max(largest_x, kept)
                run = 1
                for i in range(1, kept):
                    same = (v1 == v0) if i == 1 else (v2 == v1) if i == 2 else (v3 == v2)
                    if same:
                        run += 1
                    else:
                        spectrum[2, run] += 1
                        run = 1
                spectrum[2, run] += 1
                largest_xy = max(largest_xy, run)
            continue
        kept, largest = _table_spectrum(gathered, first, end, invalid, table, spectrum[2])
        largest_xy = max(largest_xy, largest)
        if kept:
            spectrum[0, kept] += 1
            largest_x = max(largest_x, kept)
    return (_compact(spectrum[0], largest_x), _compact(spectrum[1], largest_y),
            _compact(spectrum[2], largest_xy))


class _StateKernels(NamedTuple):
    add_dense: Any
    keys_of: Any
    run_counts: Any
    merge: Any
    state_keys: Any
    sorted_order: Any
    group_bounds: Any
    spectra: Any


if numba is not None:
    _STATE_KERNELS = _StateKernels(*(numba.njit(nogil=True, cache=True)(f) for f in (
        _add_dense, _keys_of, _run_counts, _merge, _state_keys, _sorted_order, _group_bounds,
        _spectra)))


def _state_kernels() -> _StateKernels:
    """The numba kernels of `StateCounts` and `SortedInputs`: a masked bincount, exact counts of
    64-bit keys by a radix sort and run lengths, and the sorted-inputs count spectra."""
    return _STATE_KERNELS


# SortedInputs: input keys of up to 31 bits (sorted), output keys of up to this many (a dense
# int32 table of 2**bits per counter: 64 MiB at 24)
SORTED_OUTPUT_BITS = 24


def sorted_inputs_fit(num_inputs: int, in_bins: int, num_outputs: int, out_bins: int) -> bool:
    """Whether `SortedInputs` can count these states (numba installed, keys narrow enough)."""
    return (numba is not None and num_inputs * bits_per_value(in_bins) <= 31
            and num_outputs * bits_per_value(out_bins) <= SORTED_OUTPUT_BITS)


class SortedInputs:
    """One chunk's input states sorted once, to count the joint states of many output codings of
    the same samples (a sweep's parameter sets) against: per set the count spectra of X, Y and
    (X, Y), exact, in O(samples) without sorting (numba).

    Args:
      x_codes: input bins [n_in, S] (uint8/16), every one valid.
      stop: only samples 0..stop-1 count.
      in_bins: the input bins (sets the key layout).
    """

    def __init__(self, x_codes: np.ndarray, stop: int, in_bins: int, out_bits: int):
        kernels = _state_kernels()
        self.stop = int(stop)
        self.bits = bits_per_value(in_bins)
        key_bits = x_codes.shape[0] * self.bits
        keys = kernels.state_keys(np.ascontiguousarray(x_codes), self.stop, self.bits, -1,
                                  np.zeros(self.stop, np.uint32))
        x_sorted, self.order = kernels.sorted_order(keys, key_bits)
        self.bounds = kernels.group_bounds(x_sorted)
        self._table = np.zeros(2 ** out_bits, np.int32)
        self._spectrum = np.zeros((3, self.stop + 1), np.int64)

    def spectra(self, y_codes: np.ndarray, out_bins: int):
        """((values, multiplicities) of X, of Y, of (X, Y)) over the samples whose every output
        code is below `out_bins` (the sentinel `out_bins` marks an output left out: the whole
        sample is then left out, the drop policy of vector EI)."""
        kernels = _state_kernels()
        bits = bits_per_value(out_bins)
        # narrow keys where they fit (all ones is the left-out mark): the walk in input order
        # reads them at random, and a smaller array stays in faster caches
        dtype = np.uint16 if y_codes.shape[0] * bits < 16 else np.uint32
        keys = kernels.state_keys(np.ascontiguousarray(y_codes), self.stop, bits, out_bins,
                                  np.zeros(self.stop, dtype))
        return kernels.spectra(self.bounds, self.order, keys, self._table, self._spectrum)


_spare_buffers = threading.local()


_SPARE_KEPT = 2 ** 22  # keys (32 MiB) of scratch kept between calls, per thread


def _spare(size: int) -> np.ndarray:
    """A uint64 scratch buffer of at least `size`, reused between calls (per thread) up to
    `_SPARE_KEPT` keys: a fresh large buffer costs a page fault per 4 KiB (measured here: about as
    long as the radix sort of 1e5 keys). Larger requests get a buffer of their own."""
    if size > _SPARE_KEPT:
        return np.empty(size, np.uint64)
    buffer = getattr(_spare_buffers, "buffer", None)
    if buffer is None or buffer.shape[0] < size:
        buffer = _spare_buffers.buffer = np.empty(max(size, 2 ** 16), np.uint64)
    return buffer


class StateCounts:
    """Exact counts of distinct states (packed uint32 rows), accumulated on the host in int64.

    A state space of at most `dense_bits` bits is counted densely (a count per state; with numba
    as each chunk arrives). Otherwise rows are buffered and merged when counts are asked for (or
    the buffer is large): sorted, each run of equal states one count, merged with the distinct
    states so far. With numba, states of up to 64 bits sort as uint64 keys by a radix sort;
    without it, or for wider states, `np.unique` sorts them (wide ones as raw bytes). No hashing:
    two states share a count only when they are equal.

    Args:
      num_bits: bits of the packed states.
      dense_bits: count densely up to this many bits (default: 16 compiled, 24 without).
      buffer_rows: rows buffered before a merge.
      compiled: the numba kernels (default: when numba is installed) or NumPy's `np.unique`.
    """

    def __init__(self, num_bits: int, dense_bits: int | None = None, buffer_rows: int = 2 ** 25,
                 *, compiled: bool | None = None):
        compiled = numba is not None if compiled is None else bool(compiled)
        if compiled and numba is None:
            raise ValueError(NEEDS_NUMBA)
        if dense_bits is None:  # a dense table pays for every state, seen or not
            dense_bits = 16 if compiled else 24
        self.num_bits = num_bits
        self.dense = num_bits <= dense_bits
        self.buffer_rows = buffer_rows
        self.total = 0
        self.compiled = compiled and num_bits <= 64
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._dense_counts = np.zeros(2 ** num_bits if self.dense else 0, np.int64)
        self._keys: np.ndarray | None = None  # sorted distinct keys (sparse mode)
        self._counts = np.zeros(0, np.int64)

    @staticmethod
    def _as_keys(words: np.ndarray) -> np.ndarray:
        """One sortable, comparable key per row: an integer for up to 64 bits, else raw bytes."""
        if words.shape[1] == 1:
            return words[:, 0]
        if words.shape[1] == 2:
            return (words[:, 0].astype(np.uint64) << np.uint64(32)) | words[:, 1].astype(np.uint64)
        rows = np.ascontiguousarray(words)
        return rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()

    def add(self, words: np.ndarray, valid: np.ndarray) -> None:
        """Counts the rows of `words` (uint32 [S, W]) where `valid` ([S] bool) is True."""
        words, valid = np.asarray(words), np.asarray(valid, np.bool_)
        if self.compiled and self.dense:
            _state_kernels().add_dense(np.ascontiguousarray(words), valid, self._dense_counts)
            self.total += int(valid.sum())
            return
        if self.compiled:
            keys = _state_kernels().keys_of(np.ascontiguousarray(words), valid)
        else:
            keys = self._as_keys(words[valid])
        self.total += keys.shape[0]
        self._pending.append(keys)
        self._pending_rows += keys.shape[0]
        if self._pending_rows >= self.buffer_rows:
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        keys = np.concatenate(self._pending)
        self._pending, self._pending_rows = [], 0
        if self.dense:
            self._dense_counts += np.bincount(keys, minlength=self._dense_counts.size)
            return
        if self.compiled:
            unique, counts = _state_kernels().run_counts(keys, _spare(keys.shape[0]))
            if self._keys is not None:
                unique, counts = _state_kernels().merge(self._keys, self._counts, unique, counts)
            self._keys, self._counts = unique, counts
            return
        unique, counts = np.unique(keys, return_counts=True)
        if self._keys is not None:
            merged = np.concatenate([self._keys, unique])
            weights = np.concatenate([self._counts, counts])
            unique, inverse = np.unique(merged, return_inverse=True)
            counts = np.bincount(inverse.ravel(), weights=weights, minlength=unique.size)
        self._keys, self._counts = unique, np.rint(counts).astype(np.int64)

    def absorb(self, other: "StateCounts") -> None:
        """Adds `other`'s counts (of states of the same bits) to these."""
        other._merge()
        self.total += other.total
        if self.dense:
            self._dense_counts += other._dense_counts
        elif other._keys is not None:
            self._merge()
            if self._keys is None:
                self._keys, self._counts = other._keys.copy(), other._counts.copy()
            elif self.compiled:
                self._keys, self._counts = _state_kernels().merge(self._keys, self._counts,
                                                                  other._keys, other._counts)
            else:
                merged = np.concatenate([self._keys, other._keys])
                weights = np.concatenate([self._counts, other._counts])
                self._keys, inverse = np.unique(merged, return_inverse=True)
                self._counts = np.rint(np.bincount(inverse.ravel(), weights=weights,
                                                   minlength=self._keys.size)).astype(np.int64)

    def counts(self) -> np.ndarray:
        """The nonzero counts, int64."""
        self._merge()
        if self.dense:
            return self._dense_counts[self._dense_counts > 0]
        return self._counts


def join_states(x_words: jax.Array, x_bits: int, y_words: jax.Array, y_bits: int) -> jax.Array:
    """The packed state of the pair (x, y): one word when both fit in 32 bits, else x's words then
    y's."""
    if x_words.shape[1] == 1 and y_words.shape[1] == 1 and x_bits + y_bits <= 32:
        return (x_words << jnp.uint32(y_bits)) | y_words
    return jnp.concatenate([x_words, y_words], axis=1)
