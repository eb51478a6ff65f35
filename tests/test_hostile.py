"""Hostile input (issue 7): bad arguments to every public entry point, bad weights and models,
numerical edges, interruptions of long runs, and a fuzz pass over the command line.

Every refusal names the argument (or layer, module, option, file), the expected form and what came.
"""
# ruff: noqa: E501  (tables of the exact error messages, one case a line, read best unwrapped)
import contextlib
import io
import json
import os
import re
import warnings

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deep_ei_jax import adaptive, planning, pure

torch = pytest.importorskip("torch")
nn = torch.nn

import deep_ei_jax as dei  # noqa: E402
from deep_ei_jax import cli  # noqa: E402
from deep_ei_jax.bridge import tracking  # noqa: E402
from deep_ei_jax.bridge.tracking import Tracker, read_records  # noqa: E402

KEY = jax.random.key(0)
CHAIN = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(3,))
PARAMS = ({"w": np.ones((3, 2), np.float32)},)
PURE = dict(samples=1000, in_bins=4, out_bins=4, in_range=(0, 1), out_range=(0, 1))
TORCH = dict(samples=1000, in_bins=4, out_bins=4, seed=0)


def mlp():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2), nn.Sigmoid())
    return net, dei.topology_of(net, torch.zeros((1, 3)))


# ---------------------------------------------------------------- 1. bad arguments, pure API

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(in_range="0,1"), ValueError, "in_range must be (low, high); got '0,1'"),
    (dict(in_range=(float("nan"), 1)), ValueError, "in_range must be (low, high) with finite low < high; got (nan, 1)"),
    (dict(in_range=("a", "b")), TypeError, "in_range must be a pair of numbers (low, high); got ('a', 'b')"),
    (dict(out_range=(0, 1, 2)), TypeError, "out_range must be a pair of numbers (low, high); got (0, 1, 2)"),
    (dict(in_bins=4.0), TypeError, "in_bins must be an integer >= 2; got 4.0"),
    (dict(in_bins=True), TypeError, "in_bins must be an integer >= 2; got True"),
    (dict(out_bins=-3), ValueError, "out_bins must be an integer >= 2; got -3"),
    (dict(samples=100.0), TypeError, "samples must be a positive integer; got 100.0"),
    (dict(samples=float("nan")), TypeError, "samples must be a positive integer; got nan"),
    (dict(samples=None, threshold=float("nan")), ValueError, "threshold must be in (0, 1); got nan"),
    (dict(samples=None, threshold=1), ValueError, "threshold must be in (0, 1); got 1"),
    (dict(samples=None, threshold="0.1"), TypeError, "threshold must be a number in (0, 1); got '0.1'"),
    (dict(samples=None, max_samples=2 ** 31), ValueError, "max_samples must be below 2**31"),
    (dict(memory_budget="1"), TypeError, "memory_budget must be a positive integer; got '1'"),
    (dict(memory_budget=0), ValueError, "memory_budget must be a positive integer; got 0"),
    (dict(activation=3), TypeError, "activation must be a name or a callable; got int"),
    (dict(devices="gpu"), TypeError, "devices must be None, an int or a non-empty sequence of jax Devices; got 'gpu'"),
    (dict(devices=0), ValueError, "devices must be between 1 and the"),
    (dict(estimator="best"), ValueError, "estimator must be one of ('plugin', 'miller_madow', 'jackknife', 'nsb', 'chao_shen'); got 'best'"),
    (dict(error_bars=1.5), TypeError, "error_bars must be a positive integer; got 1.5"),
])
def test_pure_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        pure.ei_parts(KEY, CHAIN, PARAMS, **{**PURE, **kwargs})


@pytest.mark.parametrize("params, error, message", [
    ({"w": np.ones((3, 2))}, TypeError, "params must be a tuple with one dict of arrays per layer of the chain (1); got dict"),
    (None, TypeError, "params must be a tuple with one dict of arrays per layer of the chain (1); got NoneType"),
    ([[1.0]], TypeError, "params[0] (layer 0, Dense) must be a dict of arrays; got list"),
    (({"w": np.ones((4, 2))},), ValueError, "params[0]['w'] (layer 0, Dense) has shape (4, 2); expected (3, n_out)"),
    (({"w": np.ones(3)},), ValueError, "params[0]['w'] (layer 0, Dense) has shape (3,); expected (3, n_out)"),
    (({"b": np.ones(2)},), ValueError, "params[0] (layer 0, Dense) needs 'w' of shape [n_in, n_out]"),
    (({"w": np.ones((3, 2)), "b": np.ones(5)},), ValueError, "params[0]['b'] (layer 0, Dense) has shape (5,); expected (2,)"),
    (({"w": np.ones((3, 2)), "z": 1},), ValueError, "params[0] (layer 0, Dense) has unknown key(s) ['z']"),
    (({"w": "abc"},), TypeError, "params[0]['w'] (layer 0, Dense) must be an array of real numbers; got dtype <U3"),
    (({"w": np.ones((3, 2), np.complex64)},), TypeError, "must be an array of real numbers; got dtype complex64"),
    (({"w": np.array([[1, 1], [np.nan, 1], [1, 1]])},), ValueError, "params[0]['w'] (layer 0, Dense) has non-finite values (NaN or inf), first at index (1, 0)"),
    (({"w": np.ones((3, 2)), "b": np.array([0, np.inf])},), ValueError, "params[0]['b'] (layer 0, Dense) has non-finite values"),
])
@pytest.mark.parametrize("measure", ["ei_parts", "ei", "sensitivity"])
def test_pure_bad_params_name_the_layer(measure, params, error, message):
    with pytest.raises(error, match=re.escape(message)):
        getattr(pure, measure)(KEY, CHAIN, params, **PURE)


