"""method='exact' beyond Dense/Conv2d: affine Function spans (translated torch modules, residual
maps, restricted positions) and every monotone activation of deep_ei_jax.activations.

Tolerances:
* Thresholds: the semantics y < e <=> z < t (inclusive top: <=) are checked exactly (==) on a
  float64 grid that contains every threshold and its float neighbours; closed-form inverses agree
  to float64 rounding (1e-12 relative).
* Equal affine maps (a span and its folded Dense layer): w and b agree to float64 rounding of the
  basis evaluation (1e-12); the exact values computed from them then agree to 1e-9 bits (the
  kernel's FFT rounding amplifies 1e-16 differences in w at most to ~1e-11 here).
* Sensitivity tables against a brute-force oracle: x on a midpoint grid of M points per input bin
  edge-aligned with the input bins, each point binned exactly as the measures bin; a cell is
  bounded by two output-edge crossings, each misassigning at most one grid cell: |error| <= 2/M.
* Sampling (Miller-Madow, N samples, k batches): the exact value lies within
  t_{k-1, 0.9995} * SE_batch-means of the estimate (a 1e-3 false-failure rate), plus the exact
  method's grid error (at most 1.5 grid_step^2 bits per pair, module docstring of exact.py) plus
  the bias Miller-Madow leaves, computed from the exact tables: E[plug-in] cell by cell
  (`expected_plugin_mutual_information`) minus E[m_xy - m_x - m_y + 1] / (2 N ln 2), with
  E[occupied cells] = sum (1 - (1 - p)^N) (a few 1e-5 bits here, beside SE ~ 2e-3).
"""
import math
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deep_ei_jax import activations, exact, pure
from deep_ei_jax.activations import activation
from deep_ei_jax.estimators import expected_plugin_mutual_information
from deep_ei_jax.exact import (affine_map, exact_ei_parts, exact_ei_parts_tables,
                               exact_for_chain, exact_sensitivity, exact_sensitivity_tables)

NEW = ("leaky_relu", "elu", "selu", "celu", "softplus", "relu6", "hardtanh", "hardsigmoid",
       "logsigmoid", "softsign")
VARIANTS = [activation(n) for n in NEW + ("identity", "relu", "sigmoid", "tanh")] + [
    activation("leaky_relu", 0.2), activation("leaky_relu", 0.0), activation("elu", 0.5),
    activation("celu", 2.0), activation("softplus", 2.0, 5.0), activation("hardtanh", -2.0, 0.5)]
NON_MONOTONE = [activation(n) for n in ("gelu", "gelu_tanh", "silu", "mish", "hardswish")] + [
    activation("leaky_relu", -0.1)]


def _f64(a, z):
    with jax.enable_x64(True):
        return np.asarray(a(jnp.asarray(z, jnp.float64)), np.float64)


def _levels(a):
    """Interior levels, the range's ends (flat values included) and levels beyond them."""
    ends = _f64(a, np.array([-30.0, 30.0]))
    inner = np.linspace(ends[0], ends[1], 9)[1:-1]
    special = [-1.0, 0.0, 1.0, 6.0, -2.0, 0.5, *_f64(a, np.array([-1e300, 1e300]))]
    return np.unique(np.concatenate([inner, special, ends - 1.0, ends + 1.0]))


# ---------------------------------------------------------------- thresholds

