"""Training-framework integrations: the Lightning callback (a real Trainer.fit whose logged values
are read back from the CSV and TensorBoard loggers), `export --tensorboard`, and the messages
that name a missing extra."""
import csv
import importlib
import json
import subprocess
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import deep_ei_jax as dei  # noqa: E402
from deep_ei_jax.bridge.tracking import Tracker, read_records  # noqa: E402

SETTINGS = dict(samples=2000, sensitivity_samples=100, in_bins=4, out_bins=4, seed=3)
MEASURES = ("ei", "ei_parts", "sensitivity", "degeneracy")


def scalars(logdir):
    """{tag: [(step, value)]} read back with TensorBoard's own event reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def as_float32(value):
    """What a TensorBoard scalar holds: the value rounded to float32."""
    return float(np.float32(value))


# ---------------------------------------------------------------- Lightning

@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A tiny MLP trained 2 epochs with EICallback, a CSVLogger and a TensorBoardLogger."""
    pl = pytest.importorskip("lightning.pytorch")
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from deep_ei_jax.integrations.lightning import EICallback

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            # Dropout draws from torch's generator in train mode, and in train mode it hides
            # the activation after fc (the sweep would skip the layer): measuring must switch
            # to eval mode and back, and draw nothing
            self.fc = nn.Linear(4, 6)
            self.drop = nn.Dropout(0.3)
            self.out = nn.Linear(6, 3)
            self.sigmoid = nn.Sigmoid()

        def forward(self, x):
            return self.sigmoid(self.out(self.drop(self.sigmoid(self.fc(x)))))

        def training_step(self, batch, index):
            x, y = batch
            loss = ((self(x) - y) ** 2).mean()
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=2.0)

    class Saver(pl.Callback):
        """Saves the state dict at each epoch end (the checkpoints to sweep directly)."""
        def __init__(self):
            self.state_dicts = []

        def on_train_epoch_end(self, trainer, module):
            self.state_dicts.append({k: v.detach().clone() for k, v in
                                     module.state_dict().items()})

    class Before(pl.Callback):
        def on_train_epoch_end(self, trainer, module):
            self.state = (torch.get_rng_state(), torch.is_grad_enabled(),
                          [m.training for m in module.modules()],
                          {k: v.clone() for k, v in module.state_dict().items()},
                          [None if p.grad is None else p.grad.clone()
                           for p in module.parameters()])

    class After(pl.Callback):
        def __init__(self, before):
            self.before, self.checked = before, 0

        def on_train_epoch_end(self, trainer, module):
            rng, grad_enabled, modes, state, grads = self.before.state
            assert torch.equal(torch.get_rng_state(), rng)
            assert torch.is_grad_enabled() == grad_enabled
            assert [m.training for m in module.modules()] == modes and modes[0]
            for name, value in module.state_dict().items():
                assert torch.equal(value, state[name]), name
            for p, g in zip(module.parameters(), grads):
                assert (p.grad is None) == (g is None) and (g is None or torch.equal(p.grad, g))
            self.checked += 1

    torch.manual_seed(0)
    x = torch.rand(32, 4)
    y = (x[:, :3] > 0.5).float()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    folder = tmp_path_factory.mktemp("lightning")
    callback = EICallback(torch.zeros((1, 4)), every_n_epochs=1, **SETTINGS)
    saver, before = Saver(), Before()
    after = After(before)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         log_every_n_steps=1, default_root_dir=folder,
                         logger=[CSVLogger(folder, name="csv"),
                                 TensorBoardLogger(folder, name="tb")],
                         callbacks=[before, callback, after, saver])
    module = Tiny()
    trainer.fit(module, loader)
    template = Tiny().eval()
    return dict(trainer=trainer, callback=callback, saver=saver, after=after,
                template=template, module=module)


