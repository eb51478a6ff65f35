"""Progress of long calls (deep_ei_jax.progress): a bar on a terminal only, off with
progress=False, counts that reach their totals, Ctrl-C that stops a long call promptly, and the
time a measure took in its Info."""
from __future__ import annotations

import io
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

from deep_ei_jax import pure
from deep_ei_jax.progress import SILENT, Progress, each, reporter

ROOT = pathlib.Path(__file__).resolve().parents[1]


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self):
        return True


class Recording(Progress):
    """Records each pass's (total, unit, units reported) and its number of reports, drawing
    nothing."""

    def __init__(self):
        super().__init__()
        self.passes, self.reports = [], []

    def start(self, total, *, unit, desc):
        self.passes.append([total, unit, 0])
        self.reports.append(0)

    def update(self, n):
        self.passes[-1][2] += n
        self.reports[-1] += 1


def layer(n_in=12, n_out=10, seed=0):
    chain = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(n_in,))
    w = np.random.default_rng(seed).normal(0, 1, (n_in, n_out)).astype(np.float32)
    return chain, ({"w": w},)


SMALL = dict(in_bins=8, out_bins=8, bias_warning=None)


def test_a_bar_on_a_terminal_shows_units_rate_and_total(key, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    chain, params = layer()
    pure.ei_parts(key, chain, params, samples=4000, progress=Progress(delay=0), **SMALL)
    drawn = terminal.getvalue()
    assert "EI_parts (4000 samples)" in drawn
    assert "0/10 [" in drawn and "output/s]" in drawn  # units done of the total, and the rate


@pytest.mark.parametrize("stream, progress", [(Terminal, False), (io.StringIO, True),
                                              (io.StringIO, Progress(delay=0))],
                         ids=["progress=False", "not a terminal", "not a terminal, no delay"])
def test_no_bar_when_off_or_not_on_a_terminal(key, monkeypatch, stream, progress):
    out = stream()
    monkeypatch.setattr(sys, "stderr", out)
    chain, params = layer()
    pure.sensitivity(key, chain, params, samples=300, progress=progress, **SMALL)
    pure.ei(key, chain, params, samples=3000, progress=progress, **SMALL)
    assert out.getvalue() == ""


def test_a_short_call_stays_silent_on_a_terminal(key, monkeypatch):
    chain, params = layer()
    pure.ei_parts(key, chain, params, samples=2000, **SMALL)  # compiled before the timed call
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    started = time.perf_counter()
    pure.ei_parts(key, chain, params, samples=2000, **SMALL)
    if time.perf_counter() - started < 1.5:  # well inside the 2 s delay (a loaded machine: skip)
        assert terminal.getvalue() == ""


def test_the_bar_waits_for_its_delay_counted_from_the_first_pass():
    terminal = Terminal()
    progress = Progress(delay=0.3, file=terminal)
    progress.start(10, unit="output", desc="first pass")
    progress.update(5)
    assert terminal.getvalue() == ""  # before the delay: nothing drawn
    time.sleep(0.35)
    progress.start(4, unit="input", desc="second pass")  # the delay has run out: drawn at once
    progress.update(4)
    progress.close()
    drawn = terminal.getvalue()
    assert "first pass" not in drawn and "second pass:   0%" in drawn and "0/4 [" in drawn
    assert drawn.endswith("\r")  # closed: the bar is cleared (the cursor back at its start)


def test_force_draws_on_any_stream_and_each_reports_items():
    stream = io.StringIO()
    assert list(each([1, 2, 3], Progress(delay=0, file=stream, force=True), unit="layer",
                     desc="measuring")) == [1, 2, 3]
    assert "measuring:   0%" in stream.getvalue() and "0/3 [" in stream.getvalue()


def test_reporter_and_bad_arguments(key):
    assert reporter(False) is SILENT
    assert type(reporter(True)) is Progress
    given = Progress()
    assert reporter(given) is given
    chain, params = layer()
    with pytest.raises(TypeError, match="progress must be True, False or a"):
        pure.ei(key, chain, params, samples=1000, progress="yes", **SMALL)
    with pytest.raises(ValueError, match="delay must be a number of seconds >= 0; got -1"):
        Progress(delay=-1)


@pytest.mark.parametrize("method", ["auto", "scatter"])  # host (numba) or device counting
def test_every_pass_reports_its_total(key, method):
    chain, params = layer(n_in=12, n_out=40)
    options = dict(SMALL, method=method)
    cases = [  # (measure, arguments, the (total, unit) of each pass it runs)
        (pure.ei_parts, dict(samples=3000, memory_budget=4 * 12 * 8 * 8 * 8),
         [(40, "output")]),
        (pure.ei, dict(samples=3000), [(3000, "sample")]),
        (pure.sensitivity, dict(samples=300), [(12, "input")]),
        (pure.eis_between_groups, dict(samples=3000, groups=[((0, 1), (2,))], error_bars=2),
         [(3000, "sample"), (1500, "sample"), (1500, "sample")]),
        (pure.ei_parts, dict(samples=None, max_samples=20_000, threshold=1e-9),
         [(40, "output")] * 2),  # adaptive: a pass per doubling step
    ]
    for measure, arguments, expected in cases:
        recording = Recording()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the adaptive run cannot converge
            measure(key, chain, params, progress=recording, **options, **arguments)
        if measure is pure.ei_parts and arguments["samples"]:
            assert recording.reports[0] > 1  # the budget holds a few outputs' tables at once
        passes = [tuple(p) for p in recording.passes]
        assert passes[:len(expected)] == [(total, unit, total) for total, unit in expected]
        assert all(done == total for total, _, done in passes)


def test_info_records_the_seconds_a_measure_took(key):
    chain, params = layer()
    for measure, arguments in [(pure.ei_parts, dict(samples=3000)), (pure.ei, dict(samples=3000)),
                               (pure.sensitivity_matrix, dict(samples=300)),
                               (pure.ei_and_ei_parts, dict(samples=3000)),
                               (pure.ei_parts, dict(method="exact"))]:
        started = time.perf_counter()
        _, info = measure(key, chain, params, **SMALL, **arguments)
        elapsed = time.perf_counter() - started
        assert 0 < info.seconds <= elapsed, measure.__name__  # inside the call's wall time
        assert info.seconds > 0.5 * elapsed, measure.__name__  # and nearly all of it
    _, (ei_info, sensitivity_info) = pure.degeneracy(key, chain, params, samples=3000,
                                                     sensitivity_samples=300, **SMALL)
    assert ei_info.seconds > 0 and sensitivity_info.seconds > 0


def test_the_deep_ei_api_passes_progress_and_reports_seconds(monkeypatch):
    torch = pytest.importorskip("torch")
    import deep_ei_jax as dei
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    net = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Sigmoid())
    top = dei.topology_of(net, torch.zeros((1, 6)))
    _, info = dei.ei_of_layer(net[0], top, samples=2000, in_bins=8, out_bins=8, seed=0,
                              return_info=True, progress=Progress(delay=0), bias_warning=None)
    assert "EI_parts (2000 samples)" in terminal.getvalue() and info.seconds > 0
    terminal.truncate(0)
    dei.sensitivity_of_layer(net[0], top, samples=300, in_bins=8, out_bins=8, seed=0,
                             progress=False)
    assert terminal.getvalue() == ""


