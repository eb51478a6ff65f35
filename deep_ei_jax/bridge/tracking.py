"""Measuring a network while it trains: a callback that appends one JSON line per (step, layer).

    tracker = Tracker("run1.jsonl", torch.zeros((1, 4)), every=50, samples=100_000,
                      sensitivity_samples=1000, in_bins=8, out_bins=8)
    for step in range(start, steps):
        train_one_step(model)
        tracker(model, step)          # measures when step % every == 0, else returns []

`on_record=` hands each record to your own code once it is on disk (a logger, a plot, a check):
`Tracker(..., on_record=lambda r: writer.add_scalar(f"ei/{r['layer']}", r["ei"], r["step"]))`.

The model is measured in eval mode without gradients (as a checkpoint would be, after
`model.eval()`); its modules' train/eval flags and torch's random generators are left as they were.

Each record is written with one `os.write` on a file opened for appending, then fsynced, so a
record is on disk before training goes on and appends never interleave. After an interruption a
new `Tracker` on the same file reads what is there: a last line torn by the crash is cut off,
`last_step` is the last step recorded, and a call for a (step, layer) already recorded measures
nothing again, so a resumed loop may simply replay from its last checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import numbers
import os
import time
import warnings

import numpy as np
import torch

from .. import sweeping
from .._checks import check_measures
from .api import resolve_span
from .sweeping import (check_example_input, check_layer_ranges, check_settings, layer_names,
                       position_of, sweep)
from .topology import topology_of


@contextlib.contextmanager
def undisturbed(model):
    """Measuring a model in training without disturbing it: eval mode and no gradients inside;
    afterwards every module's train/eval flag is as it was, and so are torch's random generators
    (CPU, and the current CUDA device when CUDA is in use), should a forward pass draw from them.

    Args:
      model: a torch module.
    """
    modes = [(module, module.training) for module in model.modules()]
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() and \
        torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            model.eval()
            yield model
    finally:
        for module, mode in modes:
            module.training = mode


def read_records(path) -> list[dict]:
    """The complete records of a tracking file (a torn last line is left out)."""
    records, _ = _read(path)
    return records


def _read(path):
    """(records, byte length of the complete lines).

    Only a last line without its newline counts as torn (a record is written with one `os.write`
    that ends with the newline, so an interruption can cut only the last line short, and what it
    leaves starts like a record, with '{'). Anything else that is not a record, anywhere, means
    the file is not a tracking file: it is refused and left untouched.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return [], 0
    except IsADirectoryError:
        raise ValueError(f"path {os.fspath(path)!r} is a directory; expected a JSON-lines "
                         f"tracking file (created if missing)") from None
    records, good = [], 0
    for number, line in enumerate(data.splitlines(keepends=True), start=1):
        if not line.endswith(b"\n") and line.lstrip().startswith(b"{"):
            break  # torn by an interruption
        text = line.strip()
        if text:
            try:
                record = json.loads(text.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                record = None
            if not isinstance(record, dict) or "step" not in record or "layer" not in record:
                raise ValueError(f"{os.fspath(path)!r} is not a tracking file: line {number} is "
                                 f"not a JSON record with 'step' and 'layer' (the file is left "
                                 f"as it is)")
            records.append(record)
        good += len(line)
    return records, good


class Tracker:
    """Measures every layer of a model every `every` steps and appends the records to `path`.

    Args:
      path: the JSON-lines file (created, or resumed when it exists).
      example_input: an input batch for the model, e.g. `torch.zeros((1, 4))`, or a tuple of
        tensors (a cell's (x, h)).
      every: measure when `step % every == 0`.
      layers, measures, samples, sensitivity_samples, in_bins, out_bins, seed, policy, method:
        as `deep_ei_jax.sweep` (the same seed every time: differences between steps are the
        network's, not the noise's). Layers are qualified module names of any submodule the
        deep-ei API can measure; the model is traced (torch.export) once, on the first call,
        when a layer needs the captured graph, and that graph serves every later step.
      in_range, out_range: as `deep_ei_jax.sweep`; each record stores the ranges used.
      position: as `deep_ei_jax.sweep` (layers whose output has positions).
      on_record: optional callable, called with each new record (a dict, as written to the file)
        once the records of its step are on disk, in order; an exception it raises reaches the
        training loop, and the records stay written.

    Attributes:
      last_step: the last step recorded (None before any).
      done: the set of (step, layer) pairs recorded.
    """

    def __init__(self, path, example_input, *, every: int = 50, layers=None, measures=None,
                 samples: int = 100_000, sensitivity_samples: int = 500, in_bins: int = 64,
                 out_bins: int = 64, in_range=None, out_range=None, seed: int = 0,
                 policy: str = "drop", method: str = "auto", position=None, on_record=None):
        if isinstance(every, bool) or not isinstance(every, (numbers.Integral, np.integer)) \
                or every <= 0:
            raise ValueError(f"every must be a positive integer; got {every!r}")
        check_settings(samples=samples, sensitivity_samples=sensitivity_samples, in_bins=in_bins,
                       out_bins=out_bins, seed=seed, policy=policy, method=method)
        check_example_input(example_input)
        in_range = check_layer_ranges("in_range", in_range)
        out_range = check_layer_ranges("out_range", out_range, allow_dynamic=True)
        if layers is not None and not isinstance(layers, (str, list, tuple, torch.nn.Module)):
            raise TypeError(f"layers must be None or a list of module names or modules; "
                            f"got {layers!r}")
        if on_record is not None and not callable(on_record):
            raise TypeError(f"on_record must be None or a callable taking a record (a dict); "
                            f"got {type(on_record).__name__}")
        self.on_record = on_record
        if not isinstance(path, (str, bytes, os.PathLike)):
            raise TypeError(f"path must be a file path (str or os.PathLike); got {path!r}")
        self.path = os.fspath(path)
        self.every = int(every)
        self.example_input = example_input
        self.measures = sweeping.MEASURES if measures is None else \
            check_measures(measures, sweeping.MEASURES)
        self.settings = dict(layers=layers, measures=self.measures, samples=samples,
                             sensitivity_samples=sensitivity_samples, in_bins=in_bins,
                             out_bins=out_bins, in_range=in_range, out_range=out_range,
                             seed=seed, policy=policy, method=method, position=position)
        self._captured = None
        records, good = _read(self.path)
        if os.path.exists(self.path) and os.path.getsize(self.path) > good:
            warnings.warn(f"{self.path}: cutting off a last line torn by an interruption",
                          RuntimeWarning, stacklevel=2)
            with open(self.path, "r+b") as file:
                file.truncate(good)
                file.flush()
                os.fsync(file.fileno())
        self.done = {(r["step"], r["layer"]) for r in records}
        self._names = None
        self.last_step = max((r["step"] for r in records), default=None)
        for record in records[-1:]:
            for name in ("samples", "sensitivity_samples", "in_bins", "out_bins"):
                if name in record and record[name] != self.settings[name]:
                    warnings.warn(f"{self.path} was recorded with {name}={record[name]}; this "
                                  f"tracker uses {self.settings[name]}", RuntimeWarning,
                                  stacklevel=2)

    def should_measure(self, step: int) -> bool:
        """Whether `step` is a measuring step (whatever is recorded already)."""
        return step % self.every == 0

    def __call__(self, model, step: int) -> list[dict]:
        """Measures `model` at `step` if it is a measuring step; returns the new records."""
        if isinstance(step, bool) or not isinstance(step, (numbers.Integral, np.integer)):
            raise TypeError(f"step must be an int; got {step!r}")
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        step = int(step)
        if not self.should_measure(step):
            return []
        with undisturbed(model):  # eval mode, no grad; modes and torch's generators kept
            names = self._layer_names(model)
            remaining = [name for name in names if (step, name) not in self.done]
            if not remaining:  # all recorded before an interruption: nothing is measured again
                return []
            settings = self.settings if len(remaining) == len(names) else \
                {**self.settings, "layers": remaining}
            records = sweep([model], self.example_input, steps=[step],
                            captured=self._captured, **settings)
        new = [r for r in records if (step, r["layer"]) not in self.done]
        for record in new:
            record.pop("model", None)
            if record["layer"] in names:  # the index among all measured layers, resumed or not
                record["layer_index"] = names.index(record["layer"])
            record["time"] = round(time.time(), 3)
            self._append(record)
            self.done.add((step, record["layer"]))
        if new:
            self.last_step = step if self.last_step is None else max(self.last_step, step)
        new = [_plain(record) for record in new]  # as the file reads back
        if self.on_record is not None:
            for record in new:
                self.on_record(dict(record))
        return new

    def _layer_names(self, model) -> list:
        """The names of the layers this tracker measures (found once, on the first call)."""
        if self._names is None:
            topology = topology_of(model, self.example_input)
            names, explicit = layer_names(model, topology, self.settings["layers"])
            modules = dict(model.named_modules())
            measurable = []
            for name in names:   # what needs the captured graph makes it here, once
                try:
                    resolve_span(modules[name], topology,
                                 position=position_of(self.settings["position"], name))
                except NotImplementedError:
                    if explicit:
                        raise
                    continue  # the sweep skips (with a warning) what cannot be measured
                measurable.append(name)
            self._names = measurable
            self._captured = topology.graph.get("captured")
        return self._names

    def _append(self, record: dict) -> None:
        line = (json.dumps(_plain(record)) + "\n").encode()
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(descriptor, line)  # one write: appenders never interleave
            if written != len(line):
                raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def records(self) -> list[dict]:
        """Every record in the file so far."""
        return read_records(self.path)


def _plain(record: dict) -> dict:
    """The record as its JSON line reads back: numpy scalars as Python numbers, tuples (the
    ranges) as lists."""
    def plain(value):
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value
    return {name: plain(value) for name, value in record.items()}
