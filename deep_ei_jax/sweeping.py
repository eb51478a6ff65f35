"""Batched sweeps: EI, EI_parts, sensitivity and degeneracy of K parameter sets of one chain,
compiled once.

K checkpoints of a training run (or K models of one architecture) share the chain, so one program
serves them all: the parameters carry a leading axis K, and each compiled call measures a batch
of sets. Each set sees exactly the samples a single call with the same key draws (the same chunk
kernels `kernels.step` and `kernels.single_input_step` make them), so::

    result = sweep(key, chain, stacked, samples=n, sensitivity_samples=m, **binning)
    result.ei[k]          == pure.ei(key, chain, params_k, samples=n, **binning)[0]
    result.ei_parts[k]    == pure.ei_parts(key, chain, params_k, samples=n, **binning)[0]
    result.sensitivity[k] == pure.sensitivity(key, chain, params_k, samples=m, **binning)[0]
    result.degeneracy[k]  == result.sensitivity[k] - result.ei[k]

A sweep is the single calls' chunk driver over K parameter sets (a single call is the sweep of
one set): `driver.all_inputs_pass` for EI and EI_parts, `driver.one_input_pass` for sensitivity,
`batch` sets per compiled call. The layer runs bit for bit as in a single call: on the host
backend (numba, the CPU default for Dense chains on one device) the inputs are sampled once for
all sets of a call and each set's layer runs vmapped where that rounds the same
(`layers.Dense` multiply-adds small fan-ins elementwise), else set by set; on the device
('scatter'/'onehot', convolutions, sets sharded over devices) Dense chains are vmapped with the
samples batched like the weights (a batched matmul whose every product is the single call's),
other chains run set by set. Every count is then the same integer, counted by the same counters
(host tables or device carries; joint states by `StateCounts`, or, when every sample fits one
host call and the states are narrow, against the input states sorted once,
`histogram.SortedInputs`, which gives the same count spectra), and every statistic is computed
by the same compiled program. So EI, EI_parts and sensitivity equal the single calls exactly.
Sample counts are fixed; output ranges and bin counts must be fixed numbers (not 'dynamic').
Note that `pure.degeneracy` splits its key in two; the sweep's degeneracy uses the same key for
EI and sensitivity, as the deep-ei style calls with one `seed` do.
"""
from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks, backends, driver, pairstats, planning
from . import progress as progress_module
from .histogram import bits_per_value, sorted_inputs_fit
from .layers import ELEMENTWISE_FAN_IN, Chain, Dense, Flatten
from .planning import Binning, sample_mesh
from .sampling import SAMPLE_BLOCK

MEASURES = ("ei", "ei_parts", "sensitivity", "degeneracy")
DEFAULT_CALL_MEMORY_BUDGET = 1024 * 2 ** 20  # bytes one compiled call may hold, all K together
_HOST_CALLS = 4                         # host-counted sweeps split K into at least this many calls


class SweepResult(NamedTuple):
    """Per-parameter-set results of a sweep (bits). A measure not asked for is None.

    Attributes:
      ei: vector EI, float64 [K] (NaN for a set whose every sample was dropped).
      ei_parts: EI_parts, float64 [K] (NaN, and its matrix too, for a set whose every (sample,
        output) value was dropped).
      sensitivity: sensitivity, float64 [K] (NaN, and its matrix too, for a set whose every
        (sample, output) value of the one-input intervention was dropped).
      degeneracy: sensitivity - EI, float64 [K] (NaN where either is).
      ei_parts_matrix: float64 [K, n_in, n_out] (rows: inputs).
      sensitivity_matrix: float64 [K, n_in, n_out].
      samples: samples of the all-inputs intervention (EI, EI_parts).
      sensitivity_samples: samples per input of the sensitivity intervention.
      dropped: int64 [K], samples left out of vector EI (an output out of range; policy "drop").
      out_of_range: int64 [K], (sample, output) values of the EI_parts samples outside out_range.
      sensitivity_out_of_range: int64 [K], (sample, output) values of the one-input intervention
        outside out_range, over every input (None when neither sensitivity nor degeneracy was
        asked for).
    """

    ei: np.ndarray | None
    ei_parts: np.ndarray | None
    sensitivity: np.ndarray | None
    degeneracy: np.ndarray | None
    ei_parts_matrix: np.ndarray | None
    sensitivity_matrix: np.ndarray | None
    samples: int
    sensitivity_samples: int
    dropped: np.ndarray | None
    out_of_range: np.ndarray | None
    sensitivity_out_of_range: np.ndarray | None = None

    def records(self) -> list[dict]:
        """One dict per parameter set: {'index', measure values, 'samples', ...}."""
        rows = []
        for k in range(self.num_sets):
            row = {"index": k}
            for name in MEASURES:
                values = getattr(self, name)
                if values is not None:
                    row[name] = float(values[k])
            row["samples"] = self.samples
            row["sensitivity_samples"] = self.sensitivity_samples
            rows.append(row)
        return rows

    @property
    def num_sets(self) -> int:
        for name in MEASURES:
            values = getattr(self, name)
            if values is not None:
                return len(values)
        return 0


