"""The training-time tracker: a fsynced JSON line per (step, layer); resuming after a crash."""
import json

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import deep_ei_jax as dei  # noqa: E402
from deep_ei_jax.bridge.tracking import Tracker, read_records  # noqa: E402

SETTINGS = dict(samples=2000, sensitivity_samples=200, in_bins=4, out_bins=4)


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 3), nn.Sigmoid(), nn.Linear(3, 2), nn.Sigmoid())


class Interrupted(Exception):
    pass


def train(model, tracker, steps, interrupt_at=None):
    """A toy training loop: one SGD step on random data, then the tracker."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    generator = torch.Generator().manual_seed(1)
    for step in steps:
        x = torch.rand((8, 3), generator=generator)
        loss = ((model(x) - 0.5) ** 2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        tracker(model, step)
        if step == interrupt_at:
            raise Interrupted


def test_tracker_writes_a_record_per_step_and_layer(tmp_path):
    path = tmp_path / "run.jsonl"
    model = small_net()
    tracker = Tracker(path, torch.zeros((1, 3)), every=2, **SETTINGS)
    assert tracker.last_step is None
    train(model, tracker, range(5))
    lines = path.read_text().splitlines()
    assert len(lines) == 6  # steps 0, 2, 4 x layers '0', '2'
    records = [json.loads(line) for line in lines]
    assert [(r["step"], r["layer"]) for r in records] == [(0, "0"), (0, "2"), (2, "0"), (2, "2"),
                                                          (4, "0"), (4, "2")]
    assert {"ei", "ei_parts", "sensitivity", "degeneracy", "samples", "time"} <= set(records[0])
    assert tracker.last_step == 4 and tracker.records() == records
    # the weights changed between steps, so did the measures
    assert records[0]["ei_parts"] != records[4]["ei_parts"]


def test_tracker_resumes_after_an_interruption(tmp_path):
    path = tmp_path / "run.jsonl"
    example = torch.zeros((1, 3))
    model = small_net()
    with pytest.raises(Interrupted):
        train(model, Tracker(path, example, every=2, **SETTINGS), range(10), interrupt_at=4)
    checkpoint = {k: v.clone() for k, v in model.state_dict().items()}
    # the crash also tore a record of step 4 half-way and lost step 4's second layer
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) == 6
    path.write_text("".join(lines[:5]) + lines[5][:20])

    with pytest.warns(RuntimeWarning, match="torn by an interruption"):
        resumed = Tracker(path, example, every=2, **SETTINGS)
    assert resumed.last_step == 4
    assert path.read_text() == "".join(lines[:5])  # the torn line is cut off
    assert (4, "0") in resumed.done and (4, "2") not in resumed.done
    model.load_state_dict(checkpoint)
    new = resumed(model, 4)  # replaying step 4 records only what was lost
    assert [(r["step"], r["layer"]) for r in new] == [(4, "2")]
    assert new[0]["ei_parts"] == pytest.approx(json.loads(lines[5])["ei_parts"], abs=1e-12)
    assert resumed(model, 4) == [] and resumed(model, 5) == []
    train(model, resumed, range(5, 9))
    keys = [(r["step"], r["layer"]) for r in read_records(path)]
    assert keys == [(s, layer) for s in (0, 2, 4, 6, 8) for layer in ("0", "2")]
    assert len(set(keys)) == len(keys)


def test_tracker_errors(tmp_path):
    with pytest.raises(ValueError, match="every must be a positive integer; got 0"):
        Tracker(tmp_path / "x.jsonl", torch.zeros((1, 3)), every=0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n')
    with pytest.raises(ValueError, match="is not a tracking file"):
        Tracker(bad, torch.zeros((1, 3)))
    tracker = Tracker(tmp_path / "y.jsonl", torch.zeros((1, 3)), **SETTINGS)
    with pytest.raises(TypeError, match="step must be an int"):
        tracker(small_net(), 1.5)


@pytest.mark.parametrize("measures, error, message", [
    ("vector", ValueError, r"measures must be names from \('ei', 'ei_parts', 'sensitivity', "
                           r"'degeneracy'\); got 'vector'"),
    ([], ValueError, "measures must name at least one of"),
    (3, TypeError, "measures must be a sequence of names from"),
])
def test_bad_measures_are_refused_by_tracker_and_sweep(tmp_path, measures, error, message):
    with pytest.raises(error, match=message):
        Tracker(tmp_path / "m.jsonl", torch.zeros((1, 3)), measures=measures)
    with pytest.raises(error, match=message):
        dei.sweep([small_net()], torch.zeros((1, 3)), measures=measures, samples=100)
    assert not (tmp_path / "m.jsonl").exists()


def test_measures_are_kept_in_the_order_given(tmp_path):
    tracker = Tracker(tmp_path / "o.jsonl", torch.zeros((1, 3)), measures="sensitivity")
    assert tracker.measures == ("sensitivity",)
    tracker = Tracker(tmp_path / "o.jsonl", torch.zeros((1, 3)), measures=["ei_parts", "ei"])
    assert tracker.measures == ("ei_parts", "ei")
