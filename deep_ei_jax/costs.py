"""What a measurement will cost, before it runs: counting backend, work, memory and time.

`estimate` plans the call exactly as the measure would (`planning.plan`: the same backend, the
same tables or samples, the same output blocks) and then prices it:

* work: samples x pairs (EI_parts, sensitivity: each sample of an input reaches every output) or
  the samples whose joint states vector EI counts;
* memory: the counts held at once (a block's tables, or the samples' bins), the joint states of
  vector EI, one chunk's device arrays;
* time: the work divided by the rate the chosen counter reaches on this machine, measured on a
  synthetic problem of the same bins (~0.1-1 s the first time per process and sizes, then
  cached), plus the layer's forward pass timed on a small batch, times the passes over the
  samples (tables streamed in output blocks draw the samples once per block). Compilation of
  the measurement itself is not included (about 1-3 s the first time in a process).

The estimate is for planning (seconds or hours?), good to a factor of about 2: the counter's rate
depends on how many bins the outputs occupy, which only the run itself sees.
"""
from __future__ import annotations

import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import histogram, pairstats, planning
from .layers import apply
from .planning import Binning, Statistics

MEASURES = ("ei_parts", "ei", "sensitivity")
CALIBRATION_PAIR_SAMPLES = 2 ** 26  # work of one calibration run (~30-100 ms on this CPU)
CALIBRATION_INPUTS = 64  # (enough for every core: the samples backend splits inputs by 16)
CALIBRATION_SAMPLES = 2 ** 14  # at most: calls with more samples share one calibration


class Cost(NamedTuple):
    """A measurement's estimated cost (see the module docstring).

    Attributes:
      measure: "ei_parts", "ei" or "sensitivity".
      method: the counting backend the call will use (`Info.method`).
      samples: samples per intervention (per input for sensitivity).
      work: pair-samples counted (samples x pairs), or samples of vector EI's joint states.
      passes: how many times the samples are drawn (output blocks of streamed tables).
      memory_bytes: the counts held at once (tables of a block, or the samples' bins), plus the
        joint states of vector EI.
      seconds: estimated run time, compilation excluded: counting_seconds + sampling_seconds.
      rate: the counter's measured work per second on this machine (at this call's sizes).
      counting_seconds: the counters' share (work / rate).
      sampling_seconds: drawing the samples and running the layer on them (every pass).
    """

    measure: str
    method: str
    samples: int
    work: int
    passes: int
    memory_bytes: int
    seconds: float
    rate: float
    counting_seconds: float
    sampling_seconds: float


def estimate(key, chain, params, *, measure: str = "ei_parts", samples: int = 10_000,
             **binning) -> Cost:
    """The cost of `measure` on `chain`, `params` with `samples` samples and the measure's
    binning keywords (in_range, out_range, in_bins, out_bins, policy, method, activation,
    memory_budget, estimator), before running it.

    Args:
      key: the measurement's PRNG key (a dynamic out_range probes the outputs with it).
      measure: one of MEASURES (degeneracy costs its sensitivity plus its EI).
      samples: the samples of a fixed-sample call (for the adaptive rule, price its steps).

    Returns:
      a `Cost`.
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}; got {measure!r}")
    estimator = binning.pop("estimator", "plugin")
    fields = {name: value for name, value in binning.items() if name in planning.BINNING_FIELDS}
    unknown = set(binning) - set(fields)
    if unknown:
        raise TypeError(f"estimate() got unexpected keyword(s) {sorted(unknown)}")
    single_input, groups = measure == "sensitivity", measure == "ei"
    plan = planning.plan(key, chain, params, Binning(**fields), samples_hint=samples,
                         single_input=single_input, pairs=not groups,
                         groups=_whole_layer(chain, params) if groups else (),
                         statistics=Statistics(estimator), samples_max=samples)
    sampling, counting = plan.sampling, plan.counting
    n_in, n_out = sampling.num_inputs, sampling.num_outputs
    if groups:
        work, rate = samples, _state_rate(counting.backend.compiled_states)
        memory = samples * 3 * 8 + samples * 4 * 2 * -(-(n_in + n_out) // 4)
        passes, drawn = 1, samples
    else:
        work = samples * n_in * n_out
        per_sample, per_pair = _pair_costs(counting.backend, counting.in_bins, counting.out_bins,
                                           min(samples, CALIBRATION_SAMPLES))
        counting_seconds = work * per_sample + n_in * n_out * per_pair
        rate = work / max(counting_seconds, 1e-12)
        passes, memory = _pair_memory(sampling, counting, samples)
        drawn = samples * (n_in if single_input else passes)
    counting_seconds, sampling_seconds = work / rate, drawn * _forward_seconds(plan)
    return Cost(measure, counting.backend.name, samples, int(work), passes, int(memory),
                float(counting_seconds + sampling_seconds), float(rate), float(counting_seconds),
                float(sampling_seconds))


def _whole_layer(chain, params) -> tuple:
    """((all inputs), (all outputs)): vector EI's one group."""
    from .layers import out_shape
    params = jax.tree_util.tree_map(jnp.asarray, params)
    sizes = planning.num_flat(chain.in_shape), planning.num_flat(out_shape(chain, params))
    return ((tuple(range(sizes[0])), tuple(range(sizes[1]))),)


