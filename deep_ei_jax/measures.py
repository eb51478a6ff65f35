"""The measures, each one pipeline: sample -> apply -> bin -> count -> information.

Every public function takes a PRNG key first, a static `Chain` and its params, and returns
`(value, Info)`. The counting runs in jit-compiled chunks (sampling, the layer, binning and counting
fused); the Python around them only schedules chunks, output blocks and adaptive steps, and syncs
with the host once per chunk at most.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from . import _checks, adaptive, exact
from .binning import POLICIES, bin_indices
from .histogram import (METHODS, StateCounts, add_pairwise_counts_host, bits_per_value,
                        default_method, host_bins_dtype, join_states, pack_states, pairwise_counts,
                        state_bits)
from . import estimators as _estimators
from .information import mutual_information_standard_error
from .layers import Chain, apply
from .sampling import SAMPLE_BLOCK, sample_mask, single_input_noise, uniform_inputs

DEFAULT_MEMORY_BUDGET = 256 * 2 ** 20  # bytes of count tables held at once
DEFAULT_STATE_MEMORY_BUDGET = 8 * 2 ** 30  # bytes the distinct joint states may take on the host
_SCATTER_ENTRIES = 2 ** 23             # joint indices per chunk for the scatter kernel
_DYNAMIC_PROBE = adaptive.FIRST_STEP   # samples that fix a dynamic out_range
_MAX_BLOCKS_PER_CHUNK = 64
SAMPLE_AXIS = "samples"


class Info(NamedTuple):
    """Facts about a measurement.

    Attributes:
      samples: samples drawn per intervention (per input for sensitivity).
      dropped: values left out of the counts: (sample, output) entries for pairwise measures,
        whole samples for vector EI and groups. 0 under policy "clip".
      out_of_range: output values that fell outside out_range (dropped or clipped), counted as
        `dropped` is.
      total: what `dropped` is out of.
      converged: whether the adaptive rule was met (None for a fixed sample count).
      estimates: ((samples, value), ...) at each adaptive or extrapolation step.
      out_low, out_high, out_bins: the output binning used, per output neuron.
      method: the counting kernel used, or "exact".
      estimator: "plugin", "miller_madow" or "jackknife".
      standard_error, confidence_interval: with `error_bars=k`, the batch-means standard error of
        the value (the spread of its estimates on k disjoint batches of the samples / sqrt(k)) and
        a 95% interval value -+ t(k-1) * standard_error; None otherwise.
      pvalues, qvalues: with `significance=True` (matrices), per-edge G-test p-values against
        independence and their Benjamini-Hochberg q-values; None otherwise.
    """

    samples: int
    dropped: int
    out_of_range: int
    total: int
    converged: bool | None
    estimates: tuple
    out_low: np.ndarray
    out_high: np.ndarray
    out_bins: np.ndarray
    method: str = ""
    estimator: str = "plugin"
    standard_error: Any = None
    confidence_interval: Any = None
    pvalues: Any = None
    qvalues: Any = None

    @property
    def dropped_fraction(self) -> float:
        return self.dropped / self.total if self.total else 0.0


class _Static(NamedTuple):
    """Everything that fixes the compiled program (hashable)."""

    chain: Chain
    final_activation: Any
    num_inputs: int
    num_outputs: int
    padded_outputs: int
    in_bins: int
    out_bins: int          # the table size: the largest bin count of any output
    policy: str
    method: str
    num_blocks: int        # sample blocks per chunk
    single_input: bool     # sensitivity intervention (one input noised) or all inputs
    inputs_per_chunk: int  # single_input: inputs handled per chunk
    block_size: int        # outputs (or, single_input, inputs) per count table block
    pairs: bool            # count pairwise tables
    groups: tuple          # ((input indices), (output indices)) whose joint states are packed
    mesh: Any = None       # a 1-d jax.sharding.Mesh over SAMPLE_AXIS when sharding chunks
    estimator: str = "plugin"
    significance: bool = False  # per-edge G-test p-values alongside MI
    pair_errors: bool = False   # per-edge delta-method standard errors alongside MI


class _Ranges(NamedTuple):
    """The binning, traced: changing a range does not recompile."""

    in_low: jax.Array
    in_high: jax.Array
    out_low: jax.Array   # [padded_outputs]
    out_high: jax.Array
    out_bins: jax.Array  # int32 [padded_outputs]


# ---------------------------------------------------------------- the fused chunk kernels

def _outputs(static: _Static, key, params, in_low, in_high, first_block, input_index=None,
             inputs=None):
    """Samples one chunk of inputs (or takes them: `inputs`, as sampled here) and runs the chain:
    (x [S, n_in], y [S, padded_outputs])."""
    chain = static.chain
    if inputs is None and static.single_input:
        inputs = single_input_noise(key, first_block, static.num_blocks, static.num_inputs,
                                    input_index, in_low, in_high)
    elif inputs is None:
        inputs = uniform_inputs(key, first_block, static.num_blocks, chain.in_shape, in_low,
                                in_high)
    y = apply(chain, params, inputs.reshape((-1,) + tuple(chain.in_shape)),
              final_activation=static.final_activation)
    x = inputs.reshape(inputs.shape[0], -1)
    y = y.reshape(y.shape[0], -1).astype(jnp.float32)
    pad = static.padded_outputs - static.num_outputs
    y = jnp.pad(y, ((0, 0), (0, pad)), constant_values=jnp.nan)  # padding is never in range
    return x, y


def _bin_outputs(static: _Static, ranges: _Ranges, y, offset, size):
    """Bins outputs offset..offset+size of y: (bins, in_range, countable)."""
    take = lambda a: jax.lax.dynamic_slice_in_dim(a, offset, size, axis=a.ndim - 1)
    y_bins, y_in = bin_indices(take(y), take(ranges.out_low), take(ranges.out_high),
                               take(ranges.out_bins), static.policy)
    countable = y_in if static.policy == "drop" else jnp.ones_like(y_in)
    real = (offset + jnp.arange(size)) < static.num_outputs
    return y_bins, y_in & real, countable & real


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def _step(static: _Static, carry, key, params, ranges: _Ranges, first_block, start, stop, offset):
    """One chunk of the all-inputs intervention: num_blocks sample blocks on each device.

    Adds the pairwise counts of outputs offset..offset+block_size to `carry = (counts, out_of_range)`
    (when static.pairs) and returns the packed joint states of static.groups for the host. With
    the host ("numba") counter, returns the bins for it instead: ([n_in, S], [block, S]) with the
    sentinel `out_bins` where an entry is left out.

    With a mesh of several devices (static.mesh), device d takes blocks
    first_block + d * num_blocks ... and the integer counts are summed with a psum, so the result
    is the one device's, exactly; the joint states come back concatenated in block order.
    """
    if static.mesh is None:
        return _step_local(static, carry, key, params, ranges, first_block, start, stop, offset)

    def per_device(carry, key, params, ranges, first_block, start, stop, offset):
        device = jax.lax.axis_index(SAMPLE_AXIS)
        zero = jax.tree_util.tree_map(jnp.zeros_like, carry)
        (counts, out_of_range), states, _ = _step_local(
            static, zero, key, params, ranges, first_block + device * static.num_blocks, start,
            stop, offset)
        counts, out_of_range = jax.lax.psum((counts, out_of_range), SAMPLE_AXIS)
        return (carry[0] + counts, carry[1] + out_of_range), states

    replicated = jax.sharding.PartitionSpec()
    carry, states = jax.shard_map(
        per_device, mesh=static.mesh, in_specs=(replicated,) * 8,
        out_specs=((replicated, replicated), jax.sharding.PartitionSpec(SAMPLE_AXIS)),
        check_vma=False)(carry, key, params, ranges, first_block, start, stop, offset)
    return carry, states, ()


def _step_local(static: _Static, carry, key, params, ranges: _Ranges, first_block, start, stop,
                offset, inputs=None):
    """`_step` on one device (see there); `inputs`: the chunk's inputs if already sampled."""
    x, y = _outputs(static, key, params, ranges.in_low, ranges.in_high, first_block,
                    inputs=inputs)
    in_chunk = sample_mask(first_block, static.num_blocks, start, stop)
    x_bins, _ = bin_indices(x, ranges.in_low, ranges.in_high, static.in_bins)
    counts, out_of_range = carry
    host_bins = ()
    if static.pairs:
        y_bins, y_in, countable = _bin_outputs(static, ranges, y, offset, static.block_size)
        valid = countable & in_chunk[:, None]
        if static.method == "numba":
            dtype = host_bins_dtype(static.in_bins, static.out_bins)
            host_bins = (x_bins.T.astype(dtype),
                         jnp.where(valid, y_bins, static.out_bins).T.astype(dtype))
        else:
            counts = counts + pairwise_counts(x_bins, y_bins, valid, static.in_bins,
                                              static.out_bins, static.method)
        out_of_range = out_of_range + jnp.sum(~y_in & in_chunk[:, None], axis=0, dtype=jnp.int32)
    states = ()
    if static.groups:
        y_bins, y_in, _ = _bin_outputs(static, ranges, y, 0, static.padded_outputs)
        real = jnp.arange(static.padded_outputs) < static.num_outputs
        states = _packed_states(static, x_bins, y_bins, y_in | ~real, in_chunk)
    return (counts, out_of_range), states, host_bins


