"""The samples backend (`pairstats`): EI_parts statistics from the samples' bins, no tables.

Two references. The kernel itself against NumPy float64 estimators applied to tables counted
independently (np.add.at): the same integers and the same formulas, so they agree to float64
rounding (sums of ~1e4 terms of size ~1e5: absolute error far below 1e-9 bits). The whole
measurement against the tables backend on the same samples: the tables path reduces in float32,
whose rounding on a table of N samples is about N * log2(N) * 6e-8 / N ~ 1e-6 bits per pair, so
per pair 1e-5 bits absolute is allowed, and for sums over P pairs P * 1e-5.
"""
import warnings

import jax
import numpy as np
import pytest

from deep_ei_jax import backends, estimators, information, pairstats, planning, pure, sweeping

pytestmark = pytest.mark.skipif(not backends.SAMPLES.available(), reason="needs numba")
FLOAT32_PAIR = 1e-5  # bits per pair (see the module docstring)


def dense_tables(x, y, in_bins, sentinel):
    """[n_in, n_out, in_bins, sentinel] counts of (x_a, y_b), y == sentinel left out."""
    tables = np.zeros((x.shape[0], y.shape[0], in_bins, sentinel + 1), np.int64)
    for a in range(x.shape[0]):
        for b in range(y.shape[0]):
            np.add.at(tables[a, b], (x[a], y[b]), 1)
    return tables[..., :sentinel]


def random_bins(rng, samples, n_in, n_out, in_bins, out_bins):
    """Inputs uniform; outputs depending on them, with few occupied columns, a constant output
    (0) and one with ~30% of its entries left out (1)."""
    x = rng.integers(0, in_bins, (n_in, samples)).astype(np.uint8)
    y = (x[:2].sum(0)[None] + rng.integers(0, 3, (n_out, samples))) % out_bins
    y = y.astype(np.uint8)
    y[0] = 3
    y[1, rng.random(samples) < 0.3] = out_bins
    return x, y


# samples below, near and above the cells of a table (64 x occupied columns): both of the
# kernel's ways of reducing a pair, and the switch between them
@pytest.mark.parametrize("samples,in_bins,out_bins", [(60, 8, 8), (300, 64, 64), (900, 16, 16),
                                                      (6000, 8, 8), (700, 8, 32)])
