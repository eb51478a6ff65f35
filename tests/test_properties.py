"""Property-based checks over random small layers, ranges and bins (hypothesis).

Shapes are drawn from small sets so that compiled programs are reused across examples.
"""
import math

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deep_ei_jax import pure

SAMPLES = 3000
ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu")
PROFILE = settings(max_examples=8, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])


@st.composite
def layers(draw):
    n_in = draw(st.sampled_from([1, 3]))
    n_out = draw(st.sampled_from([1, 2]))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0]))
    seed = draw(st.integers(0, 2 ** 16))
    weights = (np.random.default_rng(seed).normal(size=(n_in, n_out)) * scale).astype(np.float32)
    activation = draw(st.sampled_from(ACTIVATIONS))
    low = draw(st.sampled_from([-1.0, 0.0]))
    bins = draw(st.sampled_from([2, 5, 16]))
    out_bins = draw(st.sampled_from([3, 8]))
    chain = pure.Chain(layers=(pure.Dense(activation=activation),), in_shape=(n_in,))
    return chain, ({"w": weights},), dict(in_range=(low, 1.0), out_range="dynamic",
                                          in_bins=bins, out_bins=out_bins, samples=SAMPLES)


@PROFILE
@given(layers(), st.integers(0, 100))
def test_pairwise_bounds_and_sums(layer, seed):
    chain, params, kwargs = layer
    key = jax.random.key(seed)
    matrix, info = pure.ei_parts_matrix(key, chain, params, **kwargs)
    bound = min(math.log2(kwargs["in_bins"]), math.log2(kwargs["out_bins"]))
    assert np.all(matrix >= 0) and np.all(matrix <= bound + 1e-5)
    total, _ = pure.ei_parts(key, chain, params, **kwargs)
    assert total == pytest.approx(matrix.sum(), abs=1e-9)
    # streaming one output at a time gives the same tables
    tiny_budget = 4 * chain.in_shape[0] * kwargs["in_bins"] * kwargs["out_bins"]
    streamed, _ = pure.ei_parts_matrix(key, chain, params, memory_budget=tiny_budget, **kwargs)
    np.testing.assert_allclose(streamed, matrix, atol=1e-5)
    assert info.dropped <= info.total


@PROFILE
@given(layers(), st.integers(0, 100))
def test_vector_ei_bounds(layer, seed):
    chain, params, kwargs = layer
    value, info = pure.ei(jax.random.key(seed), chain, params, **kwargs)
    n_in, n_out = chain.in_shape[0], params[0]["w"].shape[1]
    assert 0 <= value <= math.log2(info.samples - info.dropped) + 1e-9
    assert value <= n_in * math.log2(kwargs["in_bins"]) + 1e-9
    assert value <= n_out * math.log2(kwargs["out_bins"]) + 1e-9


@PROFILE
@given(layers(), st.integers(0, 100))
def test_sensitivity_bounds(layer, seed):
    chain, params, kwargs = layer
    kwargs = {**kwargs, "samples": 500}
    matrix, _ = pure.sensitivity_matrix(jax.random.key(seed), chain, params, **kwargs)
    bound = min(math.log2(kwargs["in_bins"]), math.log2(kwargs["out_bins"]))
    assert np.all(matrix >= 0) and np.all(matrix <= bound + 1e-5)


@settings(max_examples=6, deadline=None)
@given(st.sampled_from([1, 2, 3]), st.sampled_from([4, 8, 16]), st.integers(0, 1000))
def test_identity_layers_hit_n_log2_bins(n, bins, seed):
    chain = pure.Chain(layers=(pure.Dense(),), in_shape=(n,))
    params = ({"w": np.eye(n, dtype=np.float32)},)
    samples = 20_000
    value, _ = pure.ei_parts(jax.random.key(seed), chain, params, in_range=(0, 1),
                             out_range=(0, 1), in_bins=bins, out_bins=bins, samples=samples)
    # diagonal terms: plug-in entropy of B near-uniform bins, low by at most (B-1)/(2N ln2) plus
    # 4 sd (sd of a near-uniform plug-in entropy is ~0); off-diagonal: independent pairs, each a
    # chi-square((B-1)^2)/(2N ln2): allow n(n-1) times its mean + 4 sd
    dof = (bins - 1) ** 2
    upper = n * (n - 1) * (dof + 4 * math.sqrt(2 * dof)) / (2 * samples * math.log(2))
    lower = n * (bins - 1) / (2 * samples * math.log(2)) + 1e-3
    assert n * math.log2(bins) - lower <= value <= n * math.log2(bins) + upper