def _packed_states(static: _Static, x_bins, y_bins, y_in, in_chunk):
    """(samples kept [S], samples with an output out of range [S], per group its packed (x, y,
    joint) states) of one chunk: under policy "drop" a sample with any output out of range is
    left out whole."""
    sample_in = jnp.all(y_in, axis=1)
    keep = in_chunk & (sample_in if static.policy == "drop" else True)
    states = ()
    for inputs, outputs in static.groups:
        wx = pack_states(x_bins[:, list(inputs)], static.in_bins)
        wy = pack_states(y_bins[:, list(outputs)], static.out_bins)
        x_state_bits = state_bits(len(inputs), static.in_bins)
        y_state_bits = state_bits(len(outputs), static.out_bins)
        states += ((wx, wy, join_states(wx, x_state_bits, wy, y_state_bits)),)
    return keep, in_chunk & ~sample_in, states


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def _single_input_step(static: _Static, carry, key, params, ranges: _Ranges, first_block, start,
                       stop, offset):
    """One chunk of the one-input intervention for inputs offset..offset+inputs_per_chunk.

    Adds their [inputs, outputs, in_bins, out_bins] counts to `carry`.
    """
    def one_input(a):
        x_bins, y_bins, valid, out_of_range = _single_input_bins(
            static, key, params, ranges, first_block, start, stop, a)
        counts = pairwise_counts(x_bins[:, None], y_bins, valid, static.in_bins,
                                 static.out_bins, static.method)[0]
        return counts, out_of_range

    counts, out_of_range = jax.vmap(one_input)(offset + jnp.arange(static.inputs_per_chunk))
    return carry[0] + counts, carry[1] + out_of_range.sum(0)


def _single_input_bins(static: _Static, key, params, ranges: _Ranges, first_block, start, stop,
                       a, noise=None):
    """Input `a`'s one-input intervention over one chunk: (its bins [S], the outputs' bins
    [S, n_out], which (sample, output) entries count, out-of-range counts per output). Inputs
    past the last are padding and count nothing. `noise`: the chunk's inputs if already drawn."""
    in_chunk = sample_mask(first_block, static.num_blocks, start, stop)
    real = in_chunk & (a < static.num_inputs)
    a = jnp.minimum(a, static.num_inputs - 1)
    if noise is None:
        noise = single_input_noise(key, first_block, static.num_blocks, static.num_inputs, a,
                                   ranges.in_low, ranges.in_high)
    _, y = _outputs(static, key, params, ranges.in_low, ranges.in_high, first_block,
                    inputs=noise)
    x_bins, _ = bin_indices(noise[:, a], ranges.in_low, ranges.in_high, static.in_bins)
    y_bins, y_in, countable = _bin_outputs(static, ranges, y, 0, static.padded_outputs)
    return (x_bins, y_bins, countable & real[:, None],
            jnp.sum(~y_in & real[:, None], axis=0, dtype=jnp.int32))


@functools.partial(jax.jit, static_argnums=0)
def _extrema_step(static: _Static, key, params, in_low, in_high, first_block, stop, offset):
    """Per-output min and max over the samples below `stop` of one chunk (NaN ignored)."""
    in_chunk = sample_mask(first_block, static.num_blocks, 0, stop)

    def extrema(input_index):
        _, y = _outputs(static, key, params, in_low, in_high, first_block, input_index)
        y = y[:, :static.num_outputs]
        keep = in_chunk[:, None] & ~jnp.isnan(y)
        return (jnp.min(jnp.where(keep, y, jnp.inf), axis=0),
                jnp.max(jnp.where(keep, y, -jnp.inf), axis=0))

    if not static.single_input:
        return extrema(None)
    inputs = jnp.minimum(offset + jnp.arange(static.inputs_per_chunk), static.num_inputs - 1)
    lows, highs = jax.vmap(extrema)(inputs)
    return lows.min(0), highs.max(0)


