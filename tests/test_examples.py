"""The digits example runs end to end on tiny settings and writes sane records and figures."""
from __future__ import annotations

import importlib.util
import json
import math
import pathlib

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


def test_digits_network_and_data():
    digits = _load_example("digits")
    (x, y), (x_test, y_test) = digits.digits_data()
    assert x.shape[1] == 64 and y.shape[1] == 5
    assert len(x) + len(x_test) == 901  # the 8x8 digits of classes 0-4
    assert float(x.min()) >= 0.0 and float(x.max()) == 1.0
    assert sorted(set(y.argmax(1).tolist())) == [0, 1, 2, 3, 4]
    net = digits.network()
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 6), (6, 6), (6, 6), (6, 5)]
    assert all(isinstance(m, torch.nn.Sigmoid) for m in net[1::2])


def test_digits_example_quick_run(tmp_path, capsys):
    digits = _load_example("digits")
    samples, bins = 2000, 8
    code = digits.main(["--quick", "--epochs", "2", "--every", "1", "--samples", str(samples),
                        "--sensitivity-samples", "50", "--bins", str(bins),
                        "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "measured 3 checkpoints x 4 layers" in out and "total " in out
    records = [json.loads(line)
               for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert [(r["step"], r["layer"]) for r in records] == [
        (epoch, layer) for epoch in (0, 1, 2) for layer in ("0", "2", "4", "6")]
    widths = {"0": 6, "2": 6, "4": 6, "6": 5}
    for r in records:
        assert r["samples"] == samples and r["in_bins"] == bins
        # vector EI is at most the binned output's entropy and log2 of the sample count
        ceiling = min(widths[r["layer"]] * math.log2(bins), math.log2(samples))
        assert 0.0 < r["ei"] <= ceiling + 1e-6, r
        assert r["ei_parts"] > 0.0 and r["sensitivity"] > 0.0
        assert r["degeneracy"] == pytest.approx(r["sensitivity"] - r["ei"], abs=1e-9)
    for name in ("causal_plane.png", "measures.png"):
        assert (tmp_path / name).stat().st_size > 1000
