"""The pure-JAX measures: analytic anchors, drop/clip accounting, dynamic binning, invariances.

Tolerances: a plug-in MI estimate from N samples has (i) a bias of at most (Bx-1)(By-1)/(2 N ln 2)
bits per pair to first order (Miller-Madow), and (ii) a standard error, estimated by the delta
method from the counts (`mutual_information_standard_error`, checked against the spread over
resamples in test_kernels). Each comparison allows the bias bound plus 4 standard errors.
"""
import math
import warnings

import jax
import numpy as np
import pytest

from deep_ei_jax import pure
from deep_ei_jax import backends, driver, kernels, planning


def bias_bound(bx, by, n):
    return (bx - 1) * (by - 1) / (2 * n * math.log(2))


def dense(w, activation="identity", b=None):
    w = np.asarray(w, np.float32)
    params = {"w": w} if b is None else {"w": w, "b": np.asarray(b, np.float32)}
    chain = pure.Chain(layers=(pure.Dense(activation=activation),), in_shape=(w.shape[0],))
    return chain, (params,)


def test_identity_layer_gives_n_log2_bins(key):
    n, bins, samples = 3, 16, 100_000
    chain, params = dense(np.eye(n))
    matrix, info = pure.ei_parts_matrix(key, chain, params, in_range=(0, 1), out_range=(0, 1),
                                        in_bins=bins, out_bins=bins, samples=samples)
    assert info.samples == samples and info.dropped == 0
    # diagonal: y = x, so I = H(binned x) <= log2 B; its plug-in bias is -(B-1)/(2N ln2)
    diag_tol = (bins - 1) / (2 * samples * math.log(2)) + 4 * 0.0
    np.testing.assert_allclose(np.diag(matrix), math.log2(bins), atol=diag_tol + 1e-4)
    # off-diagonal: independent, true 0, plug-in bias (B-1)^2/(2N ln2) on average
    off = matrix[~np.eye(n, dtype=bool)]
    assert np.all(off >= 0) and np.all(off < 3 * bias_bound(bins, bins, samples))
    value, _ = pure.ei(key, chain, params, in_range=(0, 1), out_range=(0, 1), in_bins=bins,
                       out_bins=bins, samples=samples)
    # vector EI of a bijection = H(binned X) = n log2 B minus the bias of 4096 states at 1e5
    states = bins ** n
    assert n * math.log2(bins) - 2 * (states - 1) / (2 * samples * math.log(2)) - 0.01 \
        < value <= n * math.log2(bins) + 1e-9


@pytest.mark.parametrize("width", [1, 3])
def test_all_ones_sensitivity_is_4_w_squared(key, width):
    chain, params = dense(np.ones((width, width)))
    samples = 2000
    matrix, info = pure.sensitivity_matrix(key, chain, params, samples=samples, in_range=(0, 1),
                                           out_range=(0, 1), in_bins=16, out_bins=16)
    assert info.samples == samples and info.dropped == 0
    # every pair: y_B = x_A, so I = H(binned x_A) = 4 bits minus at most (B-1)/(2N ln2) + 4 se
    # (se of the entropy of 16 near-uniform bins from 2000 samples is < 0.01)
    assert matrix.shape == (width, width)
    np.testing.assert_allclose(matrix, 4.0, atol=(15 / (2 * samples * math.log(2))) + 0.04)
    total, _ = pure.sensitivity(key, chain, params, samples=samples, in_range=(0, 1),
                                out_range=(0, 1), in_bins=16, out_bins=16)
    assert total == pytest.approx(matrix.sum())


@pytest.mark.parametrize("weight,expected", [(1.0, 0.947), (3.0, 1.690)])
def test_one_to_one_sigmoid_curve(key, weight, expected):
    chain, params = dense([[weight]], activation="sigmoid")
    samples = 1_000_000
    value, info = pure.ei_parts(key, chain, params, in_range=(0, 1), out_range=(0, 1),
                                in_bins=8, out_bins=8, samples=samples)
    # SPEC's values are rounded to 3 decimals (0.0005); se of one 8x8 pair at 1e6 is < 0.001
    assert value == pytest.approx(expected, abs=0.0005 + bias_bound(8, 8, samples) + 0.004)


