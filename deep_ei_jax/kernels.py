"""The jitted chunk kernels: sample -> apply the chain -> bin -> count, fused; and the statistics
of count tables.

Each kernel takes the static records it depends on (`planning.Sampling`, `planning.Counting`,
`planning.Statistics`) as static arguments and no more, so that changing the estimator does not
recompile the sampling kernels. Sample block b of a chunk is drawn from fold_in(key, b) (see
`sampling`), so what a kernel computes for a sample does not depend on the chunk that holds it.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from . import estimators as _estimators
from .binning import bin_indices
from .histogram import host_bins_dtype, join_states, pack_states, state_bits
from .information import mutual_information_standard_error
from .layers import apply
from .sampling import sample_mask, single_input_noise, uniform_inputs

if TYPE_CHECKING:  # pragma: no cover
    from .planning import Counting, Ranges, Sampling, Statistics

SAMPLE_AXIS = "samples"


def outputs(sampling: Sampling, key, params, in_low, in_high, first_block, input_index=None,
            inputs=None):
    """Samples one chunk of inputs (or takes them: `inputs`, as sampled here) and runs the chain.

    Returns:
      (x [S, n_in], y [S, padded_outputs] float32, NaN in the padding).
    """
    chain = sampling.chain
    if inputs is None and sampling.single_input:
        inputs = single_input_noise(key, first_block, sampling.num_blocks, sampling.num_inputs,
                                    input_index, in_low, in_high)
    elif inputs is None:
        inputs = uniform_inputs(key, first_block, sampling.num_blocks, chain.in_shape, in_low,
                                in_high)
    y = apply(chain, params, inputs.reshape((-1,) + tuple(chain.in_shape)),
              final_activation=sampling.final_activation)
    x = inputs.reshape(inputs.shape[0], -1)
    y = y.reshape(y.shape[0], -1).astype(jnp.float32)
    pad = sampling.padded_outputs - sampling.num_outputs
    y = jnp.pad(y, ((0, 0), (0, pad)), constant_values=jnp.nan)  # padding is never in range
    return x, y


def bin_outputs(sampling: Sampling, counting: Counting, ranges: Ranges, y, offset, size):
    """Bins outputs offset..offset+size of y: (bins, in_range, countable)."""
    def take(a):
        return jax.lax.dynamic_slice_in_dim(a, offset, size, axis=a.ndim - 1)
    y_bins, y_in = bin_indices(take(y), take(ranges.out_low), take(ranges.out_high),
                               take(ranges.out_bins), counting.policy)
    countable = y_in if counting.policy == "drop" else jnp.ones_like(y_in)
    real = (offset + jnp.arange(size)) < sampling.num_outputs
    return y_bins, y_in & real, countable & real


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3), donate_argnums=4)
def step(sampling: Sampling, counting: Counting, vmap_sets: bool, steps: int, carry, keys,
         stacked_params, ranges: Ranges, first_block, start, stop, offset):
    """`steps` consecutive chunks of the all-inputs intervention of a batch of parameter sets
    (leading axis K on `carry`, `keys` and `stacked_params`; a single call is K = 1), counted on
    the device.

    Per set, adds the pairwise counts of outputs offset..offset+block_size to its `carry =
    (counts, out_of_range)` (when counting.pairs) and returns the packed joint states of
    counting.groups for the host (`packed_states`, the chunks' samples in order). The sets are
    vmapped (`vmap_sets`) or run one after another (`over_sets`); several chunks run in a
    `lax.scan` (on a CPU a scan of chunks ran about twice as fast per chunk as one call each).
    With a mesh of several devices (sampling.mesh, K = 1), device d takes blocks first_block +
    d * num_blocks ... and the integer counts are summed with a psum, so the result is the one
    device's, exactly; the joint states come back concatenated in block order.

    Returns:
      (carry, states), each with the leading axis K.
    """
    run = step_sharded if sampling.mesh is not None else step_local
    stride = sampling.num_blocks * (1 if sampling.mesh is None else sampling.mesh.size)

    def one(args):
        carry, key, params = args

        def chunk(carry, first):
            carry, states, _ = run(sampling, counting, carry, key, params, ranges, first, start,
                                   stop, offset)
            return carry, states
        if steps == 1:
            return chunk(carry, first_block)
        firsts = first_block + stride * jnp.arange(steps, dtype=jnp.int32)
        carry, states = jax.lax.scan(chunk, carry, firsts)
        return carry, jax.tree_util.tree_map(
            lambda a: a.reshape((-1,) + a.shape[2:]), states)  # the chunks' samples in order
    if vmap_sets is None:  # a single call's one set, its carry as it came
        carry, states = one((carry, keys, stacked_params))
        return carry, jax.tree_util.tree_map(lambda a: a[None], states)
    return over_sets(one, (carry, keys, stacked_params), vmap_sets)


def step_sharded(sampling: Sampling, counting: Counting, carry, key, params, ranges: Ranges,
                 first_block, start, stop, offset):
    """`step_local` over the devices of sampling.mesh (see `step`)."""
    def per_device(carry, key, params, ranges, first_block, start, stop, offset):
        device = jax.lax.axis_index(SAMPLE_AXIS)
        zero = jax.tree_util.tree_map(jnp.zeros_like, carry)
        (counts, out_of_range), states, _ = step_local(
            sampling, counting, zero, key, params, ranges,
            first_block + device * sampling.num_blocks, start, stop, offset)
        counts, out_of_range = jax.lax.psum((counts, out_of_range), SAMPLE_AXIS)
        return (carry[0] + counts, carry[1] + out_of_range), states

    replicated = jax.sharding.PartitionSpec()
    carry, states = jax.shard_map(
        per_device, mesh=sampling.mesh, in_specs=(replicated,) * 8,
        out_specs=((replicated, replicated), jax.sharding.PartitionSpec(SAMPLE_AXIS)),
        check_vma=False)(carry, key, params, ranges, first_block, start, stop, offset)
    return carry, states, ()


def step_local(sampling: Sampling, counting: Counting, carry, key, params, ranges: Ranges,
               first_block, start, stop, offset, inputs=None):
    """`step` on one device (see there); `inputs`: the chunk's inputs if already sampled."""
    x, y = outputs(sampling, key, params, ranges.in_low, ranges.in_high, first_block,
                   inputs=inputs)
    in_chunk = sample_mask(first_block, sampling.num_blocks, start, stop)
    x_bins = input_bins(counting, key, x, ranges, first_block)  # (a surrogate's: shuffled)
    counts, out_of_range = carry
    host_bins = ()
    if counting.pairs:
        y_bins, y_in, countable = bin_outputs(sampling, counting, ranges, y, offset,
                                              counting.block_size)
        valid = countable & in_chunk[:, None]
        counts, host_bins = counting.backend.count_in_kernel(counts, x_bins, y_bins, valid,
                                                             counting.in_bins, counting.out_bins)
        out_of_range = out_of_range + jnp.sum(~y_in & in_chunk[:, None], axis=0, dtype=jnp.int32)
    states = ()
    if counting.groups:
        y_bins, y_in, _ = bin_outputs(sampling, counting, ranges, y, 0, sampling.padded_outputs)
        real = jnp.arange(sampling.padded_outputs) < sampling.num_outputs
        states = packed_states(counting, x_bins, y_bins, y_in | ~real, in_chunk)
    return (counts, out_of_range), states, host_bins


SHUFFLE_STREAM = 0x5AFF1E  # folded into the key: the permutations never reuse a sample block's bits


def shuffled_rows(key, first_block, rows):
    """`rows` [S, ...] in an order drawn from (key, first_block): the chunk's samples of the inputs
    permuted relative to the outputs, which keeps both margins and breaks their dependence."""
    permutation_key = jax.random.fold_in(jax.random.fold_in(key, SHUFFLE_STREAM), first_block)
    return rows[jax.random.permutation(permutation_key, rows.shape[0])]


def packed_states(counting: Counting, x_bins, y_bins, y_in, in_chunk):
    """(samples kept [S], samples with an output out of range [S], per group its packed (x, y,
    joint) states) of one chunk: under policy "drop" a sample with any output out of range is
    left out whole."""
    sample_in = jnp.all(y_in, axis=1)
    keep = in_chunk & (sample_in if counting.policy == "drop" else True)
    states = ()
    for inputs, outputs_ in counting.groups:
        wx = pack_states(x_bins[:, list(inputs)], counting.in_bins)
        wy = pack_states(y_bins[:, list(outputs_)], counting.out_bins)
        x_state_bits = state_bits(len(inputs), counting.in_bins)
        y_state_bits = state_bits(len(outputs_), counting.out_bins)
        states += ((wx, wy, join_states(wx, x_state_bits, wy, y_state_bits)),)
    return keep, in_chunk & ~sample_in, states


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3), donate_argnums=4)
def single_input_step(sampling: Sampling, counting: Counting, vmap_sets: bool, steps: int,
                      carry, keys, stacked_params, ranges: Ranges, first_block, start, stop,
                      offset):
    """`steps` consecutive chunks (a `lax.scan` when several) of the one-input intervention for
    inputs offset..offset+inputs_per_chunk of a batch of parameter sets (leading axis K; a
    single call is K = 1), counted on the device: adds each set's [inputs, outputs, in_bins,
    out_bins] counts and out-of-range counts per output to its `carry`."""
    def one(args):
        carry, key, params = args

        def chunk(carry, first):
            def one_input(a):
                x_bins, y_bins, valid, outside = single_input_bins(
                    sampling, counting, key, params, ranges, first, start, stop, a)
                tables, _ = counting.backend.count_in_kernel(0, x_bins[:, None], y_bins, valid,
                                                             counting.in_bins, counting.out_bins)
                return tables[0], outside

            tables, outside = jax.vmap(one_input)(offset
                                                  + jnp.arange(sampling.inputs_per_chunk))
            return (carry[0] + tables, carry[1] + outside.sum(0)), None
        if steps == 1:
            return chunk(carry, first_block)[0]
        firsts = first_block + sampling.num_blocks * jnp.arange(steps, dtype=jnp.int32)
        return jax.lax.scan(chunk, carry, firsts)[0]
    if vmap_sets is None:  # a single call's one set, its carry as it came
        return one((carry, keys, stacked_params))
    return over_sets(one, (carry, keys, stacked_params), vmap_sets)


