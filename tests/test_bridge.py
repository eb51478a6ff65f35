"""The torch bridge: topology_of, conversion of spans (matches torch's forward pass), defaults."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

import deep_ei_jax as dei
from deep_ei_jax import pure
from deep_ei_jax.bridge import layer_chain


def forward_matches(span_chain, params, torch_fn, inputs):
    ours = np.asarray(pure.apply(span_chain, params, jnp.asarray(inputs)))
    with torch.no_grad():
        theirs = torch_fn(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(ours, theirs.reshape(ours.shape), rtol=1e-5, atol=1e-6)


def test_import_does_not_load_torch():
    code = "import sys, deep_ei_jax; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_topology_matches_deep_ei_attributes():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 10), nn.Sigmoid(), nn.Linear(10, 5), nn.Tanh(),
                        nn.Linear(5, 2))
    top = dei.topology_of(net, torch.zeros((1, 20)))
    assert list(top.nodes) == [net[0], net[2], net[4]]
    assert list(top.edges) == [(net[0], net[2]), (net[2], net[4])]
    first, second, last = (top.nodes[m] for m in (net[0], net[2], net[4]))
    assert first["input"] == {"activation": None, "shape": (1, 20)}
    assert first["output"] == {"activation": net[1], "shape": (1, 10)}
    assert second["input"]["activation"] is net[1] and second["output"]["activation"] is net[3]
    assert last["output"]["activation"] is None and last["input"]["activation"] is net[3]


def test_linear_span_matches_torch_forward():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 5), nn.Sigmoid(), nn.Linear(5, 4, bias=False), nn.ReLU(),
                        nn.Linear(4, 3), nn.Tanh())
    top = dei.topology_of(net, torch.zeros((1, 6)))
    span = layer_chain(net[4], top, in_layer=net[0])
    assert span.chain.in_shape == (6,)
    x = np.random.default_rng(0).uniform(-1, 1, (50, 6)).astype(np.float32)
    forward_matches(span.chain, span.params, net, x)


def test_conv_pool_flatten_linear_full_span_matches_torch():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, stride=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(3, 4, 2, dilation=1), nn.Tanh(), nn.AvgPool2d(2, stride=1),
                        nn.Flatten(), nn.Linear(4 * 2 * 2, 3), nn.Sigmoid())
    x = torch.zeros((1, 2, 8, 8))
    top = dei.topology_of(net, x)
    span = layer_chain(net[7], top, in_layer=net[0])
    assert not span.receptive_field and span.chain.in_shape == (2, 8, 8)
    inputs = np.random.default_rng(1).uniform(0, 1, (7, 2, 8, 8)).astype(np.float32)
    forward_matches(span.chain, span.params, net, inputs)


def test_conv_receptive_field_and_conv_pool_span():
    torch.manual_seed(3)
    conv, pool = nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.MaxPool2d(2)
    net = nn.Sequential(conv, nn.Sigmoid(), pool, nn.Flatten())
    top = dei.topology_of(net, torch.zeros((1, 2, 16, 16)))
    assert top.nodes[conv]["input"]["shape"] == (1, 2, 16, 16)
    alone = layer_chain(conv, top)
    assert alone.receptive_field and alone.chain.in_shape == (2, 3, 3)
    spanned = layer_chain(pool, top, in_layer=conv)
    # SPEC: kH + (p - 1) * stride_conv = 3 + (2 - 1) * 2 = 5
    assert spanned.chain.in_shape == (2, 5, 5)
    patch = np.random.default_rng(2).uniform(0, 1, (9, 2, 5, 5)).astype(np.float32)
    no_pad = nn.Conv2d(2, 3, 3, stride=2)
    no_pad.load_state_dict(conv.state_dict())
    forward_matches(spanned.chain, spanned.params, nn.Sequential(no_pad, nn.Sigmoid(), pool),
                    patch)
    matrix = dei.ei_of_layer_matrix(pool, top, in_layer=conv, samples=5000, in_bins=8,
                                    out_bins=8, seed=0)
    assert matrix.shape == (2 * 5 * 5, 3)


def test_defaults_from_topology_and_activation_override():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 2), nn.ReLU())
    top = dei.topology_of(net, torch.zeros((1, 3)))
    _, info = dei.ei_of_layer(net[2], top, samples=2000, seed=0, return_info=True)
    # in_range from the Tanh before (-1, 1), out_range from the ReLU after (0, 10)
    assert float(info.out_low[0]) == 0 and float(info.out_high[0]) == 10
    a = dei.ei_of_layer_matrix(net[2], top, samples=3000, seed=0, activation=nn.Sigmoid(),
                               out_range=(0, 1), in_bins=8, out_bins=8)
    b = dei.ei_of_layer_matrix(net[2], top, samples=3000, seed=0, activation=torch.sigmoid,
                               out_range=(0, 1), in_bins=8, out_bins=8)
    c = dei.ei_of_layer_matrix(net[2], top, samples=3000, seed=0, activation=jax.nn.sigmoid,
                               out_range=(0, 1), in_bins=8, out_bins=8)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    # a lambda only torch can run goes through a host callback; same sigmoid, same numbers
    d = dei.ei_of_layer_matrix(net[2], top, samples=3000, seed=0,
                               activation=lambda t: 1 / (1 + torch.exp(-t)),
                               out_range=(0, 1), in_bins=8, out_bins=8)
    np.testing.assert_allclose(a, d, atol=1e-4)


def test_manual_seed_repeats_and_seed_argument():
    net = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid())
    top = dei.topology_of(net, torch.zeros((1, 4)))
    kwargs = dict(samples=5000, in_range=(0, 1), in_bins=16, out_bins=16)
    torch.manual_seed(7)
    first = dei.ei_of_layer(net[0], top, **kwargs)
    torch.manual_seed(7)
    assert dei.ei_of_layer(net[0], top, **kwargs) == first
    assert dei.ei_of_layer(net[0], top, seed=3, **kwargs) == \
        dei.ei_of_layer(net[0], top, seed=3, **kwargs)


def test_aliases_and_return_types():
    net = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Sigmoid())
    top = dei.topology_of(net, torch.zeros((1, 3)))
    kwargs = dict(samples=4000, in_range=(0, 1), in_bins=8, out_bins=8, seed=1)
    assert dei.ei_parts is dei.ei_of_layer and dei.ei is dei.vector_ei_of_layer
    assert dei.sensitivity is dei.sensitivity_of_layer
    assert dei.ei_parts_matrix is dei.ei_of_layer_matrix
    assert dei.sensitivity_matrix is dei.sensitivity_of_layer_matrix
    assert isinstance(dei.ei_of_layer(net[0], top, **kwargs), float)
    assert isinstance(dei.vector_ei_of_layer(net[0], top, **kwargs), float)
    assert isinstance(dei.ei_of_layer_matrix(net[0], top, **kwargs), np.ndarray)
    assert isinstance(dei.sensitivity_of_layer_matrix(net[0], top, **kwargs), np.ndarray)
    groups = dei.eis_between_groups(net[0], top, [((0,), (1,))], **kwargs)
    assert isinstance(groups, list) and len(groups) == 1
    both = dei.vector_and_pairwise_ei(net[0], top, **kwargs)
    assert isinstance(both, tuple) and both[0] == dei.vector_ei_of_layer(net[0], top, **kwargs)
    degeneracy = dei.degeneracy_of_layer(net[0], top, sensitivity_samples=1000, **kwargs)
    assert isinstance(degeneracy, float)


def test_mi_and_nats_to_bits():
    x = torch.rand(20000)
    assert dei.MI(x, x, bins=16, range=((0, 1), (0, 1))) == pytest.approx(4.0, abs=0.01)
    assert dei.MI(x, torch.rand(20000), bins=8) < 0.01
    assert dei.nats_to_bits(np.log(2)) == pytest.approx(1.0)


def test_ei_of_layer_reports_tiny_values_as_zero():
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Sigmoid())
    with torch.no_grad():
        net[0].weight.zero_()
    top = dei.topology_of(net, torch.zeros((1, 2)))
    assert dei.ei_of_layer(net[0], top, samples=5000, in_range=(0, 1), in_bins=8,
                           out_bins=8) == 0.0


def test_device_argument():
    net = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid())
    top = dei.topology_of(net, torch.zeros((1, 2)))
    kwargs = dict(samples=2000, in_range=(0, 1), in_bins=8, out_bins=8, seed=0)
    value = dei.ei_of_layer(net[0], top, device="cpu", **kwargs)
    assert dei.ei_of_layer(net[0], top, device=torch.device("cpu"), **kwargs) == value


def test_extrapolate_recovers_infinite_sample_value():
    # SPEC anchor: a 1 -> 1 sigmoid layer with weight 3, 8 bins: 1.690 bits as N -> infinity
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Sigmoid())
    with torch.no_grad():
        net[0].weight.fill_(3.0)
    top = dei.topology_of(net, torch.zeros((1, 1)))
    value, info = dei.ei_of_layer(net[0], top, extrapolate=True, in_range=(0, 1), in_bins=8,
                                  out_bins=8, seed=0, return_info=True)
    assert [n for n, _ in info.estimates] == [100_000 * (i + 1) for i in range(20)]
    # the fit removes the plug-in bias (49/(2N ln2) = 2.5e-4 at 1e5); what is left is sampling
    # noise of the points at 0.5M-2M (se < 0.001) and SPEC's rounding (0.0005)
    assert value == pytest.approx(1.690, abs=0.003)


# deep-ei 0.6.4's positional parameters (its source, deep_ei/__init__.py), in order, with defaults
DEEP_EI_0_6_4 = {
    "ei_of_layer": ("layer", "topology", ("threshold", 0.05), ("samples", None),
                    ("extrapolate", False), ("batch_size", 20), ("in_layer", None),
                    ("in_range", None), ("in_bins", 64), ("out_range", None), ("out_bins", 64),
                    ("activation", None), ("device", "cpu")),
    "ei_of_layer_matrix": ("layer", "topology", ("samples", None), ("batch_size", 20),
                           ("in_layer", None), ("in_range", None), ("in_bins", 64),
                           ("out_range", None), ("out_bins", 64), ("activation", None),
                           ("device", "cpu")),
    "sensitivity_of_layer": ("layer", "topology", ("samples", 500), ("batch_size", 20),
                             ("in_layer", None), ("in_range", None), ("in_bins", 64),
                             ("out_range", None), ("out_bins", 64), ("activation", None),
                             ("device", "cpu")),
}
DEEP_EI_0_6_4["sensitivity_of_layer_matrix"] = DEEP_EI_0_6_4["sensitivity_of_layer"]
OURS_KEYWORD_ONLY = (("seed", None), ("policy", "drop"), ("devices", None), ("return_info", False),
                     ("position", None))
# the other layer measures (ours, or deep-ei's later names): (positional, own keyword-only)
SHARED_TAIL = DEEP_EI_0_6_4["ei_of_layer"][5:]
OTHERS = {
    "vector_ei_of_layer": (("layer", "topology", ("threshold", 0.05), ("samples", None),
                            *SHARED_TAIL), ()),
    "eis_between_groups": (("layer", "topology", "groups", ("samples", None), *SHARED_TAIL),
                           (("threshold", 0.05),)),
    "vector_and_pairwise_ei": (("layer", "topology", ("samples", None), *SHARED_TAIL),
                               (("threshold", 0.05),)),
    "degeneracy_of_layer": (("layer", "topology", ("threshold", 0.05), ("samples", None),
                             ("sensitivity_samples", 500), *SHARED_TAIL),
                            (("ei_kind", "vector"),)),
}


def parameters(function, kinds):
    import inspect
    return tuple(p.name if p.default is inspect.Parameter.empty else (p.name, p.default)
                 for p in inspect.signature(function).parameters.values() if p.kind.name in kinds)


@pytest.mark.parametrize("name", [*DEEP_EI_0_6_4, *OTHERS])
def test_signatures_are_deep_eis(name):
    """help() and Sphinx show each measure's full signature, made from one specification."""
    import inspect
    function = getattr(dei, name)
    if name in DEEP_EI_0_6_4:
        positional = DEEP_EI_0_6_4[name]
        keyword_only = (("threshold", 0.05),) if name == "ei_of_layer_matrix" else ()
    else:
        positional, keyword_only = OTHERS[name]
    assert parameters(function, {"POSITIONAL_OR_KEYWORD"}) == positional
    assert parameters(function, {"KEYWORD_ONLY"}) == (*keyword_only, *OURS_KEYWORD_ONLY)
    assert list(inspect.signature(function).parameters)[-1] == "options"
    assert function.__name__ == name and function.__module__ == "deep_ei_jax.bridge.api"
    assert function.__doc__ and str(inspect.signature(function)) in \
        __import__("pydoc").render_doc(function)


