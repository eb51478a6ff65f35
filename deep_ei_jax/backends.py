"""Counting backends: where and how the pairwise tables of a chunk are counted.

A backend is chosen once, from a measure's `method` argument, by `resolve`, and the object is then
passed along (it is hashable, so a jitted kernel can take it as a static argument). Every backend
gives the same integer counts; they differ in where the work runs:

=========  ==========================================  =====================================
backend    counts                                      serves
=========  ==========================================  =====================================
scatter    XLA scatter-add of a joint index (device)   CPU without numba; sharded chunks
onehot     one-hot matmul (device, tensor cores)       GPUs and TPUs (the default there)
numba      a compiled host loop (`histogram`)          CPU default when numba is installed
samples    no tables: each pair's statistics from the  wide layers on a CPU (chosen by
           samples' bins (`pairstats`, numba)          `planning` when tables would not fit)
=========  ==========================================  =====================================

The pair-counter interface, as the chunk driver uses it:

* `new_pair_counts(leading, in_bins, out_bins)`: empty counts for tables [*leading];
* `count_in_kernel(counts, x_bins, y_bins, valid, in_bins, out_bins)`: inside a jitted chunk,
  either adds the chunk's tables to `counts` (device) or returns the bins for the host;
* `consume(counts, host_bins, out_bins, first, stop)`: adds a chunk's host bins (host);
* `tables(counts, in_bins, out_bins)`: the counts as [*leading, in_bins, out_bins];
* `statistics(counting, statistics, counts)`: the per-pair statistics of one block's counts
  (`kernels.block_statistics` of the tables, or `pairstats` from the samples);
* `left_out(counts, in_bins, out_bins)`: host backends: the entries marked left out, per
  table [*leading].

Joint states of vectors are counted on the host by `histogram.StateCounts` for every backend of a
single call; `compiled_states` says whether a backend's host state counters use numba.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks, histogram, kernels, pairstats


class CountingBackend:
    """The interface (and the device implementation: subclasses name their XLA counter).

    Attributes:
      name: the `method` string that selects it (reported in `Info.method`).
      on_host: True when tables are counted on the host from bins a chunk returns.
      shardable: True when it can count inside a sharded (`shard_map`) chunk.
      compiled_states: True when the host state counters (`StateCounts`, `SortedInputs`) may use
        numba (host backends only).
      by_samples: True when it keeps the samples' bins instead of tables (`pairstats`).
    """

    name = ""
    on_host = False
    by_samples = False
    shardable = True
    compiled_states = False

    def __repr__(self) -> str:
        return f"<counting backend {self.name!r}>"

    def available(self) -> bool:
        """Whether it can run in this install."""
        return True

    def new_pair_counts(self, leading: tuple, in_bins: int, out_bins: int):
        """Zero counts of tables [*leading] (int32)."""
        return jnp.zeros(tuple(leading) + (in_bins, out_bins), jnp.int32)

    def count_in_kernel(self, counts, x_bins, y_bins, valid, in_bins: int, out_bins: int):
        """Inside a jitted chunk: (counts with the chunk's tables added, bins for the host or ()).

        Args:
          counts: int32 [n_in, n_out, in_bins, out_bins] (device backends).
          x_bins: int32 [S, n_in]; y_bins: int32 [S, n_out]; valid: bool [S, n_out].
        """
        return counts + histogram.pairwise_counts(x_bins, y_bins, valid, in_bins, out_bins,
                                                  self.name), ()

    def consume(self, counts, host_bins, out_bins: int, first: int, stop: int) -> None:
        """Adds a chunk's host bins (samples first..stop-1) to host counts: nothing on a device."""

    def tables(self, counts, in_bins: int, out_bins: int):
        """Counts as [*leading, in_bins, out_bins], whichever backend made them."""
        return counts

    def statistics(self, counting, statistics, counts, progress=None):
        """(MI, p-values or (), standard errors or (), plug-in bias), each [n_in, block], of one
        block's counts (`kernels.block_statistics`). `progress`: called with outputs done."""
        return kernels.block_statistics(counting, statistics, counts)


class ScatterBackend(CountingBackend):
    """XLA's scatter-add of one joint index per (sample, pair): the CPU counter without numba."""

    name = "scatter"


class OneHotBackend(CountingBackend):
    """one_hot(x)^T @ one_hot(y): every pairwise table at once, on tensor cores on a GPU."""

    name = "onehot"


class NumbaBackend(CountingBackend):
    """numba's compiled loop on the host (`histogram.add_pairwise_counts_host`). A chunk returns
    its bins (narrow unsigned, sample-minor) and the host adds them to int32 tables with a spare
    cell per row (`histogram.host_table_cells`) while the device computes the next chunk."""

    name = "numba"  # the registry's name for it (its one mention in the package)
    on_host = True
    shardable = False
    compiled_states = True

    def available(self) -> bool:
        return histogram.numba is not None

    def new_pair_counts(self, leading: tuple, in_bins: int, out_bins: int):
        return np.zeros(tuple(leading) + (histogram.host_table_cells(in_bins, out_bins),),
                        np.int32)

    def count_in_kernel(self, counts, x_bins, y_bins, valid, in_bins: int, out_bins: int):
        dtype = histogram.host_bins_dtype(in_bins, out_bins)
        return counts, (x_bins.T.astype(dtype), jnp.where(valid, y_bins, out_bins).T.astype(dtype))

    def consume(self, counts, host_bins, out_bins: int, first: int, stop: int) -> None:
        x_bins, y_bins = (np.asarray(bins) for bins in host_bins)  # (no copy of host arrays)
        histogram.add_pairwise_counts_host(x_bins, y_bins, out_bins, counts, first, stop)

    def tables(self, counts, in_bins: int, out_bins: int):
        return histogram.host_tables_view(counts, in_bins, out_bins)

    def left_out(self, counts, in_bins: int, out_bins: int):
        """The entries marked left out in each table of counts [*leading, cells]: int64
        [*leading]."""
        return histogram.host_left_out(counts, in_bins, out_bins)


class SamplesBackend(NumbaBackend):
    """No tables: a block's "counts" are the bins of its samples (`pairstats.SampleBins`), and
    each pair's statistics come from them in one pass (`pairstats.pair_statistics`), so cost
    follows samples x pairs rather than pairs x bins^2. `planning` picks it in place of the host
    loop when a layer's tables would not fit `memory_budget` but its samples' bins do."""

    name = "samples"
    by_samples = True

    def new_pair_counts(self, leading: tuple, in_bins: int, out_bins: int):
        dtype = histogram.host_bins_dtype(in_bins, out_bins)
        if len(leading) == 2:
            return pairstats.SampleBins(leading[0], leading[1], dtype)
        holders = np.empty(leading[:-2], object)
        for index in np.ndindex(holders.shape):
            holders[index] = pairstats.SampleBins(leading[-2], leading[-1], dtype)
        return holders

    def consume(self, counts, host_bins, out_bins: int, first: int, stop: int) -> None:
        x_bins, y_bins = (np.asarray(bins) for bins in host_bins)
        counts.append(x_bins, y_bins, first, stop)

    def tables(self, counts, in_bins: int, out_bins: int):
        raise TypeError("the samples backend keeps no tables (use its statistics)")

    def statistics(self, counting, statistics, counts, progress=None):
        return pairstats.pair_statistics(
            counts, 0, counts.length, counting.in_bins, counting.out_bins,
            estimator=statistics.estimator, significance=statistics.significance,
            pair_errors=statistics.pair_errors, progress=progress)

    def left_out(self, counts, in_bins: int, out_bins: int):
        per_output = (counts.y[:, :counts.length] == out_bins).sum(axis=1, dtype=np.int64)
        return np.broadcast_to(per_output, (counts.x.shape[0],) + per_output.shape)


SCATTER = ScatterBackend()
ONEHOT = OneHotBackend()
HOST = NumbaBackend()
SAMPLES = SamplesBackend()
REGISTRY = {backend.name: backend for backend in (SCATTER, ONEHOT, HOST, SAMPLES)}
METHODS = ("auto",) + tuple(REGISTRY)


def default_backend(*, one_input: bool = False, wide: bool = False) -> CountingBackend:
    """The counting backend for the default JAX backend: one-hot matmul on accelerators; on a CPU
    the host loop when numba is installed, else XLA's scatter-add.

    Args:
      one_input: for a single call's one-input intervention (sensitivity). On a CPU it takes
        XLA's scatter: it counts a few samples per input, and the host loop's first use in a
        process (loading its compiled kernel, ~0.5 s) would outweigh what it saves. A sweep's
        sensitivity, over K sets, takes the host loop; `method='numba'` asks for it here too (the
        same counts either way).
      wide: the layer's tables would not fit its memory budget but its samples' bins would
        (`planning.counts_by_samples`): on a CPU with numba, the samples backend.
    """
    if jax.default_backend() != "cpu":
        return ONEHOT
    if not HOST.available():
        return SCATTER
    return SAMPLES if wide else SCATTER if one_input else HOST


def resolve(method, *, require_available: bool = False, one_input: bool = False,
            wide: bool = False) -> CountingBackend:
    """The backend object for `method`, chosen once.

    Args:
      method: a name from `METHODS` (checked: a ValueError names the choices), or a backend.
      require_available: raise a ValueError now when the backend cannot run in this install
        (otherwise it raises when first asked to count).
      one_input, wide: for "auto" (see `default_backend`); a wide layer asked of the host loop
        (by name or object) is counted by samples too: the same loop's counts, without tables.
    """
    if isinstance(method, CountingBackend):
        backend = method
    else:
        _checks.check_choice("method", method, METHODS)
        backend = default_backend(one_input=one_input, wide=wide) if method == "auto" \
            else REGISTRY[method]
    if wide and backend is HOST:
        backend = SAMPLES
    if require_available and not backend.available():
        raise ValueError(histogram.NEEDS_NUMBA)
    return backend


def device_fallback(backend: CountingBackend) -> CountingBackend:
    """`backend`, or XLA's scatter where the chunk's counts must stay on the devices (sharded
    chunks): the host backend counts on one host from one device's bins."""
    return backend if backend.shardable else SCATTER