def single_input_bins(sampling: Sampling, counting: Counting, key, params, ranges: Ranges,
                      first_block, start, stop, a, noise=None):
    """Input `a`'s one-input intervention over one chunk: (its bins [S], the outputs' bins
    [S, n_out], which (sample, output) entries count, out-of-range counts per output). Inputs
    past the last are padding and count nothing. `noise`: the chunk's inputs if already drawn."""
    in_chunk = sample_mask(first_block, sampling.num_blocks, start, stop)
    real = in_chunk & (a < sampling.num_inputs)
    a = jnp.minimum(a, sampling.num_inputs - 1)
    if noise is None:
        noise = single_input_noise(key, first_block, sampling.num_blocks, sampling.num_inputs, a,
                                   ranges.in_low, ranges.in_high)
    _, y = outputs(sampling, key, params, ranges.in_low, ranges.in_high, first_block,
                   inputs=noise)
    x_bins, _ = bin_indices(noise[:, a], ranges.in_low, ranges.in_high, counting.in_bins)
    y_bins, y_in, countable = bin_outputs(sampling, counting, ranges, y, 0,
                                          sampling.padded_outputs)
    return (x_bins, y_bins, countable & real[:, None],
            jnp.sum(~y_in & real[:, None], axis=0, dtype=jnp.int32))