def test_out_of_range_is_dropped_counted_and_warned(key):
    chain, params = dense([[1.0]])
    with pytest.warns(RuntimeWarning, match="outside out_range"):
        _, info = pure.ei_parts(key, chain, params, in_range=(0, 1), out_range=(0, 0.5),
                                in_bins=4, out_bins=4, samples=20_000)
    # half the outputs (uniform on [0,1)) exceed 0.5: binomial(20000, 1/2), sd 71
    assert abs(info.dropped - 10_000) < 5 * 71
    assert info.out_of_range == info.dropped and info.total == 20_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, clipped = pure.ei_parts(key, chain, params, in_range=(0, 1), out_range=(0, 0.5),
                                   in_bins=4, out_bins=4, samples=20_000, policy="clip")
    assert clipped.dropped == 0 and clipped.out_of_range == info.out_of_range


def test_vector_ei_drops_whole_samples(key):
    chain, params = dense(np.eye(2))
    with pytest.warns(RuntimeWarning):
        _, info = pure.ei(key, chain, params, in_range=(0, 1), out_range=(0, 0.5), in_bins=4,
                          out_bins=4, samples=20_000)
    # a sample survives only if both outputs are <= 0.5: 1/4 of them; sd of the count 61
    assert abs(info.dropped - 15_000) < 5 * 61 and info.total == 20_000


def test_dynamic_out_range_and_bins(key):
    chain, params = dense([[2.0]])
    value, info = pure.ei_parts(key, chain, params, in_range=(0, 1), out_range="dynamic",
                                in_bins=16, out_bins="dynamic", samples=50_000)
    low, high = float(info.out_low[0]), float(info.out_high[0])
    # low is the min of 1e4 draws of 2U: about 2/1e4; the max is just under 2
    assert 0 <= low < 2e-3
    # bins of the input bins' width (1/16): int((max - low) * 16) + 1 = 32, top moved to low + 2
    assert int(info.out_bins[0]) == 32 and high == pytest.approx(low + 2.0, abs=1e-6)
    # samples after the probe below its min are dropped: P = low / 2 each
    expected = 50_000 * low / 2
    assert info.dropped <= expected + 5 * math.sqrt(expected) + 5
    # y = 2x: each x bin maps onto two y bins of x's width, except that the y bins start at
    # `low`, so every other y bin has a sliver of relative width 16*low from the next x bin:
    # I = 4 - H(X|Y) = 4 - h2(16 low) / 2 (h2 the binary entropy); se at 5e4 samples < 0.003
    sliver = 16 * low
    h2 = -sliver * math.log2(sliver) - (1 - sliver) * math.log2(1 - sliver)
    assert value == pytest.approx(4 - h2 / 2, abs=0.005 + bias_bound(16, 32, 50_000))


def test_chunking_and_steps_do_not_change_results(key):
    chain, params = dense(np.random.default_rng(0).normal(size=(5, 4)), activation="sigmoid")
    kwargs = dict(in_range=(0, 1), out_range=(0, 1), in_bins=16, out_bins=16)
    fixed, _ = pure.ei_parts_matrix(key, chain, params, samples=20_000, **kwargs)
    _, adaptive = pure.ei_parts(key, chain, params, threshold=0.5, **kwargs)
    assert adaptive.estimates[1] == (20_000, pytest.approx(fixed.sum(), abs=1e-9))
    # a tiny memory budget streams one output at a time, recounting: the same counts, and MI
    # equal up to float32 summation order
    streamed, _ = pure.ei_parts_matrix(key, chain, params, samples=20_000,
                                       memory_budget=5 * 16 * 16 * 4, **kwargs)
    np.testing.assert_allclose(streamed, fixed, rtol=1e-5, atol=1e-7)
    def plan(backend):
        return planning.plan(key, chain, params, planning.Binning(method=backend,
                                                                  memory_budget=2**30, **kwargs),
                             samples_hint=20_000, single_input=False, pairs=True, groups=())
    setup = plan(backends.SCATTER)
    whole = driver.pair_block_counts(setup, 0, 0, 20_000)[0]
    split = driver.pair_block_counts(setup, 0, 0, 7_000)
    split = driver.pair_block_counts(setup, 0, 7_000, 20_000, split)[0]
    np.testing.assert_array_equal(whole, split)  # sample i is the same whatever the steps
    # every counting backend gives the same integer counts
    for backend in (backends.ONEHOT, backends.HOST):
        other = plan(backend)
        counts = driver.pair_block_counts(other, 0, 0, 20_000)[0]
        np.testing.assert_array_equal(backend.tables(counts, 16, 16), whole)
        # steps that start and stop inside a chunk (the host counter's sample bounds)
        part = driver.pair_block_counts(other, 0, 0, 7_000)
        part = driver.pair_block_counts(other, 0, 7_000, 20_000, part)[0]
        np.testing.assert_array_equal(backend.tables(part, 16, 16), whole)
    onehot, _ = pure.ei_parts_matrix(key, chain, params, samples=20_000, method="onehot",
                                     **kwargs)
    np.testing.assert_allclose(onehot, fixed, atol=1e-6)