@pytest.mark.parametrize("a", VARIANTS, ids=str)
def test_thresholds_split_the_line_exactly(a):
    levels = _levels(a)
    strict = activations.threshold(a, levels)
    inclusive = activations.threshold(a, levels, inclusive=True)
    finite = np.concatenate([strict[np.isfinite(strict)], inclusive[np.isfinite(inclusive)]])
    finite = finite[np.abs(finite) <= 30]
    # z in [-30, 30] (beyond, float64 rounds elu to -1 and softsign to 1, limits the mathematics
    # never reaches and the thresholds follow): a grid, every threshold and its neighbours
    z = np.unique(np.concatenate([np.linspace(-30, 30, 6001), finite,
                                  np.nextafter(finite, -np.inf), np.nextafter(finite, np.inf)]))
    z = z[(z == 0) | (np.abs(z) >= np.finfo(np.float64).tiny)]   # XLA flushes subnormals to 0
    y = _f64(a, z)[:, None]
    for found, wanted, t in ((y < levels, z[:, None] < strict, strict),
                             (y <= levels, z[:, None] <= inclusive, inclusive)):
        if a.name in ("sigmoid", "tanh"):
            # closed-form inverses: exact up to rounding, so only z within rounding of t may
            # fall on the other side
            near = np.abs(z[:, None] - t) <= 1e-12 * (1 + np.abs(t))
            found, wanted = found | near, wanted | near
        np.testing.assert_array_equal(found, wanted)


def _closed_form(a, e):
    name, args = a.name, a.args
    if name in ("relu6", "hardtanh"):
        return e
    if name == "hardsigmoid":
        return 6 * e - 3
    if name == "leaky_relu":
        return np.where(e > 0, e, e / args[0])
    if name in ("elu", "selu"):
        alpha, scale = (args[0], 1.0) if name == "elu" else (activations.SELU_ALPHA,
                                                             activations.SELU_SCALE)
        return np.where(e > 0, e / scale, np.log1p(e / scale / alpha))
    if name == "celu":
        return np.where(e > 0, e, args[0] * np.log1p(e / args[0]))
    if name == "softplus":
        return np.where(args[0] * e > args[1], e, np.log(np.expm1(args[0] * e)) / args[0])
    if name == "logsigmoid":
        return -np.log(np.expm1(-e))
    return e / (1 - np.abs(e))   # softsign


@pytest.mark.parametrize("a", [v for v in VARIANTS if v.name in NEW and v.args[:1] != (0.0,)],
                         ids=str)
def test_bisection_agrees_with_closed_form_inverses(a):
    low, high = _f64(a, np.array([-20.0, 20.0]))
    levels = np.linspace(low, high, 41)[1:-1]
    levels = levels[np.abs(levels) > 1e-9]     # 0 is a kink for several: both sides are 0
    for inclusive in (False, True):
        np.testing.assert_allclose(activations.threshold(a, levels, inclusive=inclusive),
                                   _closed_form(a, levels), rtol=1e-12, atol=1e-12)


def test_name_and_activation_object_give_identical_values():
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(4, 3)), rng.normal(size=3)
    kwargs = dict(in_bins=8, out_bins=8, out_range=(-1, 3))
    for name in ("sigmoid", "relu", "softplus", "elu"):
        by_name = exact_ei_parts(w, b, activation=name, **kwargs)
        by_object = exact_ei_parts(w, b, activation=activation(name), **kwargs)
        assert float(by_name) == float(by_object)
        assert float(exact_sensitivity(w, b, activation=name, **kwargs)) == float(
            exact_sensitivity(w, b, activation=activation(name), **kwargs))
    # a non-default argument is a different activation
    assert float(exact_ei_parts(w, b, activation=activation("elu", 0.5), **kwargs)) != float(
        exact_ei_parts(w, b, activation="elu", **kwargs))


@pytest.mark.parametrize("a", NON_MONOTONE, ids=str)
def test_non_monotone_activations_are_refused_with_the_reason(a):
    w = np.ones((2, 2))
    for given in ((a.name,) if a.args == activation(a.name).args else ()) + (a,):
        with pytest.raises(NotImplementedError, match=rf"activation {a.name}.*is not monotone.*"
                                                      r"length ratio of one interval.*sampling"):
            exact_ei_parts(w, activation=given)


# ---------------------------------------------------------------- flat regions, brute force

