"""`write_scalars`: measurement records as a TensorBoard event file (the `export` command).

    from deep_ei_jax.integrations.tensorboard import write_scalars
    write_scalars(deep_ei_jax.bridge.read_records("run.jsonl"), "runs/run1")

or `deep-ei-jax export run.jsonl --tensorboard runs/run1`; then `tensorboard --logdir runs`.

Each record (a Tracker's JSON line, a `deep_ei_jax.sweep` record, a row of `measure --json`)
becomes scalars tagged `ei/<layer>`, `ei_parts/<layer>`, `sensitivity/<layer>` and
`degeneracy/<layer>` (the names `EICallback` logs under) at the record's 'step' (else its
'model' index, else 0) and 'time' (else now). Values are TensorBoard's float32 scalars; a NaN
(nothing was counted) stays NaN.

The file is written with TensorBoard's own record writer and event protocol buffers
(`tensorboard.summary.writer.record_writer`, `tensorboard.compat.proto`), so it needs neither
torch nor TensorFlow; it is written whole under a temporary name and then renamed, so a reader
never sees half of it. Needs TensorBoard: `pip install 'deep_ei_jax[tensorboard]'`.
"""
from __future__ import annotations

import math
import numbers
import os
import socket
import time

try:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter
except ImportError as error:  # the extra is missing
    if (getattr(error, "name", None) or "").split(".")[0] != "tensorboard":
        raise
    raise ImportError("deep_ei_jax.integrations.tensorboard needs TensorBoard: "
                      "pip install 'deep_ei_jax[tensorboard]' (or pip install tensorboard)"
                      ) from error

from .._files import atomic_write
from . import MEASURES, metric_name

__all__ = ["scalars_of", "write_scalars"]


def _number(record_index, record, name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"records[{record_index}] has {name}={value!r}; expected a number")
    return value


def scalars_of(records) -> list[tuple[int, float, dict]]:
    """(step, wall time, {tag: value}) for each record, in step order (stable).

    Args:
      records: a list of dicts, each with 'layer' and one or more of 'ei', 'ei_parts',
        'sensitivity', 'degeneracy'; optional 'step' (an integer; else 'model', else 0) and
        'time' (seconds since the epoch; else now).

    Returns:
      One entry per record; records with equal steps keep their order (TensorBoard's reader
      drops a tag's later points when a step goes back, so points are written in step order).
    """
    if isinstance(records, (str, bytes, dict)) or not hasattr(records, "__iter__"):
        raise TypeError(f"records must be a list of dicts; got {type(records).__name__}")
    now = time.time()
    points = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise TypeError(f"records[{index}] must be a dict; got {type(record).__name__}")
        if record.get("layer") in (None, ""):
            raise ValueError(f"records[{index}] has no 'layer'; expected records of "
                             f"deep_ei_jax.sweep, a Tracker or 'deep-ei-jax measure --json'")
        values = {metric_name(m, record["layer"]): float(_number(index, record, m, record[m]))
                  for m in MEASURES if record.get(m) not in (None, "")}
        if not values:
            raise ValueError(f"records[{index}] has none of the measures {list(MEASURES)}")
        step = record.get("step", record.get("model", 0))
        if isinstance(step, float) and step.is_integer():
            step = int(step)
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"records[{index}] has step={step!r}; expected an integer >= 0")
        wall = float(_number(index, record, "time", record.get("time", now)))
        if not math.isfinite(wall):
            raise ValueError(f"records[{index}] has time={wall!r}; expected a finite number")
        points.append((int(step), wall, values))
    points.sort(key=lambda point: point[0])
    return points


def write_scalars(records, logdir) -> str:
    """Writes the records as scalars into a new event file in `logdir` (created if missing).

    Args:
      records: as `scalars_of`.
      logdir: the folder TensorBoard reads (one run).

    Returns:
      The path of the event file written.
    """
    points = scalars_of(records)
    if not isinstance(logdir, (str, os.PathLike)):
        raise TypeError(f"logdir must be a folder path; got {logdir!r}")
    logdir = os.fspath(logdir)
    if os.path.exists(logdir) and not os.path.isdir(logdir):
        raise ValueError(f"logdir {logdir!r} exists and is not a folder")
    os.makedirs(logdir, exist_ok=True)
    started = time.time()
    name = f"events.out.tfevents.{int(started):010d}.{socket.gethostname()}.{os.getpid()}"
    path, number = os.path.join(logdir, name), 0
    while os.path.exists(path):  # another export in the same second
        number += 1
        path = os.path.join(logdir, f"{name}.{number}")

    def write(file):
        writer = RecordWriter(file)
        writer.write(event_pb2.Event(wall_time=started,
                                     file_version="brain.Event:2").SerializeToString())
        for step, wall, values in points:
            summary = summary_pb2.Summary(value=[
                summary_pb2.Summary.Value(tag=tag, simple_value=value)
                for tag, value in values.items()])
            writer.write(event_pb2.Event(wall_time=wall, step=step,
                                         summary=summary).SerializeToString())
    atomic_write(path, write, binary=True)
    return path
