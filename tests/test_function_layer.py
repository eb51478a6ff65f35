"""layers.Function: any pure JAX fn(params, x) measured by the unchanged pure measures.

Equalities. A Function whose fn is the Dense layer's own arithmetic (x @ w + b, fan-in > 16 where
Dense uses a matmul) runs the same float operations on the same samples (the samples depend on the
key and the input shape only), so every count and every value is identical: asserted with ==.
The residual block sigmoid(x + x @ w + b) and the Dense layer W + I round differently (x + x @ w
vs x @ (W + I)), so a binned output can differ where it lies within rounding of a bin edge; the
tolerance counts such entries on the measure's own samples (see `_flip_bound`).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deep_ei_jax import layers, pure
from deep_ei_jax.sampling import SAMPLE_BLOCK, uniform_inputs

N_IN, N_OUT = 20, 6  # fan-in 20 > layers.ELEMENTWISE_FAN_IN: Dense multiplies with a matmul
BINNING = dict(in_range=(0, 1), out_range=(0, 1), in_bins=8, out_bins=8)


def affine(params, x):
    return x @ params["w"] + params["b"]


def residual(params, x):
    return x + x @ params["w"] + params["b"]


@pytest.fixture(scope="module")
def dense_params():
    rng = np.random.default_rng(0)
    return ({"w": rng.normal(size=(N_IN, N_OUT)).astype(np.float32),
             "b": rng.normal(size=N_OUT).astype(np.float32)},)


def _chains(activation="sigmoid"):
    dense = pure.Chain(layers=(pure.Dense(activation=activation),), in_shape=(N_IN,))
    function = pure.Chain(layers=(pure.Function(affine, name="affine", activation=activation),),
                          in_shape=(N_IN,))
    return dense, function


def _assert_same(a, b):
    """Same value(s) and the same samples and drops (degeneracy's info is a pair of Infos)."""
    (value_a, info_a), (value_b, info_b) = a, b
    np.testing.assert_array_equal(np.asarray(value_a, float), np.asarray(value_b, float))
    infos_a = info_a if isinstance(info_a, tuple) and not hasattr(info_a, "dropped") else (info_a,)
    infos_b = info_b if isinstance(info_b, tuple) and not hasattr(info_b, "dropped") else (info_b,)
    for one_a, one_b in zip(infos_a, infos_b, strict=True):
        assert one_a.dropped == one_b.dropped and one_a.samples == one_b.samples


def test_function_equal_to_dense_gives_identical_values(dense_params):
    dense, function = _chains()
    key = jax.random.key(1)
    assert pure.out_shape(function, dense_params) == (N_OUT,)
    np.testing.assert_array_equal(pure.apply(dense, dense_params, jnp.ones((3, N_IN))),
                                  pure.apply(function, dense_params, jnp.ones((3, N_IN))))
    for measure, kwargs in ((pure.ei_parts, dict(samples=20_000)),
                            (pure.ei, dict(samples=20_000)),
                            (pure.sensitivity, dict(samples=300)),
                            (pure.ei_parts_matrix, dict(samples=5000)),
                            (pure.degeneracy, dict(samples=5000, sensitivity_samples=200))):
        _assert_same(measure(key, dense, dense_params, **BINNING, **kwargs),
                     measure(key, function, dense_params, **BINNING, **kwargs))
    groups = [((0, 1, 2), (0, 1)), ((5,), (3, 4, 5))]
    _assert_same(pure.eis_between_groups(key, dense, dense_params, groups, samples=5000,
                                         **BINNING),
                 pure.eis_between_groups(key, function, dense_params, groups, samples=5000,
                                         **BINNING))


def test_function_downstream_options_equal_dense(dense_params):
    """out_range='dynamic', error bars, estimators and significance pass through unchanged."""
    dense, function = _chains("tanh")
    key = jax.random.key(2)
    binning = dict(in_range=(0, 1), in_bins=8, out_bins=8, samples=8192)
    for kwargs in (dict(out_range="dynamic"),
                   dict(out_range=(-1, 1), error_bars=4, estimator="miller_madow"),
                   dict(out_range=(-1, 1), significance=True, estimator="jackknife")):
        (a, info_a) = pure.ei_parts_matrix(key, dense, dense_params, **binning, **kwargs)
        (b, info_b) = pure.ei_parts_matrix(key, function, dense_params, **binning, **kwargs)
        np.testing.assert_array_equal(a, b)
        for field in ("out_low", "out_high", "standard_error", "pvalues", "qvalues"):
            got_a, got_b = getattr(info_a, field), getattr(info_b, field)
            assert (got_a is None) == (got_b is None), field
            if got_a is not None:
                np.testing.assert_array_equal(got_a, got_b, err_msg=field)
        assert np.all(np.isfinite(a))  # bias-corrected terms may dip below 0
    (a, info_a) = pure.ei(key, dense, dense_params, **binning, out_range=(-1, 1), error_bars=4)
    (b, info_b) = pure.ei(key, function, dense_params, **binning, out_range=(-1, 1),
                          error_bars=4)
    assert a == b and info_a.standard_error == info_b.standard_error
    # the last activation can still be replaced per call
    assert pure.ei_parts(key, dense, dense_params, **BINNING, samples=4096,
                         activation="sigmoid")[0] == \
        pure.ei_parts(key, function, dense_params, **BINNING, samples=4096,
                      activation="sigmoid")[0]


def _flip_bound(key, params, samples, out_bins):
    """How many (sample, output) values of the measure's own samples can bin differently in the
    two computations of the residual block: those whose exact output lies within the rounding
    bound of a bin edge. Each computation of z = x + x w + b is a sum of n + 2 float32 terms,
    off by at most gamma = (n + 2) 2^-24 / (1 - (n + 2) 2^-24) times the sum of their absolute
    values (the standard bound for any summation order); both lie within that of the float64 z,
    and the sigmoid (slope <= 1/4) adds a few ulps of its own (8 * 2^-24 allowed)."""
    blocks = -(-samples // SAMPLE_BLOCK)
    x = np.asarray(uniform_inputs(key, jnp.asarray(0), blocks, (N_IN,), jnp.float32(0),
                                  jnp.float32(1)))[:samples].astype(np.float64)
    w, b = (np.asarray(params[k], np.float64) for k in ("w", "b"))
    z = x + x @ w + b
    n = N_IN + 2
    gamma = n * 2.0 ** -24 / (1 - n * 2.0 ** -24)
    delta_z = gamma * (np.abs(x) + np.abs(x) @ np.abs(w) + np.abs(b))
    y = 1 / (1 + np.exp(-z))
    edges = np.arange(1, out_bins) / out_bins
    distance = np.min(np.abs(y[..., None] - edges), axis=-1)
    return int(np.sum(distance <= delta_z / 4 + 8 * 2.0 ** -24))


def test_residual_function_equals_dense_with_identity_added():
    rng = np.random.default_rng(5)
    w = (0.1 * rng.normal(size=(N_IN, N_IN))).astype(np.float32)
    b = rng.normal(size=N_IN).astype(np.float32)
    params = {"w": w, "b": b}
    block = pure.Chain(layers=(pure.Function(residual, name="block", activation="sigmoid"),),
                       in_shape=(N_IN,))
    dense = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(N_IN,))
    dense_params = ({"w": w + np.eye(N_IN, dtype=np.float32), "b": b},)
    key, samples = jax.random.key(3), 30_000
    flips = _flip_bound(key, params, samples, BINNING["out_bins"])
    # a flipped (sample, output) moves one count in each of the n_in pair tables of that output
    # (and one sample between joint states): H(Y) and H(X, Y) each move by at most
    # 2 (log2 N + log2 e) / N, so one pair's MI by 4 (log2 N + log2 e) / N; on top, the float32
    # formula rounding of test_sweep (4 log2 N 2^-24 per pair)
    per_flip = 4 * (math.log2(samples) + math.log2(math.e)) / samples
    rounding = N_IN * N_IN * 4 * math.log2(samples) * 2.0 ** -24
    parts_block, _ = pure.ei_parts(key, block, (params,), **BINNING, samples=samples)
    parts_dense, _ = pure.ei_parts(key, dense, dense_params, **BINNING, samples=samples)
    assert abs(parts_block - parts_dense) <= N_IN * flips * per_flip + rounding
    ei_block, _ = pure.ei(key, block, (params,), **BINNING, samples=samples)
    ei_dense, _ = pure.ei(key, dense, dense_params, **BINNING, samples=samples)
    assert abs(ei_block - ei_dense) <= flips * per_flip + 1e-4  # 1e-4: EI's float rounding
    # the bound is tight enough to tell W + I from W: dropping the identity changes EI_parts
    without, _ = pure.ei_parts(key, dense, ({"w": w, "b": b},), **BINNING, samples=samples)
    assert abs(without - parts_dense) > 3 * (N_IN * flips * per_flip + rounding)


def test_chain_mixing_function_and_builtin_layers():
    rng = np.random.default_rng(6)
    def double(p, x):
        return 2.0 * x * p["scale"]
    chain = pure.Chain(layers=(pure.Dense(activation="relu"),
                               pure.Function(double, name="double", activation="sigmoid")),
                       in_shape=(4,))
    params = ({"w": rng.normal(size=(4, 3)).astype(np.float32)},
              {"scale": np.float32(0.5) * np.ones(3, np.float32)})
    twin = pure.Chain(layers=(pure.Dense(activation="relu"), pure.Dense(activation="sigmoid")),
                      in_shape=(4,))
    twin_params = (params[0], {"w": np.eye(3, dtype=np.float32)})
    x = jnp.asarray(rng.uniform(size=(5, 4)), jnp.float32)
    np.testing.assert_allclose(pure.apply(chain, params, x), pure.apply(twin, twin_params, x),
                               rtol=1e-6)
    value, info = pure.ei_parts(jax.random.key(0), chain, params, **BINNING, samples=4096)
    assert np.isfinite(value) and value > 0 and info.samples == 4096


def test_exact_method_on_a_function_layer(dense_params):
    """An affine Function is measured exactly, as its Dense twin (its map read off in float64);
    one that is not affine is refused, naming the primitive (tests/test_exact_spans.py has more)."""
    dense, function = _chains()
    for measure in (pure.ei_parts, pure.sensitivity):
        value, info = measure(jax.random.key(0), function, dense_params, **BINNING,
                              method="exact")
        twin, _ = measure(jax.random.key(0), dense, dense_params, **BINNING, method="exact")
        assert info.method == "exact" and abs(value - twin) < 1e-9
    squashed = pure.Chain(layers=(pure.Function(lambda p, x: jnp.tanh(affine(p, x)),
                                                name="squashed", activation="sigmoid"),),
                          in_shape=(N_IN,))
    with pytest.raises(NotImplementedError, match="'squashed', is not affine in its input: tanh"):
        pure.ei_parts(jax.random.key(0), squashed, dense_params, **BINNING, method="exact")


def test_sweep_over_stacked_function_params_equals_single_calls():
    rng = np.random.default_rng(7)
    chain = pure.Chain(layers=(pure.Function(residual, name="block", activation="sigmoid"),),
                       in_shape=(3,))
    sets = [({"w": rng.normal(size=(3, 3)).astype(np.float32),
              "b": rng.normal(size=3).astype(np.float32)},) for _ in range(3)]
    key, samples, sensitivity_samples = jax.random.key(4), 3000, 200
    binning = dict(in_range=(0, 1), out_range=(0, 1), in_bins=4, out_bins=4)
    result = pure.sweep(key, chain, pure.stack_params(sets), samples=samples,
                        sensitivity_samples=sensitivity_samples, **binning)
    assert len(set(np.round(result.ei_parts, 6))) == 3  # three sets, three values
    for k, params in enumerate(sets):
        ei, info = pure.ei(key, chain, params, samples=samples, **binning)
        parts, parts_info = pure.ei_parts(key, chain, params, samples=samples, **binning)
        sens, _ = pure.sensitivity(key, chain, params, samples=sensitivity_samples, **binning)
        # tolerances as tests/test_sweep.py derives them: same counts; float32 formula rounding
        # of up to 4 log2(N) 2^-24 bits per pair, EI's three entropies 1e-4 bits
        pairs = result.ei_parts_matrix[k].size
        assert abs(result.ei[k] - ei) < 1e-4
        assert abs(result.ei_parts[k] - parts) <= pairs * 4 * math.log2(samples) * 2.0 ** -24
        assert abs(result.sensitivity[k] - sens) <= \
            pairs * 4 * math.log2(sensitivity_samples) * 2.0 ** -24
        assert result.dropped[k] == info.dropped
        assert result.out_of_range[k] == parts_info.out_of_range


# ---------------------------------------------------------------- errors

def _function_chain(fn, in_shape=(3,), name="f"):
    return pure.Chain(layers=(pure.Function(fn, name=name),), in_shape=in_shape)


def _measure(chain, params):
    return pure.ei_parts(jax.random.key(0), chain, params, **BINNING, samples=1024)


def test_function_fails_on_the_input_shape_names_the_layer():
    chain = _function_chain(affine, name="encoder.fc1")
    params = ({"w": np.ones((4, 2), np.float32), "b": np.zeros(2, np.float32)},)
    with pytest.raises(ValueError, match=r"layer 0, Function 'encoder.fc1' cannot take a batch "
                                         r"of per-sample inputs of shape \(3,\)"):
        _measure(chain, params)


@pytest.mark.parametrize("params, error, match", [
    (({"w": {"inner": np.ones((3, 2))}},), TypeError, r"params\[0\]\['w'\].*flat dict"),
    (({"w": None},), TypeError, r"params\[0\]\['w'\].*got None"),
    (({0: np.ones((3, 2))},), TypeError, "keyed by strings"),
    (({"w": np.full((3, 2), np.nan)},), ValueError, r"params\[0\]\['w'\].*non-finite"),
    ([{"w": np.ones((3, 2))}, {}], ValueError, "one entry per layer"),
])
def test_function_params_errors(params, error, match):
    chain = _function_chain(lambda p, x: x @ p["w"])
    with pytest.raises(error, match=match):
        _measure(chain, params)


@pytest.mark.parametrize("fn, error, match", [
    (lambda p, x: x.sum(), ValueError, r"must return \[N, \*out_shape\].*returned shape \(\)"),
    (lambda p, x: x.sum(axis=1), ValueError, r"at least one per-sample axis.*\(2,\)"),
    (lambda p, x: x[:1], ValueError, r"batch first.*\(1, 3\)"),
    (lambda p, x: (x > 0).astype(jnp.int32), TypeError, "must return floats"),
    (lambda p, x: (x, x), TypeError, "must return one array"),
    ("not callable", TypeError, "fn must be a callable"),
])
def test_function_output_errors(fn, error, match):
    with pytest.raises(error, match=match):
        _measure(_function_chain(fn), ({},))


def test_function_spec_is_hashable_and_out_shape_cached():
    spec = pure.Function(affine, name="a")
    assert hash(spec) == hash(pure.Function(affine, name="a"))
    chain = pure.Chain(layers=(spec,), in_shape=(N_IN,))
    params = ({"w": np.ones((N_IN, 3), np.float32), "b": np.ones(3, np.float32)},)
    before = layers.layers_out_shape.cache_info().hits
    assert pure.out_shape(chain, params) == (3,)
    assert pure.out_shape(chain, params) == (3,)
    assert layers.layers_out_shape.cache_info().hits > before