def test_pure_bad_conv_params_and_chains():
    conv = pure.Chain(layers=(pure.Conv2d(),), in_shape=(2, 5, 5))
    with pytest.raises(ValueError, match=re.escape("params[0]['w'] (layer 0, Conv2d) has shape (4, 3, 2, 2); expected (C_out, 2, kH, kW)")):
        pure.ei_parts(KEY, conv, ({"w": np.ones((4, 3, 2, 2))},), **PURE)
    with pytest.raises(ValueError, match=re.escape("layer 0, Conv2d gives an empty output (shape (4, 0, 0)) for a per-sample input of shape (2, 5, 5)")):
        pure.ei_parts(KEY, conv, ({"w": np.ones((4, 2, 9, 9))},), **PURE)
    with pytest.raises(ValueError, match=re.escape("layer 0, Conv2d needs a per-sample input of shape (C, H, W); got (3,)")):
        pure.ei_parts(KEY, pure.Chain((pure.Conv2d(),), (3,)), ({"w": np.ones((1, 1, 1, 1))},), **PURE)
    pool = pure.Chain((pure.Dense(), pure.MaxPool2d((2, 2), (2, 2))), (3,))
    with pytest.raises(ValueError, match=re.escape("params[1] (layer 1, MaxPool2d) has unknown key(s) ['w']")):
        pure.ei_parts(KEY, pool, (PARAMS[0], {"w": np.ones(1)}), **PURE)
    for chain, error, message in [
        (pure.Chain((pure.Dense(),), (-3,)), ValueError, "chain.in_shape must be a non-empty tuple of positive ints"),
        (pure.Chain((pure.Dense(),), "3"), TypeError, "chain.in_shape must be a non-empty tuple of positive ints"),
        (pure.Chain((), (3,)), TypeError, "chain.layers must be a non-empty tuple of layer specs"),
        (pure.Chain(("dense",), (3,)), TypeError, "chain.layers[0] must be one of Dense, Conv2d"),
    ]:
        with pytest.raises(error, match=re.escape(message)):
            pure.ei(KEY, chain, PARAMS, **PURE)


def test_pure_groups_degeneracy_exact_and_sweep_arguments():
    for groups, error, message in [
        ([], ValueError, "groups must contain at least one (input_indices, output_indices) pair"),
        ((), ValueError, "groups must contain at least one (input_indices, output_indices) pair"),
        (None, TypeError, "groups must be a list of (input_indices, output_indices) pairs; got None"),
        ([((0, 0), (0,))], ValueError, "groups[0] input indices must be distinct; got (0, 0)"),
        ([((-1,), (0,))], ValueError, "groups[0] input index -1 is out of bounds: the layer has 3 inputs (valid 0..2)"),
        ([((0.0,), (0,))], TypeError, "groups[0] input indices must be ints; got 0.0"),
    ]:
        with pytest.raises(error, match=re.escape(message)):
            pure.eis_between_groups(KEY, CHAIN, PARAMS, groups, **PURE)
    with pytest.raises(TypeError, match="state_memory_budget must be a positive integer; got 'x'"):
        pure.eis_between_groups(KEY, CHAIN, PARAMS, [((0,), (0,))], state_memory_budget="x",
                                **PURE)
    with pytest.raises(ValueError, match="sensitivity_samples must be a positive integer; got 0"):
        pure.degeneracy(KEY, CHAIN, PARAMS, sensitivity_samples=0, **PURE)
    with pytest.raises(ValueError, match=re.escape("params[0]['w'] (layer 0, Dense) has non-finite")):
        pure.ei_parts(KEY, CHAIN, ({"w": np.full((3, 2), np.nan)},), method="exact",
                      **{k: v for k, v in PURE.items() if k != "samples"})
    nan_in_set_1 = pure.stack_params([PARAMS, ({"w": np.full((3, 2), np.inf, np.float32)},)])
    with pytest.raises(ValueError, match=re.escape("params[0]['w'] (layer 0, Dense) has non-finite values (NaN or inf) in parameter set 1")):
        pure.sweep(KEY, CHAIN, nan_in_set_1, samples=1000, sensitivity_samples=100, in_bins=4,
                   out_bins=4)
    with pytest.raises(ValueError, match=re.escape("params[0]['w'] (layer 0, Dense) has shape (4, 2); expected (3, n_out)")):
        pure.sweep(KEY, CHAIN, ({"w": np.ones((2, 4, 2))},), samples=1000)
    with pytest.raises(TypeError, match="memory_budget must be a positive integer; got 'x'"):
        pure.sweep(KEY, CHAIN, pure.stack_params([PARAMS]), samples=1000, memory_budget="x")


