"""Exact (infinite-sample) EI_parts and sensitivity: analytic anchors, an independent quadrature
oracle, grid convergence, gradients, the sampled measures and deep-ei's reference numbers.

Tolerances:
* Analytic anchors where no grid is involved (identity layers, sensitivity, one-input layers: the
  other inputs' sum is a point mass, handled exactly) are float64 rounding: 1e-12.
* Grid error (EI_parts with >= 2 inputs): linear splitting of each uniform onto the lattice adds
  at most delta^2/4 of variance per input, reading the lattice back as a piecewise-linear CDF
  another delta^2/12; a variance excess V moves the CDF by at most V/2 * max|f_s'|. Each table cell
  is an average of CDF differences over an input bin, and an MI moves by at most
  sum |dp| * (max |log2 ratio| + 2/ln 2). `_grid_error_bound` evaluates that bound.
* Sampled estimates (plug-in, N samples): their expectation is computed from the exact tables
  (`expected_plugin_mutual_information`, exact for binomial cells), and their spread per pair is
  the delta-method variance plus, for nearly independent pairs where that vanishes, the
  chi-square variance 2 df / (2 N ln 2)^2 of the plug-in under independence.
"""
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deep_ei_jax import pure
from deep_ei_jax.estimators import expected_plugin_mutual_information
from deep_ei_jax.exact import (affine_map, exact_ei_parts, exact_ei_parts_matrix,
                               exact_ei_parts_tables, exact_for_chain, exact_grid_points,
                               exact_sensitivity, exact_sensitivity_matrix,
                               exact_sensitivity_tables)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _exact_oracle import oracle_ei_parts_3_inputs  # noqa: E402

ROUNDING = 1e-12


def _grid_error_bound(w, in_range, bins, grid_step):
    """The bound of the module docstring for a 3-input layer with `bins` bins on both sides."""
    width = in_range[1] - in_range[0]
    spans = np.abs(w) * width                                  # [n_in, n_out]
    n_in = w.shape[0]
    variance = (n_in - 1) * grid_step ** 2 / 4 + grid_step ** 2 / 12
    bound = 0.0
    for a in range(n_in):
        for b in range(w.shape[1]):
            h = np.delete(spans[:, b], a)                      # the two other inputs' widths
            slope = 1.0 / (h[0] * h[1])                        # max |f'| of their trapezoid sum
            cell = 2 * (variance / 2 * slope) / bins           # |dp|: 2 CDFs, bin share 1/bins
            bound = max(bound, bins * bins * cell * (math.log2(bins * bins) + 2 / math.log(2)))
    return bound


# ---------------------------------------------------------------- analytic anchors

def test_identity_layer_is_n_log2_bins_exactly():
    n, bins = 4, 16
    matrix = np.asarray(exact_ei_parts_matrix(np.eye(n), activation="identity", in_bins=bins,
                                              out_bins=bins))
    np.testing.assert_allclose(np.diag(matrix), math.log2(bins), atol=ROUNDING)
    np.testing.assert_allclose(matrix[~np.eye(n, dtype=bool)], 0.0, atol=ROUNDING)
    assert abs(float(exact_ei_parts(np.eye(n), activation="identity", in_bins=bins,
                                    out_bins=bins)) - n * math.log2(bins)) < ROUNDING


@pytest.mark.parametrize("width", [1, 3, 5])
def test_all_ones_sensitivity_is_4_w_squared(width):
    matrix = exact_sensitivity_matrix(np.ones((width, width)), activation="identity",
                                      in_bins=16, out_bins=16)
    np.testing.assert_allclose(np.asarray(matrix), 4.0, atol=ROUNDING)
    assert abs(float(exact_sensitivity(np.ones((width, width)), activation="identity",
                                       in_bins=16, out_bins=16)) - 4 * width * width) < 1e-10


@pytest.mark.parametrize("weight, expected", [(1.0, 0.947), (3.0, 1.690)])
def test_sigmoid_one_to_one_matches_spec(weight, expected):
    # SPEC gives 3 decimals: agree to the rounding, 5e-4
    value = float(exact_ei_parts(np.array([[weight]]), activation="sigmoid", in_bins=8,
                                 out_bins=8))
    assert abs(value - expected) <= 5e-4
    # one input: y is a deterministic map of x, so sensitivity (b = 0) is the same quantity
    assert abs(float(exact_sensitivity(np.array([[weight]]), activation="sigmoid", in_bins=8,
                                       out_bins=8)) - value) < ROUNDING


