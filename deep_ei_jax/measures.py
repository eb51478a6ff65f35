"""The measures, each one pipeline: sample -> apply -> bin -> count -> information.

Every public function takes a PRNG key first, a static `Chain` and its params, and returns
`(value, Info)`. This module holds the public measures only: `planning` checks the arguments and
fixes the static records, `kernels` holds the jitted chunk kernels (sampling, the layer, binning
and counting fused), and `driver` feeds them chunks and feeds the counting backend (`backends`)
their results, syncing with the host once per chunk at most.
"""
from __future__ import annotations

import functools
import inspect
import math
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks, adaptive, backends, driver, exact, kernels, planning
from . import estimators as _estimators
from . import progress as progress_module
from .binning import POLICIES
from .layers import Chain
from .planning import Binning, Plan, Statistics, sample_mesh  # noqa: F401 (sample_mesh: public)

DEFAULT_STATE_MEMORY_BUDGET = 8 * 2 ** 30  # bytes the distinct joint states may take on the host


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
      estimator: "plugin", "miller_madow", "jackknife", "nsb" or "chao_shen" ("exact" for the
        exact method).
      standard_error, confidence_interval: with `error_bars=k`, the batch-means standard error of
        the value (the spread of its estimates on k disjoint batches of the samples / sqrt(k)) and
        a 95% interval value -+ t(k-1) * standard_error; None otherwise.
      pvalues, qvalues: with `significance=True` (matrices), per-edge G-test p-values against
        independence and their Benjamini-Hochberg q-values; None otherwise.
      bias: the estimated bias (bits) of the plug-in value of these counts, to first order: the
        Miller-Madow term (m_xy - m_x - m_y + 1) / (2 N ln 2), m the occupied cells, rows and
        columns of a pair's table (summed over pairs for matrices, EI_parts and sensitivity) or
        the distinct joint, input and output states seen (vector EI; per group for groups).
        It is what the plug-in value carries whatever `estimator` was asked for (miller_madow
        subtracts it). NaN when nothing was counted; None for method="exact".
      surrogates, surrogate_spread: with `shuffle_correction=k`, the EI_parts of each of the k
        input-shuffled surrogates and their sample standard deviation (None for k = 1).
      seconds: the wall-clock time the measure took, in seconds (compilation included).
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
    bias: Any = None
    surrogates: Any = None
    surrogate_spread: Any = None
    seconds: float | None = None

    @property
    def dropped_fraction(self) -> float:
        return self.dropped / self.total if self.total else 0.0


def _warn_dropped(info: Info, what: str, stacklevel: int = 4):
    if info.dropped_fraction > 0.01:
        warnings.warn(
            f"{info.dropped} of {info.total} {what} ({100 * info.dropped_fraction:.1f}%) had an "
            f"output outside out_range and were dropped; widen out_range, use "
            f"out_range='dynamic', or policy='clip'", RuntimeWarning, stacklevel=stacklevel)


DEFAULT_BIAS_WARNING = 0.1  # warn when the plug-in bias exceeds this fraction of the value


