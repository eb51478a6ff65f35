"""The chunk driver: feeds the chunks of a sample range to the kernels and their results to the
counters, for sweeps of K parameter sets and single calls alike (a single call is the sweep of
one set, `one_set`).

A pass is one intervention (all inputs: `AllInputsPass`; one input at a time: `OneInputPass`)
over a sample range, for a stream of work items (`work`: per call's sets, per block of outputs
or inputs, per chunk of samples). `drive` dispatches each item to the device (asynchronously)
and takes the previous one's results in on the host meanwhile (`pipelined`). The counting
backend (`backends`) decides whether a chunk's tables are counted on the device (they ride in a
carry) or on the host from the bins the chunk returns; joint states are always counted on the
host (`histogram.StateCounts`), so every entry point gets the same counter for a measure.
"""
from __future__ import annotations

import concurrent.futures
import functools
from typing import Any, NamedTuple

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
    last chunk shrinks to the smallest power of two of blocks that covers what is left, where
    that is smaller than a chunk, so little is computed past `stop` (and at most
    log2(num_blocks) more shapes are ever compiled)."""
    end = -(-int(stop) // SAMPLE_BLOCK)
    for first in first_blocks(start, stop, sampling.num_blocks * num_devices(sampling)):
        left = int(end - first)
        shrunk = 1 << (left - 1).bit_length()
        if sampling.mesh is None and shrunk < sampling.num_blocks:
            yield first, sampling._replace(num_blocks=shrunk)
        else:
            yield first, sampling


def samples_in(chunk, start: int, stop: int, steps: int = 1) -> int:
    """How many of samples [start, stop) the chunk (first block, sampling) covers (with `steps`:
    it and the chunks of its shape that follow it)."""
    first, sampling = chunk
    size = steps * sampling.num_blocks * SAMPLE_BLOCK * num_devices(sampling)
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


# ---------------------------------------------------------------- the one loop

class Sets(NamedTuple):
    """The parameter sets one pass measures: K of a sweep, or a single call's one.

    Attributes:
      params: the params with a leading axis K on every array.
      count: K.
      batch: sets per compiled call (the last call padded by repeating its last set).
      vmap: vmap a call's sets (where each then rounds as a single call), else `lax.map` them;
        None: a single call's one set, `params` without the K axis (run as they are).
      sharding: a `NamedSharding` that splits a call's sets over devices (device counting), or
        None.
      chunks_per_call: device counting: at most this many consecutive chunks of one shape per
        compiled call (a `lax.scan`: fewer, longer calls; progress and Ctrl-C between calls).
    """

    params: Any
    count: int
    batch: int = 1
    vmap: bool | None = True
    sharding: Any = None
    chunks_per_call: int = 1


def one_set(params) -> Sets:
    """A single call's parameter set as a sweep of one (its params and key as they are)."""
    return Sets(params, 1, vmap=None)


class Chunk(NamedTuple):
    """One work item of a pass: a chunk of samples of one block, for one call's sets."""

    sets: range          # the parameter sets (indices into K)
    params: Any          # their params [batch, ...]
    keys: Any            # the measurement's key once per set of the call [batch]
    offset: int          # the block's first output (all inputs) or input (one input)
    first: int           # the chunk's first sample block
    sampling: Sampling   # the chunk's sampling (its num_blocks)
    last: bool           # the block's last chunk for these sets
    steps: int = 1       # device counting: this many consecutive chunks of its shape at once

    def samples(self, start: int, stop: int) -> int:
        """How many of samples [start, stop) it covers."""
        return samples_in((self.first, self.sampling), start, stop, self.steps)