def test_same_key_same_result_and_no_retrace_across_weights(key):
    rng = np.random.default_rng(1)
    chain, params = dense(rng.normal(size=(6, 3)), activation="tanh")
    kwargs = dict(in_range=(0, 1), out_range=(-1, 1), in_bins=8, out_bins=8, samples=30_000)
    first, _ = pure.ei_parts_matrix(key, chain, params, **kwargs)
    compiled = kernels.step._cache_size()
    again, _ = pure.ei_parts_matrix(key, chain, params, **kwargs)
    np.testing.assert_array_equal(first, again)
    _, other = dense(rng.normal(size=(6, 3)), activation="tanh")
    pure.ei_parts_matrix(key, chain, other, **{**kwargs, "in_range": (-1, 1)})
    assert kernels.step._cache_size() == compiled  # new weights and ranges: no recompilation
    different, _ = pure.ei_parts_matrix(jax.random.key(1), chain, params, **kwargs)
    assert not np.array_equal(first, different)


def test_new_estimator_or_significance_does_not_recompile_sampling(key):
    # the plan keys the sampling kernels on its Sampling and Counting records only: another
    # estimator or significance recompiles the statistics of the tables, never the sampling
    rng = np.random.default_rng(11)
    chain, params = dense(rng.normal(size=(7, 3)), activation="sigmoid")
    kwargs = dict(in_range=(0, 1), out_range=(0, 1), in_bins=8, out_bins=8)
    sampling_kernels = (kernels.step, kernels.host_single_input_chunk,
                        kernels.single_input_step)
    for method in ("numba", "scatter"):
        pure.ei_parts_matrix(key, chain, params, samples=3000, method=method, **kwargs)
        pure.sensitivity_matrix(key, chain, params, samples=300, method=method, **kwargs)
        traces = [k._cache_size() for k in sampling_kernels]
        statistics = kernels.block_statistics._cache_size() + \
            kernels.table_statistics._cache_size()
        for estimator in ("miller_madow", "jackknife"):
            pure.ei_parts_matrix(key, chain, params, samples=3000, method=method,
                                 estimator=estimator, significance=True, **kwargs)
            pure.sensitivity_matrix(key, chain, params, samples=300, method=method,
                                    estimator=estimator, significance=True, **kwargs)
        assert [k._cache_size() for k in sampling_kernels] == traces
        assert kernels.block_statistics._cache_size() + \
            kernels.table_statistics._cache_size() > statistics  # (these did recompile)


@pytest.mark.parametrize("backend", list(backends.REGISTRY.values()), ids=str)
def test_sensitivity_equal_on_every_backend(key, backend):
    # the one-input intervention counted by each backend (the host one on the single call's
    # path a sweep of one set takes): the same integer counts, so the same bits exactly
    rng = np.random.default_rng(12)
    chain, params = dense(4 * rng.normal(size=(5, 4)), activation="sigmoid")
    kwargs = dict(in_range=(0, 1), out_range=(0.1, 0.9), in_bins=8, out_bins=8, samples=900)
    reference, reference_info = pure.sensitivity_matrix(key, chain, params, method="scatter",
                                                        **kwargs)
    matrix, info = pure.sensitivity_matrix(key, chain, params, method=backend.name, **kwargs)
    if backend.by_samples:  # the same counts, reduced in float64 rather than float32 (on
        # 900 samples a pair's rounding is ~1e-6 bits: see tests/test_pairstats.py)
        np.testing.assert_allclose(matrix, reference, rtol=0, atol=1e-5)
    else:
        assert matrix.tobytes() == reference.tobytes()
    assert info.method == backend.name
    assert info.out_of_range == info.dropped == reference_info.out_of_range > 0
    clip, clip_info = pure.sensitivity_matrix(key, chain, params, method=backend.name,
                                              policy="clip", **kwargs)
    assert clip_info.out_of_range == reference_info.out_of_range and clip_info.dropped == 0