def _brute_sensitivity_tables(w, b, a, in_bins, out_edges, points_per_bin):
    """P(x_A in bin i, y_B in bin j), x_A on a midpoint grid, the others 0, y binned as the
    measures bin (half-open bins, top edge inclusive, outside dropped)."""
    m = in_bins * points_per_bin
    x = (np.arange(m) + 0.5) / m
    tables = np.zeros(w.shape + (in_bins, len(out_edges) - 1))
    for i in range(w.shape[0]):
        y = _f64(a, x[:, None] * w[i] + b)                              # [m, n_out]
        j = np.searchsorted(out_edges, y, side="right") - 1
        j = np.where(y == out_edges[-1], len(out_edges) - 2, j)
        keep = (y >= out_edges[0]) & (y <= out_edges[-1])
        for o in range(w.shape[1]):
            np.add.at(tables[i, o], ((np.arange(m) // points_per_bin)[keep[:, o]],
                                     j[keep[:, o], o]), 1.0 / m)
    return tables


@pytest.mark.parametrize("a, out_range", [
    (activation("relu6"), (0.0, 6.0)), (activation("hardtanh"), (-2.0, 2.0)),
    (activation("hardsigmoid"), (0.0, 1.0)), (activation("relu6"), (-1.0, 7.0)),
    (activation("elu"), (-1.0, 3.0)), (activation("softsign"), (-1.0, 1.0))], ids=str)
def test_sensitivity_tables_with_flat_regions_match_brute_force(a, out_range):
    # weights and biases that push outputs onto the clamps (point masses at the range's ends and,
    # for hardtanh on (-2, 2), at the interior edges -1 and 1), one zero weight (a constant)
    w = np.array([[9.0, -4.0, 0.0, 2.0], [-8.0, 1.5, 3.0, 0.0]])
    b = np.array([-1.0, 2.5, -3.5, 7.0])
    in_bins, out_bins, per_bin = 4, 8, 50_000
    tables = np.asarray(exact_sensitivity_tables(w, b, activation=a, in_bins=in_bins,
                                                 out_bins=out_bins, out_range=out_range))
    edges = out_range[0] + (out_range[1] - out_range[0]) * (np.arange(out_bins + 1) / out_bins)
    brute = _brute_sensitivity_tables(w, b, a, in_bins, edges, per_bin)
    np.testing.assert_allclose(tables, brute, rtol=0, atol=2.0 / (in_bins * per_bin) + 1e-12)


# ---------------------------------------------------------------- against sampling

@pytest.mark.parametrize("name", NEW)
def test_exact_ei_parts_agrees_with_miller_madow_sampling(name):
    a = activation(name)
    rng = np.random.default_rng(1)
    scale = 2.0 if name == "relu6" else 1.0        # reach past 6 as well as below 0
    w, b = scale * rng.normal(scale=2.0, size=(6, 4)), scale * rng.normal(size=4)
    z_low, z_high = b + np.minimum(w, 0).sum(0), b + np.maximum(w, 0).sum(0)
    out_range = (float(_f64(a, z_low).min()), float(_f64(a, z_high).max()))   # nothing dropped
    chain = pure.Chain(layers=(pure.Dense(activation=a),), in_shape=(6,))
    params = ({"w": w.astype(np.float32), "b": b.astype(np.float32)},)
    kwargs = dict(in_range=(0, 1), out_range=out_range, in_bins=16, out_bins=16)
    value = float(exact_for_chain(chain, params, **kwargs))
    batches, samples = 16, 2 ** 20
    estimate, info = pure.ei_parts(jax.random.key(3), chain, params, **kwargs, samples=samples,
                                   estimator="miller_madow", error_bars=batches)
    assert info.dropped == 0
    t_quantile = 4.073                     # Student t, 15 degrees of freedom, 0.9995
    grid_error = 1.5 * exact.DEFAULT_GRID_STEP ** 2 * w.size
    bias = _miller_madow_bias(exact_ei_parts_tables(w, b, activation=a, **kwargs), samples,
                              value)
    assert abs(bias) < 1e-3
    assert abs(estimate - value) <= t_quantile * info.standard_error + grid_error + abs(bias), (
        estimate, value, info.standard_error, bias)


def _miller_madow_bias(tables, samples, value):
    """E[Miller-Madow estimate of the summed MI] - value, from the exact tables [.., Bx, By]."""
    tables = np.asarray(tables, np.float64)
    expected_plugin = expected_plugin_mutual_information(tables, samples).sum()

    def occupied(p, axes):
        return (1.0 - (1.0 - p) ** samples).sum(axis=axes)

    excess = (occupied(tables, (-2, -1)) - occupied(tables.sum(-1), -1)
              - occupied(tables.sum(-2), -1) + 1.0)
    return expected_plugin - excess.sum() / (2 * samples * math.log(2)) - value


# ---------------------------------------------------------------- Function spans

def residual(p, x):
    return x + x @ p["w"] + p["b"]


def _residual_case(act="sigmoid"):
    rng = np.random.default_rng(2)
    params = ({"w": rng.normal(scale=0.5, size=(5, 5)).astype(np.float32),
               "b": rng.normal(size=5).astype(np.float32)},)
    chain = pure.Chain(layers=(pure.Function(residual, name="block", activation=act),),
                       in_shape=(5,))
    return chain, params


def test_affine_function_layer_is_its_dense_map():
    chain, params = _residual_case()
    w, b = affine_map(chain, params)
    folded = np.asarray(params[0]["w"], np.float64) + np.eye(5)
    np.testing.assert_allclose(np.asarray(w), folded, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(b), params[0]["b"], rtol=0, atol=1e-12)
    kwargs = dict(in_bins=8, out_bins=8)
    for measure, direct in (("ei_parts", exact_ei_parts), ("sensitivity", exact_sensitivity)):
        value = exact_for_chain(chain, params, measure=measure, **kwargs)
        assert abs(float(value) - float(direct(folded, params[0]["b"], activation="sigmoid",
                                               **kwargs))) < 1e-9
    # through the pure measures (which call exact_for_chain), with an Activation override
    value, info = pure.ei_parts(jax.random.key(0), chain, params, **kwargs, method="exact",
                                activation=activation("elu"), out_range=(-1, 4))
    assert info.method == "exact" and abs(value - float(exact_ei_parts(
        folded, params[0]["b"], activation="elu", out_range=(-1, 4), **kwargs))) < 1e-9


def test_mixed_chain_of_dense_and_function_layers():
    rng = np.random.default_rng(3)
    w1 = rng.normal(size=(3, 4))
    scale, shift = rng.normal(size=4), rng.normal(size=4)
    chain = pure.Chain(layers=(
        pure.Dense(),
        pure.Function(lambda p, x: x * p["scale"] + p["shift"], name="affine",
                      activation=activation("identity")),
        pure.Dense(activation=activation("softplus"))), in_shape=(3,))
    w2 = rng.normal(size=(4, 2))
    params = ({"w": w1}, {"scale": scale, "shift": shift}, {"w": w2})
    w, b = affine_map(chain, params)
    np.testing.assert_allclose(np.asarray(w), (w1 * scale) @ w2, atol=1e-12)
    np.testing.assert_allclose(np.asarray(b), shift @ w2, atol=1e-12)


def test_restricted_conv_position_equals_the_receptive_field_layer():
    rng = np.random.default_rng(4)
    kernel, bias = rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3)
    params = ({"w": kernel.astype(np.float32), "b": bias.astype(np.float32)},)
    full = pure.Chain(layers=(pure.Conv2d(activation="tanh"),), in_shape=(2, 6, 6))
    restriction = pure.restrict(full, params, feature_axis=0)
    assert restriction.chain.in_shape == (18,)
    w, b = affine_map(restriction.chain, restriction.params)
    np.testing.assert_allclose(np.asarray(w), kernel.reshape(3, -1).T, atol=1e-6)  # float32 data
    field = pure.Chain(layers=(pure.Conv2d(activation="tanh"),), in_shape=(2, 3, 3))
    kwargs = dict(in_bins=8, out_bins=8, out_range=(-1, 1))
    assert abs(float(exact_for_chain(restriction.chain, restriction.params, **kwargs))
               - float(exact_for_chain(field, params, **kwargs))) < 1e-9