def over_sets(fn, stacked, vmap_sets: bool | None):
    """`fn(args)` for every parameter set of `stacked` (a pytree, leading axis K on every leaf),
    outputs stacked along K: one set runs `fn` as it is; several are vmapped where each then
    rounds as a single call does (`vmap_sets`), else run one after another (`lax.map`, each a
    single call's program). `vmap_sets` None: `stacked` is a single call's one set, without the
    K axis."""
    if vmap_sets is None:
        return jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None], fn(stacked))
    leaves = jax.tree_util.tree_leaves(stacked)
    if not leaves or leaves[0].shape[0] == 1:  # (no leaves: a parameter-free chain's one set)
        one = fn(jax.tree_util.tree_map(lambda a: a[0], stacked))
        return jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None], one)
    return jax.vmap(fn)(stacked) if vmap_sets else jax.lax.map(fn, stacked)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def host_single_input_chunk(sampling: Sampling, counting: Counting, exact_vmap: bool,
                            with_out_of_range: bool, key, stacked_params, ranges: Ranges,
                            first_block, offset, stop):
    """One chunk of the one-input intervention of inputs offset..offset+inputs_per_chunk for
    every parameter set (leading axis K; a single call is K = 1), for a host backend.

    Returns:
      (the noised inputs' bins [inputs, S] (every set sees the same noise), per set the outputs'
      bins [K, inputs, n_out, S] with `out_bins` on every entry left out, and with
      `with_out_of_range` per set the out-of-range counts per output [K, n_out], else ()).
    """
    inputs = offset + jnp.arange(sampling.inputs_per_chunk)
    noise = jax.vmap(lambda a: single_input_noise(
        key, first_block, sampling.num_blocks, sampling.num_inputs,
        jnp.minimum(a, sampling.num_inputs - 1), ranges.in_low, ranges.in_high))(inputs)

    def one(params):
        def per_input(a, x):
            x_bins, y_bins, valid, out_of_range = single_input_bins(
                sampling, counting, key, params, ranges, first_block, 0, stop, a, noise=x)
            _, (_, y_codes) = counting.backend.count_in_kernel(
                (), x_bins[:, None], y_bins, valid, counting.in_bins, counting.out_bins)
            return x_bins, y_codes, out_of_range if with_out_of_range else ()
        x_bins, y_codes, out_of_range = jax.vmap(per_input)(inputs, noise)
        return x_bins, y_codes, out_of_range.sum(0) if with_out_of_range else ()
    x_bins, y_codes, out_of_range = over_sets(one, stacked_params, exact_vmap)
    return (x_bins[0].astype(host_bins_dtype(counting.in_bins, counting.out_bins)), y_codes,
            out_of_range)


