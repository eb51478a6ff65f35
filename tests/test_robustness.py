"""Numerical edges and odd models: constant outputs, saturation at the range edge, dtypes, modes."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import deep_ei_jax as dei
from deep_ei_jax import pure

FAST = dict(samples=3000, in_range=(0, 1), in_bins=8, out_bins=8, seed=0)


def test_constant_outputs_give_zero_not_nan(key):
    chain = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(3,))
    params = ({"w": np.zeros((3, 2), np.float32)},)
    kwargs = dict(in_range=(0, 1), out_range=(0, 1), in_bins=8, out_bins=8, samples=2000)
    matrix, _ = pure.ei_parts_matrix(key, chain, params, **kwargs)
    assert np.all(matrix == 0)
    assert pure.ei(key, chain, params, **kwargs)[0] == 0
    assert pure.sensitivity(key, chain, params, **kwargs)[0] == 0
    # a dynamic range around a constant output still works: one bin of the input width
    value, info = pure.ei_parts(key, chain, params, **{**kwargs, "out_range": "dynamic",
                                                       "out_bins": "dynamic"})
    assert value == 0 and np.all(info.out_bins == 1) and info.dropped == 0


def test_saturation_at_the_top_edge_is_counted(key):
    # sigmoid(100 x) is exactly 1.0 in float32 for x > ~0.17: those values sit on out_range's top
    chain = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(1,))
    params = ({"w": np.full((1, 1), 100.0, np.float32)},)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no drop warning: nothing is out of range
        value, info = pure.ei_parts(key, chain, params, in_range=(0, 1), out_range=(0, 1),
                                    in_bins=4, out_bins=4, samples=4000)
    assert info.dropped == 0 and info.out_of_range == 0
    assert value > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_model_dtypes(dtype):
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(3, 2), nn.Sigmoid())
    model = nn.Sequential(nn.Linear(3, 2), nn.Sigmoid()).to(dtype)
    model.load_state_dict({k: v.to(dtype) for k, v in reference.state_dict().items()})
    top = dei.topology_of(model, torch.zeros((1, 3), dtype=dtype))
    value = dei.ei_of_layer(model[0], top, **FAST)
    # weights are measured in float32: the same as the float32 model up to the weights' rounding
    expected = dei.ei_of_layer(reference[0], dei.topology_of(reference, torch.zeros((1, 3))),
                               **FAST)
    assert value == pytest.approx(expected, abs=0.05 if dtype != torch.float64 else 1e-6)


def test_train_mode_model_without_dropout_works():
    net = nn.Sequential(nn.Linear(3, 2), nn.Tanh()).train()
    top = dei.topology_of(net, torch.zeros((1, 3)))
    assert dei.ei_of_layer(net[0], top, **FAST) >= 0
    assert net.training  # left as it was


@pytest.mark.parametrize("module", [nn.LayerNorm(4), nn.GRU(4, 4), nn.Conv1d(1, 1, 1)])
def test_unsupported_modules_name_themselves(module):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.m, self.b = nn.Linear(4, 4), module, nn.Linear(4, 2)

        def forward(self, x):
            h = self.a(x)
            if isinstance(self.m, nn.GRU):
                h = self.m(h)[0]
            elif isinstance(self.m, nn.Conv1d):
                h = self.m(h[:, None, :])[:, 0, :]
            else:
                h = self.m(h)
            return self.b(h)

    net = Net()
    top = dei.topology_of(net, torch.zeros((1, 4)), capture=False)   # hooks only
    with pytest.raises(NotImplementedError, match=type(module).__name__):
        dei.ei_of_layer(net.b, top, in_layer=net.a, **FAST)
    top = dei.topology_of(net, torch.zeros((1, 4)))   # the captured graph measures the span
    assert dei.ei_of_layer(net.b, top, in_layer=net.a, **FAST) >= 0


def test_same_seed_bit_identical_different_seed_not():
    net = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid())
    top = dei.topology_of(net, torch.zeros((1, 4)))
    a = dei.ei_of_layer_matrix(net[0], top, **FAST)
    b = dei.ei_of_layer_matrix(net[0], top, **FAST)
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, dei.ei_of_layer_matrix(net[0], top, **{**FAST, "seed": 1}))


def test_samples_beyond_int32_counts_refused(key):
    chain = pure.Chain(layers=(pure.Dense(),), in_shape=(1,))
    with pytest.raises(ValueError, match=r"samples must be below 2\*\*31 \(int32 counts\)"):
        pure.ei_parts(key, chain, ({"w": np.ones((1, 1), np.float32)},), samples=2 ** 31)


def test_topology_of_leaves_train_mode_buffers_unchanged():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Sigmoid()).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    dei.topology_of(net, torch.randn((8, 3)))
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name]), name  # running statistics untouched