def test_nonaffine_spans_are_refused_with_the_primitive_and_the_hint():
    chain, params = _residual_case()
    inside = pure.Chain(layers=(pure.Function(lambda p, x: jnp.tanh(x @ p["w"]) + p["b"],
                                              name="block", activation="sigmoid"),),
                        in_shape=(5,))
    for measure in (pure.ei_parts, pure.sensitivity):
        with pytest.raises(NotImplementedError, match=r"Function layer 'block', is not affine.*"
                                                      r"tanh \(a nonlinear op\).*sampling"):
            measure(jax.random.key(0), inside, params, in_bins=8, out_bins=8, method="exact")
    nested = pure.Chain(layers=(chain.layers[0]._replace(activation=activation("relu")),
                                pure.Dense(activation="sigmoid")), in_shape=(5,))
    with pytest.raises(NotImplementedError, match="activation.*relu.*inside the span"):
        exact_for_chain(nested, params + ({"w": np.ones((5, 2))},))
    with pytest.raises(NotImplementedError, match="activation gelu.*not monotone"):
        exact_for_chain(chain, params, activation=activation("gelu"))


def test_size_limit_and_batched_basis(monkeypatch):
    chain, params = _residual_case()
    whole = [np.asarray(v) for v in affine_map(chain, params)]
    monkeypatch.setattr(exact, "BASIS_BATCH_BYTES", 1)    # one basis vector per batch
    batched = [np.asarray(v) for v in affine_map(chain, params)]
    for a, b in zip(whole, batched):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-14)
    monkeypatch.setattr(exact, "BASIS_LIMIT", 8 * 5 * 5 - 1)
    with pytest.raises(ValueError, match=re.escape("[n_in, n_out] = [5, 5]") + ".*restrict"):
        affine_map(chain, params)