def work(sampling: Sampling, sets: Sets, key, offsets, start: int, stop: int):
    """The chunks of a pass in the order they run: per call's sets, per block, per chunk of
    samples [start, stop)."""
    chunk_list = runs(chunks(sampling, start, stop), sets.chunks_per_call)
    if sets.vmap is None:  # a single call
        calls, keys = [(range(1), sets.params)], key
    else:
        keys = jax.random.wrap_key_data(np.broadcast_to(
            np.asarray(jax.random.key_data(key)), (sets.batch,) + jax.random.key_data(key).shape),
            impl=jax.random.key_impl(key))
        calls = ((members, params) for _, members, params in batches(sets.params, sets.count,
                                                                      sets.batch))
    if sets.sharding is not None:
        keys = jax.device_put(keys, sets.sharding)
    for members, params in calls:
        if sets.sharding is not None:
            params = jax.device_put(params, sets.sharding)
        for offset in offsets:
            for i, (first, chunk_sampling, steps) in enumerate(chunk_list):
                yield Chunk(members, params, keys, offset, first, chunk_sampling,
                            i == len(chunk_list) - 1, steps)


def runs(chunk_iterable, per_call: int) -> list:
    """(first block, sampling, steps) per call: consecutive chunks of one shape, at most
    `per_call` of them together."""
    calls: list = []
    for first, sampling in chunk_iterable:
        if calls and calls[-1][1] == sampling and calls[-1][2] < per_call:
            calls[-1] = (calls[-1][0], sampling, calls[-1][2] + 1)
        else:
            calls.append((first, sampling, 1))
    return calls


def drive(one_pass, items, progress: Progress, total: int, unit: str, desc: str) -> None:
    """THE chunk driver, for every measure, single call or sweep: each chunk of `items` is
    dispatched to the device (`one_pass.dispatch`), and the previous one's results are taken in
    on the host meanwhile (`one_pass.consume`, `pipelined`). `progress` hears of `total` units;
    Ctrl-C is taken between chunks."""
    progress.start(total, unit=unit, desc=desc)
    pipelined(items, one_pass.dispatch, one_pass.consume)


def local_rows(chunk: Chunk, start: int, stop: int, width: int) -> tuple[int, int]:
    """The rows [lo, hi) of a chunk's [.., S] host bins that fall in samples [start, stop)."""
    chunk_start = chunk.first * SAMPLE_BLOCK
    return max(start - chunk_start, 0), min(stop - chunk_start, width)


# ---------------------------------------------------------------- the all-inputs intervention