def _pair_memory(sampling, counting, samples: int) -> tuple[int, int]:
    """(passes over the samples, bytes of counts held at once) of a pairwise count."""
    n_in, n_out = sampling.num_inputs, sampling.num_outputs
    if counting.backend.by_samples:
        dtype = histogram.host_bins_dtype(counting.in_bins, counting.out_bins)
        return 1, samples * pairstats.bytes_per_sample(n_in, n_out, dtype)
    cells = counting.in_bins * counting.out_bins
    if sampling.single_input:
        return 1, 4 * counting.block_size * n_out * cells
    return -(-n_out // counting.block_size), 4 * n_in * counting.block_size * cells


@functools.lru_cache(maxsize=64)
def _pair_costs(backend, in_bins: int, out_bins: int, samples: int) -> tuple[float, float]:
    """(seconds per pair-sample, seconds per pair) of `backend` counting and reducing synthetic
    bins: two runs of 64 x n_out pairs, over s and s / 4 samples (s = `samples`, at most 16384),
    fitted to t = pairs * (samples * per_sample + per_pair)."""
    rng = np.random.default_rng(0)
    size = min(samples, CALIBRATION_SAMPLES)
    n_in = CALIBRATION_INPUTS
    # (a device counter's run holds its joint indices at once: a sixteenth of the work)
    work = CALIBRATION_PAIR_SAMPLES // (1 if backend.on_host else 16)
    n_out = max(4, min(1024, work // (n_in * size)))
    x = rng.integers(0, in_bins, (n_in, size)).astype(np.uint8 if in_bins <= 256 else np.uint16)
    # outputs occupying half their bins: a middle case (saturated outputs count faster)
    y = rng.integers(0, max(2, out_bins // 2), (n_out, size)).astype(x.dtype)
    counting = planning.Counting(in_bins=in_bins, out_bins=out_bins, policy="drop",
                                 backend=backend, block_size=n_out, pairs=True, groups=())
    device_count = jax.jit(backend.count_in_kernel, static_argnums=(4, 5))

    def run(stop: int) -> float:
        start = time.perf_counter()
        counts = backend.new_pair_counts((n_in, n_out), in_bins, out_bins)
        if backend.on_host:
            backend.consume(counts, (x, y), out_bins, 0, stop)
        else:
            counts, _ = device_count(counts, jnp.asarray(x[:, :stop].T, jnp.int32),
                                     jnp.asarray(y[:, :stop].T, jnp.int32),
                                     jnp.ones((stop, n_out), bool), in_bins, out_bins)
        jax.block_until_ready(backend.statistics(counting, Statistics(), counts))
        return time.perf_counter() - start

    small = max(1, size // 4)
    run(size), run(small)  # compile
    # interleaved, the best of five each: a busy machine slows both alike
    times = [(run(size), run(small)) for _ in range(5)]
    full, part = min(t[0] for t in times), min(t[1] for t in times)
    pairs = n_in * n_out
    per_sample = max(full - part, 0.0) / (pairs * max(size - small, 1))
    per_pair = max(part / pairs - per_sample * small, 0.0)
    return per_sample, per_pair


@functools.lru_cache(maxsize=4)
def _state_rate(compiled: bool) -> float:
    """Samples per second of the joint-state counters: three (x, y, joint) counts of distinct
    64-bit states per sample (measured on synthetic states)."""
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2 ** 32, (2 ** 18, 2), dtype=np.uint64).astype(np.uint32)
    valid = np.ones(words.shape[0], bool)
    counters = [histogram.StateCounts(64, compiled=compiled) for _ in range(4)]
    counters[0].add(words[:1000], valid[:1000])  # (loads the kernels)
    counters[0].counts()
    start = time.perf_counter()
    for counter in counters[1:]:
        counter.add(words, valid)
        counter.counts()
    return words.shape[0] / max(time.perf_counter() - start, 1e-9)


def _forward_seconds(plan) -> float:
    """Seconds per sample of the layer's forward pass (timed on a jitted batch of 4096, about a
    chunk's size)."""
    sampling = plan.sampling
    forward = jax.jit(lambda params, x: apply(sampling.chain, params, x,
                                              final_activation=sampling.final_activation))
    x = jnp.full((4096,) + tuple(sampling.chain.in_shape), 0.5, jnp.float32)
    jax.block_until_ready(forward(plan.params, x))
    start = time.perf_counter()
    jax.block_until_ready(forward(plan.params, x))
    return (time.perf_counter() - start) / 4096