def test_a_span_computed_in_float32_inside_warns():
    chain = pure.Chain(layers=(pure.Function(
        lambda p, x: x.astype(jnp.float32) @ p["w"].astype(jnp.float32), name="f32",
        activation="sigmoid"),), in_shape=(3,))
    with pytest.warns(RuntimeWarning, match="'f32'.*float32 value.*rounding"):
        affine_map(chain, ({"w": np.ones((3, 2))},))


def test_a_span_that_cannot_run_in_float64_is_refused_clearly():
    chain = pure.Chain(layers=(pure.Function(
        lambda p, x: jax.lax.add(x @ p["w"], jnp.float32(1.0)), name="f32 only",
        activation="sigmoid"),), in_shape=(3,))
    params = ({"w": np.ones((3, 2), np.float32)},)
    assert pure.apply(chain, params, jnp.ones((1, 3))).shape == (1, 2)   # fine in float32
    with pytest.raises(NotImplementedError, match="'f32 only', could not be traced in float64.*"
                                                  "TypeError.*sampling"):
        exact_for_chain(chain, params)


# ---------------------------------------------------------------- bridged torch modules

def _bridged(model, example, module, **kwargs):
    from deep_ei_jax.bridge.graph import capture
    from deep_ei_jax.bridge.spans import span_function
    span = span_function(capture(model.eval(), example), module, **kwargs)
    chain = pure.Chain(layers=(pure.Function(fn=span.fn, name=span.name,
                                             activation=span.out_activation or "identity"),),
                       in_shape=span.in_shape)
    return chain, (span.params,), span


def test_bridged_linear_batchnorm_sigmoid_equals_the_folded_dense_layer():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4),
                                torch.nn.Sigmoid())
    with torch.no_grad():   # non-trivial running statistics and affine parameters
        model[1].running_mean.copy_(torch.randn(4))
        model[1].running_var.copy_(torch.rand(4) + 0.5)
        model[1].weight.copy_(torch.randn(4))
        model[1].bias.copy_(torch.randn(4))
    chain, params, span = _bridged(model, torch.randn(1, 6), model[1], in_module=model[0])
    assert span.out_activation == activation("sigmoid")
    p = {k: np.asarray(v, np.float64) for k, v in span.params.items()}
    scale = p["1.weight"] / np.sqrt(p["1.running_var"] + model[1].eps)
    w = p["0.weight"].T * scale
    b = (p["0.bias"] - p["1.running_mean"]) * scale + p["1.bias"]
    found_w, found_b = affine_map(chain, params)
    np.testing.assert_allclose(np.asarray(found_w), w, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(found_b), b, rtol=0, atol=1e-12)
    kwargs = dict(in_bins=16, out_bins=16)
    for measure, direct in (("ei_parts", exact_ei_parts), ("sensitivity", exact_sensitivity)):
        value, info = getattr(pure, measure)(jax.random.key(0), chain, params, **kwargs,
                                             method="exact")
        assert abs(value - float(direct(w, b, activation="sigmoid", **kwargs))) < 1e-9