def test_adaptive_rule_and_extrapolation(key):
    chain, params = dense(np.random.default_rng(2).normal(size=(4, 3)), activation="sigmoid")
    kwargs = dict(in_range=(0, 1), out_range=(0, 1), in_bins=64, out_bins=64)
    value, info = pure.ei_parts(key, chain, params, threshold=0.01, **kwargs)
    assert info.converged and len(info.estimates) >= 3
    (n1, e1), (n2, e2) = info.estimates[-2:]
    assert (e1 - e2) / (n2 - n1) * n2 / e2 <= 0.01 and n2 == 2 * n1
    assert [n for n, _ in info.estimates] == [10_000 * 2 ** i for i in range(len(info.estimates))]
    (m1, f1), (m2, f2) = info.estimates[-3:-1]
    assert (f1 - f2) / (m2 - m1) * m2 / f2 > 0.01  # it did not stop a step early


def test_extrapolation_recovers_asymptote():
    from deep_ei_jax.adaptive import fit_asymptote
    n = np.arange(5, 21) * 100_000.0
    assert fit_asymptote(n, 3.0 + 5e4 / n ** 1.0) == pytest.approx(3.0, abs=1e-3)
    assert fit_asymptote(n, 1.5 + 800 / n ** 0.7) == pytest.approx(1.5, abs=2e-3)


def test_groups_and_vector_from_same_samples(key):
    chain, params = dense(np.eye(2))
    kwargs = dict(in_range=(0, 1), out_range=(0, 1), in_bins=16, out_bins=16, samples=50_000)
    groups = [((0,), (0,)), ((0,), (1,)), ((0, 1), (0, 1))]
    values, info = pure.eis_between_groups(key, chain, params, groups, **kwargs)
    vector, _ = pure.ei(key, chain, params, **kwargs)
    assert values[2] == vector  # the same samples and states
    assert values[0] == pytest.approx(4.0, abs=0.001)
    assert 0 <= values[1] < 3 * bias_bound(16, 16, 50_000)
    (v, parts), _ = pure.ei_and_ei_parts(key, chain, params, **kwargs)
    matrix, _ = pure.ei_parts_matrix(key, chain, params, **kwargs)
    assert v == vector and parts == pytest.approx(matrix.sum(), abs=1e-9)


def test_large_state_space_uses_exact_sparse_counting(key):
    # 12 inputs x 64 bins = 72 bits per input state: counted by sorting packed words
    chain, params = dense(np.eye(12))
    value, _ = pure.ei(key, chain, params, in_range=(0, 1), out_range=(0, 1), in_bins=64,
                       out_bins=64, samples=3000)
    # all 3000 states distinct on both sides and bijective: I = H = log2(3000)
    assert value == pytest.approx(math.log2(3000), abs=1e-9)


def test_conv_receptive_field_chain(key):
    # one 2x2 conv, 2 in channels -> 3 out channels: 8 inputs, 3 outputs
    w = np.zeros((3, 2, 2, 2), np.float32)
    w[0, 0, 0, 0] = w[1, 1, 1, 1] = w[2, 0, 1, 0] = 1.0
    chain = pure.Chain(layers=(pure.Conv2d(activation="identity"),), in_shape=(2, 2, 2))
    assert pure.receptive_field(chain, ({"w": w},)) == (2, 2)
    matrix, _ = pure.ei_parts_matrix(key, chain, ({"w": w},), in_range=(0, 1), out_range=(0, 1),
                                     in_bins=8, out_bins=8, samples=20_000)
    assert matrix.shape == (8, 3)
    flat = {0: 0, 1: 7, 2: 2}  # flattened (c, h, w) index that each output copies
    for b, a in flat.items():
        assert matrix[a, b] == pytest.approx(3.0, abs=0.01)
    assert matrix.sum() == pytest.approx(9.0, abs=0.05)