class AllInputsCounts:
    """Per parameter set, the counters of the all-inputs intervention: the pairwise counts of one
    block of outputs (as the backend holds them) and their out-of-range counts per output, the
    joint states of counting.groups (one `StateCounts` triplet per group), and the samples with
    an output out of range.

    Args:
      pairs, pair_out_of_range: per set its counts so far and out-of-range counts (None: none
        yet).
      state_counters: per set its list of (x, y, joint) `StateCounts` per group (None: made as
        needed).
    """

    def __init__(self, sampling: Sampling, counting: Counting, num_sets: int, *, pairs=None,
                 pair_out_of_range=None, state_counters=None):
        self.sampling, self.counting = sampling, counting
        self.pairs = list(pairs) if pairs is not None else [None] * num_sets
        self.pair_out_of_range = list(pair_out_of_range) if pair_out_of_range is not None \
            else [None] * num_sets
        self.state_counters = list(state_counters) if state_counters is not None \
            else [None] * num_sets
        self.samples_out = np.zeros(num_sets, np.int64)

    def block_shape(self) -> tuple:
        return self.sampling.num_inputs, self.counting.block_size

    def device_carry(self, sets, batch: int | None, sharding):
        """The device counts of a call's sets, [batch, ...] (zeros where none yet; batch None: a
        single call's, without the K axis)."""
        counting = self.counting
        if batch is None:
            return self.single_carry()
        if not counting.pairs:
            carry = (jnp.zeros(batch, jnp.int32), jnp.zeros(batch, jnp.int32))
        elif all(self.pairs[k] is None for k in sets):
            carry = (counting.backend.new_pair_counts((batch,) + self.block_shape(),
                                                      counting.in_bins, counting.out_bins),
                     jnp.zeros((batch, counting.block_size), jnp.int32))
        else:
            zero = counting.backend.new_pair_counts(self.block_shape(), counting.in_bins,
                                                    counting.out_bins)
            zeros = jnp.zeros(counting.block_size, jnp.int32)
            held = [(self.pairs[k], self.pair_out_of_range[k]) for k in sets]
            held += [(zero, zeros)] * (batch - len(held))
            carry = (jnp.stack([c for c, _ in held]), jnp.stack([o for _, o in held]))
        return carry if sharding is None else jax.device_put(carry, sharding)

    def single_carry(self):
        """A single call's device counts and out-of-range counts (zeros where none yet)."""
        counting = self.counting
        if not counting.pairs:
            return jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)
        if self.pairs[0] is None:
            return new_pair_carry(self.sampling, counting)
        return self.pairs[0], self.pair_out_of_range[0]

    def add_device(self, chunk: Chunk, carry, states, single: bool) -> None:
        """Takes in a chunk counted on the device: its joint states, and at the block's last
        chunk the sets' counts (`carry`; with `single`, a single call's without the K axis)."""
        if carry is not None and self.counting.pairs and single:
            self.pairs[0], self.pair_out_of_range[0] = carry
        elif carry is not None and self.counting.pairs:
            for i, k in enumerate(chunk.sets):
                self.pairs[k], self.pair_out_of_range[k] = carry[0][i], carry[1][i]
        if states:
            self.add_states(chunk.sets, states)

    def add_host(self, chunk: Chunk, x_bins, codes, out_of_range, states, lo: int,
                 hi: int) -> None:
        """Takes in a chunk binned for the host: per set its outputs' bins `codes` [K, block, S]
        (rows lo..hi-1 in the pass's samples), out-of-range counts [K, block], packed states."""
        counting = self.counting

        def count_pairs():
            for i, k in enumerate(chunk.sets):
                if self.pairs[k] is None:
                    self.pairs[k] = counting.backend.new_pair_counts(
                        self.block_shape(), counting.in_bins, counting.out_bins)
                    self.pair_out_of_range[k] = np.zeros(counting.block_size, np.int64)
                counting.backend.consume(self.pairs[k], (x_bins, codes[i]), counting.out_bins,
                                         lo, hi)
                if counting.policy == "clip":  # (under "drop": `out_of_range`)
                    self.pair_out_of_range[k] += out_of_range[i]
        side = None
        if counting.pairs and counting.groups:  # the two counters run side by side (own data)
            side = _helper().submit(count_pairs)
        elif counting.pairs:
            count_pairs()
        if counting.groups:
            self.add_groups(chunk, x_bins, codes, states, hi)
        if side is not None:
            side.result()

    def out_of_range(self, k: int):
        """Set k's out-of-range counts per output of the block so far: counted on the device,
        or on the host under policy "drop" the entries its counts left out."""
        counting = self.counting
        if counting.backend.on_host and counting.policy == "drop" and self.pairs[k] is not None:
            return counting.backend.left_out(self.pairs[k], counting.in_bins,
                                             counting.out_bins)[0]  # (input 0's tables)
        return self.pair_out_of_range[k]

    def add_groups(self, chunk: Chunk, x_bins, codes, states, hi: int) -> None:
        """Takes in a host chunk's joint states (`SweepCounts` counts some against sorted
        inputs)."""
        self.add_states(chunk.sets, states)

    def add_states(self, sets, states) -> None:
        """Adds a chunk's packed states [K, S, ...] of `sets` to their `StateCounts`."""
        if jax.process_count() > 1:  # a chunk's states are spread over the processes
            states = multihost_utils.process_allgather(states, tiled=True)
        keep, out, groups = jax.device_get(states)
        for i, k in enumerate(sets):
            if self.state_counters[k] is None:
                self.state_counters[k] = new_state_counters(self.counting)
            for triplet, words in zip(self.state_counters[k], groups):
                for counter, group_words in zip(triplet, words):
                    counter.add(group_words[i], keep[i])
            self.samples_out[k] += int(out[i].sum())

    def sets_done(self, sets) -> None:
        """Called when `sets` have every chunk counted (sweeps finish them here)."""