def test_relu_flat_part_goes_to_the_bin_of_zero():
    # y = relu(x - 0.5), x ~ U(0, 1), 4 bins on (0, 1): x < 0.75 -> y in [0, 0.25) (bin 0,
    # including the mass at 0), x >= 0.75 -> bin 1. I = H(0.75, 0.25).
    expected = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    for fn in (exact_ei_parts, exact_sensitivity):
        value, coverage = fn(np.array([[1.0]]), np.array([-0.5]), activation="relu",
                             in_bins=4, out_bins=4, return_coverage=True)
        assert abs(float(value) - expected) < ROUNDING
        np.testing.assert_allclose(np.asarray(coverage), 1.0, atol=ROUNDING)


def test_dropped_outputs_condition_the_distribution():
    # z = x1 + x2 on (0, 2); out_range (0, 1) keeps P(z <= 1) = 1/2 of the mass.
    _, coverage = exact_ei_parts_matrix(np.ones((2, 1)), activation="identity", in_bins=8,
                                        out_bins=8, grid_step=1e-3, return_coverage=True)
    np.testing.assert_allclose(np.asarray(coverage), 0.5, atol=1e-6)
    tables = np.asarray(exact_ei_parts_tables(np.ones((2, 1)), activation="identity", in_bins=8,
                                              out_bins=8, grid_step=1e-3))
    np.testing.assert_allclose(tables.sum(axis=(-2, -1)), 0.5, atol=1e-6)
    # x1 in its top bin [7/8, 1) forces z >= 7/8: only the top output bin is reachable, up to
    # the lattice's smearing of the support's edge (mass < step * step / 8 leaks past it)
    assert np.all(tables[0, 0, -1, :-1] < 1e-3 ** 2)


def test_clip_policy_counts_out_of_range_in_the_end_bins():
    # z = x1 + x2 on (0, 2), out_range (0, 1), 2 bins, clipped: bin 0 = {z < 0.5} (mass 1/8),
    # bin 1 = {z >= 0.5} including everything above 1
    tables = np.asarray(exact_ei_parts_tables(np.ones((2, 1)), activation="identity", in_bins=4,
                                              out_bins=2, grid_step=1e-3, policy="clip"))
    np.testing.assert_allclose(tables.sum(axis=(-2, -1)), 1.0, atol=1e-9)
    np.testing.assert_allclose(tables.sum(axis=-2)[..., 0], 0.125, atol=1e-6)
    # y = 2 x clipped to (0, 1) in 2 bins: input bin 0 -> output bin 0, the rest -> bin 1
    value, coverage = exact_sensitivity(np.array([[2.0]]), activation="identity", in_bins=4,
                                        out_bins=2, policy="clip", return_coverage=True)
    assert abs(float(value) + 0.25 * math.log2(0.25) + 0.75 * math.log2(0.75)) < ROUNDING
    assert abs(float(np.asarray(coverage)[0, 0]) - 1.0) < ROUNDING
    with pytest.raises(ValueError, match="policy must be one of"):
        exact_sensitivity(np.ones((1, 1)), activation="identity", policy="wrap")


def test_zero_weights_give_zero_information():
    w = np.zeros((3, 2))
    w[0, 0] = 2.0
    matrix = np.asarray(exact_ei_parts_matrix(w, activation="tanh", out_range=(-1, 1),
                                              in_bins=8, out_bins=8))
    assert matrix[0, 0] > 1.0
    np.testing.assert_allclose(np.delete(matrix.ravel(), 0), 0.0, atol=ROUNDING)


# ---------------------------------------------------------------- an independent oracle

@pytest.mark.parametrize("activation, out_range", [
    ("sigmoid", (0.0, 1.0)), ("tanh", (-0.5, 1.0)), ("relu", (0.0, 1.5)),
    ("identity", (-1.0, 1.0))])
def test_three_input_layer_matches_quadrature_oracle(activation, out_range):
    # The oracle integrates the closed-form CDF of the two other inputs' (trapezoid) sum over each
    # input bin with composite Gauss-Legendre; it shares no code with exact.py.
    rng = np.random.default_rng(3)
    w, b = rng.normal(size=(3, 2)) * 1.5, rng.normal(size=2) * 0.5
    expected, tables = oracle_ei_parts_3_inputs(w, b, activation, (0.0, 1.0), out_range, 8)
    step = 5e-4
    matrix, coverage = exact_ei_parts_matrix(w, b, activation=activation, out_range=out_range,
                                             in_bins=8, out_bins=8, grid_step=step,
                                             return_coverage=True)
    np.testing.assert_allclose(np.asarray(matrix), expected,
                               atol=_grid_error_bound(w, (0, 1), 8, step))
    np.testing.assert_allclose(np.asarray(coverage), tables.sum(axis=(-2, -1)), atol=1e-6)


