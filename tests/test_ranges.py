"""in_range / out_range in sweeps, the Tracker and the command line (issue 17).

Exactness. A sweep draws the single call's samples, runs the layer bit for bit as it does and, on a
CPU with numba (the default 'auto' method here), counts on the host with the single call's
counters and formulas, so its values equal the single calls' exactly; where numba is missing the
device path agrees to float32 rounding (tests/test_sweep.py derives EI_TOL and parts_tol).
A layer with out_range='dynamic' is measured by the single calls themselves: equal exactly.
"""
import json
import math

import jax
import numpy as np
import pytest

from deep_ei_jax import backends, pure

torch = pytest.importorskip("torch")
nn = torch.nn

import deep_ei_jax as dei  # noqa: E402
from deep_ei_jax import cli  # noqa: E402
from deep_ei_jax.bridge.tracking import Tracker  # noqa: E402

EXACT = backends.HOST.available()  # numba: host counters, equal to the bit
EI_TOL = 1e-4  # as tests/test_sweep.py: float32 entropy sums on the device


def parts_tol(num_pairs, samples):
    return num_pairs * 4 * math.log2(samples) * 2.0 ** -24


def assert_same(got, want, tol):
    if EXACT:
        assert got == want
    else:
        assert abs(got - want) <= tol


def iris_net(seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5, bias=bias), nn.Sigmoid(), nn.Linear(5, 5, bias=bias),
                         nn.Sigmoid(), nn.Linear(5, 3, bias=bias), nn.Sigmoid())


SETTINGS = dict(samples=4000, sensitivity_samples=300, in_bins=8, out_bins=8)
SINGLE = dict(in_bins=8, out_bins=8)


def single_calls(model, layer_name, seed, in_range, out_range):
    layer = dict(model.named_modules())[layer_name]
    topology = dei.topology_of(model, torch.zeros((1, 4)))
    ei, parts = dei.vector_and_pairwise_ei(layer, topology, samples=4000, seed=seed,
                                           in_range=in_range, out_range=out_range, **SINGLE)
    sens = dei.sensitivity_of_layer(layer, topology, samples=300, seed=seed, in_range=in_range,
                                    out_range=out_range, **SINGLE)
    return ei, parts, sens


@pytest.mark.filterwarnings("ignore:.*had an output outside out_range")
def test_pure_sweep_with_ranges_equals_single_calls():
    # a range narrower than the sigmoid's outputs drops samples: counted the same way as well
    key = jax.random.key(5)
    rng = np.random.default_rng(2)
    chain = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(4,))
    sets = [({"w": (2 * rng.normal(size=(4, 5))).astype(np.float32),
              "b": rng.normal(size=5).astype(np.float32)},) for _ in range(3)]
    binning = dict(in_range=(-1.0, 2.0), out_range=(0.1, 0.95), in_bins=8, out_bins=8)
    with pytest.warns(RuntimeWarning):  # most samples leave (0.1, 0.95) somewhere
        result = pure.sweep(key, chain, pure.stack_params(sets), samples=5000,
                            sensitivity_samples=400, **binning)
    for k, params in enumerate(sets):
        with pytest.warns(RuntimeWarning):
            ei, info = pure.ei(key, chain, params, samples=5000, **binning)
        parts, parts_info = pure.ei_parts(key, chain, params, samples=5000, **binning)
        sens, _ = pure.sensitivity(key, chain, params, samples=400, **binning)
        assert_same(result.ei[k], ei, EI_TOL)
        assert_same(result.ei_parts[k], parts, parts_tol(20, 5000))
        assert_same(result.sensitivity[k], sens, parts_tol(20, 400))
        assert result.dropped[k] == info.dropped > 0
        assert result.out_of_range[k] == parts_info.out_of_range


def test_bridge_sweep_with_one_range_equals_single_calls():
    models = [iris_net(s) for s in range(2)]
    records = dei.sweep(models, torch.zeros((1, 4)), seed=4, in_range=(0, 1),
                        out_range=(0, 1), **SETTINGS)
    assert len(records) == 6
    for record in records:
        assert record["in_range"] == (0.0, 1.0) and record["out_range"] == (0.0, 1.0)
        ei, parts, sens = single_calls(models[record["model"]], record["layer"], 4, (0, 1),
                                       (0, 1))
        assert_same(record["ei"], ei, EI_TOL)
        assert_same(record["ei_parts"], parts, parts_tol(25, 4000))
        assert_same(record["sensitivity"], sens, parts_tol(25, 300))
        assert record["degeneracy"] == record["sensitivity"] - record["ei"]
    # the first layer's inferred in_range is (-10, 10) (no activation before it): a different
    # binning, so different values
    default = dei.sweep(models[:1], torch.zeros((1, 4)), seed=4, layers=["0"], **SETTINGS)
    assert default[0]["in_range"] == (-10.0, 10.0) and default[0]["ei"] != records[0]["ei"]