class AllInputsPass:
    """The all-inputs intervention of a pass's sets over samples [start, stop), counted into an
    `AllInputsCounts`: on the host from each chunk's bins (the inputs sampled once per chunk for
    all sets, `kernels.host_inputs` and `host_chunk`), or on the device (`kernels.step`, the
    counts riding in a carry per call)."""

    def __init__(self, sampling: Sampling, counting: Counting, key, ranges, sets: Sets,
                 counts: AllInputsCounts, start: int, stop: int, *, progress: Progress):
        self.sampling, self.counting, self.key, self.ranges = sampling, counting, key, ranges
        self.sets, self.counts, self.start, self.stop = sets, counts, start, stop
        self.progress = progress
        self.pack = bool(counting.groups) and not getattr(counts, "sorted_states", False)
        self.sampled = (None, None)
        self.carry = None

    def dispatch(self, chunk: Chunk):
        counting = self.counting
        if counting.backend.on_host:
            if self.sampled[0] != chunk.first:  # with one chunk: sampled once for all calls
                self.sampled = (chunk.first, kernels.host_inputs(
                    chunk.sampling, counting, self.key, self.ranges, chunk.first))
            x, x_bins = self.sampled[1]
            return x_bins, kernels.host_chunk(chunk.sampling, counting, self.sets.vmap,
                                              self.pack, self.key, x, chunk.params, self.ranges,
                                              chunk.first, self.start, self.stop, chunk.offset)
        if self.carry is None:
            self.carry = self.counts.device_carry(
                chunk.sets, None if self.sets.vmap is None else self.sets.batch,
                self.sets.sharding)
        carry, states = kernels.step(chunk.sampling, counting, self.sets.vmap, chunk.steps,
                                     self.carry, chunk.keys, chunk.params, self.ranges,
                                     chunk.first, self.start, self.stop, chunk.offset)
        self.carry = None if chunk.last else carry
        return (carry if chunk.last else None), states

    def consume(self, outputs, chunk: Chunk) -> None:
        if self.counting.backend.on_host:
            x_bins, (codes, out_of_range, states) = jax.device_get(outputs)
            lo, hi = local_rows(chunk, self.start, self.stop, x_bins.shape[1])
            self.counts.add_host(chunk, x_bins, codes, out_of_range, states, lo, hi)
        else:
            self.counts.add_device(chunk, *outputs, single=self.sets.vmap is None)
        if chunk.last:
            self.counts.sets_done(chunk.sets)
        self.progress.update(len(chunk.sets) * chunk.samples(self.start, self.stop))


def all_inputs_pass(sampling: Sampling, counting: Counting, key, ranges, sets: Sets,
                    counts: AllInputsCounts, start: int, stop: int, *, offsets=(0,),
                    progress: Progress = SILENT) -> AllInputsCounts:
    """Counts samples [start, stop) of the all-inputs intervention of every set into `counts`
    (output blocks `offsets`, one after another into the same counts: sweeps and single calls
    count one block per pass); `progress` hears of the (set, sample) pairs done."""
    one_pass = AllInputsPass(sampling, counting, key, ranges, sets, counts, start, stop,
                             progress=progress)
    drive(one_pass, work(sampling, sets, key, offsets, start, stop), progress,
          sets.count * (stop - start) * len(offsets), "sample",
          f"EI (samples {start}-{stop})" if sets.count == 1 else f"sweep of {sets.count} sets")
    return counts


