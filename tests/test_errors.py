"""Every bad input gets an error that names the argument, what was expected and what came."""
import re

import jax
import numpy as np
import pytest
import torch
from torch import nn

import deep_ei_jax as dei
from deep_ei_jax import pure


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2), nn.Sigmoid())
    return net, dei.topology_of(net, torch.zeros((1, 3)))


FAST = dict(samples=1000, in_bins=8, out_bins=8, seed=0)


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(in_range=(1, 0)), ValueError,
     "in_range must be (low, high) with finite low < high; got (1, 0)"),
    (dict(out_range=(0.5, 0.5)), ValueError,
     "out_range must be (low, high) with finite low < high; got (0.5, 0.5)"),
    (dict(in_range=(0, float("inf"))), ValueError, "in_range must be (low, high) with finite"),
    (dict(in_range="dynamic"), ValueError, "in_range cannot be 'dynamic'"),
    (dict(out_range="wide"), ValueError, "out_range must be (low, high) or 'dynamic'; got 'wide'"),
    (dict(in_bins=1), ValueError, "in_bins must be an integer >= 2; got 1"),
    (dict(out_bins=2.5), TypeError, "out_bins must be an integer >= 2 or 'dynamic'; got 2.5"),
    (dict(samples=0), ValueError, "samples must be a positive integer; got 0"),
    (dict(samples=-5), ValueError, "samples must be a positive integer; got -5"),
    (dict(samples=None, threshold=0), ValueError, "threshold must be in (0, 1); got 0"),
    (dict(batch_size=0), ValueError, "batch_size must be a positive integer; got 0"),
    (dict(policy="wrap"), ValueError, "policy must be one of ('drop', 'clip'); got 'wrap'"),
    (dict(device="tpu"), ValueError, "device 'tpu' was asked for but JAX sees no tpu device"),
    (dict(device="quantum"), ValueError,
     "device must be 'cpu', 'cuda', 'gpu' or 'tpu'; got 'quantum'"),
    (dict(activation=3), TypeError,
     "activation must be None, a torch activation module or a callable; got 3"),
    (dict(seed="zero"), TypeError, "seed must be an int or None; got 'zero'"),
])
def test_bad_arguments(mlp, kwargs, error, message):
    net, top = mlp
    with pytest.raises(error, match=re.escape(message)):
        dei.ei_of_layer(net[0], top, **{**FAST, **kwargs})


def test_adaptive_budgets_below_the_first_step():
    # the adaptive rule starts at 10k samples: a cap (or a state budget) below that is an error
    chain = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(4,))
    params = ({"w": np.ones((4, 3), np.float32)},)
    with pytest.raises(ValueError, match=re.escape(
            "max_samples must be at least the adaptive rule's first step (10000 samples); "
            "got 4000")):
        pure.ei_parts(jax.random.key(0), chain, params, max_samples=4000)
    with pytest.raises(ValueError, match=re.escape(
            "state_memory_budget=1000 bytes cannot hold the joint states of the adaptive rule's "
            "first 10000 samples")):
        pure.ei(jax.random.key(0), chain, params, state_memory_budget=1000)


def test_layer_not_in_topology(mlp):
    net, top = mlp
    stranger = nn.Linear(3, 4)
    with pytest.raises(ValueError, match=r"layer Linear\(in_features=3.*is not in the topology"):
        dei.ei_of_layer(stranger, top, **FAST)
    with pytest.raises(ValueError, match=r"in_layer .* is not in the topology"):
        dei.ei_of_layer(net[0], top, in_layer=stranger, **FAST)


def test_in_layer_after_layer(mlp):
    net, top = mlp
    with pytest.raises(ValueError, match=r"in_layer Linear\(in_features=4.* does not come before "
                                         r"layer Linear\(in_features=3"):
        dei.ei_of_layer(net[0], top, in_layer=net[2], **FAST)


def test_unsupported_module_in_span():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Sigmoid(), nn.Linear(4, 2))
    net.eval()
    # hooks only (deep-ei's modules, as when torch.export cannot trace the model)
    top = dei.topology_of(net, torch.zeros((2, 3)), capture=False)
    with pytest.raises(NotImplementedError, match=r"unsupported module BatchNorm1d\(4.*supported: "
                                                  r"Linear, Conv2d"):
        dei.ei_of_layer(net[3], top, in_layer=net[0], **FAST)
    with pytest.raises(NotImplementedError, match="cannot infer the activation after"):
        dei.ei_of_layer(net[0], top, **FAST)
    # with the activation given explicitly the first layer alone is measurable
    assert dei.ei_of_layer(net[0], top, activation=nn.Sigmoid(), **FAST) >= 0
    # the layer after the BatchNorm still gets its in_range from the Sigmoid before it
    assert top.nodes[net[3]]["input"]["activation"] is net[2]
    # with the captured graph (the default) the eval BatchNorm joins the span: both are measured
    top = dei.topology_of(net, torch.zeros((2, 3)))
    assert dei.ei_of_layer(net[3], top, in_layer=net[0], **FAST) >= 0
    assert dei.ei_of_layer(net[0], top, **FAST) >= 0


