"""Planning a measurement: checked arguments -> the static records that fix the compiled programs,
the traced binning, and the chunk shapes.

A plan holds three static records, each the jit key of the kernels that need it and no more:

* `Sampling`: the chain, the intervention and the chunk shape (the sampling kernel's key);
* `Counting`: the binning sizes, the policy, the counting backend and the table blocks;
* `Statistics`: the estimator and the per-edge extras computed from the tables.

So a new estimator or `significance` recompiles only the statistics kernel, never sampling.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks, adaptive, backends, kernels, pairstats
from . import estimators as _estimators
from .backends import CountingBackend
from .binning import POLICIES
from .histogram import host_bins_dtype
from .layers import Chain, out_shape
from .sampling import SAMPLE_BLOCK

DEFAULT_TABLE_MEMORY_BUDGET = 256 * 2 ** 20  # bytes of count tables a single call holds at once
SCATTER_ENTRIES = 2 ** 23               # joint indices per chunk for the device kernels
SINGLE_INPUT_ROWS = 2 ** 24             # work rows per chunk of the one-input intervention
MAX_BLOCKS_PER_CHUNK = 64
DYNAMIC_PROBE = adaptive.FIRST_STEP     # samples that fix a dynamic out_range
SAMPLE_AXIS = kernels.SAMPLE_AXIS


class Sampling(NamedTuple):
    """What fixes the sampling program: the chain, the intervention, the chunk shape (hashable)."""

    chain: Chain
    final_activation: Any
    num_inputs: int
    num_outputs: int
    padded_outputs: int    # outputs padded to whole blocks (NaN: never in range)
    num_blocks: int        # sample blocks per chunk
    single_input: bool     # sensitivity intervention (one input noised) or all inputs
    inputs_per_chunk: int  # single_input: inputs handled per chunk
    mesh: Any = None       # a 1-d jax.sharding.Mesh over SAMPLE_AXIS when sharding chunks


class Counting(NamedTuple):
    """What fixes the counting: table sizes, policy, backend, blocks, what is counted."""

    in_bins: int
    out_bins: int          # the table size: the largest bin count of any output
    policy: str
    backend: CountingBackend
    block_size: int        # outputs (or, single_input, inputs) per count table block
    pairs: bool            # count pairwise tables
    groups: tuple          # ((input indices), (output indices)) whose joint states are packed
    shuffle: bool = False  # permute the inputs' bins over a chunk's samples (surrogate counts)


class Statistics(NamedTuple):
    """What fixes the statistics of the tables."""

    estimator: str = "plugin"
    significance: bool = False  # per-edge G-test p-values alongside MI
    pair_errors: bool = False   # per-edge delta-method standard errors alongside MI


class Ranges(NamedTuple):
    """The binning, traced: changing a range does not recompile."""

    in_low: jax.Array
    in_high: jax.Array
    out_low: jax.Array   # [padded_outputs]
    out_high: jax.Array
    out_bins: jax.Array  # int32 [padded_outputs]


class Plan(NamedTuple):
    """A checked, planned measurement: its key and params as the kernels take them, the three
    static records, the traced binning, and the binning per output for `Info`."""

    key: jax.Array
    params: Any
    sampling: Sampling
    counting: Counting
    statistics: Statistics
    ranges: Ranges
    out_low: np.ndarray
    out_high: np.ndarray
    out_bins: np.ndarray


class Binning(NamedTuple):
    """A measure's binning and counting arguments, as given (checked by `plan`)."""

    in_range: Any = (0.0, 1.0)
    out_range: Any = (0.0, 1.0)
    in_bins: Any = 64
    out_bins: Any = 64
    policy: str = "drop"
    method: Any = "auto"   # a name from backends.METHODS, or a backend object
    activation: Any = None
    memory_budget: int = DEFAULT_TABLE_MEMORY_BUDGET
    devices: Any = None


BINNING_FIELDS = Binning._fields  # the options a Binning holds, by name


def num_flat(shape) -> int:
    return int(np.prod(shape)) if len(shape) else 1


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


