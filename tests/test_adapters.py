"""Flax (linen, NNX) and Equinox models -> (Chain, params): structure, weights, measures, errors.

Each framework's tests skip where it is not installed (`pip install flax equinox`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deep_ei_jax import adapters, pure

SETTINGS = dict(in_range=(0.0, 1.0), out_range=(-1.0, 1.0), in_bins=8, out_bins=8,
                policy="clip")


def _linen():
    return pytest.importorskip("flax.linen")


def _nnx():
    return pytest.importorskip("flax.nnx")


def _eqx():
    return pytest.importorskip("equinox")


def _measure(chain, params):
    """(EI, EI_parts) and sensitivity with one key and fixed samples."""
    key = jax.random.key(3)
    (ei, ei_parts), _ = pure.ei_and_ei_parts(key, chain, params, samples=20_000, **SETTINGS)
    sens, _ = pure.sensitivity(key, chain, params, samples=500, **SETTINGS)
    return ei, ei_parts, sens


def _assert_same(chain, params, hand_chain, hand_params):
    assert chain == hand_chain
    assert len(params) == len(hand_params)
    for got, expected in zip(params, hand_params):
        assert sorted(got) == sorted(expected)
        for name in expected:
            assert got[name].dtype == np.float32
            np.testing.assert_array_equal(got[name], np.asarray(expected[name], np.float32))
    assert _measure(chain, params) == _measure(hand_chain, hand_params)


def _inputs(n_in=4):
    return jnp.asarray(np.random.default_rng(1).uniform(0, 1, (32, n_in)).astype(np.float32))


# ---------------------------------------------------------------- Flax linen

def test_linen_sequential_equals_hand_built_chain():
    nn = _linen()
    module = nn.Sequential([nn.Dense(5), nn.sigmoid, nn.Dense(3), nn.sigmoid])
    variables = module.init(jax.random.key(0), jnp.zeros((1, 4)))
    chain, params = adapters.from_flax_linen(module, variables, in_shape=(4,))
    layers = variables["params"]
    hand_chain = pure.Chain((pure.Dense("sigmoid"), pure.Dense("sigmoid")), (4,))
    hand_params = tuple({"w": layers[f"layers_{i}"]["kernel"], "b": layers[f"layers_{i}"]["bias"]}
                        for i in (0, 2))
    _assert_same(chain, params, hand_chain, hand_params)
    np.testing.assert_allclose(pure.apply(chain, params, _inputs()),
                               module.apply(variables, _inputs()), rtol=1e-6, atol=1e-6)


def test_linen_compact_mlp_without_bias_and_inner_params_dict():
    nn = _linen()

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = jnp.tanh(nn.Dense(6, name="hidden")(x))
            x = nn.Dropout(0.5, deterministic=True)(x)
            return nn.relu(nn.Dense(2, use_bias=False, name="out")(x))

    module = MLP()
    variables = module.init(jax.random.key(1), jnp.zeros((1, 4)))
    chain, params = adapters.from_flax_linen(module, variables["params"], in_shape=4)
    p = variables["params"]
    hand_chain = pure.Chain((pure.Dense("tanh"), pure.Dense("relu")), (4,))
    hand_params = ({"w": p["hidden"]["kernel"], "b": p["hidden"]["bias"]},
                   {"w": p["out"]["kernel"]})
    _assert_same(chain, params, hand_chain, hand_params)


@pytest.mark.parametrize("body, message", [
    ("layernorm", "cannot convert LayerNorm at 'LayerNorm_0'"),
    ("gelu", "between linear layer Dense at 'Dense_0' and Dense at 'Dense_1' the model does "
             "something other than"),
    ("residual", "between linear layer Dense at 'Dense_0' and Dense at 'Dense_1'"),
    ("scaled_output", "between linear layer Dense at 'Dense_1' and the output"),
    ("input_transform", "the inputs reach the first linear layer"),
    ("dropout_train", "Dropout at 'Dropout_0' is in training mode"),
])
def test_linen_unsupported_operations_are_named(body, message):
    nn = _linen()

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            if body == "input_transform":
                x = x * 2.0
            h = nn.Dense(4)(x)
            if body == "layernorm":
                h = nn.LayerNorm()(h)
            elif body == "gelu":
                h = nn.gelu(h)
            elif body == "residual":
                h = nn.sigmoid(h) + x
            elif body == "dropout_train":
                h = nn.Dropout(0.5, deterministic=False)(h)
            y = nn.Dense(2)(h)
            return 2.0 * y if body == "scaled_output" else y

    module = Net()
    variables = module.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                            jnp.zeros((1, 4)))
    with pytest.raises(NotImplementedError, match=message):
        adapters.from_flax_linen(module, variables, (4,))


def test_linen_bad_arguments():
    nn = _linen()
    module = nn.Sequential([nn.Dense(3), nn.sigmoid])
    variables = module.init(jax.random.key(0), jnp.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"in_shape must be the per-sample input shape, a tuple of "
                                         r"positive ints such as \(4,\); got \(0,\)"):
        adapters.from_flax_linen(module, variables, (0,))
    with pytest.raises(TypeError, match="module must be a flax.linen.Module; got dict"):
        adapters.from_flax_linen({}, variables, (4,))


# ---------------------------------------------------------------- Flax NNX

def test_nnx_sequential_equals_hand_built_chain():
    nnx = _nnx()
    rngs = nnx.Rngs(0)
    model = nnx.Sequential(nnx.Linear(4, 5, rngs=rngs), nnx.relu, nnx.Linear(5, 3, rngs=rngs),
                           nnx.sigmoid)
    chain, params = adapters.from_flax_nnx(model, in_shape=(4,))
    first, second = model.layers[0], model.layers[2]
    hand_chain = pure.Chain((pure.Dense("relu"), pure.Dense("sigmoid")), (4,))
    hand_params = ({"w": first.kernel[...], "b": first.bias[...]},
                   {"w": second.kernel[...], "b": second.bias[...]})
    _assert_same(chain, params, hand_chain, hand_params)


def test_nnx_custom_module_is_left_untouched():
    nnx = _nnx()

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.out = nnx.Linear(6, 2, use_bias=False, rngs=rngs)  # defined first, called last
            self.hidden = nnx.Linear(4, 6, rngs=rngs)
            self.unused = nnx.LayerNorm(6, rngs=rngs)
            self.dropout = nnx.Dropout(0.5, rngs=rngs)

        def __call__(self, x):
            return nnx.tanh(self.out(self.dropout(nnx.sigmoid(self.hidden(x)))))

    model = MLP(nnx.Rngs(0))
    model.eval()
    chain, params = adapters.from_flax_nnx(model, (4,))
    hand_chain = pure.Chain((pure.Dense("sigmoid"), pure.Dense("tanh")), (4,))
    hand_params = ({"w": model.hidden.kernel[...], "b": model.hidden.bias[...]},
                   {"w": model.out.kernel[...]})
    _assert_same(chain, params, hand_chain, hand_params)
    assert type(model.hidden) is nnx.Linear and type(model.unused) is nnx.LayerNorm
    np.testing.assert_allclose(pure.apply(chain, params, _inputs()), model(_inputs()),
                               rtol=1e-6, atol=1e-6)
    model.train()
    with pytest.raises(NotImplementedError, match="Dropout at 'dropout' is in training mode"):
        adapters.from_flax_nnx(model, (4,))


def test_nnx_unsupported_module_and_single_linear():
    nnx = _nnx()

    class Normed(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(4, 6, rngs=rngs)
            self.norm = nnx.LayerNorm(6, rngs=rngs)

        def __call__(self, x):
            return self.norm(self.dense(x))

    with pytest.raises(NotImplementedError, match="cannot convert LayerNorm at 'norm'"):
        adapters.from_flax_nnx(Normed(nnx.Rngs(0)), (4,))
    linear = nnx.Linear(3, 2, rngs=nnx.Rngs(1))
    chain, params = adapters.from_flax_nnx(linear, 3)
    assert chain == pure.Chain((pure.Dense("identity"),), (3,))
    with pytest.raises(ValueError, match=r"the model does not run on inputs of in_shape \(4,\) "
                                         r"\(TypeError: dot_general"):
        adapters.from_flax_nnx(linear, (4,))


# ---------------------------------------------------------------- Equinox

def test_equinox_mlp_equals_hand_built_chain():
    eqx = _eqx()
    mlp = eqx.nn.MLP(4, 3, 5, 2, activation=jax.nn.sigmoid, final_activation=jnp.tanh,
                     key=jax.random.key(0))
    chain, params = adapters.from_equinox(mlp, in_shape=(4,))
    hand_chain = pure.Chain((pure.Dense("sigmoid"), pure.Dense("sigmoid"), pure.Dense("tanh")),
                            (4,))
    hand_params = tuple({"w": np.asarray(layer.weight).T, "b": layer.bias} for layer in mlp.layers)
    _assert_same(chain, params, hand_chain, hand_params)
    np.testing.assert_allclose(pure.apply(chain, params, _inputs()), jax.vmap(mlp)(_inputs()),
                               rtol=1e-6, atol=1e-6)


def test_equinox_scan_mlp_and_default_activations():
    eqx = _eqx()
    mlp = eqx.nn.MLP(4, 2, 3, 3, scan=True, use_final_bias=False, key=jax.random.key(2))
    chain, params = adapters.from_equinox(mlp, (4,))
    # relu after each of the 3 hidden layers (the default), identity at the end
    assert chain == pure.Chain(tuple(pure.Dense(a) for a in ("relu",) * 3 + ("identity",)), (4,))
    assert [p["w"].shape for p in params] == [(4, 3), (3, 3), (3, 3), (3, 2)]
    assert "b" not in params[-1]
    np.testing.assert_allclose(pure.apply(chain, params, _inputs()), jax.vmap(mlp)(_inputs()),
                               rtol=1e-5, atol=1e-6)


def test_equinox_sequential_and_list_equal_hand_built_chain():
    eqx = _eqx()
    k1, k2 = jax.random.split(jax.random.key(4))
    first, second = eqx.nn.Linear(4, 5, key=k1), eqx.nn.Linear(5, 2, use_bias=False, key=k2)
    hand_chain = pure.Chain((pure.Dense("relu"), pure.Dense("sigmoid")), (4,))
    hand_params = ({"w": np.asarray(first.weight).T, "b": first.bias},
                   {"w": np.asarray(second.weight).T})
    sequential = eqx.nn.Sequential([first, eqx.nn.Lambda(jax.nn.relu), eqx.nn.Identity(),
                                    eqx.nn.Dropout(0.5, inference=True), second,
                                    eqx.nn.Lambda(lambda x: 1 / (1 + jnp.exp(-x)))])
    _assert_same(*adapters.from_equinox(sequential, (4,)), hand_chain, hand_params)
    chain, params = adapters.from_equinox([first, jax.nn.relu, second, jax.nn.sigmoid], (4,))
    _assert_same(chain, params, hand_chain, hand_params)


@pytest.mark.parametrize("make, error, message", [
    (lambda eqx, k: [eqx.nn.Linear(4, 3, key=k), eqx.nn.LayerNorm(3)], NotImplementedError,
     r"cannot convert LayerNorm at model\[1\]"),
    (lambda eqx, k: [eqx.nn.Linear(4, 3, key=k), jax.nn.gelu], NotImplementedError,
     r"cannot convert the activation model\[1\] \(gelu\): it is not identity, sigmoid, tanh or "
     r"relu"),
    (lambda eqx, k: [jax.nn.sigmoid, eqx.nn.Linear(4, 3, key=k)], NotImplementedError,
     r"an activation \(model\[0\] \(sigmoid\)\) comes before the first linear layer"),
    (lambda eqx, k: [eqx.nn.Linear(4, 3, key=k), jax.nn.relu, jnp.tanh], NotImplementedError,
     r"two activations \(relu and model\[2\] \(tanh\)\) follow linear layer Linear at model\[0\]"),
    (lambda eqx, k: [eqx.nn.Linear(4, 3, key=k), eqx.nn.Dropout(0.5)], NotImplementedError,
     r"the Dropout at model\[1\] is in training mode"),
    (lambda eqx, k: [eqx.nn.Linear("scalar", 3, key=k)], NotImplementedError,
     r"the Linear at model\[0\]: it has a scalar input or output"),
    (lambda eqx, k: [eqx.nn.Linear(4, 3, key=k), eqx.nn.Linear(4, 2, key=k)], ValueError,
     r"linear layer Linear at model\[1\] takes 4 inputs but Linear at model\[0\] gives 3"),
    (lambda eqx, k: [eqx.nn.Identity()], ValueError, "the model has no linear layer to convert"),
    (lambda eqx, k: [eqx.nn.Linear(3, 2, key=k)], ValueError,
     r"in_shape must end with the first linear layer's input size 3; got \(4,\)"),
    (lambda eqx, k: [eqx.nn.Linear(4, 3, key=k), "relu"], TypeError,
     r"cannot convert model\[1\]: expected an Equinox module or an activation function; got str"),
])
def test_equinox_errors_name_the_part(make, error, message):
    eqx = _eqx()
    with pytest.raises(error, match=message):
        adapters.from_equinox(make(eqx, jax.random.key(0)), (4,))


# ---------------------------------------------------------------- shared pieces

def test_split_layers_measures_each_layer_as_a_single_layer_chain():
    chain = pure.Chain((pure.Dense("sigmoid"), pure.Dense("tanh")), (4,))
    rng = np.random.default_rng(0)
    params = ({"w": rng.normal(size=(4, 5)).astype(np.float32)},
              {"w": rng.normal(size=(5, 3)).astype(np.float32),
               "b": np.zeros(3, np.float32)})
    (c0, p0), (c1, p1) = adapters.split_layers(chain, params)
    assert c0 == pure.Chain((pure.Dense("sigmoid"),), (4,)) and p0 == (params[0],)
    assert c1 == pure.Chain((pure.Dense("tanh"),), (5,)) and p1 == (params[1],)
    with pytest.raises(ValueError, match=r"params must hold one dict per layer \(2\); got 1"):
        adapters.split_layers(chain, params[:1])
    with pytest.raises(ValueError, match="split_layers needs a chain of Dense layers; layer 0 is "
                                         "Flatten"):
        adapters.split_layers(pure.Chain((pure.Flatten(),), (2, 2)), ({},))


def test_a_chain_that_does_not_reproduce_the_model_is_refused():
    chain = pure.Chain((pure.Dense("sigmoid"),), (4,))
    params = ({"w": np.ones((4, 2), np.float32)},)
    adapters._check_against(chain, params, lambda x: jax.nn.sigmoid(x @ params[0]["w"]), "it")
    with pytest.raises(ValueError, match=r"the converted chain does not reproduce it \(max "
                                         r"\|difference\| "):
        adapters._check_against(chain, params, lambda x: jnp.tanh(x @ params[0]["w"]), "it")
