"""deep_ei_jax.affine: which JAX functions are affine in their input, and why the others are not.

Each verdict of the jaxpr walk is also checked numerically, independently of the walk: an affine
f satisfies f(a x + (1 - a) y) = a f(x) + (1 - a) f(y) for every x, y and a, which holds in
float64 to rounding (1e-9 relative here) for the affine cases and fails by far more (> 1e-3) at
the random points used for every nonlinear case, so the cases are what their names say.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deep_ei_jax import pure
from deep_ei_jax.affine import Affinity, affine_reason, affinity, traced_bytes_per_sample

RNG = np.random.default_rng(0)
W = RNG.normal(size=(4, 4))
PARAMS = {"w": W, "b": RNG.normal(size=4), "w2": RNG.normal(size=(4, 3)),
          "mean": RNG.normal(size=4), "var": RNG.uniform(0.5, 2.0, size=4),
          "gamma": RNG.normal(size=4), "beta": RNG.normal(size=4),
          "kernel": RNG.normal(size=(3, 2, 3, 3)), "mask": (RNG.uniform(size=4) > 0.5) * 1.0}


def linear(p, x):
    return x @ p["w"] + p["b"]


def batch_norm(p, y):
    """Eval-mode BatchNorm over the last axis: the running-var rsqrt is a constant."""
    return (y - p["mean"]) * jax.lax.rsqrt(p["var"] + 1e-5) * p["gamma"] + p["beta"]


def conv(p, x):
    """[N, 16] -> [N, 2, 4, 2] -> conv 3x3 (pad 1) -> [N, 3, 4, 2], then BN per channel."""
    y = jax.lax.conv_general_dilated(x.reshape(-1, 2, 4, 2), p["kernel"], (1, 1),
                                     ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))
    scale = jax.lax.rsqrt(p["var"][:3] + 1e-5) * p["gamma"][:3]
    y = (y - p["mean"][:3, None, None]) * scale[:, None, None] + p["beta"][:3, None, None]
    return y.reshape(x.shape[0], -1)


AFFINE = {
    "linear": (linear, 4),
    "linear -> batch norm (eval)": (lambda p, x: batch_norm(p, linear(p, x)), 4),
    "conv -> batch norm (eval)": (conv, 16),
    "residual x + Wx + b": (lambda p, x: x + linear(p, x), 4),
    "reshape, transpose, flatten": (
        lambda p, x: x.reshape(-1, 2, 2).transpose(0, 2, 1).reshape(-1, 4) @ p["w2"], 4),
    "where with a constant mask": (lambda p, x: jnp.where(p["mask"] > 0, x, 2.0 * x), 4),
    "a nonlinear function of the params only": (lambda p, x: x * jnp.exp(p["b"]), 4),
    "inside jit": (jax.jit(lambda p, x: linear(p, x) - x.sum(axis=1, keepdims=True)), 4),
    "concatenate, slice, pad, cumsum": (
        lambda p, x: jnp.cumsum(jnp.pad(jnp.concatenate([x[:, 1:], x[:, :2]], axis=1),
                                        ((0, 0), (1, 0))), axis=1), 4),
    "x ** 1 and a constant divisor": (lambda p, x: x ** 1 / (1.0 + p["var"]), 4),
    "an unused nonlinear value": (lambda p, x: (jnp.tanh(x), linear(p, x))[1], 4),
}

NOT_AFFINE = {
    "relu inside": (lambda p, x: jax.nn.relu(linear(p, x)) @ p["w2"], 4,
                    r"^max \(a nonlinear op\) applied to a value that depends on the input$"),
    "x * x": (lambda p, x: x * x, 4, r"^mul of two input-dependent values$"),
    "x ** 2": (lambda p, x: x ** 2, 4, r"^integer_pow \(x \*\* 2\)"),
    "softmax": (lambda p, x: jax.nn.softmax(linear(p, x), axis=-1), 4,
                r"^reduce_max \(a nonlinear op\)"),
    "max pool": (lambda p, x: jax.lax.reduce_window(x.reshape(-1, 1, 4, 4), -jnp.inf,
                                                    jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2),
                                                    "VALID").reshape(x.shape[0], -1), 16,
                 r"^reduce_window_max \(a nonlinear op\)"),
    "layer norm": (lambda p, x: (x - x.mean(-1, keepdims=True))
                   / jnp.sqrt(x.var(-1, keepdims=True) + 1e-5), 4,
                   r"^(square|integer_pow|mul)\b.*input"),
    "attention scores x x^T": (lambda p, x: (x[:, :, None] * 1.0) @ x[:, None, :] @ p["w"], 4,
                               r"^dot_general of two input-dependent values$"),
    "division by the input": (lambda p, x: p["b"] / (1.0 + x), 4,
                              r"^div by a value that depends on the input$"),
    "sigmoid then tanh": (lambda p, x: jnp.tanh(jax.nn.sigmoid(linear(p, x)) @ p["w"]), 4,
                          r"^logistic \(a nonlinear op\) applied to a value that depends on the "
                          r"input$"),
    "argmax as an index": (lambda p, x: jnp.take_along_axis(
        x, jnp.argmax(x, axis=1, keepdims=True), axis=1), 4, r"^argmax \(a nonlinear op\)"),
    "a cast to an integer": (lambda p, x: x.astype(jnp.int32).astype(x.dtype), 4,
                             r"^convert_element_type to int32 \(rounding\)"),
}


def _affine_defect(fn, n_in):
    """max |f(a x + (1-a) y) - a f(x) - (1-a) f(y)| / scale at random float64 points."""
    with jax.enable_x64(True):
        params = {k: jnp.asarray(v, jnp.float64) for k, v in PARAMS.items()}
        rng = np.random.default_rng(1)
        x, y = (jnp.asarray(rng.uniform(-2, 2, size=(5, n_in))) for _ in range(2))
        a = 0.3
        mixed = fn(params, a * x + (1 - a) * y)
        combined = a * fn(params, x) + (1 - a) * fn(params, y)
        scale = 1.0 + float(jnp.abs(combined).max())
        return float(jnp.abs(mixed - combined).max()) / scale


@pytest.mark.parametrize("name", sorted(AFFINE))
def test_affine_functions_are_recognised(name):
    fn, n_in = AFFINE[name]
    assert _affine_defect(fn, n_in) < 1e-9         # independent confirmation: it is affine
    assert affine_reason(fn, PARAMS, (n_in,)) is None
    assert affinity(fn, PARAMS, (n_in,), dtype=jnp.float64) == Affinity(None, None)


@pytest.mark.parametrize("name", sorted(NOT_AFFINE))
def test_nonlinear_functions_are_refused_with_the_first_nonlinear_primitive(name):
    fn, n_in, reason = NOT_AFFINE[name]
    assert _affine_defect(fn, n_in) > 1e-3         # independent confirmation: it is not
    found = affine_reason(fn, PARAMS, (n_in,))
    assert found is not None
    assert re.search(reason, found), found


def test_a_loop_is_refused_conservatively_even_when_linear():
    def loop(p, x):
        return jax.lax.fori_loop(0, 2, lambda i, v: v * 2.0, x)

    assert _affine_defect(loop, 4) < 1e-9     # it is linear, but loops have no rule
    assert re.match(r"(scan|while) \(no affinity rule for this primitive\) applied to a value "
                    r"that depends on the input$", affine_reason(loop, PARAMS, (4,)))


def test_chains_of_builtin_layers_and_a_restricted_conv_position():
    chain = pure.Chain(layers=(pure.Conv2d(padding=(1, 1)),
                               pure.AvgPool2d(kernel_size=(2, 2), stride=(2, 2)),
                               pure.Flatten(), pure.Dense(activation="sigmoid")),
                       in_shape=(2, 4, 4))
    params = ({"w": RNG.normal(size=(3, 2, 3, 3)), "b": RNG.normal(size=3)}, {}, {},
              {"w": RNG.normal(size=(12, 5))})
    # the activation is the layer's, outside apply's affine part: strip it as exact does
    inner = pure.Chain(layers=chain.layers[:-1] + (pure.Dense(),), in_shape=chain.in_shape)
    assert affine_reason(lambda p, x: pure.apply(inner, p, x), params, (2, 4, 4)) is None
    assert "logistic" in affine_reason(lambda p, x: pure.apply(chain, p, x), params, (2, 4, 4))
    maxed = pure.Chain(layers=(pure.Conv2d(), pure.MaxPool2d(kernel_size=(2, 2), stride=(2, 2))),
                       in_shape=(2, 4, 4))
    assert affine_reason(lambda p, x: pure.apply(maxed, p, x), params[:1] + ({},),
                         (2, 4, 4)).startswith("reduce_window_max")
    conv = pure.Chain(layers=(pure.Conv2d(activation="tanh"),), in_shape=(2, 6, 6))
    restriction = pure.restrict(conv, params[:1], feature_axis=0)
    spec = restriction.chain.layers[0]
    assert affine_reason(spec.fn, restriction.params[0], restriction.chain.in_shape) is None
    assert spec.activation == "tanh"   # the restricted fn stops before the activation


def test_narrowing_to_float32_inside_is_reported_in_float64_only():
    def narrowing(p, x):
        return x.astype(jnp.float32) @ p["w"].astype(jnp.float32)

    assert affinity(narrowing, PARAMS, (4,)) == Affinity(None, None)
    found = affinity(narrowing, PARAMS, (4,), dtype=jnp.float64)
    assert found.reason is None
    assert found.narrowed == ("convert_element_type makes an input-dependent float32 value (the "
                              "input is float64)")
    with pytest.raises(ValueError, match="dtype must be a float type; got int32"):
        affinity(narrowing, PARAMS, (4,), dtype=jnp.int32)


def test_traced_bytes_per_sample_counts_the_intermediates():
    # x [1, 4] (input), x @ w [1, 3]: (4 + 3) float64 values, nothing else
    assert traced_bytes_per_sample(lambda p, x: x @ p["w2"], PARAMS, (4,)) == (4 + 3) * 8
    assert traced_bytes_per_sample(lambda p, x: x @ p["w2"], PARAMS, (4,),
                                   dtype=jnp.float32) == (4 + 3) * 4