@functools.partial(jax.jit, static_argnums=(0, 1))
def host_inputs(sampling, counting, key, ranges, first_block):
    """One chunk's inputs (as a single call samples them) and their bins [n_in, S] for the host
    (in a surrogate's shuffled order with counting.shuffle); every set of a sweep sees these
    samples."""
    x = uniform_inputs(key, first_block, sampling.num_blocks, sampling.chain.in_shape,
                       ranges.in_low, ranges.in_high)
    return x, input_bins(counting, key, x, ranges, first_block).T.astype(
        host_bins_dtype(counting.in_bins, counting.out_bins))


def input_bins(counting: Counting, key, x, ranges: Ranges, first_block):
    """The bins [S, n_in] of a chunk's inputs x, shuffled relative to the outputs for a
    surrogate (counting.shuffle)."""
    x_bins, _ = bin_indices(x.reshape(x.shape[0], -1), ranges.in_low, ranges.in_high,
                            counting.in_bins)
    return shuffled_rows(key, first_block, x_bins) if counting.shuffle else x_bins


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def host_chunk(sampling, counting, exact_vmap, pack, key, x, stacked_params, ranges,
               first_block, start, stop, offset):
    """One chunk of the all-inputs intervention for every set (leading axis K; a single call is
    K = 1), for the host's counters.

    Takes the chunk's inputs `x` (`host_inputs`) and returns per set the bins [block, S] of its
    outputs offset..offset+block_size with the sentinel `out_bins` on every entry a single call
    leaves out (outside samples [start, stop); outside out_range under policy "drop"), their
    out-of-range counts [block] under policy "clip" and, with `pack`, its packed states of
    counting.groups (`packed_states`). Each set's layer runs exactly as in a single call.
    """
    in_chunk = sample_mask(first_block, sampling.num_blocks, start, stop)

    def one(params):
        _, y = outputs(sampling, key, params, ranges.in_low, ranges.in_high, first_block,
                       inputs=x)
        y_bins, y_in, countable = bin_outputs(sampling, counting, ranges, y, offset,
                                              counting.block_size)
        codes = jnp.where(countable & in_chunk[:, None], y_bins, counting.out_bins)
        # under "drop" the host counts these from the sentinels (a column sum here would cost
        # as much as the rest of the chunk)
        out_of_range = jnp.sum(~y_in & in_chunk[:, None], axis=0, dtype=jnp.int32) \
            if counting.policy == "clip" else ()
        states = ()
        if pack:
            y_bins, y_in, _ = bin_outputs(sampling, counting, ranges, y, 0,
                                          sampling.padded_outputs)
            real = jnp.arange(sampling.padded_outputs) < sampling.num_outputs
            states = packed_states(counting, input_bins(counting, key, x, ranges, first_block),
                                   y_bins, y_in | ~real, in_chunk)
        return codes.T.astype(host_bins_dtype(counting.in_bins, counting.out_bins)), \
            out_of_range, states
    return over_sets(one, stacked_params, exact_vmap)


