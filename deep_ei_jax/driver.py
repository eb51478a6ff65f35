"""The chunk driver: feeds the chunks of a sample range to the kernels and their results to the
counters, for single calls (one parameter set) and sweeps (K sets) alike.

Every pass is a list of work items, each dispatched to the device (asynchronously) and then
consumed on the host while the device computes the next one (`pipelined`). The counting backend
(`backends`) decides whether a chunk's tables are counted on the device (they ride in the carry)
or on the host from the bins the chunk returns.
"""
from __future__ import annotations

import concurrent.futures
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from . import _checks, kernels
from . import estimators as _estimators
from .histogram import SortedInputs, StateCounts, bits_per_value, state_bits
from .planning import Counting, Plan, Sampling, Statistics, first_blocks
from .progress import SILENT, Progress
from .sampling import SAMPLE_BLOCK


def pipelined(work, dispatch, consume) -> None:
    """For each item, `dispatch(item)` starts its (asynchronous) device work, and only then does
    `consume(result, item)` take in the previous item's result on the host: host counting
    overlaps the device's next chunk."""
    pending = None
    for item in work:
        result = dispatch(item)
        if pending is not None:
            consume(*pending)
        pending = (result, item)
    if pending is not None:
        consume(*pending)


def num_devices(sampling: Sampling) -> int:
    return 1 if sampling.mesh is None else sampling.mesh.size