def test_positional_and_keyword_calls_agree():
    net = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Sigmoid())
    top = dei.topology_of(net, torch.zeros((1, 3)))
    # every deep-ei positional argument given by position (samples fixed, threshold unused)
    positional = dei.ei_of_layer(net[0], top, 0.05, 3000, False, 20, None, (0, 1), 8, (0, 1), 8,
                                 None, "cpu", seed=2)
    keyword = dei.ei_of_layer(layer=net[0], topology=top, samples=3000, in_range=(0, 1),
                              in_bins=8, out_range=(0, 1), out_bins=8, seed=2)
    assert positional == keyword > 0
    groups = [((0, 1), (0,))]
    assert dei.eis_between_groups(net[0], top, groups, 3000, seed=2, in_bins=8, out_bins=8) == \
        dei.eis_between_groups(net[0], top, groups=groups, samples=3000, seed=2, in_bins=8,
                               out_bins=8)
    value, info = dei.degeneracy_of_layer(net[0], top, 0.05, 3000, 400, seed=2, in_bins=8,
                                          out_bins=8, ei_kind="parts", return_info=True)
    assert value == dei.degeneracy_of_layer(net[0], top, samples=3000, sensitivity_samples=400,
                                            seed=2, in_bins=8, out_bins=8, ei_kind="parts")
    assert info is not None