def test_grid_refinement_converges_at_second_order():
    rng = np.random.default_rng(4)
    w, b = rng.normal(size=(6, 3)), rng.normal(size=3) * 0.3
    base = exact_grid_points(w, grid_step=8e-3)
    values = [float(exact_ei_parts(w, b, activation="sigmoid", in_bins=32, out_bins=32,
                                   grid_points=base * 2 ** k)) for k in range(3)]
    differences = np.abs(np.diff(values))
    # halving the step divides a second-order error by 4 (the margin n_in + 2 in the FFT length
    # makes the step ratio slightly off 2: allow 3 to 5.5); the finest value's own error is then
    # about differences[-1] / 3
    ratio = differences[0] / differences[1]
    assert 3.0 < ratio < 5.5, (values, ratio)
    assert differences[-1] < 1e-4


# ---------------------------------------------------------------- gradients

def _finite_differences(fn, w, eps=1e-5):
    grad = np.zeros_like(w)
    for index in np.ndindex(*w.shape):
        step = np.zeros_like(w)
        step[index] = eps
        grad[index] = (float(fn(w + step)) - float(fn(w - step))) / (2 * eps)
    return grad


def test_grad_of_exact_ei_parts_matches_finite_differences():
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(4, 2)), rng.normal(size=2) * 0.3
    grid_points = exact_grid_points(w, grid_step=1e-3)

    def ei_parts(weights):
        return exact_ei_parts(weights, b, activation="sigmoid", in_bins=16, out_bins=16,
                              grid_points=grid_points)

    expected = _finite_differences(ei_parts, w)
    # central differences: truncation eps^2 |f'''| ~ 1e-10, rounding 1e-16 / eps ~ 1e-11; the
    # lattice functions are C^1, so 1e-6 leaves room
    # float32 weights, x64 off outside: the custom VJP keeps the pullback in float64
    np.testing.assert_allclose(np.asarray(jax.grad(ei_parts)(jnp.asarray(w, jnp.float32))),
                               expected, atol=1e-6)


def test_grad_of_exact_sensitivity_matches_finite_differences():
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(3, 2)), rng.normal(size=2) * 0.3

    def sensitivity(weights):
        return exact_sensitivity(weights, b, activation="tanh", out_range=(-1, 1), in_bins=16,
                                 out_bins=16)

    # float64 weights (x64 scope): the sensitivity's gradient varies fast where an output edge
    # nearly meets an input edge, so float32-rounded weights would move it by ~1e-5
    with jax.enable_x64(True):
        gradient = np.asarray(jax.jit(jax.grad(sensitivity))(jnp.asarray(w)))
    # the same edge effect makes |f'''| ~ 1e5 here: eps = 1e-7 keeps the truncation error
    # eps^2 |f'''| / 6 ~ 1e-10 and the rounding 1e-16 * |f| / eps ~ 1e-8
    np.testing.assert_allclose(gradient, _finite_differences(sensitivity, w, eps=1e-7),
                               atol=1e-6)


def test_grid_step_under_grad_asks_for_grid_points():
    with pytest.raises(ValueError, match="pass grid_points"):
        jax.grad(lambda w: exact_ei_parts(w, activation="sigmoid"))(jnp.ones((2, 2)))


# ---------------------------------------------------------------- against sampling and deep-ei

def _plugin_spread(tables, num_samples):
    """Per-pair standard deviation of the plug-in estimate (module docstring), [..]."""
    p = tables / tables.sum(axis=(-2, -1), keepdims=True)
    rows, cols = p.sum(-1, keepdims=True), p.sum(-2, keepdims=True)
    positive = p > 0
    log_ratio = np.log2(np.where(positive, p, 1) / np.where(positive, rows * cols, 1))
    mean = (p * log_ratio).sum(axis=(-2, -1), keepdims=True)
    delta = (p * (log_ratio - mean) ** 2).sum(axis=(-2, -1)) / num_samples

    def occupied(margin):
        return (margin * num_samples >= 1).sum(-1)

    df = (occupied(tables.sum(-1)) - 1) * (occupied(tables.sum(-2)) - 1)
    return np.sqrt(delta + 2 * df / (2 * num_samples * math.log(2)) ** 2)