# ---------------------------------------------------------------- 1. bad arguments, torch API

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(device="cpu:x"), ValueError, "device must be 'cpu', 'cuda', 'gpu' or 'tpu' with an optional ':index' (e.g. 'cuda:0'); got 'cpu:x'"),
    (dict(device="cpu:5"), ValueError, "device 'cpu:5' does not exist: JAX sees 1 cpu device(s)"),
    (dict(device=torch.device("cuda:0")), ValueError, "was asked for but JAX sees no gpu device"),
    (dict(device=0), TypeError, "device must be 'cpu', 'cuda', 'gpu', a torch.device or a jax Device; got 0"),
    (dict(seed=2 ** 70), ValueError, "seed must be a 64-bit signed integer (-2**63 <= seed < 2**63); got 1180591620717411303424"),
    (dict(seed=1.0), TypeError, "seed must be an int or None; got 1.0"),
    (dict(in_bins=np.float64(8)), TypeError, "in_bins must be an integer >= 2; got"),
    (dict(samples=2 ** 31), ValueError, "samples must be below 2**31 (int32 counts); got 2147483648"),
    (dict(memory_budget="x"), TypeError, "memory_budget must be a positive integer; got 'x'"),
    (dict(activation=[1]), TypeError, "activation must be None, a torch activation module or a callable; got [1]"),
    (dict(activation=lambda x: undefined_name), ValueError, "cannot be applied to a batch of floats: on a (2, 3) float32 tensor it raised NameError"),  # noqa: F821
    (dict(activation=lambda x: x.sum()), ValueError, "must act elementwise (a tensor in, a tensor of the same shape out); on a (2, 3) tensor it returned Tensor ()"),
])
def test_torch_bad_arguments(kwargs, error, message, capfd):
    net, top = mlp()
    if "device" in kwargs and jax.default_backend() != "cpu":
        pytest.skip("device messages are for a CPU-only JAX")
    with pytest.raises(error, match=re.escape(message)):
        dei.ei_of_layer(net[0], top, **{**TORCH, **kwargs})
    assert "Traceback" not in capfd.readouterr().err  # a broken activation fails before JAX runs it


def test_torch_bad_layers_and_topologies():
    net, top = mlp()
    other, other_top = mlp()
    # a topology from another model: the layer is in neither direction's graph
    with pytest.raises(ValueError, match=r"layer Linear\(in_features=3.*is not in the topology; "
                                         r"pass a module of the model that topology_of was"):
        dei.ei_of_layer(net[0], other_top, **TORCH)
    with pytest.raises(ValueError, match=r"in_layer Linear\(in_features=3.*is not in the topology"):
        dei.ei_of_layer(net[2], top, in_layer=other[0], **TORCH)
    with pytest.raises(TypeError, match="layer must be a torch module of the model .*; got None"):
        dei.ei_of_layer(None, top, **TORCH)
    with pytest.raises(TypeError, match="in_layer must be a torch module of the model .*; got '0'"):
        dei.ei_of_layer(net[2], top, in_layer="0", **TORCH)
    with pytest.raises(ValueError, match=r"layer Sigmoid\(\) is an activation, not a layer"):
        dei.ei_of_layer(net[1], top, **TORCH)
    with pytest.raises(TypeError, match="topology must be the networkx.DiGraph from topology_of; got dict"):
        dei.ei_of_layer(net[0], {}, **TORCH)
    import networkx as nx
    handmade = nx.DiGraph()
    handmade.add_node(net[0])
    with pytest.raises(ValueError, match="topology was not made by topology_of: its node .* has no "
                                         "'input'/'output' attributes"):
        dei.ei_of_layer(net[0], handmade, **TORCH)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module; got str"):
        dei.topology_of("net", torch.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"input of shape \(1, 3\) does not fit the model: running "
                                         r"it raised RuntimeError"):
        dei.topology_of(net, torch.zeros((1, 3), dtype=torch.long))
    with pytest.raises(ValueError, match=re.escape("groups must contain at least one")):
        dei.eis_between_groups(net[0], top, [], **TORCH)


def test_mi_bad_arguments():
    x, y = torch.rand(100), torch.rand(100)
    for kwargs, error, message in [
        (dict(bins=(4,)), ValueError, "bins must be an int or a pair (x_bins, y_bins); got (4,)"),
        (dict(bins=True), TypeError, "bins must be an integer >= 2; got True"),
        (dict(range=((0, 1),)), ValueError, "range must be a pair ((x_low, x_high), (y_low, y_high)); got ((0, 1),)"),
        (dict(range=((0, 1), (1, 1))), ValueError, "range[1] must be (low, high) with finite low < high; got (1, 1)"),
    ]:
        with pytest.raises(error, match=re.escape(message)):
            dei.MI(x, y, **kwargs)
    with pytest.raises(TypeError, match="x must be a series of numbers"):
        dei.MI("abc", "abd")
    with pytest.raises(ValueError, match="x and y must have the same length; got 100 and 50"):
        dei.MI(x, y[:50])


