"""Any torch model through the public deep-ei API (issue 12): the graph path of `resolve_span`.

Equalities. A layer on the graph path runs the span's translated ATen ops (`aten.linear`:
x @ w.T + b) on the same samples as today's path (the samples depend on the key and the input
shape only). With a fan-in above `layers.ELEMENTWISE_FAN_IN` (16), Dense multiplies with a matmul
too, so the functional twin gives identical counts and values (asserted with ==). Spans that fold
differently (BatchNorm after a Linear vs the folded Linear; x + W x vs (W + I) x) round
differently, so a binned output can change bin only where it lies within rounding of a bin edge;
`_flip_bound` counts those entries on the measure's own samples and the tolerance follows from
it, as in tests/test_function_layer.py.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import deep_ei_jax as dei  # noqa: E402
from deep_ei_jax import cli  # noqa: E402
from deep_ei_jax.activations import activation  # noqa: E402
from deep_ei_jax.bridge import resolve_span  # noqa: E402
from deep_ei_jax.sampling import SAMPLE_BLOCK, uniform_inputs  # noqa: E402

from _models import TutorialCNN  # noqa: E402

N_IN, N_HID, N_OUT = 20, 24, 6   # fan-ins 20 and 24 > 16: Dense uses a matmul
BINS = dict(in_bins=8, out_bins=8)
GAMMA_UNIT = 2.0 ** -24


class Functional(nn.Module):
    """fc1 -> torch.sigmoid -> fc2 -> F.relu: the twin of Sequential(fc1, Sigmoid, fc2, ReLU)."""

    def __init__(self, fc1, fc2):
        super().__init__()
        self.fc1, self.fc2 = fc1, fc2

    def forward(self, x):
        return F.relu(self.fc2(torch.sigmoid(self.fc1(x))))


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def cnn():
    """(net, topology) of TutorialCNN with torch's seed 0, shared by the tests that only read
    them: one torch.export capture (cached on the topology) serves them all."""
    torch.manual_seed(0)
    net = TutorialCNN()
    return net, dei.topology_of(net, torch.zeros((1, 3, 32, 32)))


# ---------------------------------------------------------------- exact twins

def test_functional_twin_gives_identical_values():
    fc1, fc2 = nn.Linear(N_IN, N_HID), nn.Linear(N_HID, N_OUT)
    modules = nn.Sequential(fc1, nn.Sigmoid(), fc2, nn.ReLU())
    functional = Functional(fc1, fc2)
    x = torch.zeros((1, N_IN))
    top_m, top_f = dei.topology_of(modules, x), dei.topology_of(functional, x)
    for layer in (fc1, fc2):
        span_m, *ranges_m = resolve_span(layer, top_m)
        span_f, *ranges_f = resolve_span(layer, top_f)
        assert span_m.graph is None and span_f.graph is not None   # today's path vs the graph's
        assert ranges_m == ranges_f
        for measure, kwargs in ((dei.ei_of_layer, dict(samples=20_000)),
                                (dei.vector_ei_of_layer, dict(samples=20_000)),
                                (dei.sensitivity_of_layer, dict(samples=300)))[
                                    :3 if layer is fc1 else 1]:
            a = measure(layer, top_m, seed=4, **BINS, **kwargs)
            b = measure(layer, top_f, seed=4, **BINS, **kwargs)
            assert a == b, (measure.__name__, a, b)


def _samples(key, samples, n_in, in_range):
    blocks = -(-samples // SAMPLE_BLOCK)
    x = uniform_inputs(key, jnp.asarray(0), blocks, (n_in,), jnp.float32(in_range[0]),
                       jnp.float32(in_range[1]))
    return np.asarray(x)[:samples].astype(np.float64)


def _flip_bound(y, delta, out_range, out_bins):
    """Entries of y (exact outputs) within `delta` of a bin edge, plus the binning's own few
    ulps: those are the only ones two float32 computations can bin differently."""
    low, high = out_range
    edges = low + (high - low) * np.arange(1, out_bins) / out_bins
    distance = np.min(np.abs(y[..., None] - edges), axis=-1)
    return int(np.sum(distance <= delta + 8 * GAMMA_UNIT * (high - low)))


def _per_flip(samples):
    # one flipped (sample, output) moves one count in each of its pair tables: one pair's MI
    # moves by at most 4 (log2 N + log2 e) / N (tests/test_function_layer.py)
    return 4 * (math.log2(samples) + math.log2(math.e)) / samples


def _rounding(pairs, samples):   # the float32 formula rounding of tests/test_sweep.py
    return pairs * 4 * math.log2(samples) * GAMMA_UNIT


def test_batchnorm_after_linear_equals_the_folded_linear():
    linear, norm = nn.Linear(N_IN, N_OUT), nn.BatchNorm1d(N_OUT)
    with torch.no_grad():
        norm.running_mean.copy_(torch.randn(N_OUT) * 0.3)
        norm.running_var.copy_(torch.rand(N_OUT) + 0.5)
        norm.weight.copy_(1 + 0.3 * torch.randn(N_OUT))
        norm.bias.copy_(0.2 * torch.randn(N_OUT))
    model = nn.Sequential(linear, norm, nn.Sigmoid()).eval()
    w, b = linear.weight.double().detach().numpy(), linear.bias.double().detach().numpy()
    mean, var = norm.running_mean.double().numpy(), norm.running_var.double().numpy()
    scale = norm.weight.double().detach().numpy() / np.sqrt(var + norm.eps)
    beta = norm.bias.double().detach().numpy()
    folded = nn.Sequential(nn.Linear(N_IN, N_OUT), nn.Sigmoid())
    with torch.no_grad():
        folded[0].weight.copy_(torch.from_numpy(scale[:, None] * w))
        folded[0].bias.copy_(torch.from_numpy(scale * (b - mean) + beta))
    x0 = torch.zeros((2, N_IN))
    top, top_folded = dei.topology_of(model, x0), dei.topology_of(folded, x0)
    span, in_range, out_range = resolve_span(linear, top)
    assert span.out_activation == activation("sigmoid") and out_range == (0.0, 1.0)
    seed, samples = 6, 30_000
    x = _samples(jax.random.key(seed), samples, N_IN, in_range)
    z = (x @ w.T + b - mean) * scale + beta
    # each computation is a sum of n + 1 products plus the BatchNorm's subtraction, product and
    # addition (folded: the rounded folded weights): at most n + 6 roundings per term, bounded by
    # gamma_{n+6} times the sum of the terms' absolute values; the sigmoid's slope is <= 1/4
    n = N_IN + 6
    gamma = n * GAMMA_UNIT / (1 - n * GAMMA_UNIT)
    delta_z = gamma * ((np.abs(x) @ np.abs(w.T) + np.abs(b) + np.abs(mean)) * np.abs(scale)
                       + np.abs(beta))
    flips = _flip_bound(1 / (1 + np.exp(-z)), delta_z / 4, out_range, BINS["out_bins"])
    got = dei.ei_of_layer(linear, top, samples=samples, seed=seed, **BINS)
    want = dei.ei_of_layer(folded[0], top_folded, samples=samples, seed=seed, **BINS)
    assert abs(got - want) <= N_IN * flips * _per_flip(samples) + _rounding(N_IN * N_OUT,
                                                                               samples)
    got = dei.vector_ei_of_layer(linear, top, samples=samples, seed=seed, **BINS)
    want = dei.vector_ei_of_layer(folded[0], top_folded, samples=samples, seed=seed, **BINS)
    assert abs(got - want) <= flips * _per_flip(samples) + 1e-4   # 1e-4: EI's float rounding


class Block(nn.Module):
    """y = sigmoid(x + W x + b), a container measured as one layer."""

    def __init__(self, n):
        super().__init__()
        self.linear = nn.Linear(n, n)

    def forward(self, x):
        return torch.sigmoid(x + self.linear(x))


def test_container_block_equals_w_plus_identity():
    block = Block(N_IN)
    with torch.no_grad():
        block.linear.weight.mul_(0.3)
    model = nn.Sequential(block)
    dense = nn.Sequential(nn.Linear(N_IN, N_IN), nn.Sigmoid())
    with torch.no_grad():
        dense[0].weight.copy_(block.linear.weight + torch.eye(N_IN))
        dense[0].bias.copy_(block.linear.bias)
    x0 = torch.zeros((1, N_IN))
    top, top_dense = dei.topology_of(model, x0), dei.topology_of(dense, x0)
    span, in_range, out_range = resolve_span(block, top)
    assert span.name == "0" and out_range == (0.0, 1.0)
    seed, samples = 3, 30_000
    x = _samples(jax.random.key(seed), samples, N_IN, in_range)
    w = block.linear.weight.double().detach().numpy()
    b = block.linear.bias.double().detach().numpy()
    z = x + x @ w.T + b
    n = N_IN + 2     # a sum of n + 2 float32 terms each way (test_function_layer.py)
    gamma = n * GAMMA_UNIT / (1 - n * GAMMA_UNIT)
    delta_z = gamma * (np.abs(x) + np.abs(x) @ np.abs(w.T) + np.abs(b))
    flips = _flip_bound(1 / (1 + np.exp(-z)), delta_z / 4, out_range, BINS["out_bins"])
    got = dei.ei_of_layer(block, top, samples=samples, seed=seed, **BINS)
    want = dei.ei_of_layer(dense[0], top_dense, samples=samples, seed=seed, **BINS)
    tolerance = N_IN * flips * _per_flip(samples) + _rounding(N_IN * N_IN, samples)
    assert abs(got - want) <= tolerance
    # the bound tells W + I from W: the block without its identity differs by far more
    without = nn.Sequential(block.linear, nn.Sigmoid())
    other = dei.ei_of_layer(without[0], dei.topology_of(without, x0), samples=samples,
                            seed=seed, **BINS)
    assert abs(other - want) > 3 * tolerance


# ---------------------------------------------------------------- an independent check

def _numpy_ei_parts(x, y, in_range, out_range, bins):
    """Plug-in sum over (input, output) pairs of I(x_i; y_j) in bits, binned in float64."""
    def binned(v, low, high):
        return np.clip(np.floor((v - low) / (high - low) * bins), 0, bins - 1).astype(np.int64)
    xb, yb = binned(x, *in_range), binned(y, *out_range)
    total = 0.0
    for i in range(x.shape[1]):
        for j in range(y.shape[1]):
            joint = np.bincount(xb[:, i] * bins + yb[:, j], minlength=bins * bins)
            p = joint.reshape(bins, bins) / len(x)
            outer = p.sum(1, keepdims=True) * p.sum(0, keepdims=True)
            nonzero = p > 0
            total += float(np.sum(p[nonzero] * np.log2(p[nonzero] / outer[nonzero])))
    return total


@pytest.mark.parametrize("name, module, slope", [
    ("gelu", nn.GELU(), 1.13),   # max |d/dz z Phi(z)| = 1.129 (at z = sqrt 2)
    ("silu", nn.SiLU(), 1.10),   # max |d/dz z sigmoid(z)| = 1.0998 (at z = 2.40)
])
def test_new_activation_agrees_with_a_numpy_histogram(name, module, slope):
    """The same samples (same key) binned by numpy in float64 give the same plug-in EI_parts
    except where float32 rounding moves an output across a bin edge: counted, and bounded as in
    the folding tests (the input bins agree exactly: edges k/8 of (0, 1) are exact in float32)."""
    linear = nn.Linear(N_IN, N_OUT)
    model = nn.Sequential(linear, module)
    top = dei.topology_of(model, torch.zeros((1, N_IN)))
    in_range = (0.0, 1.0)
    span, _, out_range = resolve_span(linear, top, in_range=in_range)
    assert span.out_activation == activation(name)
    assert out_range == pytest.approx(dict(gelu=(-0.170, 10.0), silu=(-0.278, 10.0))[name],
                                      abs=1e-3)    # the image of (-10, 10)
    seed, samples = 2, 20_000
    value, info = dei.ei_of_layer(linear, top, samples=samples, seed=seed, in_range=in_range,
                                  return_info=True, **BINS)
    assert info.dropped == 0
    x = _samples(jax.random.key(seed), samples, N_IN, in_range)
    w, b = linear.weight.double().detach().numpy(), linear.bias.double().detach().numpy()
    z = x @ w.T + b
    y = model[1](torch.from_numpy(z)).numpy()          # torch's own GELU / SiLU, in float64
    want = _numpy_ei_parts(x, y, in_range, out_range, BINS["in_bins"])
    n = N_IN + 1
    gamma = n * GAMMA_UNIT / (1 - n * GAMMA_UNIT)
    delta = slope * gamma * (np.abs(x) @ np.abs(w.T) + np.abs(b)) + 8 * GAMMA_UNIT
    flips = _flip_bound(y, delta, out_range, BINS["out_bins"])
    assert abs(value - want) <= N_IN * flips * _per_flip(samples) + _rounding(N_IN * N_OUT,
                                                                                samples)


# ---------------------------------------------------------------- the tutorial CNN

def test_tutorial_cnn_every_layer(cnn):
    net, top = cnn
    for name in ("conv1", "conv2", "fc1", "fc2", "fc3"):
        layer = getattr(net, name)
        span, _, out_range = resolve_span(layer, top)
        expected = None if name == "fc3" else activation("relu")
        assert span.out_activation == expected, name
        assert out_range == ((-10.0, 10.0) if name == "fc3" else (0.0, 10.0))
        # what ei_of_layer's info reports (api.layer_info copies them from the span); conv
        # outputs [C, H, W] are measured at their centre pixel: conv1's 28 x 28 -> (14, 14)
        assert (span.name, span.position) == (name, dict(conv1=(14, 14), conv2=(5, 5)).get(name))
    # every layer is measured, and a sweep's default layers are all five: one sweep measures
    # them (ei_of_layer on each of the five runs in the README's tutorial,
    # tests/test_any_model_readme.py; the sweep equals single calls, test_sweep_over_...)
    records = dei.sweep([net], torch.zeros((1, 3, 32, 32)), measures=["ei_parts"],
                        samples=500, in_bins=4, out_bins=4)
    assert [r["layer"] for r in records] == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    for record in records:
        assert math.isfinite(record["ei_parts"]) and record["ei_parts"] >= 0, record
        assert record.get("position") == dict(conv1=[14, 14], conv2=[5, 5]).get(record["layer"])
    # a single call's info says which layer and position it measured
    value, info = dei.ei_of_layer(net.conv2, top, samples=500, seed=0, in_bins=4, out_bins=4,
                                  return_info=True)
    assert math.isfinite(value) and value >= 0
    assert info.layer == "conv2" and info.position == (5, 5)
    # conv1's centre pixel depends on its 3 x 5 x 5 receptive field, as deep-ei's rule says
    assert resolve_span(net.conv1, top)[0].chain.in_shape == (75,)
    # the pool is called twice: the first call (6 x 28 x 28 -> 6 x 14 x 14) by default
    # (a position on a pooling span takes the graph path, which says what it measured)
    assert resolve_span(net.pool, top, position="all")[0].graph.in_shape == (6, 28, 28)


def test_positions_are_selectable(cnn):
    net, top = cnn
    corner, _, _ = resolve_span(net.conv1, top, position=(0, 0))
    assert corner.position == (0, 0) and corner.chain.in_shape == (75,)
    whole, _, _ = resolve_span(net.conv2, top, position="all")
    assert whole.position == "all" and whole.chain.in_shape == (6, 14, 14)
    _, info = dei.ei_of_layer(net.conv1, top, samples=200, seed=0, position=(3, 4),
                              return_info=True, in_bins=4, out_bins=4)
    assert info.position == (3, 4)


# ---------------------------------------------------------------- errors

class Skip(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        h = self.a(x)
        return self.c(self.b(h) + x)


def test_errors_name_the_tensor_the_op_and_the_argument(cnn):
    model = Skip()
    top = dei.topology_of(model, torch.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"depends on tensor 'x' .* skip connection"):
        dei.ei_of_layer(model.c, top, in_layer=model.b, samples=100)

    class Sorting(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return torch.sort(self.fc(x), dim=-1).values

    model = Sorting()
    top = dei.topology_of(model, torch.zeros((1, 4)))
    with pytest.raises(NotImplementedError, match=r"op aten\.sort"):
        dei.ei_of_layer(model, top, samples=100)
    net, top = cnn
    with pytest.raises(ValueError, match=r"position .*\(99, 0\).* out of bounds"):
        dei.ei_of_layer(net.conv1, top, samples=100, position=(99, 0))
    with pytest.raises(ValueError, match=r"position must be None \(the centre\), 'all'"):
        dei.ei_of_layer(net.conv1, top, samples=100, position="middle")
    with pytest.raises(ValueError, match=r"position \(1,\) was given, but the output of fc1"):
        dei.ei_of_layer(net.fc1, top, samples=100, position=(1,))
    gelu = nn.Sequential(nn.Linear(2, 2), nn.GELU())
    with pytest.raises(ValueError, match=r"layer GELU\(approximate='none'\) is an activation"):
        dei.ei_of_layer(gelu[1], dei.topology_of(gelu, torch.zeros((1, 2))))


def test_untraceable_model_warns_and_keeps_deep_eis_modules():
    class Branching(nn.Sequential):
        def forward(self, x):
            y = super().forward(x)
            return y if bool(y.sum() > 0) else -y

    model = Branching(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2), nn.GELU())
    top = dei.topology_of(model, torch.zeros((1, 3)))
    assert dei.ei_of_layer(model[0], top, samples=200) >= 0    # deep-ei's modules: no capture
    with pytest.warns(RuntimeWarning, match="needs torch.export; torch.export could not trace"):
        with pytest.raises(NotImplementedError, match="cannot infer the activation"):
            dei.ei_of_layer(model[2], top, samples=200)


# ---------------------------------------------------------------- sweeps, Tracker, CLI

def _checkpoints(count):
    models = []
    for k in range(count):
        torch.manual_seed(k)
        models.append(TutorialCNN())
    return models


def test_sweep_over_checkpoints_equals_single_calls():
    models = _checkpoints(3)
    x = torch.zeros((1, 3, 32, 32))
    settings = dict(samples=1000, sensitivity_samples=10, in_bins=4, out_bins=4, seed=1)
    # a restricted layer runs conv1 on the whole 3 x 32 x 32 input for every sample, and
    # sensitivity draws a block of 1024 samples per input (75 of them): conv1 is swept for EI
    # and EI_parts only, to keep the test short; fc1 for all four measures
    records = dei.sweep(models, x, layers=["fc1"], **settings) + dei.sweep(
        models, x, layers=["conv1"], measures=["ei", "ei_parts"], **settings)
    assert [(r["model"], r["layer"]) for r in records] == [
        (k, name) for name in ("fc1", "conv1") for k in range(3)]
    assert [r.get("position") for r in records] == [None] * 3 + [[14, 14]] * 3
    # each single call captures and compiles anew: two of them, checkpoint 2 of fc1 (all four
    # measures; its sweep reuses checkpoint 0's capture with other weights) and checkpoint 0 of
    # conv1 (the capture's own model; a restricted layer at a position)
    for record in (records[2], records[3]):
        model = models[record["model"]]
        top = dei.topology_of(model, x)
        layer = getattr(model, record["layer"])
        ei, parts = dei.vector_and_pairwise_ei(layer, top, samples=1000, seed=1, in_bins=4,
                                               out_bins=4)
        sens = dei.sensitivity_of_layer(layer, top, samples=10, seed=1, in_bins=4,
                                        out_bins=4) if "sensitivity" in record else None
        pairs = resolve_span(layer, top)[0].chain.in_shape[0] * (120 if record["layer"] == "fc1"
                                                                 else 6)
        # same counts; float32 formula rounding as tests/test_sweep.py (EI within 1e-4)
        assert abs(record["ei"] - ei) < 1e-4
        assert abs(record["ei_parts"] - parts) <= _rounding(pairs, 1000)
        if sens is not None:
            assert abs(record["sensitivity"] - sens) <= _rounding(pairs, 10)


def test_tracker_measures_graph_layers(tmp_path):
    model = TutorialCNN()
    tracker = dei.Tracker(tmp_path / "run.jsonl", torch.zeros((1, 3, 32, 32)), every=1,
                          layers=["conv2", "fc3"], measures=["ei_parts"], samples=500,
                          in_bins=4, out_bins=4)
    first = tracker(model, 0)
    second = tracker(model, 1)
    assert [r["layer"] for r in first] == ["conv2", "fc3"]
    assert [r["ei_parts"] for r in first] == [r["ei_parts"] for r in second]
    assert first[0]["position"] == [5, 5]


def test_cli_lists_and_measures_the_tutorial_cnn(tmp_path, capsys):
    path = tmp_path / "cnn.pt"
    torch.save(TutorialCNN(), path)
    base = ["measure", str(path), "--input-shape", "1,3,32,32", "--trust-pickle",
            "--no-progress"]
    assert cli.main(base + ["--list-layers"]) == 0
    out = capsys.readouterr().out
    listed = out.split("not measurable:")[0]
    for name in ("conv1", "pool", "conv2", "fc1", "fc2", "fc3"):
        assert f"  {name} " in listed, name
    assert cli.main(base + ["--layers", "fc1", "--samples", "500", "--sensitivity-samples",
                            "20", "--bins", "4", "--json", str(tmp_path / "out.json")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("fc1")
    small = tmp_path / "small.pt"    # --position on a small conv (the CNN's would take longer)
    torch.save(nn.Sequential(nn.Conv2d(1, 2, 3), nn.GELU()), small)
    assert cli.main(["measure", str(small), "--input-shape", "1,1,6,6", "--trust-pickle",
                     "--no-progress", "--samples", "300", "--sensitivity-samples", "10",
                     "--bins", "4", "--position", "2,3"]) == 0
    assert "0 at (2, 3)" in capsys.readouterr().out
    assert cli.main(base + ["--layers", "nope"]) == 2
    assert "measurable: ['conv1', 'pool', 'conv2', 'fc1'" in capsys.readouterr().err