@pytest.mark.slow
def test_sampled_plugin_converges_to_exact_tables(key):
    rng = np.random.default_rng(7)
    w = rng.normal(size=(20, 10)).astype(np.float32)
    samples = 1_000_000
    chain = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(20,))
    sampled, _ = pure.ei_parts_matrix(key, chain, ({"w": w},), in_range=(0, 1),
                                      out_range=(0, 1), in_bins=64, out_bins=64, samples=samples)
    tables = np.asarray(exact_ei_parts_tables(w, activation="sigmoid", in_bins=64, out_bins=64))
    expected = expected_plugin_mutual_information(tables, samples)
    z = (sampled - expected) / _plugin_spread(tables, samples)
    # 200 pairs: |z| < 5 for each (two-sided 5.7e-7 each, 1e-4 for the family); the mean of 200
    # unit z-scores has sd 0.071 if independent (pairs sharing an input or output are correlated
    # weakly: repeated seeds gave |mean| < 0.16); 0.4 is > 5 sd
    assert np.abs(z).max() < 5, np.abs(z).max()
    assert abs(z.mean()) < 0.4, z.mean()
    # the plug-in bias at 64 bins is far from negligible: the exact value lies well below
    p = tables / tables.sum(axis=(-2, -1), keepdims=True)
    outer = p.sum(-1, keepdims=True) * p.sum(-2, keepdims=True)
    exact = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1) / np.where(p > 0, outer, 1)),
                     0).sum()
    assert abs(sampled.sum() - expected.sum()) < 0.03 < sampled.sum() - exact


def test_reference_layers_from_deep_ei(reference):
    cases, weights = reference
    # 20 -> 10 sigmoid, 64 bins: deep-ei's EI_parts at 1e5 samples, sd over seeds 0.0075
    case = cases["d_20_10_sigmoid"]
    w = weights["d_20_10_sigmoid/0.weight"].T
    tables = np.asarray(exact_ei_parts_tables(w, activation="sigmoid", in_bins=64, out_bins=64))
    expected = expected_plugin_mutual_information(tables, 100_000).sum()
    assert abs(expected - case["ei_of_layer_samples_1e5"]) < 4 * case[
        "std_over_seeds_ei_of_layer_1e5"]
    sensitivity = np.asarray(exact_sensitivity_tables(w, activation="sigmoid", in_bins=64,
                                                      out_bins=64))
    expected = expected_plugin_mutual_information(sensitivity, 1000).sum()
    assert abs(expected - case["sensitivity_of_layer_samples_1000"]) < 4 * case[
        "std_over_seeds_sensitivity_1000"]
    # the iris MLP's layers, 8 bins, 1e6 samples: bias < 50 / (2e6 ln 2) per pair is below the
    # noise; allow 4 sd of the sum of the pairs' spreads (an upper bound under any correlation)
    # (each layer zero-padded to 5 -> 5 with one grid size: one compiled program for the three;
    # zero weights add point masses at 0, handled exactly, and zero terms)
    iris = cases["c_iris_4_5_5_3_sigmoid"]
    for key, layer in zip(("0", "2", "4"), iris["layers"]):
        w = weights[f"c_iris_4_5_5_3_sigmoid/{key}.weight"].T
        padded = np.zeros((5, 5))
        padded[:w.shape[0], :w.shape[1]] = w
        tables = np.asarray(exact_ei_parts_tables(padded, activation="sigmoid", in_bins=8,
                                                  out_bins=8, grid_points=2 ** 14))
        expected = expected_plugin_mutual_information(tables, 1_000_000).sum()
        spread = _plugin_spread(tables, 1_000_000).sum()
        assert abs(expected - layer["pairwise_ei"]) < 4 * spread, (key, expected, spread)


# ---------------------------------------------------------------- chains

def test_chain_of_one_dense_layer():
    rng = np.random.default_rng(2)
    w, b = rng.normal(size=(4, 3)), rng.normal(size=3)
    chain = pure.Chain(layers=(pure.Dense(activation="tanh"),), in_shape=(4,))
    kwargs = dict(in_range=(-1, 1), out_range=(-1, 1), in_bins=8, out_bins=8)
    direct = exact_ei_parts_matrix(w, b, activation="tanh", **kwargs)
    np.testing.assert_allclose(np.asarray(exact_for_chain(chain, ({"w": w, "b": b},),
                                                          measure="ei_parts_matrix", **kwargs)),
                               np.asarray(direct), atol=ROUNDING)
    sens = exact_for_chain(chain, ({"w": w, "b": b},), measure="sensitivity",
                           activation="sigmoid", in_bins=8, out_bins=8)
    assert abs(float(sens) - float(exact_sensitivity(w, b, activation="sigmoid", in_bins=8,
                                                     out_bins=8))) < ROUNDING