def run_chunks(plan: Plan, start: int, stop: int, *, offset: int = 0, pair_carry=None,
               counters=None, progress: Progress = SILENT):
    """A single call's all-inputs pass (the sweep of one set, `all_inputs_pass`) over samples
    [start, stop).

    Args:
      pair_carry: when counting.pairs, the counts of output block `offset` and their
        out-of-range counts (`new_pair_carry`), added to.
      counters: when counting.groups, one (x, y, joint) triplet of `StateCounts` per group.

    Returns:
      (pair_carry, samples dropped by the whole-sample rule, samples with an out-of-range output).
    """
    pairs, outside = (None, None) if pair_carry is None else pair_carry
    counts = AllInputsCounts(plan.sampling, plan.counting, 1, pairs=[pairs],
                             pair_out_of_range=[outside],
                             state_counters=[counters] if counters is not None else None)
    all_inputs_pass(plan.sampling, plan.counting, plan.key, plan.ranges, one_set(plan.params),
                    counts, start, stop, offsets=(offset,), progress=progress)
    out_of_range = int(counts.samples_out[0])
    dropped = out_of_range if plan.counting.policy == "drop" else 0
    return (counts.pairs[0], counts.out_of_range(0)), dropped, out_of_range


def new_pair_carry(sampling: Sampling, counting: Counting):
    """Empty counts of one output block (as the backend holds them) and out-of-range counts."""
    counts = counting.backend.new_pair_counts((sampling.num_inputs, counting.block_size),
                                              counting.in_bins, counting.out_bins)
    if counting.backend.on_host:
        return counts, np.zeros(counting.block_size, np.int64)
    return counts, jnp.zeros(counting.block_size, jnp.int32)


def pair_block_counts(plan: Plan, offset: int, start: int, stop: int, carry=None):
    """Adds samples [start, stop) to the counts of output block `offset`; returns the carry."""
    carry = new_pair_carry(plan.sampling, plan.counting) if carry is None else carry
    return run_chunks(plan, start, stop, offset=offset, pair_carry=carry)[0]


@functools.lru_cache(maxsize=None)
def _helper() -> concurrent.futures.ThreadPoolExecutor:
    """One worker thread for host counting beside the caller's: the numba counters release the
    GIL, and on this project's 2-vCPU machine pairwise and joint-state counting side by side
    took 0.6x the time of one after the other."""
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="deep_ei_jax")


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