def test_kernel_equals_numpy_estimators_on_the_same_counts(samples, in_bins, out_bins):
    rng = np.random.default_rng(samples)
    x, y = random_bins(rng, samples, 5, 6, in_bins, out_bins)
    bins = pairstats.SampleBins(5, 6, np.uint8, capacity=7)  # grown while appended
    bins.append(x, y, 0, samples // 3)
    bins.append(x, y, samples // 3, samples)
    tables = dense_tables(x, y, in_bins, out_bins)
    for estimator in pairstats.SUPPORTED_ESTIMATORS:
        for extras in (False, True):  # (the standard errors take the scan of the cells)
            mi, pvalues, errors, bias = pairstats.pair_statistics(
                bins, 0, samples, in_bins, out_bins, estimator=estimator, significance=extras,
                pair_errors=extras)
            np.testing.assert_allclose(mi, estimators.mutual_information(tables, estimator),
                                       rtol=0, atol=1e-9)
            np.testing.assert_allclose(bias, estimators.miller_madow_bias(tables), atol=1e-12)
            if extras:
                np.testing.assert_allclose(pvalues, estimators.g_test_pvalues(tables),
                                           rtol=1e-9, atol=1e-12)
                np.testing.assert_allclose(errors, information.mutual_information_standard_error(
                    tables.astype(np.float64)), rtol=0, atol=1e-9)
    assert np.all(mi[:, 0] == 0)  # a constant output: exactly 0
    # a sub-range of the samples (batch-means error bars count batches so)
    mi, *_ = pairstats.pair_statistics(bins, 7, samples - 5, in_bins, out_bins)
    np.testing.assert_allclose(mi, estimators.mutual_information(
        dense_tables(x[:, 7:samples - 5], y[:, 7:samples - 5], in_bins, out_bins)), atol=1e-9)


def test_kernel_refuses_estimators_without_a_closed_form():
    bins = pairstats.SampleBins(1, 1, np.uint8)
    with pytest.raises(ValueError, match="estimator must be one of"):
        pairstats.pair_statistics(bins, 0, 0, 4, 4, estimator="nsb")


def test_progress_sees_every_output():
    rng = np.random.default_rng(0)
    x, y = random_bins(rng, 2000, 40, 30, 16, 16)
    bins = pairstats.SampleBins(40, 30, np.uint8)
    bins.append(x, y, 0, 2000)
    done = []
    original = pairstats.CALL_PAIR_SAMPLES
    try:
        pairstats.CALL_PAIR_SAMPLES = 40 * 2000 * 7  # 7 outputs per kernel call
        pairstats.pair_statistics(bins, 0, 2000, 16, 16, progress=done.append)
    finally:
        pairstats.CALL_PAIR_SAMPLES = original
    assert done == [7, 7, 7, 7, 2]


def sigmoid_layer(rng, n_in, n_out, scale=3.0):
    w = np.asarray(rng.normal(size=(n_in, n_out)) * scale / np.sqrt(n_in), np.float32)
    chain = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(n_in,))
    return chain, ({"w": w},)


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # bias and dropped-values warnings
        return fn(*args, **kwargs)


def test_samples_backend_measures_what_the_tables_backend_measures(key):
    chain, params = sigmoid_layer(np.random.default_rng(1), 12, 9)
    kwargs = dict(samples=3000, in_bins=16, out_bins=16, out_range=(0.1, 0.9),
                  significance=True)
    tables, tables_info = quiet(pure.ei_parts_matrix, key, chain, params, method="numba",
                                **kwargs)
    samples, info = quiet(pure.ei_parts_matrix, key, chain, params, method="samples", **kwargs)
    assert info.method == "samples" and tables_info.method == "numba"
    np.testing.assert_allclose(samples, tables, rtol=0, atol=FLOAT32_PAIR)
    assert info.dropped == tables_info.dropped > 0  # the same entries left out
    assert abs(info.bias - tables_info.bias) <= 1e-6 * samples.size
    np.testing.assert_allclose(info.pvalues, tables_info.pvalues, rtol=1e-3, atol=1e-6)
    for estimator in ("miller_madow", "jackknife"):
        a = quiet(pure.ei_parts_matrix, key, chain, params, method="numba", estimator=estimator,
                  **kwargs)[0]
        b = quiet(pure.ei_parts_matrix, key, chain, params, method="samples",
                  estimator=estimator, **kwargs)[0]
        np.testing.assert_allclose(b, a, rtol=0, atol=FLOAT32_PAIR)


def test_error_bars_and_shuffle_correction_by_samples(key):
    chain, params = sigmoid_layer(np.random.default_rng(2), 6, 5)
    kwargs = dict(samples=4000, in_bins=8, out_bins=8, error_bars=4, shuffle_correction=2)
    tables, tables_info = quiet(pure.ei_parts_matrix, key, chain, params, method="numba",
                                **kwargs)
    samples, info = quiet(pure.ei_parts_matrix, key, chain, params, method="samples", **kwargs)
    np.testing.assert_allclose(samples, tables, rtol=0, atol=2 * FLOAT32_PAIR)
    pairs = samples.size
    assert abs(info.standard_error - tables_info.standard_error) <= 4 * pairs * FLOAT32_PAIR
    np.testing.assert_allclose(info.surrogates, tables_info.surrogates, atol=pairs * FLOAT32_PAIR)


def test_auto_counts_by_samples_where_the_tables_would_not_fit(key):
    chain, params = sigmoid_layer(np.random.default_rng(3), 20, 30)
    kwargs = dict(samples=2000, in_bins=32, out_bins=32)
    tables = 4 * 20 * 30 * 32 * 32  # 2.4 MiB of tables
    wide, info = quiet(pure.ei_parts_matrix, key, chain, params, memory_budget=tables // 2,
                       **kwargs)
    assert info.method == "samples"
    roomy, roomy_info = quiet(pure.ei_parts_matrix, key, chain, params, memory_budget=tables,
                              **kwargs)
    assert roomy_info.method == "numba"
    np.testing.assert_allclose(wide, roomy, rtol=0, atol=FLOAT32_PAIR)
    # not where the samples' bins would not fit either, nor for an estimator without a closed
    # form, nor for the adaptive rule (its sample count is not known up front)
    tiny = 2000 * (20 + 30) - 1
    assert quiet(pure.ei_parts_matrix, key, chain, params, memory_budget=tiny,
                 **kwargs)[1].method == "numba"
    assert quiet(pure.ei_parts_matrix, key, chain, params, memory_budget=tables // 2,
                 estimator="chao_shen", **kwargs)[1].method == "numba"
    assert quiet(pure.ei_parts_matrix, key, chain, params, memory_budget=tables // 2,
                 in_bins=32, out_bins=32, max_samples=20_000)[1].method == "numba"
    with pytest.raises(ValueError, match="max_samples must be at least"):
        pure.ei_parts_matrix(key, chain, params, max_samples=4000)
    with pytest.raises(ValueError, match="estimator='nsb'"):
        pure.ei_parts_matrix(key, chain, params, method="samples", estimator="nsb", **kwargs)


def test_the_rule_for_counting_by_samples():
    rule = dict(single_input=False, pairs=True, estimator="plugin", memory_budget=2 ** 28)
    # W6: 784 x 1000 x 64 x 64 int32 tables = 12.5 GiB; its 1e4 samples' bins 17 MiB
    assert planning.counts_by_samples(784, 1000, 64, 64, samples=10 ** 4, **rule)
    assert not planning.counts_by_samples(20, 10, 64, 64, samples=10 ** 6, **rule)
    assert not planning.counts_by_samples(784, 1000, 64, 64, samples=None, **rule)
    assert not planning.counts_by_samples(784, 1000, 64, 64, samples=10 ** 4,
                                          **dict(rule, estimator="nsb"))
    # sensitivity: one input's samples (and the outputs') at a time
    assert planning.counts_by_samples(784, 1000, 64, 64, samples=10 ** 5,
                                      **dict(rule, single_input=True))
    # the host loop (by name, object or 'auto' on a CPU) becomes the samples backend; a device
    # backend asked for by name stays
    assert backends.resolve("numba", wide=True) is backends.SAMPLES
    assert backends.resolve(backends.HOST, wide=True) is backends.SAMPLES
    assert backends.resolve("scatter", wide=True) is backends.SCATTER
    if jax.default_backend() == "cpu":
        assert backends.resolve("auto", one_input=True, wide=True) is backends.SAMPLES


def test_sensitivity_by_samples(key):
    chain, params = sigmoid_layer(np.random.default_rng(7), 9, 12)
    kwargs = dict(samples=700, in_bins=16, out_bins=16, out_range=(0.1, 0.9),
                  significance=True)
    tables, tables_info = quiet(pure.sensitivity_matrix, key, chain, params, method="numba",
                                **kwargs)
    samples, info = quiet(pure.sensitivity_matrix, key, chain, params, method="samples",
                          **kwargs)
    assert info.method == "samples" and tables_info.method == "numba"
    np.testing.assert_allclose(samples, tables, rtol=0, atol=FLOAT32_PAIR)
    assert info.dropped == tables_info.dropped > 0
    np.testing.assert_allclose(info.pvalues, tables_info.pvalues, rtol=1e-3, atol=1e-6)
    # 'auto' picks it where one input's tables would not fit, and a sweep does as single calls
    budget = 4 * 9 * 12 * 16 * 16 - 1
    auto, auto_info = quiet(pure.sensitivity_matrix, key, chain, params, memory_budget=budget,
                            **kwargs)
    assert auto_info.method == "samples" and auto.tobytes() == samples.tobytes()
    stacked = jax.tree_util.tree_map(lambda a: np.stack([a, a[::-1]]), params)
    swept = quiet(sweeping.sweep, key, chain, stacked, measures=("sensitivity",),
                  samples=700, sensitivity_samples=700, in_bins=16, out_bins=16,
                  out_range=(0.1, 0.9), memory_budget=budget)
    for k in range(2):
        single, single_info = quiet(pure.sensitivity_matrix, key, chain,
                                    jax.tree_util.tree_map(lambda a: a[k], stacked),
                                    samples=700, in_bins=16, out_bins=16,
                                    out_range=(0.1, 0.9), memory_budget=budget)
        assert single_info.method == "samples"
        assert swept.sensitivity_matrix[k].tobytes() == single.tobytes()
        assert swept.sensitivity_out_of_range[k] == single_info.out_of_range


def test_groups_and_pairs_together_by_samples(key):
    chain, params = sigmoid_layer(np.random.default_rng(4), 8, 6)
    kwargs = dict(samples=3000, in_bins=8, out_bins=8)
    (ei, parts), info = quiet(pure.ei_and_ei_parts, key, chain, params, method="samples",
                              **kwargs)
    (ei_t, parts_t), _ = quiet(pure.ei_and_ei_parts, key, chain, params, method="numba",
                               **kwargs)
    assert ei == ei_t  # vector EI: the same state counters
    assert abs(parts - parts_t) <= 48 * FLOAT32_PAIR


def test_sweep_by_samples_equals_single_calls_exactly(key):
    rng = np.random.default_rng(5)
    n_in, n_out = 10, 14
    chain, _ = sigmoid_layer(rng, n_in, n_out)
    stacked = ({"w": np.asarray(rng.normal(size=(3, n_in, n_out)) * 3 / np.sqrt(n_in),
                                np.float32)},)
    kwargs = dict(samples=2500, in_bins=16, out_bins=16, out_range=(0.1, 0.9),
                  memory_budget=4 * n_in * n_out * 16 * 16 - 1)  # the tables would not fit
    result = quiet(sweeping.sweep, key, chain, stacked, measures=("ei_parts",), **kwargs)
    # asked for by name, with EI too: the pairs are then counted on a second thread beside the
    # joint states
    named = dict(kwargs, memory_budget=2 ** 30, method="samples")
    both = quiet(sweeping.sweep, key, chain, stacked, measures=("ei", "ei_parts"), **named)
    for k in range(3):
        params = jax.tree_util.tree_map(lambda a: a[k], stacked)
        matrix, info = quiet(pure.ei_parts_matrix, key, chain, params, **kwargs)
        assert info.method == "samples"
        assert result.ei_parts_matrix[k].tobytes() == matrix.tobytes()
        assert both.ei_parts_matrix[k].tobytes() == matrix.tobytes()
        assert result.out_of_range[k] == info.out_of_range > 0
        assert both.ei[k] == quiet(pure.ei, key, chain, params, **named)[0]


def test_a_call_by_samples_reports_its_outputs(key):
    from deep_ei_jax.progress import Progress

    class Recording(Progress):
        def __init__(self):
            super().__init__()
            self.passes = []

        def start(self, total, *, unit, desc):
            self.passes.append([total, unit, 0, 0])

        def update(self, n):
            self.passes[-1][2] += n
            self.passes[-1][3] += 1

    chain, params = sigmoid_layer(np.random.default_rng(6), 30, 50)
    recording = Recording()
    original = pairstats.CALL_PAIR_SAMPLES
    try:
        pairstats.CALL_PAIR_SAMPLES = 30 * 2000 * 8  # 8 outputs per kernel call
        quiet(pure.ei_parts, key, chain, params, samples=2000, in_bins=16, out_bins=16,
              method="samples", progress=recording)
    finally:
        pairstats.CALL_PAIR_SAMPLES = original
    assert recording.passes == [[50, "output", 50, 7]]  # 6 calls of 8 outputs and one of 2