def test_conv_on_its_receptive_field_is_a_dense_layer():
    rng = np.random.default_rng(5)
    kernel, bias = rng.normal(size=(3, 2, 2, 2)), rng.normal(size=3)   # [C_out, C_in, kH, kW]
    chain = pure.Chain(layers=(pure.Conv2d(activation="sigmoid"),), in_shape=(2, 2, 2))
    params = ({"w": kernel, "b": bias},)
    w, b = affine_map(chain, params)
    np.testing.assert_allclose(np.asarray(w), kernel.reshape(3, -1).T, atol=1e-12)
    np.testing.assert_allclose(np.asarray(b), bias, atol=1e-12)
    value = exact_for_chain(chain, params, in_bins=8, out_bins=8)
    dense = exact_ei_parts(kernel.reshape(3, -1).T, bias, activation="sigmoid", in_bins=8,
                           out_bins=8)
    assert abs(float(value) - float(dense)) < 1e-9


def test_chain_errors_name_what_applies():
    dense = pure.Dense(activation="sigmoid")
    two_layers = pure.Chain(layers=(dense, dense), in_shape=(3,))
    params = ({"w": np.ones((3, 3))}, {"w": np.ones((3, 3))})
    with pytest.raises(NotImplementedError, match="sampling measures"):
        exact_for_chain(two_layers, params)
    pooled = pure.Chain(layers=(pure.Conv2d(), pure.MaxPool2d(kernel_size=(2, 2),
                                                              stride=(2, 2))), in_shape=(1, 3, 3))
    with pytest.raises(NotImplementedError, match="MaxPool2d"):
        exact_for_chain(pooled, ({"w": np.ones((1, 1, 2, 2))}, {}))
    one = pure.Chain(layers=(dense,), in_shape=(3,))
    with pytest.raises(NotImplementedError, match="vector"):
        exact_for_chain(one, ({"w": np.ones((3, 3))},), measure="ei")
    with pytest.raises(NotImplementedError, match="callable"):
        exact_for_chain(one, ({"w": np.ones((3, 3))},), activation=jax.nn.softplus)
    with pytest.raises(ValueError, match="measure must be one of"):
        exact_for_chain(one, ({"w": np.ones((3, 3))},), measure="bogus")


def test_affine_span_with_identity_between_is_exact():
    # Dense(identity) -> Dense(sigmoid) is one affine map and a sigmoid
    rng = np.random.default_rng(6)
    w1, w2 = rng.normal(size=(3, 4)), rng.normal(size=(4, 2))
    chain = pure.Chain(layers=(pure.Dense(), pure.Dense(activation="sigmoid")), in_shape=(3,))
    value = exact_for_chain(chain, ({"w": w1}, {"w": w2}), in_bins=8, out_bins=8)
    assert abs(float(value) - float(exact_ei_parts(w1 @ w2, activation="sigmoid", in_bins=8,
                                                   out_bins=8))) < 1e-9


# ---------------------------------------------------------------- argument errors

def test_argument_errors_name_the_argument():
    w = np.ones((2, 2))
    with pytest.raises(ValueError, match="activation must be one of"):
        exact_ei_parts(w, activation="swish")
    with pytest.raises(NotImplementedError, match="dynamic"):
        exact_ei_parts(w, activation="sigmoid", out_range="dynamic")
    with pytest.raises(ValueError, match=r"w must have shape \[n_in, n_out\]"):
        exact_ei_parts(np.ones(3), activation="sigmoid")
    with pytest.raises(ValueError, match=r"b must have shape \[n_out\]"):
        exact_ei_parts(w, np.ones(3), activation="sigmoid")
    with pytest.raises(ValueError, match="grid_points must be"):
        exact_ei_parts(w, activation="sigmoid", grid_points=8)
    with pytest.raises(ValueError, match="grid_step must be a positive number"):
        exact_ei_parts(w, activation="sigmoid", grid_step=0)
    with pytest.raises(ValueError, match="in_range must be"):
        exact_sensitivity(w, activation="sigmoid", in_range=(1, 0))
    with pytest.raises(TypeError, match="in_bins must be"):
        exact_sensitivity(w, activation="sigmoid", in_bins=2.5)