@functools.partial(jax.jit, static_argnums=0)
def extrema_step(sampling: Sampling, key, params, in_low, in_high, first_block, stop, offset):
    """Per-output min and max over the samples below `stop` of one chunk (NaN ignored)."""
    in_chunk = sample_mask(first_block, sampling.num_blocks, 0, stop)

    def extrema(input_index):
        _, y = outputs(sampling, key, params, in_low, in_high, first_block, input_index)
        y = y[:, :sampling.num_outputs]
        keep = in_chunk[:, None] & ~jnp.isnan(y)
        return (jnp.min(jnp.where(keep, y, jnp.inf), axis=0),
                jnp.max(jnp.where(keep, y, -jnp.inf), axis=0))

    if not sampling.single_input:
        return extrema(None)
    inputs = jnp.minimum(offset + jnp.arange(sampling.inputs_per_chunk), sampling.num_inputs - 1)
    lows, highs = jax.vmap(extrema)(inputs)
    return lows.min(0), highs.max(0)


def _table_statistics(statistics: Statistics, tables):
    mi = _estimators.mutual_information(tables, statistics.estimator)
    pvalues = _estimators.g_test_pvalues(tables) if statistics.significance else ()
    errors = mutual_information_standard_error(tables) if statistics.pair_errors else ()
    return mi, pvalues, errors, _estimators.miller_madow_bias(tables)


@functools.partial(jax.jit, static_argnums=(0, 1))
def block_statistics(counting: Counting, statistics: Statistics, counts):
    """(MI [n_in, block] by statistics.estimator, G-test p-values or (), delta-method standard
    errors or (), the estimated plug-in bias per pair [n_in, block]) of one block's counts as
    counting.backend holds them, on the device (fused: no table-sized temporaries)."""
    return _table_statistics(statistics, counting.backend.tables(counts, counting.in_bins,
                                                                 counting.out_bins))


@functools.partial(jax.jit, static_argnums=0)
def table_statistics(statistics: Statistics, tables):
    """`block_statistics` of tables int32 [n_in, block, in_bins, out_bins]."""
    return _table_statistics(statistics, tables)