def test_lightning_callback_logs_what_a_sweep_of_the_checkpoints_gives(fitted):
    trainer, callback, saver = fitted["trainer"], fitted["callback"], fitted["saver"]
    assert fitted["after"].checked == 2  # measuring left RNG, modes, weights and grads alone
    assert len(saver.state_dicts) == 2
    # the checkpoints differ (training moved the weights), so equal values are not trivial
    assert not torch.equal(saver.state_dicts[0]["fc.weight"], saver.state_dicts[1]["fc.weight"])
    expected = dei.sweep(saver.state_dicts, torch.zeros((1, 4)), model=fitted["template"],
                         steps=[0, 1], **SETTINGS)
    assert [(r["step"], r["layer"]) for r in expected] == [(0, "fc"), (0, "out"), (1, "fc"),
                                                           (1, "out")]
    assert [(r["epoch"], r["layer"]) for r in callback.records] == \
        [(r["step"], r["layer"]) for r in expected]
    assert [r["step"] for r in callback.records] == [4, 4, 8, 8]  # global steps, 4 batches/epoch
    for ours, theirs in zip(callback.records, expected):
        for measure in MEASURES:
            # the same seed and weights: the same samples and counts, so the same bits (exact on
            # a CPU, where a sweep of one set equals a sweep of several)
            assert ours[measure] == theirs[measure], (measure, ours, theirs)
    assert expected[2]["ei_parts"] != expected[0]["ei_parts"]

    csv_logger, tb_logger = trainer.loggers
    with open(f"{csv_logger.log_dir}/metrics.csv") as file:
        rows = [row for row in csv.DictReader(file) if row.get("ei/fc")]
    assert [int(row["epoch"]) for row in rows] == [0, 1]
    logged = scalars(tb_logger.log_dir)
    for record in expected:
        row = rows[record["step"]]
        for measure in MEASURES:
            tag = f"{measure}/{record['layer']}"
            # the CSV holds the float64 value as measured
            assert float(row[tag]) == record[measure], (tag, row[tag], record[measure])
            # TensorBoard holds float32 scalars, at the step the CSV logger used
            step, value = logged[tag][record["step"]]
            assert step == int(row["step"])
            assert value == as_float32(record[measure]), (tag, value, record[measure])
    assert sorted(t for t in logged if "/" in t) == sorted(
        f"{m}/{layer}" for m in MEASURES for layer in ("fc", "out"))


def test_lightning_callback_measures_every_n_epochs_and_checks_arguments():
    pytest.importorskip("lightning.pytorch")
    from deep_ei_jax.integrations.lightning import EICallback
    callback = EICallback(torch.zeros((1, 4)), every_n_epochs=3)
    assert [e for e in range(9) if callback.should_measure(e)] == [2, 5, 8]
    with pytest.raises(ValueError, match="every_n_epochs must be a positive integer; got 0"):
        EICallback(torch.zeros((1, 4)), every_n_epochs=0)
    with pytest.raises(TypeError, match="example_input must be a torch.Tensor batch; got list"):
        EICallback([[0.0] * 4])
    with pytest.raises(ValueError, match="in_bins"):
        EICallback(torch.zeros((1, 4)), in_bins=1)
    with pytest.raises(ValueError, match="measures"):
        EICallback(torch.zeros((1, 4)), measures=["entropy"])
    # a wrong input or layer name fails when fitting starts, not after the first epoch
    trainer = types.SimpleNamespace(is_global_zero=True)
    net = nn.Sequential(nn.Linear(4, 2), nn.Sigmoid())
    EICallback(torch.zeros((1, 4))).on_fit_start(trainer, net)
    with pytest.raises(ValueError, match="input of shape \\(1, 5\\) does not fit the model"):
        EICallback(torch.zeros((1, 5))).on_fit_start(trainer, net)
    with pytest.raises(ValueError, match="layers: 'fc' is not a measurable module"):
        EICallback(torch.zeros((1, 4)), layers=["fc"]).on_fit_start(trainer, net)


