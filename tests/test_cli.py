"""The deep-ei-jax command line: subprocess runs of `python -m deep_ei_jax`, error paths (a line on
stderr, a non-zero exit, no traceback) and the plots (valid PNGs with the expected artists)."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from deep_ei_jax import cli  # noqa: E402

FAST = ["--bins", "8", "--samples", "4000", "--sensitivity-samples", "300", "--no-progress"]


def run(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "deep_ei_jax", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def iris_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 5), nn.Sigmoid(),
                         nn.Linear(5, 3), nn.Sigmoid())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    model = iris_net()
    torch.jit.script(model).save(str(folder / "scripted.pt"))
    torch.save(model, folder / "pickled.pt")
    torch.save(model.state_dict(), folder / "state_dict.pt")
    (folder / "notes.txt").write_text("not a model\n")

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return torch.sigmoid(self.fc(x))

    torch.jit.script(Custom()).save(str(folder / "custom_scripted.pt"))
    torch.jit.script(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))).save(
        str(folder / "batchnorm_scripted.pt"))
    return folder


def assert_clean_error(result, *fragments):
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr and result.stderr.startswith("deep-ei-jax: error:")
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def test_help_documents_every_option():
    main = run("--help")
    assert main.returncode == 0 and "measure" in main.stdout and "plot" in main.stdout
    measure = run("measure", "--help")
    for option in ("MODEL_FILE", "--input-shape", "--samples", "--sensitivity-samples", "--bins",
                   "--in-bins", "--out-bins", "--layers", "--seed", "--json", "--csv",
                   "--trust-pickle", "--no-progress"):
        assert option in measure.stdout, option
    assert "runs code" in " ".join(measure.stdout.split())  # --trust-pickle says why
    plot = run("plot", "--help")
    assert "RESULTS" in plot.stdout and "--out" in plot.stdout


def test_measure_torchscript_writes_table_json_and_csv(files, tmp_path):
    # the program opts in to JAX's compilation cache (default folder under XDG_CACHE_HOME)
    env = {k: v for k, v in os.environ.items() if k != "DEEP_EI_JAX_COMPILATION_CACHE"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    result = run("measure", files / "scripted.pt", "--input-shape", "1,4", *FAST,
                 "--json", tmp_path / "out.json", "--csv", tmp_path / "out.csv", env=env)
    assert result.returncode == 0, result.stderr
    assert any((tmp_path / "xdg" / "deep_ei_jax" / "jax").iterdir())
    lines = result.stdout.splitlines()
    assert lines[0].split()[:6] == ["layer", "module", "EI", "EI_parts", "sensitivity",
                                    "degeneracy"]
    assert [line.split()[0] for line in lines[1:4]] == ["0", "2", "4"]
    records = json.loads((tmp_path / "out.json").read_text())["records"]
    assert [r["layer"] for r in records] == ["0", "2", "4"]
    assert [r["layer_index"] for r in records] == [0, 1, 2]
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [float(r["ei_parts"]) for r in rows] == [r["ei_parts"] for r in records]
    # the numbers are those of the library with the same settings
    import deep_ei_jax as dei
    expected = dei.sweep([iris_net()], torch.zeros((1, 4)), samples=4000,
                         sensitivity_samples=300, in_bins=8, out_bins=8, seed=0)
    for got, want in zip(records, expected):
        for name in ("ei", "ei_parts", "sensitivity", "degeneracy"):
            assert got[name] == pytest.approx(want[name], abs=1e-9)


def test_pickled_module_needs_trust_pickle(files):
    assert_clean_error(run("measure", files / "pickled.pt", "--input-shape", "1,4"),
                       "--trust-pickle", "runs code")
    trusted = cli.main(["measure", str(files / "pickled.pt"), "--input-shape", "1,4", *FAST,
                        "--trust-pickle", "--layers", "2"])
    assert trusted == 0


@pytest.mark.parametrize("name, args, fragments", [
    ("missing.pt", ["--input-shape", "1,4"], ["does not exist"]),
    ("notes.txt", ["--input-shape", "1,4"], ["is not a TorchScript file", "--trust-pickle"]),
    ("notes.txt", ["--input-shape", "1,4", "--trust-pickle"], ["neither a TorchScript file"]),
    ("state_dict.pt", ["--input-shape", "1,4", "--trust-pickle"], ["not a torch module",
                                                                   "state dict"]),
    ("custom_scripted.pt", ["--input-shape", "1,4"], ["forward hooks", "TorchScript"]),
    ("batchnorm_scripted.pt", ["--input-shape", "2,4"], ["BatchNorm1d", "cannot be rebuilt"]),
    ("scripted.pt", ["--input-shape", "1,5"], ["--input-shape 1,5", "does not fit"]),
    ("scripted.pt", ["--input-shape", "1,4", "--layers", "1"], ["'1' is not a measurable"]),
])
def test_measure_bad_input_gives_a_clear_message(files, capsys, name, args, fragments):
    status = cli.main(["measure", str(files / name), *args, "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("deep-ei-jax: error:") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_bad_option_values_exit_non_zero():
    result = run("measure", "x.pt", "--input-shape", "one,four")
    assert result.returncode == 2 and "comma-separated integers" in result.stderr
    assert "Traceback" not in result.stderr


def _training_records():
    rng = np.random.default_rng(0)
    records = []
    for step in range(0, 101, 25):
        for index, layer in enumerate(("0", "2", "4")):
            sensitivity = float(10 + index + rng.random())
            ei = float(2 + index * rng.random())
            records.append({"step": step, "layer": layer, "layer_index": index,
                            "module": "Linear", "ei": ei, "ei_parts": ei / 2,
                            "sensitivity": sensitivity, "degeneracy": sensitivity - ei})
    return records


def test_plot_writes_valid_pngs(tmp_path):
    import matplotlib.image
    results = tmp_path / "run.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in _training_records()))
    result = run("plot", results, "--out", tmp_path / "figures")
    assert result.returncode == 0, result.stderr
    for name in ("causal_plane.png", "measures.png"):
        path = tmp_path / "figures" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
        assert image.std() > 0.01  # not blank
    assert_clean_error(run("plot", tmp_path / "missing.json", "--out", tmp_path), "does not exist")


def test_plot_artists():
    pytest.importorskip("matplotlib")
    from matplotlib.collections import PathCollection

    from deep_ei_jax import plotting
    records = _training_records()
    plane = plotting.causal_plane(records)
    ax = plane.axes[0]
    # a trajectory per layer plus the EI = 0 diagonal, one coloured point per step on each
    assert len(ax.lines) == 3 + 1
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(scatters) == 3 and all(len(c.get_offsets()) == 5 for c in scatters)
    np.testing.assert_allclose(scatters[0].get_array(), [0, 25, 50, 75, 100])
    assert len(plane.axes) == 2 and plane.axes[1].get_ylabel() == "step"  # the colour bar
    measures = plotting.measures_over_steps(records)
    assert [a.get_title() for a in measures.axes] == ["EI", "EI_parts", "sensitivity",
                                                      "degeneracy"]
    assert all(len(a.lines) == 3 for a in measures.axes)
    single = plotting.causal_plane([r for r in records if r["step"] == 0])
    assert len(single.axes) == 1 and len(single.axes[0].collections) == 3  # no trajectory


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "neither JSON"),
    ('{"records": 3}', "no list of records"),
    ('[{"a": 1}]', "has no records with"),
])
def test_plot_bad_results(tmp_path, capsys, content, fragment):
    path = tmp_path / "results.json"
    path.write_text(content)
    assert cli.main(["plot", str(path), "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