# host or device, a sweep runs the single calls' two passes: (set, sample), then (set, input)
@pytest.mark.parametrize("method", ["numba", "scatter"])
def test_a_sweep_reports_its_passes(key, method):
    pytest.importorskip("numba") if method == "numba" else None
    chain, params = layer(n_in=12, n_out=10)
    stacked = pure.stack_params([params, layer(seed=1)[1], layer(seed=2)[1]])
    recording = Recording()
    pure.sweep(key, chain, stacked, in_bins=8, out_bins=8, samples=3000, sensitivity_samples=300,
               method=method, max_batch=1, progress=recording)
    expected = [(3 * 3000, "sample"), (3 * 12, "input")]
    assert [tuple(p) for p in recording.passes] == [(total, unit, total)
                                                     for total, unit in expected]
    assert min(recording.reports) >= 3  # at least one report per call of one set (max_batch=1)


def test_the_command_line_bar_and_no_progress(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from deep_ei_jax import cli
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 2),
                              torch.nn.Sigmoid())
    torch.save(net, tmp_path / "net.pt")
    arguments = ["measure", str(tmp_path / "net.pt"), "--input-shape", "1,4", "--trust-pickle",
                 "--bins", "8", "--samples", "2000", "--sensitivity-samples", "200"]
    for extra, shown in (([], True), (["--no-progress"], False)):
        terminal = Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        assert cli.main(arguments + extra) == 0
        assert ("measuring" in terminal.getvalue() and "/2 [" in terminal.getvalue()) == shown
        if not shown:
            assert terminal.getvalue() == ""  # nor the layers' own bars


def test_importing_the_package_does_not_import_tqdm():
    code = "import sys, deep_ei_jax, deep_ei_jax.pure; print('tqdm' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert result.stdout.strip() == "False", result.stderr


# A long call (EI_parts of a 784 -> 1000 layer, 64 bins, 10^4 samples: about 80 s on this
# project's 2-core test machine) told to stop once it is counting: its first progress report.
LONG_CALL = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from deep_ei_jax import pure
    from deep_ei_jax.progress import Progress

    class Announce(Progress):
        def update(self, n):
            print("counting", flush=True)

    chain = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(5000,))
    w = np.random.default_rng(0).normal(0, 0.015, (5000, 5000)).astype("float32")
    pure.ei_parts(jax.random.key(0), chain, ({"w": w},), samples=1000, progress=Announce())
    print("finished", flush=True)
""")
# A 5000 -> 5000 layer (64 bins, 1e3 samples: counted by samples, 2.5e10 pair-samples, 14 s on a
# quiet 2-core machine, minutes on a loaded one). One kernel call over a block of outputs is what
# a KeyboardInterrupt waits for (the main thread runs Python between them): ~0.1-0.5 s, plus the
# interpreter's exit (~1-3 s; 6.8 s measured with three other test runs sharing the cores). 12 s
# leaves room for a loaded machine (the suite runs on two workers) and stays under the call's
# length, so a call that ignored Ctrl-C would fail it.
INTERRUPT_BOUND_S = 12.0


def test_ctrl_c_stops_a_long_call_promptly():
    child = subprocess.Popen([sys.executable, "-c", LONG_CALL], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert child.stdout.readline().strip() == "counting"  # inside the loop over outputs
        sent = time.perf_counter()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=INTERRUPT_BOUND_S)
        took = time.perf_counter() - sent
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert "finished" not in out
    assert "KeyboardInterrupt" in err.splitlines()[-1], err[-2000:]
    assert child.returncode == -signal.SIGINT  # Python ends on an unhandled KeyboardInterrupt
    assert took < INTERRUPT_BOUND_S