def check_bias_warning(value):
    """`bias_warning`: None or 0 (off) or a positive fraction."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value) or value < 0:
        raise ValueError("bias_warning must be None or a fraction >= 0 of the value (0.1: warn "
                         f"when the estimated plug-in bias exceeds 10% of it); got {value!r}")


def _warn_bias(value, bias, estimator: str, fraction, what: str, stacklevel: int = 4):
    """Warns when a plug-in value's estimated bias exceeds `fraction` of it (plug-in only: the
    other estimators remove at least this first-order term)."""
    if not fraction or estimator != "plugin" or not (math.isfinite(value)
                                                       and math.isfinite(bias)):
        return
    if abs(bias) > fraction * abs(value):
        share = f"{100 * abs(bias) / abs(value):.0f}% of" if value else "more than"
        warnings.warn(
            f"the estimated plug-in bias of {what} is {bias:.4g} bits, {share} its value "
            f"{value:.4g} bits (bias_warning={fraction}); use more samples, "
            "estimator='jackknife', or method='exact' (one dense or conv layer); "
            "Info.bias has the estimate", RuntimeWarning, stacklevel=stacklevel)


def _nothing_counted(info: Info) -> bool:
    """Whether every value was left out (policy "drop"): the measure counted nothing."""
    return info.total > 0 and info.dropped >= info.total


def _info(plan: Plan, samples, dropped, out_of_range, total, converged, estimates, **extra):
    return Info(samples=samples, dropped=dropped, out_of_range=out_of_range, total=total,
                converged=converged, estimates=tuple(estimates), out_low=plan.out_low,
                out_high=plan.out_high, out_bins=plan.out_bins,
                method=plan.counting.backend.name, estimator=plan.statistics.estimator, **extra)


def _binning(in_range, out_range, in_bins, out_bins, policy, method, activation, memory_budget,
             devices=None) -> Binning:
    return Binning(in_range=in_range, out_range=out_range, in_bins=in_bins, out_bins=out_bins,
                   policy=policy, method=method, activation=activation,
                   memory_budget=memory_budget, devices=devices)


def _timed(measure):
    """The public `measure`, timed into its `Info.seconds` and reporting its progress: its keyword
    `progress` (True, False or a `progress.Progress`) reaches it as a `Progress`, closed when the
    measure returns or raises. It is one more frame: the measures' warnings count it in their
    `stacklevel`, so that they point at the caller's line."""
    @functools.wraps(measure)
    def timed(*args, progress=True, **kwargs):
        started = time.perf_counter()
        with progress_module.reporter(progress) as reporter:
            value, info = measure(*args, progress=reporter, **kwargs)
        return value, info._replace(seconds=time.perf_counter() - started)
    return timed


def _fixed_samples_for_error_bars(error_bars, mode):
    if error_bars and mode != "fixed":
        raise ValueError("error_bars needs a fixed number of samples; got samples=None")