@pytest.mark.parametrize("call, message", [
    (lambda top, layer: dei.ei_of_layer(), "ei_of_layer(): missing a required argument: 'layer'"),
    (lambda top, layer: dei.eis_between_groups(layer, top),
     "eis_between_groups(): missing a required argument: 'groups'"),
    (lambda top, layer: dei.sensitivity_of_layer(layer, top, *range(10)),
     "sensitivity_of_layer(): too many positional arguments"),
    (lambda top, layer: dei.vector_ei_of_layer(layer, top, 0.05, threshold=0.1),
     "vector_ei_of_layer(): multiple values for argument 'threshold'"),
    (lambda top, layer: dei.sensitivity_of_layer(layer, top, threshold=0.1),
     "threshold"),  # not a sensitivity parameter: the pure measure refuses it
])
def test_bad_calls_name_the_measure(call, message):
    net = nn.Sequential(nn.Linear(3, 2), nn.Sigmoid())
    top = dei.topology_of(net, torch.zeros((1, 3)))
    with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(top, net[0])


def test_resolve_span_fills_deep_eis_ranges():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2), nn.ReLU())
    top = dei.topology_of(net, torch.zeros((1, 3)))
    span, in_range, out_range = dei.bridge.resolve_span(net[2], top)
    assert (in_range, out_range) == ((-1, 1), (0, 10))  # Tanh before, ReLU after
    assert span.chain.in_shape == (4,)
    span, in_range, out_range = dei.bridge.resolve_span(net[2], top, in_layer=net[0],
                                                        in_range=(0, 2))
    assert in_range == (0, 2) and out_range == (0, 10) and span.chain.in_shape == (3,)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        dei.bridge.resolve_span(net[2], top, batch_size=0)