def test_bridge_sweep_range_mapping_and_dynamic_out_range():
    models = [iris_net(s, bias=False) for s in range(2)]
    in_range = {"0": (0, 1), "4": (-1, 1)}
    out_range = {"2": "dynamic", "4": None}
    records = dei.sweep(models, torch.zeros((1, 4)), seed=1, in_range=in_range,
                        out_range=out_range, **SETTINGS)
    expected_ranges = {"0": ((0.0, 1.0), (0.0, 1.0)), "2": ((0.0, 1.0), "dynamic"),
                       "4": ((-1.0, 1.0), (0.0, 1.0))}  # the rest inferred: sigmoids (0, 1)
    for record in records:
        want_in, want_out = expected_ranges[record["layer"]]
        assert (record["in_range"], record["out_range"]) == (want_in, want_out)
        ei, parts, sens = single_calls(models[record["model"]], record["layer"], 1, want_in,
                                       want_out)
        if want_out == "dynamic":  # the single calls themselves: equal to the bit everywhere
            assert (record["ei"], record["ei_parts"], record["sensitivity"]) == (ei, parts, sens)
        else:
            assert_same(record["ei"], ei, EI_TOL)
            assert_same(record["ei_parts"], parts, parts_tol(25, 4000))
            assert_same(record["sensitivity"], sens, parts_tol(25, 300))
        assert record["degeneracy"] == record["sensitivity"] - record["ei"]
    # a subset of the measures for a dynamic layer
    only = dei.sweep(models[:1], torch.zeros((1, 4)), layers=["2"], measures=["ei_parts"],
                     seed=1, in_range=(0, 1), out_range="dynamic", **SETTINGS)
    assert set(only[0]) & {"ei", "ei_parts", "sensitivity"} == {"ei_parts"}
    assert only[0]["ei_parts"] == records[1]["ei_parts"]


def test_range_arguments_are_checked():
    x = torch.zeros((1, 4))
    with pytest.raises(ValueError, match=r"in_range names 'fc9', which is not a measurable "
                                         r"layer of the model; measurable layers: "
                                         r"\['0', '2', '4'\]"):
        dei.sweep([iris_net()], x, in_range={"0": (0, 1), "fc9": (0, 1)}, samples=100)
    with pytest.raises(ValueError, match=r"out_range names 'fc9'"):
        dei.sweep([iris_net()], x, out_range={"fc9": "dynamic"}, samples=100)
    with pytest.raises(ValueError, match=r"in_range cannot be 'dynamic'"):
        dei.sweep([iris_net()], x, in_range="dynamic", samples=100)
    with pytest.raises(ValueError, match=r"in_range\['2'\] must be \(low, high\) with finite "
                                         r"low < high; got \(1, 0\)"):
        dei.sweep([iris_net()], x, in_range={"2": (1, 0)}, samples=100)
    with pytest.raises(TypeError, match=r"out_range maps layer names .* got the key 0"):
        dei.sweep([iris_net()], x, out_range={0: (0, 1)}, samples=100)
    with pytest.raises(ValueError, match=r"in_range cannot be 'dynamic'"):
        Tracker("unused.jsonl", x, in_range="dynamic")


def test_tracker_records_store_the_ranges(tmp_path):
    model = iris_net(bias=False)
    path = tmp_path / "run.jsonl"
    tracker = Tracker(path, torch.zeros((1, 4)), every=1, seed=2, in_range=(0, 1),
                      out_range={"4": "dynamic"}, **SETTINGS)
    tracker(model, 0)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["layer"], r["in_range"], r["out_range"]) for r in records] == [
        ("0", [0.0, 1.0], [0.0, 1.0]), ("2", [0.0, 1.0], [0.0, 1.0]),
        ("4", [0.0, 1.0], "dynamic")]
    swept = dei.sweep([model], torch.zeros((1, 4)), seed=2, in_range=(0, 1),
                      out_range={"4": "dynamic"}, **SETTINGS)
    for got, want in zip(records, swept):
        for name in ("ei", "ei_parts", "sensitivity", "degeneracy"):
            assert got[name] == want[name]


FAST = ["--bins", "8", "--samples", "4000", "--sensitivity-samples", "300", "--no-progress"]


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "scripted.pt"
    torch.jit.script(iris_net()).save(str(path))
    return path


def test_cli_in_range_and_out_range(scripted, tmp_path, capsys):
    out = tmp_path / "out.json"
    code = cli.main(["measure", str(scripted), "--input-shape", "1,4", *FAST, "--in-range", "0,1",
                     "--in-range", "4=-1,1", "--out-range", "2=dynamic", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    records = data["records"]
    assert [(r["layer"], r["in_range"], r["out_range"]) for r in records] == [
        ("0", [0.0, 1.0], [0.0, 1.0]), ("2", [0.0, 1.0], "dynamic"),
        ("4", [-1.0, 1.0], [0.0, 1.0])]
    assert data["settings"]["in_range"] == [[None, [0.0, 1.0]], ["4", [-1.0, 1.0]]]
    expected = dei.sweep([iris_net()], torch.zeros((1, 4)), samples=4000,
                         sensitivity_samples=300, in_bins=8, out_bins=8, seed=0,
                         in_range={"0": (0, 1), "2": (0, 1), "4": (-1, 1)},
                         out_range={"2": "dynamic"})
    for got, want in zip(records, expected):
        for name in ("ei", "ei_parts", "sensitivity", "degeneracy"):
            assert got[name] == pytest.approx(want[name], abs=1e-12)


@pytest.mark.parametrize("args, fragment", [
    (["--in-range", "fc9=0,1"], "--in-range names layer 'fc9', which is not measured; measured "
                                "layers: ['0', '2', '4']"),
    (["--in-range", "dynamic"], "--in-range cannot be 'dynamic'"),
])
def test_cli_range_errors(scripted, capsys, args, fragment):
    code = cli.main(["measure", str(scripted), "--input-shape", "1,4", *FAST, *args])
    assert code == 2
    assert fragment in capsys.readouterr().err


@pytest.mark.parametrize("value", ["1,0", "0", "a,b", "0,inf"])
def test_cli_range_option_refuses_bad_pairs(scripted, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["measure", str(scripted), "--input-shape", "1,4", "--out-range", value])
    assert exit_info.value.code == 2
    assert "expected LOW,HIGH with LOW < HIGH" in capsys.readouterr().err


def test_cli_help_documents_the_range_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["measure", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--in-range RANGE" in text and "--out-range RANGE" in text
    assert "LAYER=LOW,HIGH" in text and "'dynamic'" in text