@_timed
def ei_parts_matrix(key, chain: Chain, params, *, in_range=(0.0, 1.0), out_range=(0.0, 1.0),
                    in_bins: int = 64, out_bins=64, samples: int | None = None,
                    threshold: float = 0.05, extrapolate: bool = False, policy: str = "drop",
                    method: str = "auto", activation=None, max_samples: int = 2 ** 27,
                    memory_budget: int = planning.DEFAULT_TABLE_MEMORY_BUDGET, devices=None,
                    estimator: str = "plugin", error_bars: int = 0, significance: bool = False,
                    grid_step: float = exact.DEFAULT_GRID_STEP, target_error: float | None = None,
                    bias_warning: float | None = DEFAULT_BIAS_WARNING, shuffle_correction: int = 0,
                    progress: bool = True):
    """The EI_parts matrix: I(x_A; y_B) for every input A and output B under uniform noise.

    Args:
      key: PRNG key (`jax.random.key(seed)`).
      chain, params: the layer(s) to measure (`deep_ei_jax.Chain` and one dict per layer).
      in_range: (low, high) of the uniform input noise and of the input bins.
      out_range: (low, high) of the output bins, or 'dynamic' (per output, from the first 10k
        samples' min and max).
      in_bins: input bins; out_bins: output bins or 'dynamic' (the input bins' width).
      samples: a fixed number of samples; None: adaptive (`threshold`, deep-ei's doubling rule).
      threshold: adaptive stopping threshold in (0, 1).
      extrapolate: estimate at 100k..2M samples and return the fitted asymptote a/n^e + C.
      policy: "drop" out-of-range outputs (per pair) or "clip" them into the end bins.
      method: "auto" | "scatter" | "onehot" | "numba" | "samples" (`deep_ei_jax.backends`); or
        "exact": the infinite-sample value without sampling (an affine layer or span with a
        monotone activation; see `deep_ei_jax.exact`), about 1.5 * grid_step**2 bits per pair.
      activation: replaces the chain's last activation (a name or a JAX callable).
      max_samples: the adaptive mode stops here, with `info.converged` False.
      memory_budget: bytes of counts held at once (tables or bins: `planning.counts_by_samples`).
      devices: where chunks run: None (all local devices of the default backend, or the one
        pinned with `jax.default_device`), an int n (the first n) or a list of jax Devices. With
        several, each chunk's sample blocks are sharded over them (shard_map + psum of the integer
        counts): results are identical to one device's.
      estimator: "plugin" (deep-ei's), "miller_madow", "jackknife", "nsb" or "chao_shen"
        (bias-corrected; see `deep_ei_jax.estimators` and the guide's "Estimates").
      error_bars: k >= 2 batches for a batch-means standard error and 95% interval of the sum
        (fixed `samples` only; costs a second pass), 0 for none.
      significance: per-edge G-test p-values and Benjamini-Hochberg q-values in the Info.
      grid_step: the exact method's accuracy knob.
      target_error: adaptive mode (samples=None) stopping when the standard error of the sum falls
        to this many bits instead of deep-ei's threshold rule. The error is the delta method's
        per pair (`information.mutual_information_standard_error`) combined as
        sqrt(sum of squares), i.e. treating pairs' sampling errors as uncorrelated; reported in
        `Info.standard_error` with a normal 95% interval.
      bias_warning: a RuntimeWarning when the plug-in value's estimated bias (`Info.bias`)
        exceeds this fraction of it (estimator="plugin", no shuffle correction); None/0: never.
      shuffle_correction: k >= 1 (fixed `samples`): subtract per pair the mean of k surrogates,
        N fresh samples each with the inputs' bins permuted over each chunk's samples (margins
        kept, dependence broken); in `Info.surrogates` and `Info.surrogate_spread`.
      progress: a progress bar on a terminal for a call past 2 s; False: none; or a
        `deep_ei_jax.progress.Progress` (another stream, delay, or forced).

    Returns:
      (matrix float64 [n_in, n_out] in bits, Info). All NaN when nothing was counted (policy
      "drop"); a pair that counted nothing while others did gives 0, as deep-ei's.
    """
    check_bias_warning(bias_warning)
    if method == "exact":
        return _exact_matrix("ei_parts_matrix", chain, params, in_range, out_range, in_bins,
                             out_bins, policy, activation, grid_step)
    mode = _sample_mode(samples, threshold, extrapolate, max_samples)
    _check_parts_options(mode, samples, extrapolate, error_bars, target_error, shuffle_correction)
    fixed = samples if mode == "fixed" else None
    binning = _binning(in_range, out_range, in_bins, out_bins, policy, method, activation,
                       memory_budget, devices)
    plan = planning.plan(key, chain, params, binning, samples_hint=fixed or adaptive.FIRST_STEP,
                         single_input=False, pairs=True, groups=(), samples_max=fixed,
                         statistics=Statistics(estimator, bool(significance),
                                               target_error is not None))
    counts = driver.PairwiseCounts(plan, memory_budget)
    matrix, oor, pvalues, converged, estimates, sum_error, bias = _parts_totals(
        counts, mode, samples, threshold, max_samples, target_error, progress)
    n, dropped = estimates[-1][0], int(oor.sum()) if policy == "drop" else 0
    info = _info(plan, n, dropped, int(oor.sum()), n * plan.sampling.num_outputs, converged,
                 estimates, bias=float(bias.sum()), **_significance(pvalues))
    matrix, info = _empty_if_nothing_counted(matrix, info)
    info = _parts_error_bars(info, counts, float(matrix.sum()), target_error, sum_error,
                             error_bars)
    return _shuffled_and_warned(plan, memory_budget, matrix, info, shuffle_correction,
                                bias_warning, progress)


def _shuffled_and_warned(plan: Plan, memory_budget, matrix, info: Info, shuffle_correction,
                         bias_warning, reporter):
    """(matrix, info) of EI_parts with the shuffle correction, if asked for, and its warnings
    (dropped values, and plug-in bias unless corrected by shuffling)."""
    if shuffle_correction:
        matrix, info = _shuffle_corrected(plan, memory_budget, matrix, info, shuffle_correction,
                                          reporter)
    _warn_dropped(info, "(sample, output) values", stacklevel=5)
    _warn_bias(float(matrix.sum()), info.bias, info.estimator,
               None if shuffle_correction else bias_warning, "EI_parts", stacklevel=5)
    return matrix, info