class _Plan(NamedTuple):
    """Everything that fixes the compiled program (hashable)."""

    vector: Any          # (planning.Sampling, planning.Counting) of the all-inputs
                         # intervention, or None
    single: Any          # the same of the sensitivity intervention, or None
    vectorized: bool     # vmap over the sets (Dense chains), else lax.map
    exact_vmap: bool     # a vmap over the sets rounds as single calls (elementwise Dense layers)
    sorted_states: bool  # host EI by `SortedInputs`: all samples in one chunk, narrow states
    samples: int
    num_chunks: int
    sensitivity_samples: int
    sensitivity_chunks: int


# ---------------------------------------------------------------- the passes

def _sets(plan: _Plan, counting, stacked_params, num_sets: int, batch: int, mesh,
          num_chunks: int) -> driver.Sets:
    """The sets as the chunk driver takes them: on the host vmapped where that rounds as single
    calls (`exact_vmap`); on the device vmapped for Dense chains (their samples batched like the
    weights, see `kernels.step`), sharded over `mesh` when given, else set by set."""
    if counting.backend.on_host:
        return driver.Sets(stacked_params, num_sets, batch, vmap=plan.exact_vmap)
    sharding = None
    if mesh is not None and plan.vectorized:  # (chains run set by set stay on one device)
        batch = -(-batch // mesh.size) * mesh.size  # whole sets per device (padding repeats one)
        sharding = jax.sharding.NamedSharding(
            jax.sharding.Mesh(mesh.devices, ("sets",)), jax.sharding.PartitionSpec("sets"))
    # every chunk of a call's block in one compiled call (a scan), waited for call by call
    return driver.Sets(stacked_params, num_sets, batch, vmap=plan.vectorized, sharding=sharding,
                       chunks_per_call=num_chunks)


def _measure_sets(plan: _Plan, key, stacked_params, ranges, num_sets: int, batch: int, mesh,
                  reporter) -> dict:
    """Every measure of every set by the single calls' chunk driver (`driver.all_inputs_pass`,
    `driver.one_input_pass`), `batch` sets per compiled call: their counters, and their
    statistics on the same integers by the same compiled programs."""
    merged = {}
    if plan.vector is not None:
        sampling, counting = plan.vector
        counts = driver.SweepCounts(sampling, counting, num_sets, plan.sorted_states)
        driver.all_inputs_pass(sampling, counting, key, ranges,
                               _sets(plan, counting, stacked_params, num_sets, batch, mesh,
                                     plan.num_chunks),
                               counts, 0, plan.samples, progress=reporter)
        merged.update(counts.result())
    if plan.single is not None:
        sampling, counting = plan.single
        blocks, out_of_range = driver.one_input_pass(
            sampling, counting, planning.Statistics(), key, ranges,
            _sets(plan, counting, stacked_params, num_sets, batch, mesh,
                  plan.sensitivity_chunks),
            plan.sensitivity_samples, progress=reporter)
        merged["sensitivity"] = np.stack([
            np.concatenate([block[0] for block in set_blocks])[:sampling.num_inputs]
            for set_blocks in blocks])
        merged["sensitivity_out_of_range"] = out_of_range
    return merged


# ---------------------------------------------------------------- arguments and planning

def _leaves_with_paths(params):
    return jax.tree_util.tree_flatten_with_path(params)[0]


def _path_name(path) -> str:
    return "params" + jax.tree_util.keystr(path)


def stack_params(params_list) -> tuple:
    """Stacks K parameter sets of one chain into one set with a leading axis K.

    Args:
      params_list: a sequence of K params (each a tuple of dicts of arrays, as the measures take).

    Returns:
      The stacked params: every array gets a leading axis of size K.

    Raises:
      ValueError: naming the first set whose structure or an array's shape differs from set 0.
    """
    if isinstance(params_list, (str, bytes)) or not hasattr(params_list, "__len__"):
        raise TypeError(f"params_list must be a sequence of parameter sets; "
                        f"got {type(params_list).__name__}")
    if len(params_list) == 0:
        raise ValueError("params_list must hold at least one parameter set; got an empty sequence")
    first = jax.tree_util.tree_structure(params_list[0])
    first_leaves = _leaves_with_paths(params_list[0])
    for k, params in enumerate(params_list[1:], start=1):
        structure = jax.tree_util.tree_structure(params)
        if structure != first:
            raise ValueError(f"params_list[{k}] has a different structure from params_list[0]: "
                             f"{structure} vs {first}")
        for (path, leaf), (_, reference) in zip(_leaves_with_paths(params), first_leaves):
            if np.shape(leaf) != np.shape(reference):
                raise ValueError(f"params_list[{k}] differs from params_list[0]: "
                                 f"{_path_name(path)} has shape {np.shape(leaf)}; expected "
                                 f"{np.shape(reference)}")
    return jax.tree_util.tree_map(lambda *leaves: np.stack([np.asarray(a, np.float32)
                                                            for a in leaves]), *params_list)


def _check_stacked(chain, stacked_params) -> int:
    """Checks the chain and that the stacked params have one entry per layer; returns K."""
    if not isinstance(chain, Chain):
        raise TypeError(f"chain must be a deep_ei_jax.Chain; got {type(chain).__name__}")
    if not isinstance(stacked_params, (tuple, list)) or len(stacked_params) != len(chain.layers):
        got = len(stacked_params) if isinstance(stacked_params, (tuple, list)) else \
            type(stacked_params).__name__
        raise ValueError(f"stacked_params must have one entry per layer of the chain "
                         f"({len(chain.layers)}); got {got}")
    return _num_sets(stacked_params)


def _num_sets(stacked_params) -> int:
    leaves = _leaves_with_paths(stacked_params)
    if not leaves:
        raise ValueError("stacked_params holds no arrays: a chain of only parameter-free layers "
                         "has nothing to sweep over")
    sizes = []
    for path, leaf in leaves:
        if np.ndim(leaf) == 0:
            raise ValueError(f"stacked_params must have a leading axis K on every array; "
                             f"{_path_name(path)} is a scalar")
        sizes.append((path, np.shape(leaf)[0]))
    num = sizes[0][1]
    for path, size in sizes[1:]:
        if size != num:
            raise ValueError(f"stacked_params must have the same leading size K on every array; "
                             f"{_path_name(sizes[0][0])} has {num} but {_path_name(path)} has "
                             f"{size}")
    return int(num)




def _chunk_blocks(samples: int, rows_per_sample: int, cap: int) -> tuple[int, int]:
    """(blocks per chunk, chunks): as few chunks as `cap` work rows allow, little padding."""
    need = -(-samples // SAMPLE_BLOCK)
    fit = max(1, min(planning.MAX_BLOCKS_PER_CHUNK,
                     cap // max(1, rows_per_sample * SAMPLE_BLOCK)))
    chunks = -(-need // fit)
    return -(-need // chunks), chunks


def _per_set_bytes(vector, single, samples, sensitivity_samples) -> int:
    """A rough upper bound of the bytes one parameter set holds during a call."""
    total = 0
    if vector is not None:
        sampling, counting = vector
        n_in, n_out = sampling.num_inputs, sampling.num_outputs
        if counting.pairs and counting.backend.by_samples:  # the outputs' bins
            total += samples * pairstats.bytes_per_sample(0, n_out, np.uint16)
        elif counting.pairs:
            total += 4 * n_in * n_out * counting.in_bins * counting.out_bins
        if counting.groups:
            words = sum(-(-n * bits_per // 32) for n, bits_per in (
                (n_in, bits_per_value(counting.in_bins)),
                (n_out, bits_per_value(counting.out_bins))))
            words += words  # the joint words
            # the stored words, then the sort's copies and the run arrays
            need = -(-samples // SAMPLE_BLOCK)  # blocks; chunking pads at most one per chunk
            padded_rows = (need + -(-need // planning.MAX_BLOCKS_PER_CHUNK) + 1) * SAMPLE_BLOCK
            total += 4 * padded_rows * (3 * words + 8)
    if single is not None and single[1].backend.by_samples:  # a block of inputs' bins
        sampling = single[0]
        total += sampling.inputs_per_chunk * sensitivity_samples * (1 + sampling.num_outputs)
    elif single is not None:
        sampling, counting = single
        total += 4 * sampling.num_inputs * sampling.num_outputs * counting.in_bins \
            * counting.out_bins
    return total


def _vectorized(chain: Chain) -> bool:
    """Whether the sets are vmapped (Dense chains: a batched matmul rounds as a single call's);
    other chains run set by set with `lax.map`."""
    return all(isinstance(spec, (Dense, Flatten)) for spec in chain.layers)


def sorted_call_sets(samples: int, num_inputs: int, num_outputs: int, budget: int) -> int:
    """How many sets one host-counted call holding every sample can take within `budget` bytes
    (0: not even one): per sample the shared inputs (float32 and bins, sort keys, order, run
    bounds: about 5 n_in + 24 bytes), and per set and sample its bins, packed and gathered output
    keys (about 5 n_out + 8 bytes). Measured: the paper's 1e7 samples, one set per call, peak RSS
    1.39 GB of which ~0.4 GB is the process before any work."""
    shared = samples * (5 * num_inputs + 24)
    per_set = samples * (5 * num_outputs + 8)
    return max(0, (budget - shared) // per_set)


def _exact_vmap(chain: Chain, params0) -> bool:
    """Whether a vmap over the sets computes every set's outputs bit for bit as a single call
    does: Dense layers small enough to multiply-add elementwise (`layers.Dense`), and Flatten."""
    return all(isinstance(spec, Flatten) or (isinstance(spec, Dense) and np.shape(p["w"])[0]
                                             <= ELEMENTWISE_FAN_IN)
               for spec, p in zip(chain.layers, params0))


def plan_sweep(key, chain, params0, binning: Binning, *, samples, sensitivity_samples, names,
          num_sets, max_batch):
    """The compiled program's plan, the traced binning, and how many sets one call takes."""
    for name, value in (("out_range", binning.out_range), ("out_bins", binning.out_bins)):
        if isinstance(value, str):
            raise ValueError(f"{name} must be fixed in a sweep (each parameter set would get its "
                             f"own dynamic binning); got {value!r} (measure such a layer with "
                             f"single calls, as deep_ei_jax.sweep does for it)")
    _checks.check_positive_int("memory_budget", binning.memory_budget)
    need_states = "ei" in names or "degeneracy" in names
    need_pairs = "ei_parts" in names
    vector = single = first = None
    # the single calls' table budget (at most): their choice of tables or samples
    budget = min(binning.memory_budget, planning.DEFAULT_TABLE_MEMORY_BUDGET)
    if "sensitivity" in names or "degeneracy" in names:
        first = planning.plan(key, chain, params0, binning._replace(memory_budget=budget),
                              samples_hint=sensitivity_samples, single_input=True, pairs=True,
                              groups=(), params_checked=True, samples_max=sensitivity_samples)
        single = (first.sampling, first.counting)
    if need_states or need_pairs:
        whole = _whole_layer(chain, params0) if need_states else ()
        # devices=1: a sweep shards its sets (`sweep`), never one set's samples
        vector_plan = planning.plan(key, chain, params0,
                                    binning._replace(devices=1, memory_budget=budget),
                                    samples_hint=samples, single_input=False, pairs=need_pairs,
                                    groups=whole, params_checked=True, samples_max=samples)
        n = vector_plan.sampling.num_outputs
        vector = (vector_plan.sampling._replace(padded_outputs=n),
                  vector_plan.counting._replace(block_size=n))
        first = first or vector_plan
    n = first.sampling.num_outputs
    ranges = first.ranges._replace(out_low=first.ranges.out_low[:n],
                                   out_high=first.ranges.out_high[:n],
                                   out_bins=first.ranges.out_bins[:n])
    per_set = max(1, _per_set_bytes(vector, single, samples, sensitivity_samples))
    batch = num_sets if max_batch is None else min(num_sets, max_batch)
    batch = max(1, min(batch, binning.memory_budget // per_set))
    if per_set > binning.memory_budget:
        raise ValueError(f"one parameter set needs about {per_set / 2**20:.1f} MiB, more than "
                         f"memory_budget={binning.memory_budget / 2**20:.1f} MiB; use fewer "
                         f"samples or bins, or raise memory_budget")
    plan = _Plan(vector=vector, single=single, vectorized=_vectorized(chain),
                 exact_vmap=_exact_vmap(chain, params0), sorted_states=False, samples=samples,
                 num_chunks=0, sensitivity_samples=sensitivity_samples, sensitivity_chunks=0)
    plan, batch = _chunk_plan(plan, need_states, need_pairs, num_sets, batch,
                              binning.memory_budget)
    return plan, first.key, ranges, batch


def _whole_layer(chain: Chain, params0) -> tuple:
    """((all inputs), (all outputs)): the one group of vector EI."""
    from .layers import out_shape
    params0 = jax.tree_util.tree_map(jnp.asarray, params0)
    return ((tuple(range(planning.num_flat(chain.in_shape))),
             tuple(range(planning.num_flat(out_shape(chain, params0))))),)


def _chunk_plan(plan: _Plan, need_states: bool, need_pairs: bool, num_sets: int, batch: int,
                memory_budget: int) -> tuple[_Plan, int]:
    """The plan's chunk shapes, and the sets per call (fewer where every sample is one call)."""
    vector, single = plan.vector, plan.single
    if vector is not None and vector[1].backend.on_host and need_states and sorted_inputs_fit(
            vector[0].num_inputs, vector[1].in_bins, vector[0].num_outputs, vector[1].out_bins):
        # the host counts EI against sorted input states: every sample in one chunk, as many
        # sets per call as memory_budget allows
        blocks = -(-plan.samples // SAMPLE_BLOCK)
        fit = sorted_call_sets(blocks * SAMPLE_BLOCK, vector[0].num_inputs,
                               vector[0].num_outputs, memory_budget)
        if fit >= 1:
            # and at least _HOST_CALLS calls where K allows: the device computes a call while
            # the host counts the previous one
            fit = min(fit, -(-num_sets // _HOST_CALLS))
            batch = min(batch, fit)
            vector = (vector[0]._replace(num_blocks=blocks), vector[1])
            plan = plan._replace(sorted_states=True, num_chunks=1)
    together = batch if plan.vectorized else 1  # sets whose chunks are in memory at once
    if vector is not None and not plan.sorted_states:
        rows = vector[0].num_inputs + vector[0].num_outputs  # the bins (and states) of a sample
        if need_pairs and not vector[1].backend.on_host:  # plus its joint indices on the device
            rows += vector[0].num_inputs * vector[0].num_outputs
        blocks, num_chunks = _chunk_blocks(plan.samples, rows * together,
                                           planning.SCATTER_ENTRIES)
        vector = (vector[0]._replace(num_blocks=blocks), vector[1])
        plan = plan._replace(num_chunks=num_chunks)
    if single is not None:
        rows = single[0].inputs_per_chunk * (single[0].num_inputs + single[0].num_outputs)
        blocks, sensitivity_chunks = _chunk_blocks(plan.sensitivity_samples, rows * together,
                                                   planning.SINGLE_INPUT_ROWS)
        single = (single[0]._replace(num_blocks=blocks), single[1])
        plan = plan._replace(sensitivity_chunks=sensitivity_chunks)
    return plan._replace(vector=vector, single=single), batch


# ---------------------------------------------------------------- the public sweep

@progress_module.reporting
def sweep(key, chain: Chain, stacked_params, *, in_range=(0.0, 1.0), out_range=(0.0, 1.0),
          in_bins: int = 64, out_bins: int = 64, samples: int = 100_000,
          sensitivity_samples: int = 500, measures=MEASURES, policy: str = "drop",
          method: str = "auto", activation=None, max_batch: int | None = None,
          memory_budget: int = DEFAULT_CALL_MEMORY_BUDGET, devices=None,
          progress: bool = True) -> SweepResult:
    """EI, EI_parts, sensitivity and degeneracy of K parameter sets of one chain, compiled once.

    Args:
      key: PRNG key (`jax.random.key(seed)`); every set is measured with it, as a single call is.
      chain: the layer(s) to measure (`deep_ei_jax.Chain`), shared by all sets.
      stacked_params: the chain's params with a leading axis K on every array
        (`stack_params([params_0, ..., params_{K-1}])`).
      in_range, out_range: (low, high) of the input noise and bins, and of the output bins.
      in_bins, out_bins: bin counts (fixed integers).
      samples: samples of the all-inputs intervention (EI and EI_parts, from the same samples).
      sensitivity_samples: samples per input of the one-input intervention.
      measures: which of ('ei', 'ei_parts', 'sensitivity', 'degeneracy') to compute; only the
        work they need runs.
      policy: 'drop' or 'clip' for outputs outside out_range (as the single calls).
      method: 'auto' (numba's host counters on a CPU when installed, else the device kernels),
        'numba', 'samples', 'scatter' or 'onehot' (see the module docstring).
      activation: replaces the chain's last activation (a name or a JAX callable).
      max_batch: at most this many sets per compiled call (None: as many as memory_budget allows).
      devices: devices to shard the sets over (None: every local device of the default backend;
        an int n; a list of jax Devices; see `planning.sample_mesh`). Each call's sets are split
        along K over a 1-d mesh, each device measuring its own sets exactly as one device would.
        Chains measured set by set (with `lax.map`, e.g. convolutions) run on one device.
      memory_budget: bytes one call may hold; K is split into equal calls (the last one padded,
        so one program serves all) when the sets do not fit together.
      progress: a progress bar on a terminal for a sweep past 2 s; False: none; or a
        `deep_ei_jax.progress.Progress`.

    Returns:
      SweepResult with float64 arrays of shape [K] (and [K, n_in, n_out] matrices). A measure
      that counted nothing for a set (policy "drop", every value outside out_range) is NaN
      there, as in a single call; one RuntimeWarning per measure that dropped more than 1% of
      some set's values names the sets and those that counted nothing.
    """
    names = _checks.check_measures(measures, MEASURES)
    _checks.check_samples("samples", samples)
    _checks.check_samples("sensitivity_samples", sensitivity_samples)
    if max_batch is not None:
        _checks.check_samples("max_batch", max_batch)
    num_sets = _check_stacked(chain, stacked_params)
    _checks.check_params(chain, stacked_params, stacked=True)  # shapes, NaN/inf in any set
    stacked_params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), stacked_params)
    params0 = jax.tree_util.tree_map(lambda a: a[0], stacked_params)
    backend = backends.resolve(method, require_available=True)
    mesh = sample_mesh(devices)  # checked in every case
    if mesh is not None or not _vectorized(chain):
        # the host counters serve Dense chains on one device; sharded sets, and chains
        # measured set by set, count on their devices
        backend = backends.device_fallback(backend)
    binning = Binning(in_range=in_range, out_range=out_range, in_bins=in_bins, out_bins=out_bins,
                      policy=policy, method=backend, activation=activation,
                      memory_budget=memory_budget)
    plan, key, ranges, batch = plan_sweep(key, chain, params0, binning, samples=samples,
                                     sensitivity_samples=sensitivity_samples, names=names,
                                     num_sets=num_sets, max_batch=max_batch)
    merged = _measure_sets(plan, key, stacked_params, ranges, num_sets, batch, mesh, progress)
    result = _assemble(names, merged, samples, sensitivity_samples, policy)
    _warn_sets_dropped(result, policy, plan)
    return result


def _warn_sets_dropped(result: SweepResult, policy: str, plan: _Plan):
    """One warning per measure that dropped more than 1% of some set's values, as a single call
    warns (policy "drop"), naming the sets that counted nothing (their values are NaN)."""
    if policy != "drop":
        return
    sampling = (plan.vector or plan.single)[0]
    n_in, n_out = sampling.num_inputs, sampling.num_outputs
    what = "(sample, output) values"
    for measure, left_out, total, unit in (
            ("vector EI", result.dropped, result.samples, "samples"),
            ("EI_parts", result.out_of_range, result.samples * n_out, what),
            ("sensitivity", result.sensitivity_out_of_range,
             result.sensitivity_samples * n_in * n_out, what)):
        if left_out is None or total == 0:
            continue
        fraction = left_out / total
        many = np.flatnonzero(fraction > 0.01)
        if not many.size:
            continue
        worst = int(np.argmax(fraction))
        empty = np.flatnonzero(left_out >= total)
        nothing = (f"; sets {list(map(int, empty))} counted nothing, so their {measure} is NaN"
                   if empty.size else "")
        warnings.warn(
            f"{many.size} of {len(fraction)} parameter sets dropped more than 1% of the {unit} "
            f"from {measure} (an output outside out_range; worst: set {worst}, "
            f"{100 * fraction[worst]:.1f}%){nothing}; widen out_range or use policy='clip'",
            RuntimeWarning, stacklevel=4)  # the caller of sweep (`reporting` is one frame)


def _assemble(names, merged, samples, sensitivity_samples, policy) -> SweepResult:
    ei = parts = sens = degeneracy = parts_matrix = sens_matrix = dropped = oor = None
    if "ei" in merged:
        ei = merged["ei"].astype(np.float64)
    if "dropped" in merged:
        dropped = merged["dropped"].astype(np.int64)
        if ei is not None:  # a set whose every sample was dropped counted nothing
            ei = np.where(dropped >= samples, np.nan, ei)
    if "parts" in merged:
        parts_matrix = merged["parts"].astype(np.float64)
        oor = merged["out_of_range"].astype(np.int64)
        if policy == "drop":  # a set whose every (sample, output) value was dropped counted nothing
            empty = oor.reshape(len(oor), -1).sum(1) >= samples * parts_matrix.shape[2]
            parts_matrix[empty] = np.nan
        parts = parts_matrix.sum(axis=(1, 2))
    sens_oor = None
    if "sensitivity" in merged:
        sens_matrix = merged["sensitivity"].astype(np.float64)
        sens_oor = merged["sensitivity_out_of_range"].astype(np.int64)
        if policy == "drop":  # as EI_parts: a set that counted nothing is NaN
            sens_matrix[sens_oor >= sensitivity_samples * sens_matrix[0].size] = np.nan
        sens = sens_matrix.sum(axis=(1, 2))
    if "degeneracy" in names:
        degeneracy = sens - ei
    return SweepResult(
        ei=ei if "ei" in names else None, ei_parts=parts,
        sensitivity=sens if "sensitivity" in names else None, degeneracy=degeneracy,
        ei_parts_matrix=parts_matrix,
        sensitivity_matrix=sens_matrix if "sensitivity" in names else None,
        samples=samples, sensitivity_samples=sensitivity_samples, dropped=dropped,
        out_of_range=oor, sensitivity_out_of_range=sens_oor)
