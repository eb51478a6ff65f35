"""Estimators, tests and error bars on count tables.

Ground truth comes from exact.py: count tables are drawn as multinomials from the exact joint
table of a layer, so the true MI is known exactly and each draw is an honest N-sample histogram.
Tolerances are stated per test from the spread over the draws.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deep_ei_jax.estimators import (batch_means_standard_error, benjamini_hochberg,
                                    expected_plugin_mutual_information, g_test_pvalues,
                                    miller_madow_bias, mutual_information, permutation_pvalues)
from deep_ei_jax.exact import exact_ei_parts_matrix, exact_ei_parts_tables


def _plugin_nats(c):
    c = np.asarray(c, float)
    n = c.sum()
    if n == 0:
        return 0.0
    rows, cols = c.sum(1, keepdims=True), c.sum(0, keepdims=True)
    nonzero = c > 0
    return float((c[nonzero] * np.log(c[nonzero] * n / (rows * cols)[nonzero])).sum() / n)


def _brute_jackknife_bits(c):
    """N I - (N - 1) mean of I without each sample, by actually removing each sample."""
    n = int(c.sum())
    leave_one_out = []
    for i, j in zip(*np.nonzero(c)):
        reduced = c.copy()
        reduced[i, j] -= 1
        leave_one_out += [_plugin_nats(reduced)] * int(c[i, j])
    return (n * _plugin_nats(c) - (n - 1) * np.mean(leave_one_out)) / math.log(2)


@pytest.fixture(scope="module")
def sigmoid_pair():
    """The exact joint table (16 x 16 bins) and MI of pair (0, 0) of a 3 -> 1 sigmoid layer."""
    w = np.array([[2.0], [-1.5], [1.0]])
    kwargs = dict(activation="sigmoid", in_bins=16, out_bins=16, grid_step=2.5e-4)
    table = np.asarray(exact_ei_parts_tables(w, **kwargs))[0, 0]
    return table / table.sum(), float(np.asarray(exact_ei_parts_matrix(w, **kwargs))[0, 0])


# ---------------------------------------------------------------- estimators

@pytest.mark.parametrize("as_jax", [False, True])
def test_jackknife_closed_form_equals_leaving_each_sample_out(as_jax):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 4, size=(4, 3))
    small[2] = 0                                    # an empty row
    small[0, 0] = 1                                 # a singleton cell
    large = rng.integers(1, 30, size=(5, 6))
    for counts in (small, large):
        got = mutual_information(jnp.asarray(counts) if as_jax else counts, "jackknife")
        # float32 under JAX: terms of size log N ~ 10 round at 1e-6
        assert abs(float(got) - _brute_jackknife_bits(counts)) < (1e-5 if as_jax else 1e-12)


def test_miller_madow_is_plugin_minus_occupied_cells_bias():
    counts = np.array([[5, 0, 1], [0, 0, 0], [2, 7, 0]])
    n, cells, rows, cols = 15, 4, 2, 3
    expected = _plugin_nats(counts) / math.log(2) - (cells - rows - cols + 1) / (
        2 * n * math.log(2))
    assert abs(mutual_information(counts, "miller_madow") - expected) < 1e-12
    assert abs(miller_madow_bias(counts) - (cells - rows - cols + 1) / (2 * n * math.log(2))) \
        < 1e-12


def test_estimators_batch_over_leading_axes_and_agree_between_numpy_and_jax():
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 50, size=(3, 2, 6, 5))
    for estimator in ("plugin", "miller_madow", "jackknife"):
        host = mutual_information(counts, estimator)
        device = mutual_information(jnp.asarray(counts), estimator)
        jitted = jax.jit(lambda c: mutual_information(c, estimator))(jnp.asarray(counts))
        assert host.shape == (3, 2) and host.dtype == np.float64
        np.testing.assert_allclose(np.asarray(device), host, atol=1e-5)
        np.testing.assert_allclose(np.asarray(jitted), host, atol=1e-5)
    assert float(mutual_information(np.zeros((3, 3)), "jackknife")) == 0.0


def test_bias_corrections_beat_plugin_at_small_samples(sigmoid_pair):
    table, truth = sigmoid_pair
    rng = np.random.default_rng(2)
    draws, samples = 300, 1000
    counts = rng.multinomial(samples, table.ravel(), size=draws).reshape(draws, 16, 16)
    errors = {name: mutual_information(counts, name) - truth
              for name in ("plugin", "miller_madow", "jackknife")}
    bias = {name: e.mean() for name, e in errors.items()}
    noise = {name: e.std(ddof=1) / math.sqrt(draws) for name, e in errors.items()}
    # plug-in bias ~ (m_xy - m_x - m_y + 1) / (2 N ln 2) ~ 0.07 bits here; the corrections remove
    # its leading term. Each bias is known to +-noise (~0.002): require the corrected ones to be
    # less than half the plug-in's, beyond 4 noise units, and to win on mean absolute error.
    assert bias["plugin"] > 10 * noise["plugin"]
    for name in ("miller_madow", "jackknife"):
        assert abs(bias[name]) + 4 * noise[name] < bias["plugin"] / 2, (bias, noise)
        assert np.abs(errors[name]).mean() < np.abs(errors["plugin"]).mean()


def test_expected_plugin_matches_the_mean_over_draws(sigmoid_pair):
    table, truth = sigmoid_pair
    rng = np.random.default_rng(3)
    draws, samples = 400, 2000
    counts = rng.multinomial(samples, table.ravel(), size=draws).reshape(draws, 16, 16)
    estimates = mutual_information(counts, "plugin")
    expected = float(expected_plugin_mutual_information(table, samples))
    # the mean of 400 draws is within 4 standard errors of its expectation
    assert abs(estimates.mean() - expected) < 4 * estimates.std(ddof=1) / math.sqrt(draws)
    assert expected > truth


# ---------------------------------------------------------------- tests of independence

def test_g_test_pvalues_are_uniform_under_independence():
    rng = np.random.default_rng(4)
    rows, cols = rng.dirichlet(np.ones(4) * 3), rng.dirichlet(np.ones(5) * 3)
    tables = rng.multinomial(2000, np.outer(rows, cols).ravel(), size=3000).reshape(3000, 4, 5)
    p = np.sort(g_test_pvalues(tables))
    ks = np.max(np.maximum(np.arange(1, p.size + 1) / p.size - p, p - np.arange(p.size) / p.size))
    # Kolmogorov-Smirnov: the 0.1% critical value is 1.95 / sqrt(n) = 0.036 for 3000 tables.
    # The chi-square limit itself is off by the Williams factor 1 + (a+1)(b+1)/(6N) - 1 = 0.3%
    # in G's mean here, which moves p-values by < 0.005: allow 0.036 + 0.005.
    assert ks < 1.95 / math.sqrt(p.size) + 0.005, ks
    assert abs(np.mean(p < 0.05) - 0.05) < 4 * math.sqrt(0.05 * 0.95 / p.size)


def test_g_test_detects_dependence(sigmoid_pair):
    table, truth = sigmoid_pair
    counts = np.random.default_rng(5).multinomial(2000, table.ravel()).reshape(16, 16)
    # G ~ 2 N ln2 I = 2 * 2000 * 0.69 * ~0.8 bits ~ 2000, far beyond chi2 with ~225 dof
    assert truth > 0.5 and g_test_pvalues(counts) < 1e-50
    assert g_test_pvalues(counts, dof="full") < 1e-50


def test_g_test_dof_rules():
    # structurally empty column: "occupied" uses (2-1)(2-1) = 1 dof, "full" (2-1)(3-1) = 2
    counts = np.array([[30, 10, 0], [10, 30, 0]])
    g = 2 * _plugin_nats(counts) * counts.sum()
    from math import erfc, exp, sqrt
    assert abs(g_test_pvalues(counts) - erfc(sqrt(g / 2))) < 1e-12       # chi2_1 survival
    assert abs(g_test_pvalues(counts, dof="full") - exp(-g / 2)) < 1e-12  # chi2_2 survival
    assert g_test_pvalues(np.array([[5, 6, 7]])) == 1.0                   # one row: 0 dof
    with pytest.raises(ValueError, match="dof must be one of"):
        g_test_pvalues(counts, dof="rows")


def test_benjamini_hochberg_hand_example():
    p = [0.04, 0.001, 0.03, 0.2, 0.025]
    # sorted 0.001, 0.025, 0.03, 0.04, 0.2 -> raw M p / k = 0.005, 0.0625, 0.05, 0.05, 0.2;
    # running minimum from the top: 0.005, 0.05, 0.05, 0.05, 0.2 (the 0.0625 drops to 0.05)
    expected_q = [0.05, 0.005, 0.05, 0.2, 0.05]
    for values in (np.array(p), jnp.asarray(p)):
        q, reject = benjamini_hochberg(values, alpha=0.05)
        np.testing.assert_allclose(np.asarray(q), expected_q, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(reject), [True, True, True, False, True])
        _, reject = benjamini_hochberg(values, alpha=0.04)
        np.testing.assert_array_equal(np.asarray(reject), [False, True, False, False, False])
    q, _ = benjamini_hochberg(np.array(p).reshape(5, 1), alpha=0.05)
    assert q.shape == (5, 1)
    with pytest.raises(ValueError, match="alpha must be a number in"):
        benjamini_hochberg(p, alpha=1.5)
    with pytest.raises(ValueError, match="pvalues must lie in"):
        benjamini_hochberg([0.5, 1.2])


def test_permutation_pvalues(key):
    rng = np.random.default_rng(6)
    x = rng.integers(0, 4, 400)
    dependent = (x + rng.integers(0, 2, 400)) % 4
    p, observed = permutation_pvalues(key, x, dependent, in_bins=4, out_bins=4,
                                      num_permutations=99)
    # no shuffle reaches ~1 bit of dependence: p is the smallest possible, 1 / 100
    assert float(p) == pytest.approx(1 / 100) and float(observed) > 0.5
    # independent data: p-values over 40 datasets are roughly uniform (mean 0.5, sd 0.29/sqrt(40))
    keys = jax.random.split(key, 40)
    ps = [float(permutation_pvalues(k, rng.integers(0, 4, 400), rng.integers(0, 4, 400),
                                    in_bins=4, out_bins=4, num_permutations=99)[0])
          for k in keys]
    assert abs(np.mean(ps) - 0.5) < 4 * 0.29 / math.sqrt(40)
    with pytest.raises(ValueError, match="same length"):
        permutation_pvalues(key, x, dependent[:10], in_bins=4, out_bins=4, num_permutations=99)


# ---------------------------------------------------------------- error bars

def test_batch_means_standard_error(sigmoid_pair):
    table, _ = sigmoid_pair
    rng = np.random.default_rng(7)
    # 400 replications of "20 chunks of 5000 samples": the batch-means SE of the mean of the chunk
    # estimates should match the actual spread of that mean over replications (within 15%: the
    # sd of a sd estimate from 400 replications is ~3.5%, and each SE from 20 chunks ~16%/sqrt(400))
    chunks = rng.multinomial(5000, table.ravel(), size=(400, 20)).reshape(400, 20, 16, 16)
    estimates = mutual_information(chunks, "jackknife")            # [400, 20]
    se = batch_means_standard_error(estimates.T)                   # [400]
    actual = estimates.mean(axis=1).std(ddof=1)
    assert abs(se.mean() / actual - 1) < 0.15, (se.mean(), actual)
    np.testing.assert_allclose(batch_means_standard_error(np.array([1.0, 2.0, 3.0])),
                               1.0 / math.sqrt(3))
    with pytest.raises(ValueError, match="k >= 2"):
        batch_means_standard_error(np.array([1.0]))


@pytest.mark.parametrize("estimator", ["plugin", "miller_madow", "jackknife"])
def test_states_mutual_information_equals_table_estimator(estimator):
    # the entropy decomposition over distinct states gives the same number as the table formula
    from deep_ei_jax.estimators import mutual_information, states_mutual_information
    rng = np.random.default_rng(11)
    table = rng.integers(0, 30, (5, 7)) * (rng.random((5, 7)) > 0.3)
    table[0, 0] += 1
    value = states_mutual_information(table.sum(1), table.sum(0), table.ravel(), estimator)
    assert value == pytest.approx(float(mutual_information(table, estimator)), abs=1e-10)


# ---------------------------------------------------------------- wired into the measures

def _sigmoid_layer():
    from deep_ei_jax import pure
    w = np.random.default_rng(3).normal(size=(4, 3)).astype(np.float32)
    return pure, pure.Chain((pure.Dense(activation="sigmoid"),), (4,)), ({"w": w},)


def test_measures_accept_method_exact_and_estimators():
    import jax
    from deep_ei_jax import exact
    pure, chain, params = _sigmoid_layer()
    kw = dict(in_range=(0, 1), out_range=(0, 1), in_bins=8, out_bins=8)
    value, info = pure.ei_parts(jax.random.key(0), chain, params, method="exact", **kw)
    assert info.method == "exact" and info.samples == 0
    assert value == pytest.approx(float(exact.exact_ei_parts(params[0]["w"],
                                                             activation="sigmoid", **kw)))
    sens, _ = pure.sensitivity(jax.random.key(0), chain, params, method="exact", **kw)
    assert sens == pytest.approx(float(exact.exact_sensitivity(params[0]["w"],
                                                               activation="sigmoid", **kw)))
    # bias-corrected estimators land closer to the exact value than plug-in, on average over
    # seeds, at a small sample count (the plug-in bias there is several times the sampling sd)
    errors = {name: [] for name in ("plugin", "miller_madow", "jackknife")}
    for seed in range(5):
        for name in errors:
            estimate, info = pure.ei_parts(jax.random.key(seed), chain, params, samples=2000,
                                           estimator=name, **kw)
            errors[name].append(abs(estimate - value))
            assert info.estimator == name
    assert np.mean(errors["miller_madow"]) < np.mean(errors["plugin"])
    assert np.mean(errors["jackknife"]) < np.mean(errors["plugin"])
    with pytest.raises(NotImplementedError, match="vector EI and groups have no exact method"):
        pure.ei(jax.random.key(0), chain, params, method="exact", samples=100, **kw)


def test_error_bars_match_spread_over_seeds():
    import jax
    pure, chain, params = _sigmoid_layer()
    kw = dict(in_range=(0, 1), out_range=(0, 1), in_bins=8, out_bins=8, samples=20_000)
    values, errors = [], []
    for seed in range(12):
        value, info = pure.ei_parts(jax.random.key(seed), chain, params, error_bars=10, **kw)
        low, high = info.confidence_interval
        assert low < value < high and info.standard_error > 0
        values.append(value)
        errors.append(info.standard_error)
    # the sd of 12 draws is known to ~21% (1/sqrt(2*11)); each batch-means se (9 dof) to ~24%
    assert np.std(values, ddof=1) == pytest.approx(np.mean(errors), rel=0.6)
    vector, info = pure.ei(jax.random.key(0), chain, params, error_bars=5, **kw)
    assert isinstance(info.standard_error, float) and info.confidence_interval[0] < vector
    with pytest.raises(ValueError, match="error_bars needs a fixed number of samples"):
        pure.ei_parts(jax.random.key(0), chain, params, error_bars=5,
                      **{k: v for k, v in kw.items() if k != "samples"})


def test_edge_significance_identity_layer():
    import jax
    from deep_ei_jax import pure
    chain = pure.Chain((pure.Dense(),), (3,))
    params = ({"w": np.eye(3, dtype=np.float32)},)
    _, info = pure.ei_parts_matrix(jax.random.key(0), chain, params, samples=5000, in_range=(0, 1),
                                   out_range=(0, 1), in_bins=8, out_bins=8, significance=True)
    diagonal = np.eye(3, dtype=bool)
    assert np.all(info.qvalues[diagonal] < 1e-10)   # y = x: overwhelming evidence
    assert np.all(info.qvalues[~diagonal] > 0.01)   # independent pairs: no discovery
    _, sens = pure.sensitivity_matrix(jax.random.key(0), chain, params, samples=500,
                                      in_range=(0, 1), out_range=(0, 1), in_bins=8, out_bins=8,
                                      significance=True)
    assert sens.pvalues.shape == (3, 3)


def test_torch_api_passes_options():
    torch = pytest.importorskip("torch")
    import deep_ei_jax as dei
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Sigmoid())
    top = dei.topology_of(net, torch.zeros((1, 3)))
    kw = dict(in_range=(0, 1), in_bins=8, out_bins=8)
    value, info = dei.ei_of_layer(net[0], top, method="exact", return_info=True, **kw)
    assert info.method == "exact" and value > 0
    _, info = dei.vector_ei_of_layer(net[0], top, samples=5000, seed=0, estimator="jackknife",
                                     error_bars=5, return_info=True, **kw)
    assert info.estimator == "jackknife" and info.standard_error > 0


def test_adaptive_stops_at_target_standard_error():
    import jax
    pure, chain, params = _sigmoid_layer()
    kw = dict(in_range=(0, 1), out_range=(0, 1), in_bins=8, out_bins=8)
    value, info = pure.ei_parts(jax.random.key(0), chain, params, target_error=0.004, **kw)
    assert info.converged and info.standard_error <= 0.004
    low, high = info.confidence_interval
    assert low < value < high
    # one step earlier the error was still above the target (errors fall as 1/sqrt(N))
    assert info.standard_error * math.sqrt(2) > 0.004 * 0.999 or len(info.estimates) == 1
    # the delta-method error of the sum agrees with batch means at the same sample count
    _, batch = pure.ei_parts(jax.random.key(0), chain, params, samples=info.samples,
                             error_bars=20, **kw)
    assert info.standard_error == pytest.approx(batch.standard_error, rel=0.6)
    with pytest.raises(ValueError, match="target_error must be a positive number of bits"):
        pure.ei_parts(jax.random.key(0), chain, params, target_error=-1, **kw)


@pytest.mark.slow
def test_confidence_intervals_cover_the_exact_value():
    """95% batch-means intervals of the jackknife EI_parts cover the exact value ~95% of the time.

    200 seeds: the coverage count is binomial(200, 0.95), sd 3.1, so 0.95 +- 3 sd is
    [0.904, 0.996]. The jackknife's remaining bias at 2e4 samples (O(1/N^2)) is far below the
    standard error (~0.01 bits), so the intervals are centred on the truth.
    """
    import jax
    from deep_ei_jax import exact
    pure, chain, params = _sigmoid_layer()
    kw = dict(in_range=(0, 1), out_range=(0, 1), in_bins=8, out_bins=8)
    truth = float(exact.exact_ei_parts(params[0]["w"], activation="sigmoid", **kw))
    covered = 0
    for seed in range(200):
        _, info = pure.ei_parts(jax.random.key(seed), chain, params, samples=20_000,
                                estimator="jackknife", error_bars=10, **kw)
        low, high = info.confidence_interval
        covered += low <= truth <= high
    assert 0.904 <= covered / 200 <= 0.996, covered


def test_spectrum_entropy_is_order_free_and_equals_plugin():
    from deep_ei_jax.estimators import count_spectrum, entropy, spectrum_entropy
    from deep_ei_jax.information import entropy as table_entropy
    rng = np.random.default_rng(3)
    counts = rng.geometric(0.01, size=20_000)
    first = entropy(counts)
    for _ in range(3):  # any order: bit-identical
        assert entropy(rng.permutation(counts)) == first
    assert abs(first - float(table_entropy(counts.astype(np.float64)))) < 1e-12 * first
    values, multiplicity = count_spectrum([3, 0, 1, 3, 5, 1, 3])
    np.testing.assert_array_equal(values, [1, 3, 5])
    np.testing.assert_array_equal(multiplicity, [2, 3, 1])
    assert spectrum_entropy([7], [1]) == 0.0 and entropy(np.zeros(0, np.int64)) == 0.0
    with pytest.raises(ValueError, match="counts must be nonnegative integers"):
        count_spectrum(np.array([1.5, 2.0]))