def _check_parts_options(mode, samples, extrapolate, error_bars, target_error,
                         shuffle_correction):
    _fixed_samples_for_error_bars(error_bars, mode)
    _check_target_error(target_error, mode, samples, extrapolate)
    _check_shuffle(shuffle_correction, mode)


def _empty_if_nothing_counted(matrix, info: Info):
    """(matrix, info), all NaN (bias too) when nothing was counted."""
    if not _nothing_counted(info):
        return matrix, info
    return np.full_like(matrix, np.nan), info._replace(bias=math.nan)


def _parts_error_bars(info: Info, counts, value: float, target_error, sum_error, error_bars):
    """`info` with the standard error and 95% interval of the EI_parts `value`: the delta
    method's (target_error) or batch means' (error_bars=k), if asked for."""
    if target_error is not None:
        info = info._replace(standard_error=sum_error, confidence_interval=(
            value - 1.96 * sum_error, value + 1.96 * sum_error))
    if error_bars:
        batches = [counts.batch_matrix(a, b).sum()
                   for a, b in driver.batch_edges(info.samples, error_bars)]
        error, interval = _estimators.batch_means_interval(batches, value)
        info = info._replace(standard_error=float(error), confidence_interval=interval)
    return info


def _check_shuffle(shuffle_correction, mode):
    if isinstance(shuffle_correction, bool) or not isinstance(
            shuffle_correction, (int, np.integer)) or shuffle_correction < 0:
        raise ValueError("shuffle_correction must be a number k >= 0 of surrogates; got "
                         f"{shuffle_correction!r}")
    if shuffle_correction and mode != "fixed":
        raise ValueError("shuffle_correction needs a fixed number of samples; got samples=None")


def _shuffle_corrected(plan: Plan, memory_budget, matrix, info: Info, k: int, reporter):
    """(matrix minus the mean of k input-shuffled surrogates' matrices, Info with the
    surrogates' EI_parts and spread). Surrogate i draws its own samples (key folded with i)."""
    shuffled = plan.counting._replace(shuffle=True)
    stream = jax.random.fold_in(plan.key, kernels.SHUFFLE_STREAM)
    surrogates = [driver.PairwiseCounts(plan._replace(key=jax.random.fold_in(stream, i),
                                                      counting=shuffled),
                                        memory_budget).matrix(info.samples, progress=reporter)[0]
                  for i in range(k)]
    sums = tuple(float(m.sum()) for m in surrogates)
    spread = float(np.std(sums, ddof=1)) if k > 1 else None
    interval = info.confidence_interval  # error bars of the value, moved with it
    if interval is not None:
        interval = (interval[0] - np.mean(sums), interval[1] - np.mean(sums))
    return (matrix - np.mean(surrogates, axis=0),
            info._replace(surrogates=sums, surrogate_spread=spread, confidence_interval=interval))


def _check_target_error(target_error, mode, samples, extrapolate):
    if target_error is None:
        return
    if mode != "adaptive":
        raise ValueError("target_error is a stopping rule for samples=None; got "
                         f"samples={samples}, extrapolate={extrapolate}")
    if not (isinstance(target_error, (int, float)) and math.isfinite(target_error)
            and target_error > 0):
        raise ValueError(f"target_error must be a positive number of bits; got {target_error!r}")


def _parts_totals(counts, mode, samples, threshold, max_samples, target_error, reporter):
    """Grows the EI_parts counts over the mode's sample totals until its rule stops them:
    (matrix, out-of-range, p-values, converged, estimates, standard error of the sum or None,
    the plug-in bias per pair)."""
    estimates, sum_error = [], None
    if mode == "fixed":
        totals, converged = [samples], None
    elif mode == "extrapolate":
        totals, converged = adaptive.extrapolation_totals(), None
    else:
        totals, converged = adaptive.doubling_totals(limit=max_samples), False
    for total in totals:
        matrix, oor, pvalues, pair_errors, bias = counts.matrix(total, progress=reporter)
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
                      f"{max_samples}", RuntimeWarning, stacklevel=4)
    return matrix, oor, pvalues, converged, estimates, sum_error, bias


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
                      stacklevel=4)
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
    if max_samples < adaptive.FIRST_STEP:
        raise ValueError(f"max_samples must be at least the adaptive rule's first step "
                         f"({adaptive.FIRST_STEP} samples); got {max_samples}")
    return "adaptive"