def test_sweep_and_tracker_bad_arguments(tmp_path):
    net, _ = mlp()
    x = torch.zeros((1, 3))
    fast = dict(samples=1000, sensitivity_samples=100, in_bins=4, out_bins=4)
    for kwargs, error, message in [
        (dict(seed=2 ** 70), ValueError, "seed must be a 64-bit signed integer"),
        (dict(seed=None), TypeError, "seed must be an int; got None"),
        (dict(steps=5), TypeError, "steps must be a sequence of labels, one per model; got 5"),
        (dict(steps="a"), TypeError, "steps must be a sequence of labels, one per model; got 'a'"),
        (dict(layers=["0", "0"]), ValueError, "layers names layer '0' more than once"),
        (dict(layers=[]), ValueError, "layers must name at least one layer"),
        (dict(layers=["1"]), ValueError, "layers: '1' is not a measurable module of the model; measurable: ['0', '2']"),
        (dict(max_batch=0), ValueError, "max_batch must be a positive integer; got 0"),
        (dict(memory_budget="x"), TypeError, "memory_budget must be a positive integer; got 'x'"),
        (dict(policy="wrap"), ValueError, "policy must be one of ('drop', 'clip'); got 'wrap'"),
    ]:
        with pytest.raises(error, match=re.escape(message)):
            dei.sweep([net], x, **{**fast, **kwargs})
    path = tmp_path / "run.jsonl"
    for kwargs, error, message in [
        (dict(seed="0"), TypeError, "seed must be an int; got '0'"),
        (dict(method="fast"), ValueError, "method must be one of"),
        (dict(policy="wrap"), ValueError, "policy must be one of ('drop', 'clip'); got 'wrap'"),
        (dict(every=1.5), ValueError, "every must be a positive integer; got 1.5"),
        (dict(in_bins=1.0), TypeError, "in_bins must be an integer >= 2; got 1.0"),
        (dict(layers=3), TypeError, "layers must be None or a list of module names or modules; got 3"),
    ]:
        with pytest.raises(error, match=re.escape(message)):
            Tracker(path, x, **{**fast, **kwargs})
    with pytest.raises(TypeError, match="example_input must be a torch.Tensor batch; got ndarray"):
        Tracker(path, np.zeros((1, 3)), **fast)
    with pytest.raises(TypeError, match="path must be a file path .*; got None"):
        Tracker(None, x, **fast)
    with pytest.raises(ValueError, match="is a directory; expected a JSON-lines tracking file"):
        Tracker(tmp_path, x, **fast)
    assert not path.exists()  # nothing was created by the refused trackers
    with pytest.raises(TypeError, match="model must be a torch.nn.Module; got str"):
        Tracker(path, x, **fast)("net", 0)


@pytest.mark.parametrize("content", [b"\x00\xff\xfe binary\n", b"hello world\n",
                                     b'{"step": 0, "layer": "0"}\nnot json\n{"step": 2, "layer"',
                                     b"[1, 2]\n", b"plain text without newline"])
def test_tracker_refuses_a_file_that_is_not_its_own_and_leaves_it_alone(tmp_path, content):
    path = tmp_path / "notes.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"is not a tracking file: line \d+ is not a JSON record "
                                         r"with 'step' and 'layer' \(the file is left as it is\)"):
        Tracker(path, torch.zeros((1, 3)))
    assert path.read_bytes() == content


# ---------------------------------------------------------------- 2. bad models

@pytest.mark.parametrize("module", [nn.LSTM(4, 4), nn.RNN(4, 4), nn.Conv3d(1, 1, 1),
                                    nn.LayerNorm(4), nn.BatchNorm1d(4)])
def test_unsupported_module_as_the_layer_itself(module):
    net = nn.Sequential(nn.Linear(4, 4), module) if not isinstance(module, nn.Conv3d) else \
        nn.Sequential(module, nn.Flatten(), nn.Linear(4, 4))
    example = torch.zeros((1, 1, 1, 1, 4)) if isinstance(module, nn.Conv3d) else torch.zeros((2, 4))
    top = dei.topology_of(net.eval(), example, capture=False)   # hooks only: refused
    with pytest.raises(NotImplementedError, match=re.escape(type(module).__name__) + r".* is not "
                       r"supported: .* Supported modules: Linear, Conv2d, AvgPool2d, MaxPool2d, "
                       r"Flatten, Sigmoid, Tanh, ReLU"):
        dei.ei_of_layer(module, top, **TORCH)
    top = dei.topology_of(net.eval(), example)    # the captured graph measures it
    assert dei.ei_of_layer(module, top, **TORCH) >= 0


def test_non_sequential_graph_is_refused_across_the_branch():
    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(6, 2)

        def forward(self, x):
            return self.c(torch.cat([self.a(x), self.b(x)], dim=1))

    net = Branches()
    top = dei.topology_of(net, torch.zeros((1, 4)), capture=False)   # hooks only
    with pytest.raises(NotImplementedError, match="non-module operation .*skip connection"):
        dei.ei_of_layer(net.c, top, in_layer=net.b, **TORCH)
    with pytest.raises(NotImplementedError, match="cannot infer the activation after"):
        dei.ei_of_layer(net.a, top, **TORCH)
    assert dei.ei_of_layer(net.a, top, activation=nn.Sigmoid(), **TORCH) >= 0  # told: it works
    # the captured graph: both branches start from b's input x, so the span b..c is measured
    top = dei.topology_of(net, torch.zeros((1, 4)))
    assert dei.ei_of_layer(net.c, top, in_layer=net.b, **TORCH) >= 0
    assert dei.ei_of_layer(net.a, top, **TORCH) >= 0