def test_a_missing_lightning_is_named(monkeypatch):
    for name in ("lightning", "lightning.pytorch"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    monkeypatch.delitem(sys.modules, "deep_ei_jax.integrations.lightning", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'deep_ei_jax\[lightning\]'"):
        importlib.import_module("deep_ei_jax.integrations.lightning")


def test_importing_the_package_imports_no_framework():
    code = ("import sys, deep_ei_jax, deep_ei_jax.integrations; "
            "print(sorted(m for m in ('torch', 'lightning', 'tensorboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- Tracker(on_record=)

def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 3), nn.Sigmoid(), nn.Dropout(0.3), nn.Linear(3, 2),
                         nn.Sigmoid())


def test_tracker_hands_every_record_to_on_record(tmp_path):
    model = small_net()  # in train mode, where Dropout draws random numbers
    received = []
    tracker = Tracker(tmp_path / "run.jsonl", torch.zeros((1, 3)), every=2,
                      on_record=received.append, **SETTINGS)
    for step in range(5):
        with torch.no_grad():
            model[0].weight.add_(0.3)
        rng = torch.get_rng_state()
        returned = tracker(model, step)
        # measured in eval mode, then left in train mode, with torch's generator untouched
        assert all(m.training for m in model.modules())
        assert torch.equal(torch.get_rng_state(), rng)
        # handed over once on disk, in the order written
        assert received[len(received) - len(returned):] == returned
        assert read_records(tmp_path / "run.jsonl") == received
    assert [(r["step"], r["layer"]) for r in received] == [(s, layer) for s in (0, 2, 4)
                                                           for layer in ("0", "3")]
    assert tracker(model, 4) == [] and len(received) == 6  # nothing new, nothing handed over
    with pytest.raises(TypeError, match="on_record must be None or a callable"):
        Tracker(tmp_path / "other.jsonl", torch.zeros((1, 3)), on_record="print")


# ---------------------------------------------------------------- export --tensorboard

def run_python(code, *args, blocked=()):
    """`code` run by Python in a subprocess where the `blocked` top-level modules cannot be
    imported: a finder first on sys.meta_path raises what a missing module raises."""
    blocker = ("import sys\n"
               f"BLOCKED = {tuple(blocked)!r}\n"
               "class Blocker:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in BLOCKED:\n"
               "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
               "sys.meta_path.insert(0, Blocker())\n")
    return subprocess.run([sys.executable, "-c", blocker + code, *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def run_cli(*args, blocked=()):
    """`deep-ei-jax ARGS` in a subprocess (see `run_python`)."""
    return run_python("from deep_ei_jax.cli import main\nraise SystemExit(main(sys.argv[1:]))\n",
                      *args, blocked=blocked)


def test_export_tensorboard_reads_back_the_tracker_values(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from deep_ei_jax import cli
    model = small_net()
    tracker = Tracker(tmp_path / "run.jsonl", torch.zeros((1, 3)), every=1, **SETTINGS)
    for step in range(3):
        with torch.no_grad():
            model[3].weight.mul_(1.5)
        tracker(model, step)
    records = read_records(tmp_path / "run.jsonl")
    assert cli.main(["export", str(tmp_path / "run.jsonl"), "--tensorboard",
                     str(tmp_path / "tb")]) == 0
    written = capsys.readouterr().out.strip()
    assert "tfevents" in written and written.startswith(str(tmp_path / "tb"))
    logged = scalars(tmp_path / "tb")
    assert sorted(logged) == sorted(f"{m}/{layer}" for m in MEASURES for layer in ("0", "3"))
    for measure in MEASURES:
        for layer in ("0", "3"):
            assert logged[f"{measure}/{layer}"] == [
                (r["step"], as_float32(r[measure])) for r in records if r["layer"] == layer]

    # the measure command's JSON (no steps: every layer at step 0), into a second run folder
    measured = {"settings": {}, "records": [
        {k: v for k, v in r.items() if k not in ("step", "time")} for r in records[:2]]}
    (tmp_path / "out.json").write_text(json.dumps(measured))
    result = run_cli("export", tmp_path / "out.json", "--tensorboard", tmp_path / "tb2")
    assert result.returncode == 0, result.stderr  # the installed program, end to end
    assert scalars(tmp_path / "tb2")["ei/3"] == [(0, as_float32(records[1]["ei"]))]


@pytest.mark.parametrize("content, fragment", [
    ('[{"layer": "0", "ei": "many"}]', "has ei='many'; expected a number"),
    ('[{"layer": "0", "step": 1}]', "has none of the measures"),
    ('[{"ei": 1.0}]', "has no 'layer'"),
    ('[{"layer": "0", "ei": 1.0, "step": -2}]', "step=-2; expected an integer >= 0"),
    ("[]", "holds no records"),
])
def test_export_bad_results(tmp_path, content, fragment):
    pytest.importorskip("tensorboard")
    from deep_ei_jax import cli
    (tmp_path / "r.json").write_text(content)
    with pytest.raises(cli.UserError, match="RESULTS") as error:
        cli.export(cli.parser().parse_args(["export", str(tmp_path / "r.json"),
                                            "--tensorboard", str(tmp_path / "tb")]))
    assert fragment in str(error.value)
    assert not (tmp_path / "tb").exists() or not any((tmp_path / "tb").iterdir())


# ---------------------------------------------------------------- missing extras

@pytest.mark.parametrize("blocked, args, extra", [
    ("torch", ["measure", "model.pt", "--input-shape", "1,4"], "torch"),
    ("tensorboard", ["export", "run.jsonl", "--tensorboard", "tb"], "tensorboard"),
    ("matplotlib", ["plot", "run.jsonl", "--out", "figures"], "plot"),
])
def test_a_missing_extra_is_named(tmp_path, blocked, args, extra):
    result = run_cli(*args, blocked=[blocked])
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("deep-ei-jax: error:"), result.stderr
    assert f"needs {blocked}, which is not installed" in result.stderr
    assert f"pip install 'deep_ei_jax[{extra}]'" in result.stderr


def test_the_torch_api_without_torch_names_the_extra():
    result = run_python("import deep_ei_jax\n"
                        "print(deep_ei_jax.pure.__name__)\n"  # the pure-JAX API still works
                        "deep_ei_jax.sweep\n", blocked=["torch"])
    assert result.returncode == 1 and result.stdout.strip() == "deep_ei_jax.pure"
    assert "ModuleNotFoundError: deep_ei_jax's torch API" in result.stderr
    assert "pip install 'deep_ei_jax[torch]'" in result.stderr


def test_export_help(capsys):
    from deep_ei_jax import cli
    with pytest.raises(SystemExit):
        cli.main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "RESULTS" in text and "--tensorboard DIR" in text and "Tracker's JSON lines" in text
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "export" in capsys.readouterr().out