@_timed
def eis_between_groups(key, chain: Chain, params, groups, *, in_range=(0.0, 1.0),
                       out_range=(0.0, 1.0), in_bins: int = 64, out_bins=64,
                       samples: int | None = None, threshold: float = 0.05,
                       policy: str = "drop", method: str = "auto", activation=None,
                       max_samples: int = 2 ** 27,
                       memory_budget: int = planning.DEFAULT_TABLE_MEMORY_BUDGET,
                       pairs: bool = False, devices=None,
                       state_memory_budget: int = DEFAULT_STATE_MEMORY_BUDGET,
                       estimator: str = "plugin", error_bars: int = 0,
                       bias_warning: float | None = DEFAULT_BIAS_WARNING, progress: bool = True):
    """I(X_G; Y_H) for each (G, H) in `groups` (indices into the flattened inputs and outputs).

    A sample with any output outside out_range is dropped whole (policy "drop"). `samples=None`
    is adaptive with deep-ei's vector rule: stop when doubling moves every group's estimate by
    less than `threshold` bits. With `pairs=True` the EI_parts matrix of the same samples is
    returned too: ((values, matrix), Info). `devices` as in `ei_parts_matrix`. A run whose
    distinct states could exceed `state_memory_budget` bytes is refused before it starts; an
    adaptive run stops there (not converged, with a warning). `estimator` corrects each entropy
    of I = H(X) + H(Y) - H(X,Y) (see `deep_ei_jax.estimators.entropy`); `error_bars=k` adds
    batch-means standard errors and 95% intervals per group (fixed samples only). For
    estimator="nsb" the number of possible states is in_bins ** len(G) for X_G and the product
    of the outputs' bins for Y_H. `Info.bias` holds each group's estimated plug-in bias;
    `bias_warning` as in `ei_parts_matrix`, per group; `progress` as there.

    Returns:
      (list of floats in bits, Info). NaN for every group when nothing was counted (every sample
      dropped under policy "drop").
    """
    return _groups(key, chain, params, groups, _binning(
        in_range, out_range, in_bins, out_bins, policy, method, activation, memory_budget,
        devices), samples=samples, threshold=threshold, max_samples=max_samples, pairs=pairs,
        state_memory_budget=state_memory_budget, estimator=estimator, error_bars=error_bars,
        bias_warning=bias_warning, progress=progress)