def chunks(sampling: Sampling, start: int, stop: int):
    """(first block, sampling) of each chunk covering samples [start, stop). On one device the
    last chunk shrinks to the smallest power of two of blocks that covers what is left, so little
    is computed past `stop` (and at most log2(num_blocks) more shapes are ever compiled)."""
    end = -(-int(stop) // SAMPLE_BLOCK)
    for first in first_blocks(start, stop, sampling.num_blocks * num_devices(sampling)):
        left = int(end - first)
        if sampling.mesh is None and left < sampling.num_blocks:
            yield first, sampling._replace(num_blocks=1 << (left - 1).bit_length())
        else:
            yield first, sampling


def samples_in(chunk, start: int, stop: int) -> int:
    """How many of samples [start, stop) the chunk (first block, sampling) covers."""
    first, sampling = chunk
    size = sampling.num_blocks * SAMPLE_BLOCK * num_devices(sampling)
    return max(0, min(stop, (first * SAMPLE_BLOCK) + size) - max(start, first * SAMPLE_BLOCK))


def batches(stacked_params, num_sets: int, batch: int):
    """(first set, sets, their params padded to `batch` sets by repeating the last) per call:
    every call has one shape, so one program serves them all."""
    for start in range(0, num_sets, batch):
        index = np.minimum(np.arange(start, start + batch), num_sets - 1)
        yield start, range(start, min(start + batch, num_sets)), \
            jax.tree_util.tree_map(lambda a: a[index], stacked_params)


def batch_edges(samples: int, num_batches: int):
    """[start, stop) of each of `num_batches` disjoint batches of samples (error bars)."""
    _checks.check_samples("error_bars", num_batches) if num_batches else None
    if num_batches == 1 or num_batches > samples:
        raise ValueError(f"error_bars must be 0 (off) or between 2 and samples ({samples}); "
                         f"got {num_batches}")
    edges = np.linspace(0, samples, num_batches + 1).astype(int)
    return list(zip(edges[:-1], edges[1:]))


# ---------------------------------------------------------------- the all-inputs intervention

def new_pair_carry(sampling: Sampling, counting: Counting):
    """Empty counts of one output block (as the backend holds them) and out-of-range counts."""
    counts = counting.backend.new_pair_counts((sampling.num_inputs, counting.block_size),
                                              counting.in_bins, counting.out_bins)
    return counts, jnp.zeros(counting.block_size, jnp.int32)


def run_chunks(plan: Plan, start: int, stop: int, *, offset: int = 0, pair_carry=None,
               counters=None, progress: Progress = SILENT):
    """Runs the chunks covering samples [start, stop) once, feeding every counter they serve.

    Args:
      pair_carry: when counting.pairs, the counts of output block `offset` (`new_pair_carry`),
        added to.
      counters: when counting.groups, one (x, y, joint) triplet of `StateCounts` per group.
      progress: told of the samples done, chunk by chunk.

    Returns:
      (pair_carry, samples dropped by the whole-sample rule, samples with an out-of-range output).
      Host work for a chunk (host counting, state merging) overlaps the next chunk's device work.
    """
    counting = plan.counting
    backend = counting.backend
    host_pairs = counting.pairs and backend.on_host
    if pair_carry is None:
        pair_carry = (jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
    host_counts = pair_carry[0] if host_pairs else None
    device_carry = (jnp.zeros((), jnp.int32), pair_carry[1]) if host_pairs else pair_carry
    out_of_range = 0

    def dispatch(chunk):
        nonlocal device_carry
        first, sampling = chunk
        device_carry, states, bins = kernels.step(sampling, counting, device_carry, plan.key,
                                                  plan.params, plan.ranges, first, start, stop,
                                                  offset)
        return states, bins

    def consume(outputs, chunk):
        nonlocal out_of_range
        (states, bins), (first, _) = outputs, chunk
        if bins:
            # only the chunk's rows in [start, stop) are counted (the others carry the sentinel)
            chunk_start = first * SAMPLE_BLOCK
            backend.consume(host_counts, bins, counting.out_bins, max(start - chunk_start, 0),
                            min(stop - chunk_start, bins[0].shape[1]))
        if states:
            out_of_range += _count_states(states, counters)
        progress.update(samples_in(chunk, start, stop))

    progress.start(stop - start, unit="sample", desc=f"EI (samples {start}-{stop})")
    pipelined(chunks(plan.sampling, start, stop), dispatch, consume)
    pair_carry = (host_counts, device_carry[1]) if host_pairs else device_carry
    dropped = out_of_range if counting.policy == "drop" else 0
    return pair_carry, dropped, out_of_range


def _count_states(states, counters) -> int:
    """Adds one chunk's packed states to the groups' counters; returns its samples with an
    output out of range."""
    if jax.process_count() > 1:  # the chunk's states are spread over the processes
        states = multihost_utils.process_allgather(states, tiled=True)
    keep, out, groups = jax.device_get(states)
    for triplet, words in zip(counters, groups):
        for counter, group_words in zip(triplet, words):
            counter.add(group_words, keep)
    return int(out.sum())


def pair_block_counts(plan: Plan, offset: int, start: int, stop: int, carry=None):
    """Adds samples [start, stop) to the counts of output block `offset`; returns the carry."""
    carry = new_pair_carry(plan.sampling, plan.counting) if carry is None else carry
    return run_chunks(plan, start, stop, offset=offset, pair_carry=carry)[0]


class PairwiseCounts:
    """EI_parts tables over the output blocks of a layer, grown sample range by sample range.

    Tables are kept between calls when they all fit `memory_budget`; otherwise each call recounts
    its blocks from sample 0 (the same samples, so the same answer).
    """

    def __init__(self, plan: Plan, memory_budget: int):
        self.plan = plan
        sampling, counting = plan.sampling, plan.counting
        table_bytes = (4 * sampling.num_inputs * sampling.padded_outputs * counting.in_bins
                       * counting.out_bins)
        # (the samples backend keeps the samples' bins, planned to fit)
        self.keep = counting.backend.by_samples or table_bytes <= memory_budget
        self.carries: dict[int, Any] = {}
        self.counted = 0

    def offsets(self):
        return range(0, self.plan.sampling.padded_outputs, self.plan.counting.block_size)

    def matrix(self, stop: int, *, progress: Progress = SILENT):
        """(EI_parts matrix [n_in, n_out], out-of-range counts per output, p-values or None,
        standard errors or None, estimated plug-in bias per pair) over samples [0, stop);
        `progress` is told of the outputs done, block by block."""
        plan = self.plan
        results = []
        num_outputs = plan.sampling.num_outputs
        progress.start(num_outputs, unit="output", desc=f"EI_parts ({stop} samples)")
        for offset in self.offsets():
            if self.keep:
                carry = pair_block_counts(plan, offset, self.counted, stop,
                                          self.carries.get(offset))
                self.carries[offset] = carry
            else:
                carry = pair_block_counts(plan, offset, 0, stop)
            if plan.counting.backend.by_samples:  # one block, reported as its pairs are done
                results.append((block_statistics(plan, carry[0], progress.update), carry[1]))
                continue
            results.append((block_statistics(plan, carry[0]), carry[1]))
            progress.update(max(0, min(plan.counting.block_size, num_outputs - offset)))
        self.counted = stop
        return assemble_blocks(plan.sampling.num_outputs, plan.statistics, results)

    def batch_matrix(self, start: int, stop: int) -> np.ndarray:
        """The EI_parts matrix of samples [start, stop) alone (for batch-means error bars)."""
        plan = self.plan
        results = [(block_statistics(plan, pair_block_counts(plan, offset, start, stop)[0]),
                    None)
                   for offset in self.offsets()]
        return assemble_blocks(plan.sampling.num_outputs, plan.statistics, results)[0]


def block_statistics(plan: Plan, counts, progress=None):
    """The statistics of one block's counts, as the plan's backend holds them (`progress`: None
    or a callable told of the outputs done, where the backend reports them)."""
    return plan.counting.backend.statistics(plan.counting, plan.statistics, counts,
                                            progress=progress)


def assemble_blocks(num_outputs: int, statistics: Statistics, results):
    """Joins per-block ((mi, p-values, standard errors, bias), out-of-range) results into
    layer-wide arrays: (mi, out-of-range or None, p-values or None, standard errors or None,
    estimated plug-in bias per pair)."""
    results = jax.device_get(results)

    def join(index, present=True):
        if not present:
            return None
        parts = [r[0][index] for r in results]
        joined = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        return joined[:, :num_outputs].astype(np.float64, copy=False)
    oor = (np.concatenate([r[1] for r in results])[:num_outputs].astype(np.int64)
           if results[0][1] is not None else None)
    return (join(0), oor, join(1, statistics.significance), join(2, statistics.pair_errors),
            join(3))


# ---------------------------------------------------------------- joint states

def state_bytes_per_sample(counting: Counting) -> int:
    """Host bytes one sample's distinct states can take: per group its packed words (4 bytes
    each) for x, y and the joint, and an int64 count for each."""
    per_sample = 0
    for inputs, outputs in counting.groups:
        wx = -(-len(inputs) // (32 // bits_per_value(counting.in_bins)))
        wy = -(-len(outputs) // (32 // bits_per_value(counting.out_bins)))
        per_sample += 4 * (2 * wx + 2 * wy) + 3 * 8
    return per_sample


def check_state_memory(counting: Counting, samples: int, budget: int) -> None:
    """Refuses, before any work, a fixed-size joint-state count that could outgrow `budget`."""
    per_sample = state_bytes_per_sample(counting)
    need = per_sample * samples
    if need > budget:
        raise ValueError(
            f"counting the joint states of {samples} samples may need {need / 2**30:.1f} GiB "
            f"({per_sample} bytes per sample over {len(counting.groups)} group(s)), more than "
            f"state_memory_budget={budget / 2**30:.1f} GiB; use fewer samples or raise it")


def new_state_counters(counting: Counting) -> list:
    """One (x, y, joint) triplet of empty `StateCounts` per group of counting.groups."""
    counters = []
    for inputs, outputs in counting.groups:
        bx = state_bits(len(inputs), counting.in_bins)
        by = state_bits(len(outputs), counting.out_bins)
        joint = bx + by if (bx <= 32 and by <= 32 and bx + by <= 32) else max(bx + by, 33)
        counters.append((StateCounts(bx), StateCounts(by), StateCounts(joint)))
    return counters


# ---------------------------------------------------------------- the one-input intervention

def sensitivity_blocks(plan: Plan, samples: int, *, progress: Progress = SILENT):
    """The one-input intervention of a single call, counted by its plan's backend: ([per block
    of inputs its `table_statistics`], out-of-range count over every input and output). Every
    backend gives the same counts, so the same bits. On the host backend a single call is a
    sweep of one parameter set (`host_sensitivity_tables`). `progress` is told of the inputs
    done."""
    sampling, counting = plan.sampling, plan.counting
    if not counting.backend.on_host:
        return device_sensitivity_blocks(plan, samples, progress=progress)
    stacked = jax.tree_util.tree_map(lambda a: a[None], plan.params)
    if counting.backend.by_samples:
        rows, out_of_range = host_sensitivity_by_samples(
            sampling, counting, plan.statistics, plan.key, plan.ranges, stacked, 1, 1, True,
            samples, with_out_of_range=True, progress=progress)
        return [tuple(r[0] if isinstance(r, np.ndarray) else r for r in rows)], \
            int(out_of_range[0])
    tables, out_of_range = host_sensitivity_tables(sampling, counting, plan.key, plan.ranges,
                                                   stacked, 1, 1, True, samples,
                                                   with_out_of_range=True, progress=progress)
    return (host_sensitivity_statistics(sampling, counting, plan.statistics, tables[0]),
            int(out_of_range[0]))


def device_sensitivity_blocks(plan: Plan, samples: int, *, progress: Progress = SILENT):
    """Sensitivity counted on the device, block of inputs by block: ([per block its
    `block_statistics`], out-of-range count over every input and output)."""
    sampling, counting = plan.sampling, plan.counting
    stats, out_of_range = [], []
    progress.start(sampling.num_inputs, unit="input", desc=f"sensitivity ({samples} samples)")
    for offset in range(0, sampling.num_inputs, sampling.inputs_per_chunk):
        carry = (jnp.zeros((sampling.inputs_per_chunk, sampling.padded_outputs, counting.in_bins,
                            counting.out_bins), jnp.int32),
                 jnp.zeros(sampling.padded_outputs, jnp.int32))
        for first in first_blocks(0, samples, sampling.num_blocks):
            carry = kernels.single_input_step(sampling, counting, carry, plan.key, plan.params,
                                              plan.ranges, first, 0, samples, offset)
        stats.append(kernels.table_statistics(plan.statistics, carry[0]))
        out_of_range.append(carry[1])
        progress.update(min(sampling.inputs_per_chunk, sampling.num_inputs - offset))
    return stats, int(np.sum(jax.device_get(out_of_range)))


def one_input_pass(sampling: Sampling, counting: Counting, key, ranges, stacked_params,
                   num_sets: int, batch: int, exact_vmap: bool, samples: int, *, add, block_done,
                   with_out_of_range: bool, progress: Progress = SILENT) -> np.ndarray:
    """The one-input intervention of K parameter sets (a single call: K = 1), chunk by chunk for
    the host: the noise drawn once for all sets, each set's layer run as a single call's.

    Calls `add(k, a, x_bins [1, S], y_bins [n_out, S], stop)` for every set k and input a of
    each chunk (`out_bins` on every entry left out; samples past `stop` not counted) and
    `block_done(sets)` after a block of inputs' last chunk. `progress` is told of the (set,
    input) pairs done.

    Returns:
      with `with_out_of_range` the out-of-range counts per set [K] (counted on the device), else
      zeros.
    """
    n_in = sampling.num_inputs
    out_of_range = np.zeros(num_sets, np.int64)
    work = [(batch_, offset, chunk) for batch_ in batches(stacked_params, num_sets, batch)
            for offset in range(0, n_in, sampling.inputs_per_chunk)
            for chunk in chunks(sampling, 0, samples)]

    def dispatch(item):
        (_, _, params), offset, (first, chunk_sampling) = item
        return kernels.host_single_input_chunk(chunk_sampling, counting, exact_vmap,
                                               with_out_of_range, key, params, ranges, first,
                                               offset, samples)

    def consume(outputs, item):
        (_, sets, _), offset, (first, _) = item
        x_codes, y_codes, oor = jax.device_get(outputs)
        stop = min(samples - first * SAMPLE_BLOCK, x_codes.shape[1])
        if with_out_of_range:
            out_of_range[sets] += oor[:len(sets)].sum(axis=1)
        inputs = range(offset, min(offset + sampling.inputs_per_chunk, n_in))
        for i, a in enumerate(inputs):
            for j, k in enumerate(sets):
                add(k, a, x_codes[i][None], y_codes[j, i], stop)
        if first == work[-1][2][0]:  # the block's inputs are done for these sets
            block_done(sets)
            progress.update(len(sets) * len(inputs))

    progress.start(num_sets * n_in, unit="input", desc=f"sensitivity ({samples} samples)")
    pipelined(work, dispatch, consume)
    return out_of_range


def host_sensitivity_tables(sampling: Sampling, counting: Counting, key, ranges, stacked_params,
                            num_sets: int, batch: int, exact_vmap: bool, samples: int, *,
                            with_out_of_range: bool = False, progress: Progress = SILENT):
    """The one-input intervention of K parameter sets counted into host tables (`one_input_pass`).

    Returns:
      (host tables int32 [K, n_in, n_out, host cells], with `with_out_of_range` the
      out-of-range counts [K], else None).
    """
    backend = counting.backend
    tables = backend.new_pair_counts((num_sets, sampling.num_inputs, sampling.num_outputs),
                                     counting.in_bins, counting.out_bins)

    def add(k, a, x_bins, y_bins, stop):
        backend.consume(tables[k, a][None], (x_bins, y_bins), counting.out_bins, 0, stop)

    out_of_range = one_input_pass(sampling, counting, key, ranges, stacked_params, num_sets,
                                  batch, exact_vmap, samples, add=add,
                                  block_done=lambda sets: None,
                                  with_out_of_range=with_out_of_range, progress=progress)
    return tables, (out_of_range if with_out_of_range else None)


def host_sensitivity_by_samples(sampling: Sampling, counting: Counting, statistics: Statistics,
                                key, ranges, stacked_params, num_sets: int, batch: int,
                                exact_vmap: bool, samples: int, *, with_out_of_range: bool,
                                progress: Progress = SILENT):
    """The one-input intervention of K parameter sets without tables (the samples backend,
    `one_input_pass`): each (set, input)'s samples are kept (`pairstats.SampleBins` of one
    input) until its block's last chunk, then its row of statistics is computed from them and
    they go.

    Returns:
      ((MI, p-values or (), standard errors or (), plug-in bias), each [K, n_in, n_out] float64,
      and the (sample, output) values outside out_range per set [K]: counted on the device with
      `with_out_of_range`, else the entries left out).
    """
    backend, n_out = counting.backend, sampling.num_outputs
    shape = (num_sets, sampling.num_inputs, n_out)
    rows = (np.zeros(shape), np.zeros(shape) if statistics.significance else (),
            np.zeros(shape) if statistics.pair_errors else (), np.zeros(shape))
    left_out = np.zeros(num_sets, np.int64)
    held: dict = {}

    def add(k, a, x_bins, y_bins, stop):
        if (k, a) not in held:
            held[k, a] = backend.new_pair_counts((1, n_out), counting.in_bins, counting.out_bins)
        backend.consume(held[k, a], (x_bins, y_bins), counting.out_bins, 0, stop)

    def block_done(sets):
        for (k, a), bins in held.items():
            for result, row in zip(rows, backend.statistics(counting, statistics, bins)):
                if isinstance(result, np.ndarray):
                    result[k, a] = row[0]
            left_out[k] += backend.left_out(bins, counting.in_bins, counting.out_bins)
        held.clear()

    out_of_range = one_input_pass(sampling, counting, key, ranges, stacked_params, num_sets,
                                  batch, exact_vmap, samples, add=add, block_done=block_done,
                                  with_out_of_range=with_out_of_range, progress=progress)
    return rows, (out_of_range if with_out_of_range else left_out)


def host_sensitivity_statistics(sampling: Sampling, counting: Counting, statistics: Statistics,
                                tables) -> list:
    """Per block of inputs (as a device count holds them) the `table_statistics` of one set's
    host tables [n_in, n_out, host cells]: the same program on the same integers as a device
    count, so the same bits."""
    n_in, n_out = sampling.num_inputs, sampling.num_outputs
    counts = counting.backend.tables(tables, counting.in_bins, counting.out_bins)
    per_call = sampling.inputs_per_chunk
    stats = []
    for offset in range(0, n_in, per_call):
        block = np.zeros((per_call, n_out, counting.in_bins, counting.out_bins), np.int32)
        block[:min(per_call, n_in - offset)] = counts[offset:offset + per_call]
        stats.append(kernels.table_statistics(statistics, block))
    return stats


# ---------------------------------------------------------------- a sweep's all-inputs intervention

class HostVectorCounts:
    """The host's counters of the all-inputs intervention of every set: EI_parts tables (the
    single calls' pairwise counter) and EI (against sorted input states, or by each set's
    `StateCounts`), filled chunk by chunk."""

    def __init__(self, sampling: Sampling, counting: Counting, num_sets: int,
                 sorted_states: bool):
        self.sampling, self.counting, self.sorted_states = sampling, counting, sorted_states
        self.tables = counting.backend.new_pair_counts(
            (num_sets, sampling.num_inputs, sampling.num_outputs), counting.in_bins,
            counting.out_bins) if counting.pairs else None
        self.out_of_range = np.zeros(num_sets, np.int64)
        self.ei = np.zeros(num_sets)
        self.dropped = np.zeros(num_sets, np.int64)
        self.counters: dict = {}
        self.sorted_inputs = None
        self.parts: dict = {}  # samples backend: each set's EI_parts once counted
        self.left_out = np.zeros(num_sets, np.int64)

    def add(self, sets, x_codes, y_codes, oor, states, stop: int, last_chunk: bool) -> None:
        """Adds one chunk of `sets` (its first `stop` samples) to every counter."""
        counting = self.counting
        if counting.policy == "clip":
            self.out_of_range[sets] += oor[:len(sets)].sum(axis=1)

        def count_pairs():
            for i, k in enumerate(sets):
                counting.backend.consume(self.tables[k], (x_codes, y_codes[i]),
                                         counting.out_bins, 0, stop)
                if last_chunk and counting.backend.by_samples:  # done: its bins go
                    self._finish_set(k)
        pairs = None
        if counting.pairs and counting.groups:  # the two counters run side by side (own data)
            pairs = _helper().submit(count_pairs)
        elif counting.pairs:
            count_pairs()
        if counting.groups and self.sorted_states:
            self._add_sorted(sets, x_codes, y_codes, stop)
        elif counting.groups:
            _count_set_states(counting, self.counters, sets, states)
            if last_chunk:
                for k in sets:
                    cx, cy, cxy, lost = self.counters.pop(k)
                    self.ei[k] = _estimators.states_mutual_information(cx.counts(), cy.counts(),
                                                                       cxy.counts())
                    self.dropped[k] = lost
        if pairs is not None:
            pairs.result()

    def _finish_set(self, k: int) -> None:
        """Set k's EI_parts (the single call's statistics) and left-out entries, from the
        samples' bins, which are then let go (samples backend)."""
        counting = self.counting
        self.parts[k] = counting.backend.statistics(counting, Statistics(), self.tables[k])[0]
        self.left_out[k] = counting.backend.left_out(self.tables[k:k + 1], counting.in_bins,
                                                     counting.out_bins)[0]
        self.tables[k] = None

    def _add_sorted(self, sets, x_codes, y_codes, stop: int) -> None:
        """EI of `sets` against the input states, sorted once (the whole sample range is in this
        one chunk, and every call samples the same inputs)."""
        counting = self.counting
        if self.sorted_inputs is None:
            out_bits = self.sampling.num_outputs * bits_per_value(counting.out_bins)
            self.sorted_inputs = SortedInputs(x_codes, stop, counting.in_bins, out_bits)
        for i, k in enumerate(sets):
            spectra = self.sorted_inputs.spectra(y_codes[i], counting.out_bins)
            self.ei[k] = _estimators.spectra_mutual_information(*spectra)
            self.dropped[k] = stop - int(np.dot(*spectra[0]))  # samples left out whole

    def result(self) -> dict:
        sampling, counting = self.sampling, self.counting
        result = {}
        if counting.pairs:
            # each set's MI by the single call's own compiled statistics: equal to it exactly
            statistics = Statistics()
            parts = [self.parts[k] if k in self.parts else
                     counting.backend.statistics(counting, statistics, table)[0]
                     for k, table in enumerate(self.tables)]
            result["parts"] = np.stack(jax.device_get(parts))[:, :, :sampling.num_outputs]
            if counting.policy == "drop":  # the entries left out: out of range (input 0's)
                self.out_of_range = self.left_out if self.parts else counting.backend.left_out(
                    self.tables, counting.in_bins, counting.out_bins)
            result["out_of_range"] = self.out_of_range
        if counting.groups:
            result["ei"] = self.ei
            result["dropped"] = self.dropped if counting.policy == "drop" else \
                np.zeros_like(self.dropped)
        return result


def host_vector_pass(sampling: Sampling, counting: Counting, key, ranges, stacked_params,
                     num_sets: int, batch: int, *, exact_vmap: bool, sorted_states: bool,
                     samples: int, progress: Progress = SILENT) -> dict:
    """EI and EI_parts of every set, counted on the host (numba), `batch` sets per device call.

    The device samples each chunk's inputs once for all calls (`kernels.host_inputs`), runs every
    set's
    layer as a single call does and bins (`kernels.host_chunk`); the host counts
    (`HostVectorCounts`), while the device computes the next call. EI_parts: the single calls'
    pairwise counter. EI: with `sorted_states` (all samples in one chunk, narrow states) the
    input states are sorted once and every set's joint states are counted against that order
    (`histogram.SortedInputs`), giving the count spectra a single call's `StateCounts` give;
    otherwise each set gets the single calls' `StateCounts`. Either way the counts and the
    formulas are a single call's (EI_parts: its compiled `kernels.block_statistics`), so EI and
    EI_parts equal the single call's exactly. `progress` is told of the (set, sample) pairs done.
    """
    pack = bool(counting.groups) and not sorted_states
    counts = HostVectorCounts(sampling, counting, num_sets, sorted_states)
    work_chunks = list(chunks(sampling, 0, samples))
    sampled: dict = {}  # the last chunk's inputs: with one chunk, sampled once for all calls

    def dispatch(item):
        (_, _, params), (first, chunk_sampling) = item
        if first not in sampled:
            sampled.clear()
            sampled[first] = kernels.host_inputs(chunk_sampling, counting, key, ranges,
                                                 first)
        x, x_codes = sampled[first]
        return x_codes, kernels.host_chunk(chunk_sampling, counting, exact_vmap, pack, key, x,
                                           params, ranges, first, samples)

    def consume(outputs, item):
        (_, sets, _), (first, _) = item
        x_codes, (y_codes, oor, states) = jax.device_get(outputs)
        stop = min(samples - first * SAMPLE_BLOCK, x_codes.shape[1])
        counts.add(sets, x_codes, y_codes, oor, states, stop, first == work_chunks[-1][0])
        progress.update(len(sets) * stop)

    progress.start(num_sets * samples, unit="sample", desc=f"sweep of {num_sets} sets")
    pipelined(((batch_, chunk) for batch_ in batches(stacked_params, num_sets, batch)
               for chunk in work_chunks), dispatch, consume)
    return counts.result()


@functools.lru_cache(maxsize=None)
def _helper() -> concurrent.futures.ThreadPoolExecutor:
    """One worker thread for host counting beside the caller's: the numba counters release the
    GIL, and on this project's 2-vCPU machine pairwise and joint-state counting side by side
    took 0.6x the time of one after the other."""
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="deep_ei_jax")


def _count_set_states(counting, counters: dict, sets, states) -> None:
    """Adds one chunk's packed states of `sets` to their `StateCounts` (x, y, joint, dropped)."""
    keep, out, ((wx, wy, wxy),) = states
    for i, k in enumerate(sets):
        if k not in counters:
            counters[k] = tuple(new_state_counters(counting)[0]) + (0,)
        cx, cy, cxy, lost = counters[k]
        cx.add(wx[i], keep[i])
        cy.add(wy[i], keep[i])
        cxy.add(wxy[i], keep[i])
        counters[k] = (cx, cy, cxy, lost + int(out[i].sum()))