def blocks_per_chunk(samples: int, rows_per_sample: int, cap: int) -> int:
    """A power of two of sample blocks per chunk: enough for `samples`, within `cap` work rows."""
    need = -(-samples // SAMPLE_BLOCK)
    fit = max(1, cap // max(1, rows_per_sample * SAMPLE_BLOCK))
    blocks = min(need, fit, MAX_BLOCKS_PER_CHUNK)
    return 1 << (blocks.bit_length() - 1) if blocks & (blocks - 1) else blocks


def as_prng_key(key) -> jax.Array:
    """A typed PRNG key from `key` (a typed key or raw uint32 [2] key data), checked."""
    if not isinstance(key, jax.Array) or not (jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                                              or key.shape == (2,)):
        raise TypeError(f"key must be a JAX PRNG key (jax.random.key(seed)); got {key!r}")
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    return key


def plan(key, chain: Chain, params, binning: Binning, *, samples_hint: int, single_input: bool,
         pairs: bool, groups: tuple, statistics: Statistics = Statistics(),
         params_checked: bool = False, samples_max: int | None = None) -> Plan:
    """Checks arguments, fixes the output binning (probing outputs if dynamic) and chunk shapes.

    Args:
      binning: the measure's binning and counting arguments.
      samples_hint: the samples a first pass draws (sizes chunks; caps the dynamic probe).
      single_input: the sensitivity intervention (one input noised at a time) or all inputs.
      pairs: count pairwise tables; groups: ((inputs), (outputs)) whose joint states count.
      params_checked: the caller has run `_checks.check_params(chain, params)` already.
      samples_max: the most samples the call will count, when known (fixed `samples`): with it,
        a layer whose tables would not fit `memory_budget` may be counted by its samples
        (`counts_by_samples`).
    """
    if not isinstance(chain, Chain):
        raise TypeError(f"chain must be a deep_ei_jax.Chain; got {type(chain).__name__}")
    key = as_prng_key(key)
    in_low, in_high = _checks.check_range("in_range", binning.in_range)
    out_range = _checks.check_range("out_range", binning.out_range, allow_dynamic=True)
    in_bins = _checks.check_bins("in_bins", binning.in_bins)
    out_bins = _checks.check_bins("out_bins", binning.out_bins, allow_dynamic=True)
    _checks.check_choice("policy", binning.policy, POLICIES)
    _checks.check_choice("estimator", statistics.estimator, _estimators.ESTIMATORS)
    if not isinstance(binning.method, CountingBackend):
        _checks.check_choice("method", binning.method, backends.METHODS)
    mesh = None if single_input else sample_mesh(binning.devices)  # sensitivity: one device
    if not params_checked:
        _checks.check_params(chain, params)  # structure, shapes, finite values: before any work
    _checks.check_positive_int("memory_budget", binning.memory_budget)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)
    num_inputs = num_flat(chain.in_shape)
    num_outputs = num_flat(out_shape(chain, params))
    if not (isinstance(groups, tuple) and not groups):  # () is "no groups"; [] or None is not
        groups = _checks.check_groups(groups, num_inputs, num_outputs)

    sampling = Sampling(chain=chain, final_activation=binning.activation, num_inputs=num_inputs,
                        num_outputs=num_outputs, padded_outputs=num_outputs, num_blocks=1,
                        single_input=single_input, inputs_per_chunk=1, mesh=mesh)
    low, high, bins = _output_binning(key, params, sampling, out_range, out_bins, in_low, in_high,
                                      in_bins, min(samples_hint, DYNAMIC_PROBE))
    wide = counts_by_samples(num_inputs, num_outputs, in_bins, int(bins.max()),
                             single_input=single_input, pairs=pairs,
                             estimator=statistics.estimator, samples=samples_max,
                             memory_budget=binning.memory_budget)
    backend = backends.resolve(binning.method, one_input=single_input, wide=wide)
    if mesh is not None:  # sharded chunks count on their devices
        backend = backends.device_fallback(backend)
    if backend.by_samples and pairs and statistics.estimator not in \
            pairstats.SUPPORTED_ESTIMATORS:
        raise ValueError(f"method={backend.name!r} estimates by "
                         f"{pairstats.SUPPORTED_ESTIMATORS}; got "
                         f"estimator={statistics.estimator!r}")
    counting = Counting(in_bins=in_bins, out_bins=int(bins.max()), policy=binning.policy,
                        backend=backend, block_size=1, pairs=pairs, groups=groups)
    sampling, counting = _chunk_shapes(sampling, counting, samples_hint, binning.memory_budget)
    pad = sampling.padded_outputs - num_outputs
    ranges = Ranges(in_low=jnp.float32(in_low), in_high=jnp.float32(in_high),
                    out_low=jnp.asarray(np.pad(low, (0, pad)), jnp.float32),
                    out_high=jnp.asarray(np.pad(high, (0, pad), constant_values=1.0), jnp.float32),
                    out_bins=jnp.asarray(np.pad(bins, (0, pad), constant_values=2), jnp.int32))
    return Plan(key, params, sampling, counting, statistics, ranges, low, high, bins)


def counts_by_samples(num_inputs: int, num_outputs: int, in_bins: int, out_bins: int, *,
                      single_input: bool, pairs: bool, estimator: str, samples: int | None,
                      memory_budget: int) -> bool:
    """Whether a layer is counted by its samples (`backends.SAMPLES`, on a CPU with numba): its
    pairwise tables would not fit `memory_budget` (they would be streamed block by block, each
    block sampling again), but the bins of its `samples` would (all inputs' and outputs', or for
    sensitivity one input's and the outputs'), and the estimator has a closed form in a table's
    sums. Needs a known sample count (`samples` None: tables)."""
    if not pairs or samples is None or estimator not in pairstats.SUPPORTED_ESTIMATORS:
        return False
    tables = 4 * num_inputs * num_outputs * in_bins * out_bins
    per_sample = pairstats.bytes_per_sample(1 if single_input else num_inputs, num_outputs,
                                            host_bins_dtype(in_bins, out_bins))
    return tables > memory_budget >= samples * per_sample


def _output_binning(key, params, sampling: Sampling, out_range, out_bins, in_low, in_high,
                    in_bins, probe_samples):
    """(low, high, bins) per output: given, or (out_range 'dynamic') probed; 'dynamic' out_bins
    take the input bins' width."""
    num_outputs = sampling.num_outputs
    in_width = (in_high - in_low) / in_bins
    if out_range == "dynamic":
        low, high = probe_extrema(key, params, sampling, in_low, in_high, probe_samples)
    else:
        low = np.full(num_outputs, out_range[0])
        high = np.full(num_outputs, out_range[1])
    if out_bins == "dynamic":
        bins = np.floor((high - low) / in_width).astype(np.int64) + 1
        high = low + bins * in_width
    else:
        bins = np.full(num_outputs, out_bins, np.int64)
        high = np.where(high > low, high, low + in_width)  # a constant output: one bin's width
    return low, high, bins


def _chunk_shapes(sampling: Sampling, counting: Counting, samples_hint: int,
                  memory_budget: int) -> tuple[Sampling, Counting]:
    """Table blocks within `memory_budget` and sample blocks per chunk."""
    num_inputs, num_outputs = sampling.num_inputs, sampling.num_outputs
    cell_bytes = 4 * counting.in_bins * counting.out_bins
    if sampling.single_input and counting.backend.by_samples:
        per_unit = (1 + num_outputs) * samples_hint  # one input's samples' bins (bytes)
        units = num_inputs
    elif sampling.single_input:
        per_unit = num_outputs * cell_bytes  # one input's tables
        units = num_inputs
    elif counting.backend.by_samples:
        per_unit = 0  # every output in one block: no tables
        units = num_outputs
    else:
        per_unit = num_inputs * cell_bytes if counting.pairs else 0  # one output's tables
        units = num_outputs
    if per_unit > memory_budget:
        what = "input's" if sampling.single_input else "output's"
        raise ValueError(
            f"one {what} count tables need {per_unit / 2**20:.1f} MiB "
            f"({num_inputs} inputs x {num_outputs} outputs, {counting.in_bins} x "
            f"{counting.out_bins} bins), more than memory_budget={memory_budget / 2**20:.1f} "
            f"MiB; use fewer bins or raise memory_budget")
    block = units if per_unit == 0 else max(1, min(units, memory_budget // per_unit))
    if sampling.single_input:
        rows = (num_inputs + num_outputs) * block
        blocks = blocks_per_chunk(samples_hint, rows, SINGLE_INPUT_ROWS)
        return (sampling._replace(inputs_per_chunk=block, num_blocks=blocks),
                counting._replace(block_size=block))
    device_pairs = counting.pairs and not counting.backend.on_host
    if not counting.pairs:
        block = 1
    elif device_pairs:  # the device kernels hold a [chunk, n_in, block] index array
        block = min(block, max(1, SCATTER_ENTRIES // (num_inputs * SAMPLE_BLOCK)))
    rows = num_inputs * block if device_pairs else num_inputs + num_outputs
    blocks = blocks_per_chunk(samples_hint, max(rows, num_inputs + num_outputs), SCATTER_ENTRIES)
    padded = -(-num_outputs // block) * block
    return (sampling._replace(num_blocks=blocks, padded_outputs=padded),
            counting._replace(block_size=block))


def probe_extrema(key, params, base: Sampling, in_low, in_high, samples):
    """Per-output min and max over the first `samples` samples (all interventions of
    single_input)."""
    per_chunk = 64 if base.single_input else 1
    sampling = base._replace(num_blocks=blocks_per_chunk(samples, base.num_inputs * per_chunk,
                                                         SINGLE_INPUT_ROWS),
                             inputs_per_chunk=per_chunk)
    lows, highs = [], []
    offsets = range(0, base.num_inputs, per_chunk) if base.single_input else [0]
    for offset in offsets:
        for first in first_blocks(0, samples, sampling.num_blocks):
            low, high = kernels.extrema_step(sampling, key, params, jnp.float32(in_low),
                                             jnp.float32(in_high), first, samples, offset)
            lows.append(low)
            highs.append(high)
    low = np.min(np.stack(jax.device_get(lows)), 0).astype(np.float64)
    high = np.max(np.stack(jax.device_get(highs)), 0).astype(np.float64)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise ValueError("out_range='dynamic' found outputs that are NaN or infinite for every "
                         "probe sample; check the layer's weights")
    return low, high


def first_blocks(start: int, stop: int, num_blocks: int):
    """First sample-block index of each chunk covering samples [start, stop)."""
    return range(start // SAMPLE_BLOCK, -(-stop // SAMPLE_BLOCK), num_blocks)
