"""`estimate_cost`: the plan a call will run, its work and memory, before it runs.

Times are estimates on a shared machine, so only their structure is asserted (positive, linear in
the samples beyond the calibration size); the memory and the backend are exact and are checked
against what the measurement then reports.
"""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import deep_ei_jax as dei
from deep_ei_jax import backends, pure


def sigmoid_layer(n_in, n_out):
    w = np.random.default_rng(0).normal(size=(n_in, n_out)) / np.sqrt(n_in)
    chain = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(n_in,))
    return chain, ({"w": w.astype(np.float32)},)


@pytest.mark.skipif(not backends.SAMPLES.available(), reason="needs numba")
def test_estimate_names_the_backend_and_memory_the_call_uses(key):
    chain, params = sigmoid_layer(30, 20)
    tables = 4 * 30 * 20 * 32 * 32
    kwargs = dict(samples=2000, in_bins=32, out_bins=32)
    for budget, method, memory in ((tables, "numba", tables),
                                   (tables // 2, "samples", 2000 * (30 + 20))):
        cost = pure.estimate_cost(key, chain, params, memory_budget=budget, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            _, info = pure.ei_parts(key, chain, params, memory_budget=budget, **kwargs)
        assert cost.method == info.method == method
        assert cost.memory_bytes == memory and cost.passes == 1
        assert cost.work == 2000 * 30 * 20 and cost.seconds > 0 and cost.rate > 0
    # tables streamed in blocks of 5 outputs (the samples' bins would not fit either): one
    # pass over the samples per block
    per_output = 4 * 30 * 32 * 32
    streamed = pure.estimate_cost(key, chain, params, memory_budget=5 * per_output,
                                  **{**kwargs, "samples": 20_000})
    assert streamed.method == "numba" and 20_000 * 50 > 5 * per_output
    assert streamed.passes == 4 and streamed.memory_bytes == 5 * per_output


def test_estimate_grows_linearly_with_samples(key):
    chain, params = sigmoid_layer(8, 6)
    small, large = (pure.estimate_cost(key, chain, params, samples=n, in_bins=16, out_bins=16)
                    for n in (10 ** 5, 4 * 10 ** 5))  # one calibration serves both (cached)
    # counting: pairs x (samples x per sample + per pair), per-sample part 4x
    assert 1 < large.counting_seconds / small.counting_seconds <= 4
    assert large.seconds == pytest.approx(large.counting_seconds + large.sampling_seconds)
    sensitivity = pure.estimate_cost(key, chain, params, measure="sensitivity", samples=500)
    assert sensitivity.work == 500 * 8 * 6 and sensitivity.seconds > 0
    vector = pure.estimate_cost(key, chain, params, measure="ei", samples=10 ** 4)
    assert vector.work == 10 ** 4 and vector.memory_bytes > 0


def test_estimate_checks_its_arguments(key):
    chain, params = sigmoid_layer(4, 3)
    with pytest.raises(ValueError, match="measure must be one of"):
        pure.estimate_cost(key, chain, params, measure="ei_of_layer")
    with pytest.raises(TypeError, match="unexpected keyword"):
        pure.estimate_cost(key, chain, params, sample=10)
    with pytest.raises(ValueError, match="in_bins must be an integer >= 2"):
        pure.estimate_cost(key, chain, params, in_bins=1)


def test_estimate_cost_of_a_torch_layer():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 16), nn.GELU(), nn.Linear(16, 4), nn.Sigmoid())
    top = dei.topology_of(net, torch.zeros((1, 12)))
    cost = dei.estimate_cost(net[0], top, samples=3000, in_bins=8, out_bins=8)
    assert cost.measure == "ei_parts" and cost.work == 3000 * 12 * 16
    _, info = dei.ei_of_layer(net[0], top, samples=3000, in_bins=8, out_bins=8,
                              return_info=True)
    assert cost.method == info.method


def test_readme_wide_layer_example_runs():
    import contextlib
    import io
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("## Wide layers")
    section = text[start:text.index("\n## ", start + 1)]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README wide layer", "exec"), {"__name__": "readme_wide"})
    estimate, measured = out.getvalue().splitlines()
    assert estimate.startswith("samples ~") and measured.split()[2] == "samples"
    assert float(measured.split()[0]) > 0