class OneInputPass:
    """The one-input intervention of a pass's sets over `samples` per input, block of inputs by
    block: per set and block its statistics (`kernels.table_statistics` of the block's tables,
    or the samples backend's from the samples' bins) and per set its (sample, output) values
    outside out_range. Counted on the host from each chunk's bins (the noise drawn once for all
    sets, `kernels.host_single_input_chunk`; each (set, input)'s counts held until its block's
    last chunk) or on the device (`kernels.single_input_step`, the counts in a carry)."""

    def __init__(self, sampling: Sampling, counting: Counting, statistics: Statistics, key,
                 ranges, sets: Sets, samples: int, *, progress: Progress):
        self.sampling, self.counting, self.statistics = sampling, counting, statistics
        self.key, self.ranges, self.sets, self.samples = key, ranges, sets, samples
        self.progress = progress
        self.blocks: list[list] = [[] for _ in range(sets.count)]  # per set: (stats, its rows)
        self.out_of_range = np.zeros(sets.count, np.int64)
        self.held: dict = {}
        self.carry = None

    def dispatch(self, chunk: Chunk):
        sampling, counting = chunk.sampling, self.counting
        if counting.backend.on_host:
            # (under policy "drop" the host counts the out-of-range entries from the sentinels)
            return kernels.host_single_input_chunk(sampling, counting, self.sets.vmap,
                                                   counting.policy == "clip", self.key,
                                                   chunk.params, self.ranges, chunk.first,
                                                   chunk.offset, self.samples)
        if self.carry is None:
            batch = () if self.sets.vmap is None else (self.sets.batch,)  # (a single call's)
            shape = batch + (sampling.inputs_per_chunk, sampling.padded_outputs)
            self.carry = (counting.backend.new_pair_counts(shape, counting.in_bins,
                                                           counting.out_bins),
                          jnp.zeros(batch + (sampling.padded_outputs,), jnp.int32))
            if self.sets.sharding is not None:
                self.carry = jax.device_put(self.carry, self.sets.sharding)
        carry = kernels.single_input_step(sampling, counting, self.sets.vmap, chunk.steps,
                                          self.carry, chunk.keys, chunk.params, self.ranges,
                                          chunk.first, 0, self.samples, chunk.offset)
        self.carry = None if chunk.last else carry
        return carry if chunk.last else None

    def consume(self, outputs, chunk: Chunk) -> None:
        inputs = range(chunk.offset,
                       min(chunk.offset + self.sampling.inputs_per_chunk,
                           self.sampling.num_inputs))
        if self.counting.backend.on_host:
            self.add_host(chunk, inputs, *jax.device_get(outputs))
        if not chunk.last:
            return
        if self.counting.backend.on_host:
            for k in chunk.sets:
                self.blocks[k].append((self.host_block(k, inputs), slice(None)))
        else:  # each set's tables by the single call's program (a program over several sets'
            # tables at once can round differently)
            counts, outside = jax.device_get(outputs)
            if self.sets.vmap is None:  # a single call's, without the K axis
                counts, outside = counts[None], outside[None]
            for i, k in enumerate(chunk.sets):
                self.blocks[k].append((kernels.table_statistics(self.statistics, counts[i]),
                                       slice(None)))
                self.out_of_range[k] += int(outside[i].sum())
        self.held.clear()
        self.progress.update(len(chunk.sets) * len(inputs))

    def add_host(self, chunk: Chunk, inputs, x_codes, y_codes, out_of_range) -> None:
        """Adds a host chunk's bins to each (set, input)'s counts: per set a block of host tables
        [inputs_per_chunk, n_out, cells], or per (set, input) its `pairstats.SampleBins`."""
        counting = self.counting
        by_samples = counting.backend.by_samples
        hi = min(self.samples - chunk.first * SAMPLE_BLOCK, x_codes.shape[1])
        for j, k in enumerate(chunk.sets):
            if counting.policy == "clip":
                self.out_of_range[k] += int(out_of_range[j].sum())
            if not by_samples and k not in self.held:
                self.held[k] = counting.backend.new_pair_counts(
                    (self.sampling.inputs_per_chunk, self.sampling.num_outputs),
                    counting.in_bins, counting.out_bins)
            for i, a in enumerate(inputs):
                if by_samples and (k, a) not in self.held:
                    self.held[k, a] = counting.backend.new_pair_counts(
                        (1, self.sampling.num_outputs), counting.in_bins, counting.out_bins)
                counts = self.held[k, a] if by_samples else self.held[k][i:i + 1]
                counting.backend.consume(counts, (x_codes[i][None], y_codes[j, i]),
                                         counting.out_bins, 0, hi)

    def host_block(self, k: int, inputs):
        """Set k's statistics of a block of inputs from their host counts: the samples
        backend's per input, or `kernels.table_statistics` of the block's tables (the program a
        device count runs, on the same integers: the same bits)."""
        counting, statistics = self.counting, self.statistics
        held = [self.held[k, a] for a in inputs] if counting.backend.by_samples else \
            [self.held[k]]
        if counting.policy == "drop":  # the entries left out: out of range
            self.out_of_range[k] += sum(int(counting.backend.left_out(
                counts, counting.in_bins, counting.out_bins)[:len(inputs)].sum())
                for counts in held)
        if not counting.backend.by_samples:
            return kernels.table_statistics(statistics, counting.backend.tables(
                held[0], counting.in_bins, counting.out_bins))
        rows = [counting.backend.statistics(counting, statistics, counts) for counts in held]
        return tuple(np.concatenate([r[n] for r in rows]) if isinstance(rows[0][n], np.ndarray)
                     else () for n in range(4))


