"""The examples run end to end on tiny or --quick settings and write sane records and figures."""
from __future__ import annotations

import importlib.util
import json
import math
import pathlib

import numpy as np

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}",
                                                  ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_iris_runs_the_papers_configuration():
    iris = _load_example("iris")
    net = iris.network()
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features, m.bias) for m in linears] == [
        (4, 5, None), (5, 5, None), (5, 3, None)]
    for m in linears:  # uniform in +-1/sqrt(fan_in)
        assert float(m.weight.detach().abs().max()) <= m.in_features ** -0.5
    with_bias = [m for m in iris.network(bias=True) if isinstance(m, torch.nn.Linear)]
    assert all(m.bias is not None for m in with_bias)
    (x, y), (x_test, y_test) = iris.iris_data()
    assert (len(x), len(x_test)) == (100, 50) and float(x.max()) == pytest.approx(7.9 / 8)
    settings = iris.SETTINGS
    assert (settings.epochs, settings.every, settings.samples, settings.sensitivity_samples) == (
        4000, 50, 10 ** 7, 5000)


def test_iris_example_quick_run(tmp_path, capsys):
    # --quick: the paper's configuration at 100 epochs, 1e4 samples, sensitivity 500
    iris = _load_example("iris")
    assert iris.main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "measured 3 checkpoints x 3 layers" in out and "(no biases)" in out
    records = [json.loads(line)
               for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert [(r["step"], r["layer"]) for r in records] == [
        (epoch, layer) for epoch in (0, 50, 100) for layer in ("0", "2", "4")]
    widths = {"0": 5, "2": 5, "4": 3}
    for r in records:
        assert r["samples"] == 10 ** 4 and r["sensitivity_samples"] == 500
        assert r["in_bins"] == r["out_bins"] == 8
        assert r["in_range"] == r["out_range"] == [0.0, 1.0]
        ceiling = min(widths[r["layer"]] * 3, math.log2(10 ** 4))  # 8 bins: 3 bits per output
        assert 0.0 < r["ei"] <= ceiling + 1e-6, r
        assert 0.0 < r["ei_parts"] and r["sensitivity"] >= 0.0
        assert r["degeneracy"] == pytest.approx(r["sensitivity"] - r["ei"], abs=1e-9)
    for name in ("causal_plane.png", "measures.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_mnist25_data_networks_and_ranges():
    mnist25 = _load_example("mnist25")
    (x, y), (x_test, y_test) = mnist25.digits25()
    assert x.shape[1] == 25 and y.shape[1] == 5 and len(x) + len(x_test) == 901
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # resize: a constant image stays constant, and the 5x5 mean follows the 8x8 mean (bilinear
    # sampling of a smoothed image: within a few percent of the pixel range)
    assert np.allclose(mnist25.resize(np.full((1, 8, 8), 0.25), 5), 0.25)
    from sklearn.datasets import load_digits
    images = load_digits(n_class=5).images[:50] / 16.0
    small = mnist25.resize(images, 5)
    assert np.abs(small.mean(axis=(1, 2)) - images.mean(axis=(1, 2))).max() < 0.1
    for activation, kind in (("sigmoid", torch.nn.Sigmoid), ("tanh", torch.nn.Tanh),
                             ("relu", torch.nn.ReLU)):
        net = mnist25.network(activation)
        linears = [m for m in net if isinstance(m, torch.nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [(25, 6), (6, 6), (6, 6),
                                                                      (6, 5)]
        assert all(m.bias is None for m in linears)
        assert all(isinstance(m, kind) for m in net[1::2])
    in_range, out_range = mnist25.ranges("tanh")
    assert in_range == {"0": (0.0, 1.0), "2": (-1.0, 1.0), "4": (-1.0, 1.0), "6": (-1.0, 1.0)}
    assert set(out_range.values()) == {(-1.0, 1.0)}
    assert set(mnist25.ranges("relu")[1].values()) == {(0.0, 1.0)}


def test_mnist25_example_quick_run(tmp_path, capsys):
    mnist25 = _load_example("mnist25")
    assert mnist25.main(["--quick", "--activation", "tanh", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "measured 2 checkpoints x 4 layers" in out and "(tanh)" in out
    records = [json.loads(line)
               for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert [(r["step"], r["layer"]) for r in records] == [
        (epoch, layer) for epoch in (0, 20) for layer in ("0", "2", "4", "6")]
    for r in records:
        assert r["in_range"] == ([0.0, 1.0] if r["layer"] == "0" else [-1.0, 1.0])
        assert r["out_range"] == [-1.0, 1.0] and r["samples"] == 10 ** 4
        assert 0.0 < r["ei"] <= min(18 if r["layer"] != "6" else 15, math.log2(10 ** 4)) + 1e-6