def _groups(key, chain, params, groups, binning: Binning, *, samples, threshold, max_samples,
            pairs, state_memory_budget, estimator, error_bars, bias_warning, progress,
            params_checked=False):
    """`eis_between_groups` (see there) with its binning arguments gathered."""
    check_bias_warning(bias_warning)
    if binning.method == "exact":
        raise NotImplementedError(
            "vector EI and groups have no exact method (it exists for EI_parts and sensitivity "
            "of one dense layer); use a sampling method: "
            + ", ".join(repr(m) for m in backends.METHODS[:-1])
            + f" or {backends.METHODS[-1]!r}")
    if isinstance(groups, tuple) and not groups:
        raise ValueError("groups must contain at least one (input_indices, output_indices) pair")
    _checks.check_positive_int("state_memory_budget", state_memory_budget)
    mode = _sample_mode(samples, threshold, False, max_samples)
    _fixed_samples_for_error_bars(error_bars, mode)
    hint = samples if mode == "fixed" else adaptive.FIRST_STEP
    plan = planning.plan(key, chain, params, binning, samples_hint=hint, single_input=False,
                         pairs=pairs, groups=groups, statistics=Statistics(estimator),
                         params_checked=params_checked,
                         samples_max=samples if mode == "fixed" else None)
    if mode == "fixed":
        driver.check_state_memory(plan.counting, samples, state_memory_budget)
    else:  # adaptive: stop (unconverged, with a warning) where the states could outgrow it
        max_samples = min(max_samples,
                          state_memory_budget // driver.state_bytes_per_sample(plan.counting))
        if max_samples < adaptive.FIRST_STEP:
            raise ValueError(f"state_memory_budget={state_memory_budget} bytes cannot hold the "
                             f"joint states of the adaptive rule's first {adaptive.FIRST_STEP} "
                             f"samples; raise it or give samples=")
    # The pairwise tables ride along in the same chunks when they fit one block; otherwise they
    # are streamed block by block afterwards, over the same samples.
    together = pairs and plan.counting.block_size >= plan.sampling.padded_outputs
    state_plan = plan if together else plan._replace(
        counting=plan.counting._replace(pairs=False))
    values, pair_carry, info = _grow_states(plan, state_plan, together, mode, samples, threshold,
                                            max_samples, progress)
    if error_bars:
        info = _group_error_bars(state_plan, info, values, error_bars, progress)
    _warn_dropped(info, "samples", stacklevel=5)
    for value, bias in zip(values, info.bias):
        _warn_bias(value, bias, estimator, bias_warning,
                   "vector EI" if len(values) == 1 else "a group's EI", stacklevel=5)
    if not pairs:
        return values, info
    if together:
        stats = driver.block_statistics(plan, pair_carry[0])
        matrix = driver.assemble_blocks(plan.sampling.num_outputs, plan.statistics,
                                        [(stats, None)])[0]
    else:
        pair_plan = plan._replace(counting=plan.counting._replace(groups=()))
        matrix = driver.PairwiseCounts(pair_plan, binning.memory_budget).matrix(
            info.samples, progress=progress)[0]
    if _nothing_counted(info):
        matrix = np.full_like(matrix, np.nan)
    return (values, matrix), info


def _log_states(plan: Plan) -> list:
    """(ln K_X, ln K_Y) per group: the numbers of possible input and output states."""
    in_bins = math.log(plan.counting.in_bins)
    out_bins = np.log(np.asarray(plan.out_bins, np.float64))
    return [(len(inputs) * in_bins, float(out_bins[list(outputs)].sum()))
            for inputs, outputs in plan.counting.groups]


def _state_estimates(counters, estimator: str, log_states) -> tuple[list, list]:
    """(values, estimated plug-in biases) of each group's state counters; NaN for a group that
    counted nothing."""
    values, biases = [], []
    for (cx, cy, cxy), logs in zip(counters, log_states):
        spectra = [_estimators.count_spectrum(c.counts()) for c in (cx, cy, cxy)]
        if not spectra[2][0].size:
            values.append(math.nan)
            biases.append(math.nan)
            continue
        values.append(_estimators.spectra_mutual_information(*spectra, estimator,
                                                             log_states=logs))
        biases.append(_estimators.states_first_order_bias(*spectra))
    return values, biases


def _grow_states(plan, state_plan, together, mode, samples, threshold, max_samples, reporter):
    """Counts the groups' joint states over the mode's sample totals until its rule stops:
    (values, the pairwise carry when counted together, Info)."""
    counters = driver.new_state_counters(plan.counting)
    estimator = plan.statistics.estimator
    pair_carry = driver.new_pair_carry(plan.sampling, plan.counting) if together else None
    totals = [samples] if mode == "fixed" else adaptive.doubling_totals(limit=max_samples)
    converged = None if mode == "fixed" else False
    estimates, history, dropped, out_of_range, counted = [], [], 0, 0, 0
    for total in totals:
        pair_carry, step_dropped, step_out = driver.run_chunks(
            state_plan, counted, total, pair_carry=pair_carry, counters=counters,
            progress=reporter)
        dropped, out_of_range, counted = dropped + step_dropped, out_of_range + step_out, total
        values, biases = _state_estimates(counters, estimator, _log_states(plan))
        history.append(values)
        estimates.append((total, values[0] if len(values) == 1 else tuple(values)))
        if all(math.isnan(v) for v in values):  # nothing counted: more samples will not help
            break
        if mode == "adaptive" and len(history) >= 2 and all(
                adaptive.vector_converged([(0, a), (0, b)], threshold)
                for a, b in zip(history[-2], history[-1])):
            converged = True
            break
    if mode == "adaptive" and not converged:
        warnings.warn(f"vector EI did not converge to threshold={threshold} within max_samples="
                      f"{max_samples}", RuntimeWarning, stacklevel=5)
    info = _info(plan, counted, dropped, out_of_range, counted, converged, estimates,
                 bias=tuple(biases))
    return values, pair_carry, info


def _group_error_bars(state_plan, info, values, error_bars, reporter):
    """`info` with batch-means standard errors and 95% intervals per group."""
    batches = []
    no_pairs = state_plan._replace(counting=state_plan.counting._replace(pairs=False))
    for a, b in driver.batch_edges(info.samples, error_bars):
        fresh = driver.new_state_counters(state_plan.counting)
        driver.run_chunks(no_pairs, a, b, counters=fresh, progress=reporter)
        batches.append(_state_estimates(fresh, state_plan.statistics.estimator,
                                        _log_states(state_plan))[0])
    error, interval = _estimators.batch_means_interval(batches, np.asarray(values))
    return info._replace(standard_error=tuple(error.tolist()),
                         confidence_interval=tuple(zip(*(v.tolist() for v in interval))))


def _whole_layer(chain: Chain, params):
    """((all inputs), (all outputs)), the one group of vector EI (params checked here)."""
    from .layers import out_shape
    _checks.check_params(chain, params)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return ((tuple(range(planning.num_flat(chain.in_shape))),
             tuple(range(planning.num_flat(out_shape(chain, params))))),)


def _whole_layer_measure(key, chain, params, kwargs, **fixed):
    """`eis_between_groups` of the whole layer with its params checked once; `kwargs` as the
    public measures take them, `fixed` what the measure sets itself."""
    groups = _whole_layer(chain, params)
    for name in kwargs:  # as Python reports these for a call of eis_between_groups
        if name in fixed:
            raise TypeError(f"eis_between_groups() got multiple values for keyword argument "
                            f"{name!r}")
        if name not in _GROUP_DEFAULTS:
            raise TypeError(f"eis_between_groups() got an unexpected keyword argument {name!r}")
    options = dict(_GROUP_DEFAULTS, **kwargs, **fixed)
    binning = Binning(**{f: options.pop(f) for f in planning.BINNING_FIELDS})
    return _groups(key, chain, params, groups, binning, params_checked=True, **options)


# the keyword arguments of eis_between_groups and their defaults
_GROUP_DEFAULTS = {name: parameter.default
                   for name, parameter in inspect.signature(eis_between_groups).parameters.items()
                   if parameter.kind is inspect.Parameter.KEYWORD_ONLY}


@_timed
def ei(key, chain: Chain, params, **kwargs):
    """Vector EI: I(X; Y) between the whole binned input and output vectors. Same arguments as
    `eis_between_groups` without `groups`. Returns (float bits, Info)."""
    values, info = _whole_layer_measure(key, chain, params, kwargs)
    return values[0], _single_group(info)


@_timed
def ei_and_ei_parts(key, chain: Chain, params, **kwargs):
    """(vector EI, EI_parts) from the same samples. Returns ((float, float), Info)."""
    (values, matrix), info = _whole_layer_measure(key, chain, params, kwargs, pairs=True)
    return (values[0], float(matrix.sum())), _single_group(info)


def _single_group(info: Info) -> Info:
    """The Info of a one-group measurement with its bias and error bars as scalars."""
    info = info._replace(bias=info.bias[0])
    if info.standard_error is None:
        return info
    return info._replace(standard_error=info.standard_error[0],
                         confidence_interval=info.confidence_interval[0])


@_timed
def sensitivity_matrix(key, chain: Chain, params, *, samples: int = 500, in_range=(0.0, 1.0),
                       out_range=(0.0, 1.0), in_bins: int = 64, out_bins=64,
                       policy: str = "drop", method: str = "auto", activation=None,
                       memory_budget: int = planning.DEFAULT_TABLE_MEMORY_BUDGET, devices=None,
                       estimator: str = "plugin", significance: bool = False,
                       bias_warning: float | None = DEFAULT_BIAS_WARNING, progress: bool = True):
    """The sensitivity matrix: I(x_A; y_B) when only input A is noised (uniform on in_range) and
    every other input is 0, for every pair. It runs on the default device whatever `devices`
    says (checked only): it draws few samples per input. `method="exact"` computes it without
    sampling (a Dense or Conv2d layer: each table cell is a length ratio); `estimator` and
    `significance`, `bias_warning`, `progress` and `Info.bias` as in `ei_parts_matrix`.

    Returns:
      (matrix float64 [n_in, n_out] in bits, Info); `Info.samples` is per input. All NaN when
      nothing was counted.
    """
    check_bias_warning(bias_warning)
    if method == "exact":
        return _exact_matrix("sensitivity_matrix", chain, params, in_range, out_range, in_bins,
                             out_bins, policy, activation, exact.DEFAULT_GRID_STEP)
    _checks.check_samples("samples", samples)
    sample_mesh(devices)  # the argument is checked all the same
    plan = planning.plan(key, chain, params, _binning(in_range, out_range, in_bins, out_bins,
                                                      policy, method, activation, memory_budget),
                         samples_hint=samples, single_input=True, pairs=True, groups=(),
                         statistics=Statistics(estimator, bool(significance)),
                         samples_max=samples)
    sampling = plan.sampling
    stats, oor = driver.sensitivity_blocks(plan, samples, progress=progress)
    stats = jax.device_get(stats)
    matrix = np.concatenate([m[0] for m in stats], axis=0)[:sampling.num_inputs]
    pvalues = (np.concatenate([m[1] for m in stats], axis=0)[:sampling.num_inputs].astype(
        np.float64) if significance else None)
    total = samples * sampling.num_inputs * sampling.num_outputs
    bias = float(np.concatenate([m[3] for m in stats], axis=0)[:sampling.num_inputs].sum())
    info = _info(plan, samples, oor if policy == "drop" else 0, oor, total, None, (),
                 bias=bias, **_significance(pvalues))
    matrix, info = _empty_if_nothing_counted(matrix.astype(np.float64), info)
    _warn_dropped(info, "(sample, output) values")
    _warn_bias(float(matrix.sum()), info.bias, info.estimator, bias_warning, "sensitivity")
    return matrix, info


def sensitivity(key, chain: Chain, params, **kwargs):
    """Sensitivity: the sum of the sensitivity matrix. Same arguments as `sensitivity_matrix`.
    Returns (float bits, Info)."""
    matrix, info = sensitivity_matrix(key, chain, params, **kwargs)
    return float(matrix.sum()), info


def degeneracy(key, chain: Chain, params, *, ei_kind: str = "vector",
               sensitivity_samples: int = 500,
               **kwargs):
    """Degeneracy = sensitivity - EI (`ei_kind="vector"`) or sensitivity - EI_parts
    (`ei_kind="parts"`). Keyword arguments are those of `ei` / `ei_parts`; sensitivity uses
    `sensitivity_samples` and the same binning. Returns (float bits, (ei Info, sensitivity
    Info))."""
    _checks.check_choice("ei_kind", ei_kind, ("vector", "parts"))
    _checks.check_samples("sensitivity_samples", sensitivity_samples)
    ei_key, sensitivity_key = jax.random.split(_as_key(key))
    measure = ei if ei_kind == "vector" else ei_parts
    ei_value, ei_info = measure(ei_key, chain, params, **kwargs)
    binning = {k: kwargs[k] for k in ("in_range", "out_range", "in_bins", "out_bins", "policy",
                                      "method", "activation", "memory_budget", "devices",
                                      "estimator", "bias_warning", "progress")
               if k in kwargs}
    sens, sens_info = sensitivity(sensitivity_key, chain, params, samples=sensitivity_samples,
                                  **binning)
    return sens - ei_value, (ei_info, sens_info)


def _as_key(key):
    if isinstance(key, jax.Array) and key.shape == (2,) and key.dtype == jnp.uint32:
        return jax.random.wrap_key_data(key)
    return key