def one_input_pass(sampling: Sampling, counting: Counting, statistics: Statistics, key, ranges,
                   sets: Sets, samples: int, *, progress: Progress = SILENT):
    """The one-input intervention of every set (`OneInputPass`): (per set the list of its blocks'
    statistics on the host, per set its (sample, output) values outside out_range [K]);
    `progress` hears of the (set, input) pairs done."""
    one_pass = OneInputPass(sampling, counting, statistics, key, ranges, sets, samples,
                            progress=progress)
    offsets = range(0, sampling.num_inputs, sampling.inputs_per_chunk)
    drive(one_pass, work(sampling, sets, key, offsets, 0, samples), progress,
          sets.count * sampling.num_inputs, "input", f"sensitivity ({samples} samples)")
    fetched = jax.device_get([[stats for stats, _ in blocks] for blocks in one_pass.blocks])
    return [[tuple(a[rows] if isinstance(a, np.ndarray) else a for a in stats)
             for stats, (_, rows) in zip(set_stats, blocks)]
            for set_stats, blocks in zip(fetched, one_pass.blocks)], one_pass.out_of_range


def sensitivity_blocks(plan: Plan, samples: int, *, progress: Progress = SILENT):
    """A single call's one-input intervention (the sweep of one set, `one_input_pass`): ([per
    block of inputs its statistics], out-of-range count over every input and output)."""
    blocks, out_of_range = one_input_pass(plan.sampling, plan.counting, plan.statistics,
                                          plan.key, plan.ranges, one_set(plan.params), samples,
                                          progress=progress)
    return blocks[0], int(out_of_range[0])


# ---------------------------------------------------------------- a sweep's counters

class SweepCounts(AllInputsCounts):
    """A sweep's all-inputs counters: as a single call's, each set finished as soon as its last
    chunk is in (its EI and EI_parts computed by the single call's formulas, its counters let
    go). With `sorted_states` (every sample in one chunk, narrow states) EI is counted against
    the input states sorted once (`histogram.SortedInputs`), giving the count spectra a single
    call's `StateCounts` give."""

    def __init__(self, sampling: Sampling, counting: Counting, num_sets: int,
                 sorted_states: bool):
        super().__init__(sampling, counting, num_sets)
        self.sorted_states = sorted_states
        self.sorted_inputs = None
        self.parts: list = [None] * num_sets
        self.ei = np.zeros(num_sets)
        self.dropped = np.zeros(num_sets, np.int64)

    def add_groups(self, chunk: Chunk, x_bins, codes, states, hi: int) -> None:
        if not self.sorted_states:
            return super().add_groups(chunk, x_bins, codes, states, hi)
        if self.sorted_inputs is None:
            out_bits = self.sampling.num_outputs * bits_per_value(self.counting.out_bins)
            self.sorted_inputs = SortedInputs(x_bins, hi, self.counting.in_bins, out_bits)
        for i, k in enumerate(chunk.sets):
            spectra = self.sorted_inputs.spectra(codes[i], self.counting.out_bins)
            self.ei[k] = _estimators.spectra_mutual_information(*spectra)
            self.samples_out[k] = hi - int(np.dot(*spectra[0]))  # samples left out whole

    def sets_done(self, sets) -> None:
        counting = self.counting
        for k in sets:
            if counting.pairs:  # the single call's own compiled statistics: equal to it exactly
                self.parts[k] = counting.backend.statistics(counting, Statistics(),
                                                            self.pairs[k])[0]
                self.pair_out_of_range[k] = self.out_of_range(k)
                self.pairs[k] = None
            if counting.groups and not self.sorted_states:
                cx, cy, cxy = self.state_counters[k][0]
                self.ei[k] = _estimators.states_mutual_information(cx.counts(), cy.counts(),
                                                                   cxy.counts())
                self.state_counters[k] = None

    def result(self) -> dict:
        result = {}
        counting = self.counting
        if counting.pairs:
            parts = np.stack(jax.device_get(self.parts))
            result["parts"] = parts[:, :, :self.sampling.num_outputs]
            result["out_of_range"] = np.stack(jax.device_get(self.pair_out_of_range)).sum(1)
        if counting.groups:
            result["ei"] = self.ei
            result["dropped"] = self.samples_out if counting.policy == "drop" else \
                np.zeros_like(self.samples_out)
        return result