def test_bridged_leaky_relu_and_gelu_spans():
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.LeakyReLU(0.2),
                                torch.nn.Linear(3, 2), torch.nn.GELU())
    chain, params, span = _bridged(model, torch.randn(1, 5), model[0])
    assert span.out_activation == activation("leaky_relu", 0.2)
    weight, bias = (np.asarray(span.params[k], np.float64) for k in ("weight", "bias"))
    kwargs = dict(in_bins=8, out_bins=8, out_range=(-1, 3))
    value, _ = pure.ei_parts(jax.random.key(0), chain, params, **kwargs, method="exact")
    assert abs(value - float(exact_ei_parts(weight.T, bias, activation=activation(
        "leaky_relu", 0.2), **kwargs))) < 1e-9
    chain, params, span = _bridged(model, torch.randn(1, 5), model[2])
    assert span.out_activation == activation("gelu")
    with pytest.raises(NotImplementedError, match="activation gelu is not monotone.*sampling"):
        pure.ei_parts(jax.random.key(0), chain, params, **kwargs, method="exact")


def test_bridged_layer_norm_span_is_refused_with_the_primitive():
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Tanh())
    chain, params, _ = _bridged(model, torch.randn(1, 4), model[1], in_module=model[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # refused before any work or warning
        with pytest.raises(NotImplementedError, match=r"is not affine in its input: "
                                                      r"(square|integer_pow|mul|rsqrt|sqrt|div)"):
            exact_for_chain(chain, params, out_range=(-1, 1))
    assert math.isfinite(float(pure.ei_parts(jax.random.key(0), chain, params, samples=2000,
                                             in_bins=8, out_bins=8, out_range=(-1, 1))[0]))


def test_bridged_conv_batchnorm_relu_position_equals_the_folded_receptive_field():
    torch = pytest.importorskip("torch")
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.BatchNorm2d(3),
                                torch.nn.ReLU())
    with torch.no_grad():
        model[1].running_mean.copy_(torch.randn(3))
        model[1].running_var.copy_(torch.rand(3) + 0.5)
        model[1].weight.copy_(torch.randn(3))
        model[1].bias.copy_(torch.randn(3))
    chain, params, span = _bridged(model, torch.randn(1, 2, 6, 6), model[0])
    assert span.out_activation == activation("relu")      # the BatchNorm joined the span
    restriction = pure.restrict(chain, params, feature_axis=0)   # the centre pixel (3, 3)
    p = {k: np.asarray(v, np.float64) for k, v in span.params.items()}
    scale = p["1.weight"] / np.sqrt(p["1.running_var"] + model[1].eps)
    kernel = p["weight"] * scale[:, None, None, None]
    bias = (p["bias"] - p["1.running_mean"]) * scale + p["1.bias"]
    w, b = affine_map(restriction.chain, restriction.params)
    np.testing.assert_allclose(np.asarray(w), kernel.reshape(3, -1).T, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(b), bias, rtol=0, atol=1e-12)
    kwargs = dict(in_bins=8, out_bins=8, out_range=(0, 10))
    value, _ = pure.ei_parts(jax.random.key(0), restriction.chain, restriction.params, **kwargs,
                             method="exact")
    assert abs(value - float(exact_ei_parts(kernel.reshape(3, -1).T, bias, activation="relu",
                                            **kwargs))) < 1e-9