def test_dropout_train_mode_and_skip_connection():
    net = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2))
    top = dei.topology_of(net.train(), torch.zeros((1, 3)), capture=False)
    with pytest.raises(NotImplementedError, match=r"unsupported module Dropout"):
        dei.ei_of_layer(net[2], top, in_layer=net[0], **FAST)
    top = dei.topology_of(net.eval(), torch.zeros((1, 3)))  # eval-mode dropout is the identity
    assert dei.ei_of_layer(net[2], top, in_layer=net[0], in_range=(0, 1), out_range=(-10, 10),
                           **FAST) >= 0

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x):
            h = self.a(x)
            return self.b(h + x)

    model = Residual()
    top = dei.topology_of(model, torch.zeros((1, 3)), capture=False)
    with pytest.raises(NotImplementedError, match="non-module operation .*skip connection"):
        dei.ei_of_layer(model.b, top, in_layer=model.a, **FAST)
    # on the captured graph the skip comes from the span's own input x: b(a(x) + x) is measured
    top = dei.topology_of(model, torch.zeros((1, 3)))
    assert dei.ei_of_layer(model.b, top, in_layer=model.a, **FAST) >= 0


def test_recurrent_module_reuse():
    shared = nn.Linear(3, 3)
    net = nn.Sequential(shared, nn.Tanh(), shared)
    top = dei.topology_of(net, torch.zeros((1, 3)))
    assert top.nodes[shared]["barrier"] and "called more than once" in top.nodes[shared]["barrier"]


def test_input_shape_that_does_not_fit():
    net = nn.Sequential(nn.Linear(3, 4))
    with pytest.raises(ValueError, match=r"input of shape \(1, 5\) does not fit the model"):
        dei.topology_of(net, torch.zeros((1, 5)))


def test_groups_out_of_bounds(mlp):
    net, top = mlp
    with pytest.raises(ValueError, match=r"groups\[1\] output index 2 is out of bounds: the layer "
                                         r"has 2 outputs \(valid 0..1\)"):
        dei.eis_between_groups(net[2], top, [((0,), (0,)), ((1,), (2,))], **FAST)
    with pytest.raises(ValueError, match=r"groups\[0\] input indices must be distinct"):
        dei.eis_between_groups(net[2], top, [((0, 0), (0,))], **FAST)
    with pytest.raises(TypeError, match=r"groups\[0\] must be a pair"):
        dei.eis_between_groups(net[2], top, [(0,)], **FAST)


def test_nan_weights_refused():
    net = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    top = dei.topology_of(net, torch.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"Linear\(in_features=2.*has non-finite values \(NaN or "
                                         r"inf\) in its weight"):
        dei.ei_of_layer(net[0], top, **FAST)


def test_unsupported_pool_option():
    net = nn.Sequential(nn.Conv2d(1, 1, 2), nn.MaxPool2d(2, ceil_mode=True))
    top = dei.topology_of(net, torch.zeros((1, 1, 6, 6)), capture=False)
    with pytest.raises(NotImplementedError, match=r"MaxPool2d.* is not supported: ceil_mode=True"):
        dei.ei_of_layer(net[1], top, **FAST)
    top = dei.topology_of(net, torch.zeros((1, 1, 6, 6)))   # the graph path names the op
    with pytest.raises(NotImplementedError, match=r"op aten.max_pool2d \(ceil_mode=True\) in 1 "
                                                  r"\(MaxPool2d\).* cannot be translated"):
        dei.ei_of_layer(net[1], top, **FAST)


def test_memory_too_large_is_refused_before_work():
    chain = pure.Chain(layers=(pure.Dense(),), in_shape=(100_000,))
    params = ({"w": np.zeros((100_000, 1), np.float32)},)
    # (the bins of 10,000 samples, 1 GB, would not fit either; 10 samples would be counted by
    # samples: tests/test_pairstats.py)
    with pytest.raises(ValueError, match=r"one output's count tables need 1562.5 MiB \(100000 "
                                         r"inputs x 1 outputs, 64 x 64 bins\)"):
        pure.ei_parts(jax.random.key(0), chain, params, samples=10_000)


def test_pure_api_argument_kinds():
    chain = pure.Chain(layers=(pure.Dense(),), in_shape=(2,))
    params = ({"w": np.eye(2, dtype=np.float32)},)
    with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
        pure.ei_parts(0, chain, params, samples=10)
    with pytest.raises(TypeError, match="chain must be a deep_ei_jax.Chain; got tuple"):
        pure.ei_parts(jax.random.key(0), (pure.Dense(),), params, samples=10)
    with pytest.raises(ValueError,
                       match=r"params must have one entry per layer of the chain \(1\); got 2"):
        pure.ei_parts(jax.random.key(0), chain, params * 2, samples=10)
    with pytest.raises(ValueError, match="activation must be one of"):
        pure.ei_parts(jax.random.key(0), chain, params, samples=10, activation="swish")


def test_state_memory_refused_before_work():
    chain = pure.Chain(layers=(pure.Dense(),), in_shape=(784,))
    params = ({"w": np.zeros((784, 10), np.float32)},)
    with pytest.raises(ValueError, match=r"counting the joint states of 1000000000 samples may "
                                         r"need .* GiB \(.* bytes per sample over 1 group\(s\)\)"):
        pure.ei(jax.random.key(0), chain, params, samples=10 ** 9)