# ---------------------------------------------------------------- host-side drivers

def _first_blocks(start: int, stop: int, num_blocks: int):
    """First sample-block index of each chunk covering samples [start, stop)."""
    return range(start // SAMPLE_BLOCK, -(-stop // SAMPLE_BLOCK), num_blocks)


def _chunks(static: _Static, start: int, stop: int):
    """(first block, static) of each chunk covering samples [start, stop). On one device the last
    chunk shrinks to the smallest power of two of blocks that covers what is left, so little is
    computed past `stop` (and at most log2(num_blocks) more shapes are ever compiled)."""
    end = -(-int(stop) // SAMPLE_BLOCK)
    for first in _first_blocks(start, stop, static.num_blocks * _num_devices(static)):
        left = int(end - first)
        if static.mesh is None and left < static.num_blocks:
            yield first, static._replace(num_blocks=1 << (left - 1).bit_length())
        else:
            yield first, static


def _num_devices(static: _Static) -> int:
    return 1 if static.mesh is None else static.mesh.size


def sample_mesh(devices=None):
    """A 1-d mesh over `devices` for sharding samples, or None for one device.

    Args:
      devices: None (every local device of the default backend), an int (the first n of them),
        or a sequence of jax Devices.
    """
    pinned = jax.config.jax_default_device  # e.g. set by `with jax.default_device(d)`
    if isinstance(pinned, str):
        pinned = jax.local_devices(backend=pinned)[0]
    available = jax.local_devices(backend=pinned.platform if pinned is not None else None)
    if devices is None and pinned is None and jax.process_count() > 1:
        chosen = jax.devices()  # multi-process (jax.distributed): every process's devices
    elif devices is None:
        chosen = [pinned] if pinned is not None else available
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise ValueError(f"devices must be between 1 and the {len(available)} local "
                             f"device(s); got {devices}")
        chosen = available[:devices]
    else:
        chosen = list(devices) if isinstance(devices, (list, tuple)) else []
        if not chosen or not all(isinstance(d, jax.Device) for d in chosen):
            raise TypeError(f"devices must be None, an int or a non-empty sequence of jax "
                            f"Devices; got {devices!r}")
    if len(chosen) == 1:
        return None
    return jax.sharding.Mesh(np.array(chosen), (SAMPLE_AXIS,))


def _blocks_per_chunk(samples: int, rows_per_sample: int, cap: int) -> int:
    """A power of two of sample blocks per chunk: enough for `samples`, within `cap` work rows."""
    need = -(-samples // SAMPLE_BLOCK)
    fit = max(1, cap // max(1, rows_per_sample * SAMPLE_BLOCK))
    blocks = min(need, fit, _MAX_BLOCKS_PER_CHUNK)
    return 1 << (blocks.bit_length() - 1) if blocks & (blocks - 1) else blocks


class _Setup(NamedTuple):
    key: jax.Array
    params: Any
    static: _Static
    ranges: _Ranges
    out_low: np.ndarray
    out_high: np.ndarray
    out_bins: np.ndarray


def _num_flat(shape) -> int:
    return int(np.prod(shape)) if len(shape) else 1


def _prepare(key, chain: Chain, params, *, in_range, out_range, in_bins, out_bins, policy, method,
             activation, samples_hint: int, single_input: bool, pairs: bool, groups: tuple,
             memory_budget: int, devices=None, estimator: str = "plugin",
             significance: bool = False, pair_errors: bool = False) -> _Setup:
    """Checks arguments, fixes the output binning (probing outputs if dynamic) and chunk shapes."""
    if not isinstance(chain, Chain):
        raise TypeError(f"chain must be a deep_ei_jax.Chain; got {type(chain).__name__}")
    if not isinstance(key, jax.Array) or not (jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                                              or key.shape == (2,)):
        raise TypeError(f"key must be a JAX PRNG key (jax.random.key(seed)); got {key!r}")
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    in_low, in_high = _checks.check_range("in_range", in_range)
    out_range = _checks.check_range("out_range", out_range, allow_dynamic=True)
    in_bins = _checks.check_bins("in_bins", in_bins)
    out_bins = _checks.check_bins("out_bins", out_bins, allow_dynamic=True)
    _checks.check_choice("policy", policy, POLICIES)
    _checks.check_choice("method", method, METHODS)
    _checks.check_choice("estimator", estimator, _estimators.ESTIMATORS)
    method = default_method() if method == "auto" else method
    mesh = None if single_input else sample_mesh(devices)  # sensitivity runs on one device
    if (single_input or mesh is not None) and method == "numba":
        # sensitivity counts few samples per input, and sharded chunks count on their devices:
        # XLA's kernel serves both
        method = "scatter"
    _checks.check_params(chain, params)  # structure, shapes, finite values: before any work
    _checks.check_positive_int("memory_budget", memory_budget)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)
    from .layers import out_shape
    num_inputs = _num_flat(chain.in_shape)
    num_outputs = _num_flat(out_shape(chain, params))
    if not (isinstance(groups, tuple) and not groups):  # () is "no groups"; [] or None is not
        groups = _checks.check_groups(groups, num_inputs, num_outputs)

    in_width = (in_high - in_low) / in_bins
    base = _Static(chain=chain, final_activation=activation, num_inputs=num_inputs,
                   num_outputs=num_outputs, padded_outputs=num_outputs, in_bins=in_bins,
                   out_bins=2, policy=policy, method=method, num_blocks=1,
                   single_input=single_input, inputs_per_chunk=1, block_size=1, pairs=pairs,
                   groups=groups, mesh=mesh, estimator=estimator,
                   significance=bool(significance), pair_errors=pair_errors)
    if out_range == "dynamic":
        low, high = _probe_extrema(key, params, base, in_low, in_high,
                                   min(samples_hint, _DYNAMIC_PROBE))
    else:
        low = np.full(num_outputs, out_range[0])
        high = np.full(num_outputs, out_range[1])
    if out_bins == "dynamic":
        bins = np.floor((high - low) / in_width).astype(np.int64) + 1
        high = low + bins * in_width
    else:
        bins = np.full(num_outputs, out_bins, np.int64)
        high = np.where(high > low, high, low + in_width)  # a constant output: one bin's width
    table_bins = int(bins.max())

    cell_bytes = 4 * in_bins * table_bins
    if single_input:
        per_unit = num_outputs * cell_bytes  # one input's tables
        units = num_inputs
    else:
        per_unit = num_inputs * cell_bytes if pairs else 0  # one output's tables
        units = num_outputs
    if per_unit > memory_budget:
        what = "input's" if single_input else "output's"
        raise ValueError(
            f"one {what} count tables need {per_unit / 2**20:.1f} MiB "
            f"({num_inputs} inputs x {num_outputs} outputs, {in_bins} x {table_bins} bins), more "
            f"than memory_budget={memory_budget / 2**20:.1f} MiB; use fewer bins or raise "
            f"memory_budget")
    block = units if per_unit == 0 else max(1, min(units, memory_budget // per_unit))
    if single_input:
        rows = (num_inputs + num_outputs) * block
        blocks = _blocks_per_chunk(samples_hint, rows, 2 ** 24)
        static = base._replace(inputs_per_chunk=block, block_size=block, num_blocks=blocks)
    else:
        if not pairs:
            block = 1
        elif method != "numba":  # the device kernels hold a [chunk, n_in, block] index array
            block = min(block, max(1, _SCATTER_ENTRIES // (num_inputs * SAMPLE_BLOCK)))
        rows = num_inputs * block if pairs and method != "numba" else num_inputs + num_outputs
        blocks = _blocks_per_chunk(samples_hint, max(rows, num_inputs + num_outputs),
                                   _SCATTER_ENTRIES)
        static = base._replace(block_size=block, num_blocks=blocks)
    padded = -(-num_outputs // static.block_size) * static.block_size if not single_input \
        else num_outputs
    static = static._replace(padded_outputs=padded, out_bins=table_bins)
    pad = padded - num_outputs
    ranges = _Ranges(in_low=jnp.float32(in_low), in_high=jnp.float32(in_high),
                     out_low=jnp.asarray(np.pad(low, (0, pad)), jnp.float32),
                     out_high=jnp.asarray(np.pad(high, (0, pad), constant_values=1.0), jnp.float32),
                     out_bins=jnp.asarray(np.pad(bins, (0, pad), constant_values=2), jnp.int32))
    return _Setup(key, params, static, ranges, low, high, bins)


def _probe_extrema(key, params, base: _Static, in_low, in_high, samples):
    """Per-output min and max over the first `samples` samples (all interventions of single_input)."""
    per_chunk = 64 if base.single_input else 1
    static = base._replace(num_blocks=_blocks_per_chunk(samples, base.num_inputs * per_chunk,
                                                        2 ** 24),
                           inputs_per_chunk=per_chunk)
    lows, highs = [], []
    offsets = range(0, base.num_inputs, per_chunk) if base.single_input else [0]
    for offset in offsets:
        for first in _first_blocks(0, samples, static.num_blocks):
            low, high = _extrema_step(static, key, params, jnp.float32(in_low),
                                      jnp.float32(in_high), first, samples, offset)
            lows.append(low)
            highs.append(high)
    low = np.min(np.stack(jax.device_get(lows)), 0).astype(np.float64)
    high = np.max(np.stack(jax.device_get(highs)), 0).astype(np.float64)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise ValueError("out_range='dynamic' found outputs that are NaN or infinite for every "
                         "probe sample; check the layer's weights")
    return low, high


def _new_pair_carry(static: _Static):
    """Empty counts of one output block: int32 on the device, or with the "numba" counter int32
    host tables with a spare column per row (`_tables` views either as [n_in, block, Bx, By])."""
    if static.method == "numba":
        counts = np.zeros((static.num_inputs, static.block_size,
                           static.in_bins * (static.out_bins + 1)), np.int32)
    else:
        counts = jnp.zeros((static.num_inputs, static.block_size, static.in_bins,
                            static.out_bins), jnp.int32)
    return counts, jnp.zeros(static.block_size, jnp.int32)


def pipelined(chunks, dispatch, consume) -> None:
    """For each chunk, `dispatch(chunk)` starts its (asynchronous) device work, and only then does
    `consume(result, chunk)` take in the previous chunk's result on the host: host counting
    overlaps the device's next chunk."""
    pending = None
    for chunk in chunks:
        result = dispatch(chunk)
        if pending is not None:
            consume(*pending)
        pending = (result, chunk)
    if pending is not None:
        consume(*pending)


def _run_chunks(setup: _Setup, start: int, stop: int, *, offset: int = 0, pair_carry=None,
                counters=None):
    """Runs the chunks covering samples [start, stop) once, feeding every counter they serve.

    Args:
      pair_carry: when static.pairs, the counts of output block `offset` (from `_new_pair_carry`),
        added to.
      counters: when static.groups, one (x, y, joint) triplet of `StateCounts` per group.

    Returns:
      (pair_carry, samples dropped by the whole-sample rule, samples with an out-of-range output).
      Host work for a chunk (numba counting, state merging) overlaps the next chunk's device work.
    """
    static = setup.static
    host_pairs = static.pairs and static.method == "numba"
    if pair_carry is None:
        pair_carry = (jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
    host_counts = pair_carry[0] if host_pairs else None
    device_carry = (jnp.zeros((), jnp.int32), pair_carry[1]) if host_pairs else pair_carry
    out_of_range = 0

    def dispatch(first, chunk_static):
        nonlocal device_carry
        device_carry, states, bins = _step(chunk_static, device_carry, setup.key, setup.params,
                                           setup.ranges, first, start, stop, offset)
        return states, bins

    def consume(outputs, chunk):
        nonlocal out_of_range
        (states, bins), (first, _) = outputs, chunk
        if bins:
            # only the chunk's rows in [start, stop) are counted (the others carry the sentinel)
            chunk_start = first * SAMPLE_BLOCK
            add_pairwise_counts_host(*jax.device_get(bins), static.out_bins, host_counts,
                                     max(start - chunk_start, 0),
                                     min(stop - chunk_start, bins[0].shape[1]))
        if states:
            if jax.process_count() > 1:  # the chunk's states are spread over the processes
                states = multihost_utils.process_allgather(states, tiled=True)
            keep, out, groups = jax.device_get(states)
            out_of_range += int(out.sum())
            for triplet, words in zip(counters, groups):
                for counter, group_words in zip(triplet, words):
                    counter.add(group_words, keep)

    pipelined(_chunks(static, start, stop), lambda chunk: dispatch(*chunk), consume)
    if host_pairs:
        pair_carry = (host_counts, device_carry[1])
    else:
        pair_carry = device_carry
    dropped = out_of_range if static.policy == "drop" else 0
    return pair_carry, dropped, out_of_range


def _pair_block_counts(setup: _Setup, offset: int, start: int, stop: int, carry=None):
    """Adds samples [start, stop) to the counts of output block `offset`; returns the carry."""
    carry = _new_pair_carry(setup.static) if carry is None else carry
    return _run_chunks(setup, start, stop, offset=offset, pair_carry=carry)[0]


def _tables(static: _Static, counts):
    """Counts as [n_in, block, in_bins, out_bins], whichever counter made them."""
    if static.method != "numba":
        return counts
    shape = (static.num_inputs, static.block_size, static.in_bins, static.out_bins + 1)
    return counts.reshape(shape)[..., :static.out_bins]


@functools.partial(jax.jit, static_argnums=0)
def _block_statistics(static: _Static, counts):
    """(MI [n_in, block] by static.estimator, G-test p-values or (), delta-method standard errors
    or ()) of one block's counts, on the device (fused: no table-sized temporaries)."""
    tables = _tables(static, counts)
    mi = _estimators.mutual_information(tables, static.estimator)
    pvalues = _estimators.g_test_pvalues(tables) if static.significance else ()
    errors = mutual_information_standard_error(tables) if static.pair_errors else ()
    return mi, pvalues, errors


class _PairwiseCounts:
    """EI_parts tables over the output blocks of a layer, grown sample range by sample range.

    Tables are kept between calls when they all fit `memory_budget`; otherwise each call recounts
    its blocks from sample 0 (the same samples, so the same answer).
    """

    def __init__(self, setup: _Setup, memory_budget: int):
        self.setup = setup
        static = setup.static
        table_bytes = 4 * static.num_inputs * static.padded_outputs * static.in_bins * static.out_bins
        self.keep = table_bytes <= memory_budget
        self.carries: dict[int, Any] = {}
        self.counted = 0

    def matrix(self, stop: int):
        """(EI_parts matrix [n_in, n_out], out-of-range counts per output, p-values or None) over
        samples [0, stop)."""
        static = self.setup.static
        results = []
        for offset in range(0, static.padded_outputs, static.block_size):
            if self.keep:
                carry = _pair_block_counts(self.setup, offset, self.counted, stop,
                                           self.carries.get(offset))
                self.carries[offset] = carry
            else:
                carry = _pair_block_counts(self.setup, offset, 0, stop)
            results.append((_block_statistics(static, carry[0]), carry[1]))
        self.counted = stop
        return _assemble_blocks(static, results)

    def batch_matrix(self, start: int, stop: int) -> np.ndarray:
        """The EI_parts matrix of samples [start, stop) alone (for batch-means error bars)."""
        static = self.setup.static
        results = [(_block_statistics(static, _pair_block_counts(self.setup, offset, start,
                                                                 stop)[0]), None)
                   for offset in range(0, static.padded_outputs, static.block_size)]
        return _assemble_blocks(static, results)[0]


def _assemble_blocks(static: _Static, results):
    """Joins per-block ((mi, p-values, standard errors), out-of-range) results into layer-wide
    arrays: (mi, out-of-range or None, p-values or None, standard errors or None)."""
    results = jax.device_get(results)
    n_out = static.num_outputs

    def join(index, present=True):
        if not present:
            return None
        return np.concatenate([r[0][index] for r in results], axis=1)[:, :n_out].astype(
            np.float64)
    oor = (np.concatenate([r[1] for r in results])[:n_out].astype(np.int64)
           if results[0][1] is not None else None)
    return join(0), oor, join(1, static.significance), join(2, static.pair_errors)


def _error_bars(batch_values, value):
    """(standard error, 95% interval) by batch means over k disjoint batches (Student t)."""
    batch_values = np.asarray(batch_values, np.float64)
    k = batch_values.shape[0]
    error = np.asarray(_estimators.batch_means_standard_error(batch_values))
    t = _T975[min(k - 1, len(_T975)) - 1] if k - 1 <= len(_T975) else 1.96
    lower, upper = value - t * error, value + t * error
    return error, ((float(lower), float(upper)) if np.ndim(lower) == 0 else (lower, upper))


# Student t 0.975 quantiles for 1..30 degrees of freedom (past 30 the normal 1.96 is within 4%).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def _batch_edges(samples: int, batches: int):
    _checks.check_samples("error_bars", batches) if batches else None
    if batches == 1 or batches > samples:
        raise ValueError(f"error_bars must be 0 (off) or between 2 and samples ({samples}); "
                         f"got {batches}")
    edges = np.linspace(0, samples, batches + 1).astype(int)
    return list(zip(edges[:-1], edges[1:]))


def _state_bytes_per_sample(static: _Static) -> int:
    """Host bytes one sample's distinct states can take: per group its packed words (4 bytes
    each) for x, y and the joint, and an int64 count for each."""
    per_sample = 0
    for inputs, outputs in static.groups:
        wx = -(-len(inputs) // (32 // bits_per_value(static.in_bins)))
        wy = -(-len(outputs) // (32 // bits_per_value(static.out_bins)))
        per_sample += 4 * (2 * wx + 2 * wy) + 3 * 8
    return per_sample


def _check_state_memory(static: _Static, samples: int, budget: int) -> None:
    """Refuses, before any work, a fixed-size joint-state count that could outgrow `budget`."""
    per_sample = _state_bytes_per_sample(static)
    need = per_sample * samples
    if need > budget:
        raise ValueError(
            f"counting the joint states of {samples} samples may need {need / 2**30:.1f} GiB "
            f"({per_sample} bytes per sample over {len(static.groups)} group(s)), more than "
            f"state_memory_budget={budget / 2**30:.1f} GiB; use fewer samples or raise it")


def _state_counters(static: _Static):
    counters = []
    for inputs, outputs in static.groups:
        bx = state_bits(len(inputs), static.in_bins)
        by = state_bits(len(outputs), static.out_bins)
        joint = bx + by if (bx <= 32 and by <= 32 and bx + by <= 32) else max(bx + by, 33)
        counters.append((StateCounts(bx), StateCounts(by), StateCounts(joint)))
    return counters


def _warn_dropped(info: Info, what: str):
    if info.dropped_fraction > 0.01:
        warnings.warn(
            f"{info.dropped} of {info.total} {what} ({100 * info.dropped_fraction:.1f}%) had an "
            f"output outside out_range and were dropped; widen out_range, use "
            f"out_range='dynamic', or policy='clip'", RuntimeWarning, stacklevel=3)


def _info(setup, samples, dropped, out_of_range, total, converged, estimates, **extra):
    return Info(samples=samples, dropped=dropped, out_of_range=out_of_range, total=total,
                converged=converged, estimates=tuple(estimates), out_low=setup.out_low,
                out_high=setup.out_high, out_bins=setup.out_bins, method=setup.static.method,
                estimator=setup.static.estimator, **extra)


# ---------------------------------------------------------------- public measures

def _common_kwargs(in_range, out_range, in_bins, out_bins, policy, method, activation,
                   memory_budget, devices=None):
    return dict(in_range=in_range, out_range=out_range, in_bins=in_bins, out_bins=out_bins,
                policy=policy, method=method, activation=activation, memory_budget=memory_budget,
                devices=devices)


def ei_parts_matrix(key, chain: Chain, params, *, in_range=(0.0, 1.0), out_range=(0.0, 1.0),
                    in_bins: int = 64, out_bins=64, samples: int | None = None,
                    threshold: float = 0.05, extrapolate: bool = False, policy: str = "drop",
                    method: str = "auto", activation=None, max_samples: int = 2 ** 27,
                    memory_budget: int = DEFAULT_MEMORY_BUDGET, devices=None,
                    estimator: str = "plugin", error_bars: int = 0, significance: bool = False,
                    grid_step: float = exact.DEFAULT_GRID_STEP, target_error: float | None = None):
    """The EI_parts matrix: I(x_A; y_B) for every input A and output B under uniform noise.

    Args:
      key: PRNG key (`jax.random.key(seed)`).
      chain, params: the layer(s) to measure (`deep_ei_jax.Chain` and one dict per layer).
      in_range: (low, high) of the uniform input noise and of the input bins.
      out_range: (low, high) of the output bins, or 'dynamic' (per output, from the first 10k
        samples' min and max).
      in_bins: input bins; out_bins: output bins or 'dynamic' (the input bins' width).
      samples: a fixed number of samples; None means adaptive (`threshold`, deep-ei's doubling rule).
      threshold: adaptive stopping threshold in (0, 1).
      extrapolate: estimate at 100k..2M samples and return the fitted asymptote a/n^e + C.
      policy: "drop" out-of-range outputs (per pair) or "clip" them into the end bins.
      method: counting kernel, "auto" | "scatter" | "onehot" | "numba"; or "exact": the
        infinite-sample binned value without sampling (one Dense or Conv2d layer with a monotone
        activation; see `deep_ei_jax.exact`), accurate to about 1.5 * grid_step**2 bits per pair.
      activation: replaces the chain's last activation (a name or a JAX callable).
      max_samples: the adaptive mode stops here, with `info.converged` False.
      memory_budget: bytes of count tables held at once; larger layers are streamed in blocks.
      devices: where chunks run: None (all local devices of the default backend, or the one
        pinned with `jax.default_device`), an int n (the first n) or a list of jax Devices. With
        several, each chunk's sample blocks are sharded over them (shard_map + psum of the integer
        counts): results are identical to one device's.
      estimator: "plugin" (deep-ei's), "miller_madow" or "jackknife" (bias-corrected; see
        `deep_ei_jax.estimators`).
      error_bars: k >= 2 batches for a batch-means standard error and 95% interval of the sum
        (fixed `samples` only; costs a second pass), 0 for none.
      significance: per-edge G-test p-values and Benjamini-Hochberg q-values in the Info.
      grid_step: the exact method's accuracy knob.
      target_error: adaptive mode (samples=None) stopping when the standard error of the sum falls
        to this many bits instead of deep-ei's threshold rule. The error is the delta method's
        per pair (`information.mutual_information_standard_error`) combined as
        sqrt(sum of squares), i.e. treating pairs' sampling errors as uncorrelated; reported in
        `Info.standard_error` with a normal 95% interval.

    Returns:
      (matrix float64 [n_in, n_out] in bits, Info).
    """
    if method == "exact":
        return _exact_matrix("ei_parts_matrix", chain, params, in_range, out_range, in_bins,
                             out_bins, policy, activation, grid_step)
    mode = _sample_mode(samples, threshold, extrapolate, max_samples)
    if error_bars and mode != "fixed":
        raise ValueError("error_bars needs a fixed number of samples; got samples=None")
    if target_error is not None:
        if mode != "adaptive":
            raise ValueError("target_error is a stopping rule for samples=None; got "
                             f"samples={samples}, extrapolate={extrapolate}")
        if not (isinstance(target_error, (int, float)) and math.isfinite(target_error)
                and target_error > 0):
            raise ValueError(f"target_error must be a positive number of bits; got "
                             f"{target_error!r}")
    hint = samples if mode == "fixed" else adaptive.FIRST_STEP
    setup = _prepare(key, chain, params, samples_hint=hint, single_input=False, pairs=True,
                     groups=(), estimator=estimator, significance=significance,
                     pair_errors=target_error is not None,
                     **_common_kwargs(in_range, out_range, in_bins, out_bins, policy,
                                      method, activation, memory_budget, devices))
    counts = _PairwiseCounts(setup, memory_budget)
    estimates = []
    if mode == "fixed":
        totals, converged = [samples], None
    elif mode == "extrapolate":
        totals, converged = adaptive.extrapolation_totals(), None
    else:
        totals, converged = adaptive.doubling_totals(limit=max_samples), False
    for total in totals:
        matrix, oor, pvalues, pair_errors = counts.matrix(total)
        estimates.append((total, float(matrix.sum())))
        if target_error is not None:
            sum_error = float(np.sqrt(np.sum(pair_errors ** 2)))
            if sum_error <= target_error:
                converged = True
                break
        elif mode == "adaptive" and adaptive.parts_converged(estimates, threshold):
            converged = True
            break
    if mode == "adaptive" and not converged:
        warnings.warn(f"EI_parts did not converge to threshold={threshold} within max_samples="
                      f"{max_samples}", RuntimeWarning, stacklevel=2)
    n = estimates[-1][0]
    dropped = int(oor.sum()) if policy == "drop" else 0
    info = _info(setup, n, dropped, int(oor.sum()), n * setup.static.num_outputs, converged,
                 estimates, **_significance(pvalues))
    if target_error is not None:
        info = info._replace(standard_error=sum_error, confidence_interval=(
            float(matrix.sum()) - 1.96 * sum_error, float(matrix.sum()) + 1.96 * sum_error))
    if error_bars:
        batches = [counts.batch_matrix(a, b).sum() for a, b in _batch_edges(n, error_bars)]
        error, interval = _error_bars(batches, float(matrix.sum()))
        info = info._replace(standard_error=float(error), confidence_interval=interval)
    _warn_dropped(info, "(sample, output) values")
    return matrix, info


def _significance(pvalues):
    """Info fields for per-edge p-values (and their BH q-values over all edges), or none."""
    if pvalues is None:
        return {}
    qvalues, _ = _estimators.benjamini_hochberg(pvalues.ravel())
    return dict(pvalues=pvalues, qvalues=np.asarray(qvalues).reshape(pvalues.shape))


def _exact_matrix(measure, chain, params, in_range, out_range, in_bins, out_bins, policy,
                  activation, grid_step):
    """(matrix, Info) by the exact method: no samples; the expected dropped fraction from the
    probability that each output falls outside out_range."""
    _checks.check_choice("policy", policy, POLICIES)
    _checks.check_params(chain, params)
    matrix, coverage = exact.exact_for_chain(
        chain, params, measure=measure, activation=activation, in_range=in_range,
        out_range=out_range, in_bins=in_bins, out_bins=out_bins, grid_step=grid_step,
        policy=policy, return_coverage=True)
    matrix, coverage = np.asarray(matrix, np.float64), np.asarray(coverage, np.float64)
    n_out = matrix.shape[1]
    out_bins_used = np.full(n_out, out_bins)
    info = Info(samples=0, dropped=0, out_of_range=0, total=0, converged=None, estimates=(),
                out_low=np.full(n_out, float(out_range[0])),
                out_high=np.full(n_out, float(out_range[1])), out_bins=out_bins_used,
                method="exact", estimator="exact")
    outside = 1.0 - float(coverage.mean())
    if outside > 0.01:
        warnings.warn(f"{100 * outside:.1f}% of the output distribution lies outside out_range "
                      f"and is dropped; widen out_range or use policy='clip'", RuntimeWarning,
                      stacklevel=3)
    return matrix, info


def ei_parts(key, chain: Chain, params, **kwargs):
    """EI_parts: the sum over all (input, output) pairs of I(x_A; y_B). Same arguments as
    `ei_parts_matrix`; with `extrapolate=True` the value is the fitted asymptote."""
    matrix, info = ei_parts_matrix(key, chain, params, **kwargs)
    if kwargs.get("extrapolate"):
        n, e = zip(*info.estimates)
        first = adaptive.EXTRAPOLATION_FIRST_FIT_POINT
        return adaptive.fit_asymptote(n[first:], e[first:]), info
    return float(matrix.sum()), info


def _sample_mode(samples, threshold, extrapolate, max_samples):
    if extrapolate:
        return "extrapolate"
    if samples is not None:
        _checks.check_samples("samples", samples)
        return "fixed"
    _checks.check_threshold(threshold)
    _checks.check_samples("max_samples", max_samples)
    return "adaptive"


def eis_between_groups(key, chain: Chain, params, groups, *, in_range=(0.0, 1.0),
                       out_range=(0.0, 1.0), in_bins: int = 64, out_bins=64,
                       samples: int | None = None, threshold: float = 0.05,
                       policy: str = "drop", method: str = "auto", activation=None,
                       max_samples: int = 2 ** 27, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                       pairs: bool = False, devices=None,
                       state_memory_budget: int = DEFAULT_STATE_MEMORY_BUDGET,
                       estimator: str = "plugin", error_bars: int = 0):
    """I(X_G; Y_H) for each (G, H) in `groups` (indices into the flattened inputs and outputs).

    A sample with any output outside out_range is dropped whole (policy "drop"). `samples=None`
    is adaptive with deep-ei's vector rule: stop when doubling moves every group's estimate by
    less than `threshold` bits. With `pairs=True` the EI_parts matrix of the same samples is
    returned too: ((values, matrix), Info). `devices` as in `ei_parts_matrix`. A run whose
    distinct states could exceed `state_memory_budget` bytes is refused before it starts; an
    adaptive run stops there (not converged, with a warning). `estimator` corrects each entropy
    of I = H(X) + H(Y) - H(X,Y) (see `deep_ei_jax.estimators.entropy`); `error_bars=k` adds
    batch-means standard errors and 95% intervals per group (fixed samples only).

    Returns:
      (list of floats in bits, Info).
    """
    if method == "exact":
        raise NotImplementedError("vector EI and groups have no exact method (it exists for "
                                  "EI_parts and sensitivity of one dense layer); use a sampling "
                                  "method: 'auto', 'scatter', 'onehot' or 'numba'")
    if isinstance(groups, tuple) and not groups:
        raise ValueError("groups must contain at least one (input_indices, output_indices) pair")
    _checks.check_positive_int("state_memory_budget", state_memory_budget)
    mode = _sample_mode(samples, threshold, False, max_samples)
    if error_bars and mode != "fixed":
        raise ValueError("error_bars needs a fixed number of samples; got samples=None")
    hint = samples if mode == "fixed" else adaptive.FIRST_STEP
    setup = _prepare(key, chain, params, samples_hint=hint, single_input=False, pairs=pairs,
                     groups=groups, estimator=estimator,
                     **_common_kwargs(in_range, out_range, in_bins, out_bins, policy, method,
                                      activation, memory_budget, devices))
    static = setup.static
    if mode == "fixed":
        _check_state_memory(static, samples, state_memory_budget)
    else:  # adaptive: stop (unconverged, with a warning) where the states could outgrow it
        max_samples = min(max_samples, state_memory_budget // _state_bytes_per_sample(static))
    counters = _state_counters(static)
    # The pairwise tables ride along in the same chunks when they fit one block; otherwise they
    # are streamed block by block afterwards, over the same samples.
    together = pairs and static.block_size >= static.padded_outputs
    pair_carry = _new_pair_carry(static) if together else None
    state_setup = setup if together else setup._replace(static=static._replace(pairs=False))
    totals = [samples] if mode == "fixed" else adaptive.doubling_totals(limit=max_samples)
    converged = None if mode == "fixed" else False
    estimates, history, dropped, out_of_range, counted = [], [], 0, 0, 0
    for total in totals:
        pair_carry, step_dropped, step_out = _run_chunks(state_setup, counted, total,
                                                         pair_carry=pair_carry, counters=counters)
        dropped, out_of_range, counted = dropped + step_dropped, out_of_range + step_out, total
        values = [_estimators.states_mutual_information(cx.counts(), cy.counts(), cxy.counts(),
                                                        estimator)
                  for cx, cy, cxy in counters]
        history.append(values)
        estimates.append((total, values[0] if len(values) == 1 else tuple(values)))
        if mode == "adaptive" and len(history) >= 2 and all(
                adaptive.vector_converged([(0, a), (0, b)], threshold)
                for a, b in zip(history[-2], history[-1])):
            converged = True
            break
    if mode == "adaptive" and not converged:
        warnings.warn(f"vector EI did not converge to threshold={threshold} within max_samples="
                      f"{max_samples}", RuntimeWarning, stacklevel=2)
    info = _info(setup, counted, dropped, out_of_range, counted, converged, estimates)
    if error_bars:
        batches = []
        for a, b in _batch_edges(counted, error_bars):
            fresh = _state_counters(static)
            _run_chunks(state_setup._replace(static=state_setup.static._replace(pairs=False)),
                        a, b, counters=fresh)
            batches.append([_estimators.states_mutual_information(
                cx.counts(), cy.counts(), cxy.counts(), estimator) for cx, cy, cxy in fresh])
        error, interval = _error_bars(batches, np.asarray(values))
        info = info._replace(standard_error=tuple(error.tolist()),
                             confidence_interval=tuple(zip(*(v.tolist() for v in interval))))
    _warn_dropped(info, "samples")
    if not pairs:
        return values, info
    if together:
        matrix = _assemble_blocks(static, [(_block_statistics(static, pair_carry[0]), None)])[0]
    else:
        pair_setup = setup._replace(static=static._replace(groups=()))
        matrix = _PairwiseCounts(pair_setup, memory_budget).matrix(counted)[0]
    return (values, matrix), info


def _whole_layer(chain: Chain, params):
    from .layers import out_shape
    _checks.check_params(chain, params)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return ((tuple(range(_num_flat(chain.in_shape))),
             tuple(range(_num_flat(out_shape(chain, params))))),)


def ei(key, chain: Chain, params, **kwargs):
    """Vector EI: I(X; Y) between the whole binned input and output vectors. Same arguments as
    `eis_between_groups` without `groups`. Returns (float bits, Info)."""
    values, info = eis_between_groups(key, chain, params, _whole_layer(chain, params), **kwargs)
    return values[0], _single_group(info)


def ei_and_ei_parts(key, chain: Chain, params, **kwargs):
    """(vector EI, EI_parts) from the same samples. Returns ((float, float), Info)."""
    (values, matrix), info = eis_between_groups(key, chain, params, _whole_layer(chain, params),
                                                pairs=True, **kwargs)
    return (values[0], float(matrix.sum())), _single_group(info)


def _single_group(info: Info) -> Info:
    """The Info of a one-group measurement with its error bars as scalars."""
    if info.standard_error is None:
        return info
    return info._replace(standard_error=info.standard_error[0],
                         confidence_interval=info.confidence_interval[0])


def sensitivity_matrix(key, chain: Chain, params, *, samples: int = 500, in_range=(0.0, 1.0),
                       out_range=(0.0, 1.0), in_bins: int = 64, out_bins=64,
                       policy: str = "drop", method: str = "auto", activation=None,
                       memory_budget: int = DEFAULT_MEMORY_BUDGET, devices=None,
                       estimator: str = "plugin", significance: bool = False):
    """The sensitivity matrix: I(x_A; y_B) when only input A is noised (uniform on in_range) and
    every other input is 0, for every pair. It runs on the default device whatever `devices`
    says (checked only): it draws few samples per input. `method="exact"` computes it without
    sampling (a Dense or Conv2d layer: each table cell is a length ratio); `estimator` and
    `significance` as in `ei_parts_matrix`.

    Returns:
      (matrix float64 [n_in, n_out] in bits, Info); `Info.samples` is per input.
    """
    if method == "exact":
        return _exact_matrix("sensitivity_matrix", chain, params, in_range, out_range, in_bins,
                             out_bins, policy, activation, exact.DEFAULT_GRID_STEP)
    _checks.check_samples("samples", samples)
    sample_mesh(devices)  # the argument is checked all the same
    setup = _prepare(key, chain, params, samples_hint=samples, single_input=True, pairs=True,
                     groups=(), estimator=estimator, significance=significance,
                     **_common_kwargs(in_range, out_range, in_bins, out_bins, policy,
                                      method, activation, memory_budget))
    static = setup.static
    mis, out_of_range = [], []
    for offset in range(0, static.num_inputs, static.inputs_per_chunk):
        carry = (jnp.zeros((static.inputs_per_chunk, static.padded_outputs, static.in_bins,
                            static.out_bins), jnp.int32),
                 jnp.zeros(static.padded_outputs, jnp.int32))
        for first in _first_blocks(0, samples, static.num_blocks):
            carry = _single_input_step(static, carry, setup.key, setup.params, setup.ranges,
                                       first, 0, samples, offset)
        mis.append(_block_statistics(static, carry[0]))
        out_of_range.append(carry[1])
    mis = jax.device_get(mis)
    matrix = np.concatenate([m[0] for m in mis], axis=0)[:static.num_inputs]
    pvalues = (np.concatenate([m[1] for m in mis], axis=0)[:static.num_inputs].astype(np.float64)
               if significance else None)
    oor = int(np.sum(jax.device_get(out_of_range)))
    total = samples * static.num_inputs * static.num_outputs
    info = _info(setup, samples, oor if policy == "drop" else 0, oor, total, None, (),
                 **_significance(pvalues))
    _warn_dropped(info, "(sample, output) values")
    return matrix.astype(np.float64), info


def sensitivity(key, chain: Chain, params, **kwargs):
    """Sensitivity: the sum of the sensitivity matrix. Same arguments as `sensitivity_matrix`.
    Returns (float bits, Info)."""
    matrix, info = sensitivity_matrix(key, chain, params, **kwargs)
    return float(matrix.sum()), info


def degeneracy(key, chain: Chain, params, *, ei_kind: str = "vector", sensitivity_samples: int = 500,
               **kwargs):
    """Degeneracy = sensitivity - EI (`ei_kind="vector"`) or sensitivity - EI_parts
    (`ei_kind="parts"`). Keyword arguments are those of `ei` / `ei_parts`; sensitivity uses
    `sensitivity_samples` and the same binning. Returns (float bits, (ei Info, sensitivity Info))."""
    _checks.check_choice("ei_kind", ei_kind, ("vector", "parts"))
    _checks.check_samples("sensitivity_samples", sensitivity_samples)
    ei_key, sensitivity_key = jax.random.split(_as_key(key))
    measure = ei if ei_kind == "vector" else ei_parts
    ei_value, ei_info = measure(ei_key, chain, params, **kwargs)
    binning = {k: kwargs[k] for k in ("in_range", "out_range", "in_bins", "out_bins", "policy",
                                      "method", "activation", "memory_budget", "devices",
                                      "estimator")
               if k in kwargs}
    sens, sens_info = sensitivity(sensitivity_key, chain, params, samples=sensitivity_samples,
                                  **binning)
    return sens - ei_value, (ei_info, sens_info)


def _as_key(key):
    if isinstance(key, jax.Array) and key.shape == (2,) and key.dtype == jnp.uint32:
        return jax.random.wrap_key_data(key)
    return key