def test_inf_bias_is_refused_naming_module_and_parameter():
    net = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1))
    with torch.no_grad():
        net[2].bias[0] = float("-inf")
    top = dei.topology_of(net, torch.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"Linear\(in_features=2, out_features=1.*has non-finite "
                                         r"values \(NaN or inf\) in its bias"):
        dei.ei_of_layer(net[2], top, **TORCH)
    with pytest.raises(ValueError, match=r"in its bias"):
        dei.sweep([net], torch.zeros((1, 2)), samples=1000, sensitivity_samples=100, in_bins=4,
                  out_bins=4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for torch")
def test_cuda_model_is_measured_like_its_cpu_copy():
    net, _ = mlp()
    expected = dei.ei_of_layer(net[0], dei.topology_of(net, torch.zeros((1, 3))), **TORCH)
    gpu = net.cuda()
    top = dei.topology_of(gpu, torch.zeros((1, 3), device="cuda"))
    assert dei.ei_of_layer(gpu[0], top, **TORCH) == expected


# ---------------------------------------------------------------- 3. numerical edges

def test_chunk_sizes_do_not_change_results_bit_for_bit(monkeypatch):
    rng = np.random.default_rng(3)
    params = ({"w": rng.normal(size=(3, 2)).astype(np.float32)},)
    kwargs = dict(PURE, samples=20_000, in_bins=8, out_bins=8)
    default = (pure.ei_parts_matrix(KEY, CHAIN, params, **kwargs)[0],
               pure.ei(KEY, CHAIN, params, **kwargs)[0],
               pure.sensitivity_matrix(KEY, CHAIN, params, **{**kwargs, "samples": 3000})[0],
               pure.eis_between_groups(KEY, CHAIN, params, [((0, 1), (1,))], **kwargs)[0])
    monkeypatch.setattr(planning, "blocks_per_chunk", lambda *args: 1)  # one block per chunk
    small = (pure.ei_parts_matrix(KEY, CHAIN, params, **kwargs)[0],
             pure.ei(KEY, CHAIN, params, **kwargs)[0],
             pure.sensitivity_matrix(KEY, CHAIN, params, **{**kwargs, "samples": 3000})[0],
             pure.eis_between_groups(KEY, CHAIN, params, [((0, 1), (1,))], **kwargs)[0])
    assert default[0].tobytes() == small[0].tobytes()
    assert default[1] == small[1] and default[3] == small[3]
    assert default[2].tobytes() == small[2].tobytes()


def test_same_key_bit_identical_in_the_pure_api():
    for measure in (pure.ei, pure.sensitivity_matrix, pure.ei_and_ei_parts):
        a, b = measure(KEY, CHAIN, PARAMS, **PURE)[0], measure(KEY, CHAIN, PARAMS, **PURE)[0]
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_edge_saturation_and_out_of_range_are_counted_not_lost():
    # tanh(50 x) on (-1, 1) is exactly -1 or 1 for most x: both edges of out_range (-1, 1) count
    chain = pure.Chain((pure.Dense(activation="tanh"),), (1,))
    params = ({"w": np.full((1, 1), 50.0, np.float32)},)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, info = pure.ei_parts(KEY, chain, params, in_range=(-1, 1), out_range=(-1, 1),
                                    in_bins=4, out_bins=4, samples=4000)
    assert info.out_of_range == 0 and info.dropped == 0 and value > 0.9
    # just under 1% outside: counted, no warning; well past 1%: counted and warned
    shifted = ({"w": np.ones((1, 1), np.float32)},)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, few = pure.ei_parts(KEY, pure.Chain((pure.Dense(),), (1,)), shifted, in_range=(0, 1),
                               out_range=(0, 0.995), in_bins=4, out_bins=4, samples=20_000)
    assert 0 < few.out_of_range == few.dropped < 0.01 * few.total
    with pytest.warns(RuntimeWarning, match=r"\(\d+\.\d%\) had an output outside out_range"):
        pure.ei(KEY, pure.Chain((pure.Dense(),), (1,)), shifted, in_range=(0, 1),
                out_range=(0, 0.9), in_bins=4, out_bins=4, samples=20_000)


def test_counts_past_int32_refused_with_the_reason():
    for kwargs in (dict(samples=2 ** 31), dict(samples=None, max_samples=2 ** 31)):
        with pytest.raises(ValueError, match=r"must be below 2\*\*31 \(int32 counts\)"):
            pure.ei(KEY, CHAIN, PARAMS, **{**PURE, **kwargs})
    with pytest.raises(ValueError, match=r"samples must be below 2\*\*31"):
        pure.sensitivity(KEY, CHAIN, PARAMS, **{**PURE, "samples": 2 ** 31})


# ---------------------------------------------------------------- 4. interrupted long runs

def test_interrupted_adaptive_runs_leave_nothing_behind(monkeypatch):
    kwargs = {k: v for k, v in PURE.items() if k != "samples"}
    fresh_parts = pure.ei_parts(KEY, CHAIN, PARAMS, threshold=0.01, **kwargs)[0]
    fresh_vector = pure.ei(KEY, CHAIN, PARAMS, threshold=0.01, **kwargs)[0]
    for rule in ("parts_converged", "vector_converged"):
        original = getattr(adaptive, rule)
        calls = []

        def interrupt(*args, original=original, calls=calls):
            calls.append(1)  # the rule runs after a step is counted: Ctrl-C there is midway
            raise KeyboardInterrupt

        monkeypatch.setattr(adaptive, rule, interrupt)
        with pytest.raises(KeyboardInterrupt):
            (pure.ei_parts if rule == "parts_converged" else pure.ei)(
                KEY, CHAIN, PARAMS, threshold=0.01, **kwargs)
        monkeypatch.setattr(adaptive, rule, original)
        assert calls == [1]
    assert pure.ei_parts(KEY, CHAIN, PARAMS, threshold=0.01, **kwargs)[0] == fresh_parts
    assert pure.ei(KEY, CHAIN, PARAMS, threshold=0.01, **kwargs)[0] == fresh_vector


TRACK = dict(samples=2000, sensitivity_samples=100, in_bins=4, out_bins=4)


def test_tracker_interrupted_inside_a_sweep_resumes_without_measuring_twice(tmp_path,
                                                                            monkeypatch):
    net, _ = mlp()
    path = tmp_path / "run.jsonl"
    example = torch.zeros((1, 3))
    tracker = Tracker(path, example, every=1, **TRACK)
    tracker(net, 0)
    real_sweep = tracking.sweep
    calls = []

    def sweep(*args, **kwargs):
        calls.append(kwargs.get("layers"))
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while step 1 is being measured
        return real_sweep(*args, **kwargs)

    monkeypatch.setattr(tracking, "sweep", sweep)
    tracker(net, 1)  # call 1
    with pytest.raises(KeyboardInterrupt):
        tracker(net, 2)  # call 2: interrupted, nothing of step 2 written
    assert [(r["step"], r["layer"]) for r in read_records(path)] == [
        (0, "0"), (0, "2"), (1, "0"), (1, "2")]
    resumed = Tracker(path, example, every=1, **TRACK)
    assert resumed.last_step == 1
    assert resumed(net, 0) == [] and resumed(net, 1) == []  # replayed steps: no sweep at all
    assert len(calls) == 2
    assert [r["layer"] for r in resumed(net, 2)] == ["0", "2"]
    keys = [(r["step"], r["layer"]) for r in read_records(path)]
    assert keys == [(s, layer) for s in (0, 1, 2) for layer in ("0", "2")]


def test_tracker_interrupted_between_two_records_measures_only_the_missing_layer(tmp_path,
                                                                                 monkeypatch):
    net, _ = mlp()
    path = tmp_path / "run.jsonl"
    example = torch.zeros((1, 3))
    complete = Tracker(tmp_path / "reference.jsonl", example, every=1, **TRACK)
    reference = complete(net, 0)
    tracker = Tracker(path, example, every=1, **TRACK)
    real_append = Tracker._append

    def append(self, record):
        if record["layer"] == "2":
            raise KeyboardInterrupt  # after layer '0' of the step is on disk
        real_append(self, record)

    monkeypatch.setattr(Tracker, "_append", append)
    with pytest.raises(KeyboardInterrupt):
        tracker(net, 0)
    monkeypatch.setattr(Tracker, "_append", real_append)
    layers_measured = []
    real_sweep = tracking.sweep
    monkeypatch.setattr(tracking, "sweep", lambda *a, **k: layers_measured.append(k["layers"])
                        or real_sweep(*a, **k))
    resumed = Tracker(path, example, every=1, **TRACK)
    new = resumed(net, 0)
    assert layers_measured == [["2"]] and [r["layer"] for r in new] == ["2"]
    assert new[0]["layer_index"] == 1  # the index among all layers, as an uninterrupted run
    for got, want in zip(read_records(path), reference):
        for name in ("layer", "layer_index", "ei", "ei_parts", "sensitivity", "degeneracy"):
            assert got[name] == want[name]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A valid TorchScript model and hostile model files, by name."""
    folder = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2), nn.Sigmoid())
    torch.jit.script(net).save(str(folder / "good.pt"))
    torch.save(net, folder / "pickled.pt")
    data = (folder / "good.pt").read_bytes()
    (folder / "truncated_script.pt").write_bytes(data[:len(data) // 2])
    data = (folder / "pickled.pt").read_bytes()
    (folder / "truncated_pickle.pt").write_bytes(data[:len(data) // 3])
    (folder / "empty.pt").write_bytes(b"")
    (folder / "random.pt").write_bytes(np.random.default_rng(0).bytes(2000))
    (folder / "text.pt").write_text("this is not a model\n")
    (folder / "a_folder").mkdir()
    torch.save(net.state_dict(), folder / "state_dict.pt")
    torch.save(nn.Sequential(nn.LSTM(4, 2)), folder / "lstm.pt")   # no Linear or Conv2d
    nan = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid())
    with torch.no_grad():
        nan[0].weight[1, 2] = float("nan")
    torch.save(nan, folder / "nan.pt")
    torch.save(nn.Sequential(nn.Linear(4, 3), nn.Sigmoid()).double(), folder / "double.pt")
    return folder


def run_cli(argv):
    """(exit status, stdout, stderr) of cli.main in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main([str(a) for a in argv])
        except SystemExit as exit_:  # argparse's own errors
            status = exit_.code
    return status, out.getvalue(), err.getvalue()


CLI_FAST = ["--bins", "4", "--samples", "1000", "--sensitivity-samples", "100", "--no-progress"]


def test_cli_interrupted_while_measuring_writes_nothing(model_files, tmp_path, monkeypatch):
    import deep_ei_jax.bridge as bridge
    old = tmp_path / "out.json"
    old.write_text('{"settings": {}, "records": []}')  # a previous run's output, kept as it was
    real_sweep = bridge.sweep
    calls = []

    def sweep(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_sweep(*args, **kwargs)

    monkeypatch.setattr(bridge, "sweep", sweep)
    status, _, err = run_cli(["measure", model_files / "good.pt", "--input-shape", "1,4",
                              *CLI_FAST, "--json", old, "--csv", tmp_path / "out.csv"])
    assert status == 130 and "interrupted" in err and "Traceback" not in err
    assert old.read_text() == '{"settings": {}, "records": []}'
    assert sorted(os.listdir(tmp_path)) == ["out.json"]


def test_cli_interrupted_while_writing_leaves_no_half_file(model_files, tmp_path, monkeypatch):
    out = tmp_path / "out.json"
    out.write_text("previous")

    def half_dump(data, file, **kwargs):
        file.write(json.dumps(data)[:50])
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.json, "dump", half_dump)
    status, _, err = run_cli(["measure", model_files / "good.pt", "--input-shape", "1,4",
                              *CLI_FAST, "--json", out])
    assert status == 130 and "Traceback" not in err
    assert out.read_text() == "previous" and os.listdir(tmp_path) == ["out.json"]
    monkeypatch.undo()
    status, _, _ = run_cli(["measure", model_files / "good.pt", "--input-shape", "1,4",
                            *CLI_FAST, "--json", out, "--csv", tmp_path / "out.csv"])
    assert status == 0 and len(json.loads(out.read_text())["records"]) == 2
    assert sorted(os.listdir(tmp_path)) == ["out.csv", "out.json"]  # no temporary files left


def test_atomic_write_keeps_the_old_file_on_any_error(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")

    def fail(file):
        file.write("new, half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        cli.atomic_write(str(path), fail)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]
    cli.atomic_write(str(path), lambda file: file.write("new"))
    assert path.read_text() == "new"


# ---------------------------------------------------------------- 6. fuzzing the command line

@pytest.mark.parametrize("name, extra, fragments", [
    ("truncated_script.pt", [], ["MODEL_FILE", "truncated or corrupted"]),
    ("truncated_pickle.pt", ["--trust-pickle"], ["MODEL_FILE", "truncated or corrupted"]),
    ("empty.pt", [], ["MODEL_FILE", "is empty"]),
    ("random.pt", ["--trust-pickle"], ["MODEL_FILE", "neither a TorchScript file"]),
    ("text.pt", [], ["MODEL_FILE", "is not a TorchScript file", "--trust-pickle"]),
    ("a_folder", [], ["MODEL_FILE", "is a directory"]),
    ("state_dict.pt", ["--trust-pickle"], ["MODEL_FILE", "state dict"]),
    ("pickled.pt", [], ["MODEL_FILE", "--trust-pickle", "runs code"]),
    ("lstm.pt", ["--trust-pickle"], ["MODEL_FILE", "no Linear or Conv2d layer to measure",
                                     "LSTM", "--layers", "measurable: ['0']"]),
    ("nan.pt", ["--trust-pickle"], ["MODEL_FILE", "layer '0'", "non-finite values", "weight"]),
    ("good.pt", ["--seed", str(2 ** 70)], ["--seed", "expected an integer seed"]),
    ("good.pt", ["--bins", "1"], ["--bins", "expected an integer >= 2; got '1'"]),
    ("good.pt", ["--samples", str(2 ** 31)], ["--samples", "below 2**31"]),
    # (tables of 1e10 cells per pair; the bins of 1e8 samples would not fit either: at 1000
    # samples this layer is counted by its samples)
    ("good.pt", ["--bins", "100000", "--samples", str(10 ** 8)],
     ["--in-bins 100000", "count tables need"]),
    ("good.pt", ["--layers", "0,0"], ["--layers names layer '0' more than once"]),
    ("good.pt", ["--layers", "1"], ["--layers: '1' is not a measurable module"]),
])
def test_cli_hostile_inputs_give_one_clear_line(model_files, tmp_path, name, extra, fragments):
    status, _, err = run_cli(["measure", model_files / name, "--input-shape", "1,4", *CLI_FAST,
                              *extra])
    assert status == 2 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_cli_odd_models_that_work(model_files, tmp_path):
    status, out, err = run_cli(["measure", model_files / "double.pt", "--input-shape", "1,4",
                                *CLI_FAST, "--trust-pickle"])
    assert status == 0 and out.startswith("layer") and "Traceback" not in err  # float64 weights


@pytest.mark.parametrize("argv, fragments", [
    (["measure", "{model}", "--input-shape", "1,4", "--json", "{tmp}"], ["--json", "is a directory"]),
    (["measure", "{model}", "--input-shape", "1,4", "--csv", "{tmp}/missing/out.csv"],
     ["--csv", "does not exist"]),
    (["measure", "{model}", "--input-shape", "100000,100000,100"],
     ["--input-shape 100000,100000,100", "more than the 16777216"]),
    (["plot", "{model}", "--out", "{tmp}/figures"], ["RESULTS", "cannot be read as text"]),
    (["plot", "{tmp}/bad.json", "--out", "{tmp}/figures"],
     ["RESULTS", "record 1 has sensitivity='x'; expected a finite number"]),
    (["plot", "{tmp}/nan.json", "--out", "{tmp}/figures"],
     ["RESULTS", "record 2 has degeneracy=nan; expected a finite number"]),
    (["plot", "{tmp}/good.json", "--out", "{model}"], ["--out", "exists and is not a folder"]),
])
def test_cli_bad_paths_and_results(model_files, tmp_path, argv, fragments):
    (tmp_path / "bad.json").write_text('[{"layer": "0", "sensitivity": "x", "degeneracy": 1}]')
    (tmp_path / "good.json").write_text('[{"layer": "0", "sensitivity": 1, "degeneracy": 1}]')
    (tmp_path / "nan.json").write_text('[{"layer": "0", "sensitivity": 1, "degeneracy": 1},'
                                       ' {"layer": "0", "sensitivity": 1, "degeneracy": NaN}]')
    argv = [a.format(model=model_files / "good.pt", tmp=tmp_path) for a in argv]
    status, _, err = run_cli(argv)
    assert status == 2 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not (tmp_path / "figures").exists()


def test_cli_subprocess_reports_without_traceback(model_files):
    """The real entry point (`python -m deep_ei_jax`), once with a file and once with an option."""
    import subprocess
    import sys
    for argv, fragment in [
        (["measure", str(model_files / "truncated_script.pt"), "--input-shape", "1,4"],
         "truncated or corrupted"),
        (["measure", str(model_files / "good.pt"), "--input-shape", "1,4", "--seed", "1e3"],
         "argument --seed"),
    ]:
        result = subprocess.run([sys.executable, "-m", "deep_ei_jax", *argv],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert fragment in result.stderr


# Each option: valid values and invalid ones (the text of the problem the message must name).
_INVALID_COUNTS = ["0", "-3", "1.5", "x", "", "2147483648", "9" * 30, "1e3"]
# Valid values are few, so that the measurements they run reuse one compiled program.
OPTIONS = {
    "--input-shape": (["1,4", "2,4", "1,,4"],
                      ["1,x", "0", "-3", ",", "1,5", "100000,100000,100", "4"]),
    "--samples": (["1000"], _INVALID_COUNTS),
    "--sensitivity-samples": (["100"], _INVALID_COUNTS),
    "--bins": (["4"], ["1", "0", "-3", "x", "1e3", "4.0", "1000000000"]),
    "--in-bins": (["4"], ["1", "x"]),
    "--seed": (["0", "-1", "7"], ["x", "1.5", "9" * 30]),
    "--layers": (["0", "0,2", "2"], ["9", "1", "0,0", ","]),
}


@st.composite
def cli_arguments(draw):
    """(argv, problems): problems holds text one of which the error message must contain
    (empty when the arguments are all valid)."""
    faulty = draw(st.sets(st.sampled_from(sorted(OPTIONS) + ["MODEL_FILE", "extra", "missing"]),
                          max_size=2))
    argv, problems = ["measure"], set()
    model, trust = "good.pt", draw(st.booleans())
    if "MODEL_FILE" in faulty:
        model = draw(st.sampled_from(["truncated_script.pt", "truncated_pickle.pt", "empty.pt",
                                      "random.pt", "text.pt", "a_folder", "state_dict.pt",
                                      "lstm.pt", "nan.pt", "missing.pt", "pickled.pt"]))
        if model == "pickled.pt" and trust:
            model = "lstm.pt"
        problems.add("MODEL_FILE")
    argv.append(model)
    for option in sorted(OPTIONS):
        valid, invalid = OPTIONS[option]
        if option == "--input-shape" and "missing" in faulty:
            problems.add("--input-shape")  # left out: argparse says it is required
            continue
        if option in faulty:
            argv += [option, draw(st.sampled_from(invalid))]
            problems.add(option)
        elif option == "--input-shape" or draw(st.booleans()):
            argv += [option, draw(st.sampled_from(valid))]
    if "--bins" in faulty and argv[argv.index("--bins") + 1] == "1000000000":
        problems.add("count tables need")  # valid for argparse; refused before any work
    if "extra" in faulty:
        argv.insert(draw(st.integers(2, len(argv))), draw(st.sampled_from(
            ["--unknown", "stray", "--bins", "-x"])))
        problems.update({"unrecognized arguments", "argument", "expected", "MODEL_FILE",
                         "--layers", "--bins"})
    if trust:
        argv.append("--trust-pickle")
    return argv, problems


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(cli_arguments())
def test_fuzz_cli_arguments_and_model_files(model_files, arguments):
    argv, problems = arguments
    argv = [str(model_files / a) if a.endswith(".pt") or a == "a_folder" else a for a in argv]
    argv += ["--no-progress", "--sensitivity-samples", "100"] if "--sensitivity-samples" \
        not in argv else ["--no-progress"]
    if "--samples" not in argv:
        argv += ["--samples", "1000"]
    if "--bins" not in argv:
        argv += ["--bins", "4"]
    status, out, err = run_cli(argv)
    assert "Traceback" not in err and "Traceback" not in out
    if not problems:
        assert status == 0, (argv, err)
        assert out.startswith("layer")
        return
    assert status == 2, (argv, status, err)
    assert err.strip(), argv
    assert any(problem in err for problem in problems), (argv, problems, err)
