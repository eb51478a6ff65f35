"""Progress of one long call, on a tqdm bar: what is done (outputs, inputs or samples), its rate
and the time left.

A `Progress` is made per call and passed down, as an object, to the loops that do the work; each
loop announces its work with `start(total, unit=..., desc=...)` and reports it with `update(n)`,
and the call ends it with `close()`. A bar is drawn only on a terminal (stderr, unless another
`file` is given or `force=True`) and only once the call has run `delay` seconds, so short calls,
pytest, CI logs and notebooks stay silent; `SILENT` reports nothing. Nothing here is global:
importing this module changes no state, and tqdm is imported when a bar is first needed.

A `KeyboardInterrupt` (Ctrl-C) reaches the main thread between two device calls or host counts,
the steps these loops report: each returns within about a second on a CPU with numba (README,
the pure-JAX API).
"""
from __future__ import annotations

import functools
import sys
import time

DEFAULT_DELAY = 2.0  # seconds a call runs before its bar shows


class Progress:
    """A progress bar for one call: shown on a terminal once the call has run `delay` seconds.

    A call may run several passes (the adaptive rules' doubling steps, a second pass for error
    bars): each `start` replaces the bar of the previous pass on the same line, and the delay
    counts from the first `start` of the call. `close` ends the call and clears its bar (a later
    `start` begins a new call).

    Args:
      delay: seconds the call runs before a bar is drawn.
      file: the stream to draw on (default: `sys.stderr` at the time of the call).
      force: draw even when `file` is not a terminal (a notebook, a log file, a test's stream).
    """

    def __init__(self, *, delay: float = DEFAULT_DELAY, file=None, force: bool = False):
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not delay >= 0:
            raise ValueError(f"delay must be a number of seconds >= 0; got {delay!r}")
        if not isinstance(force, bool):
            raise TypeError(f"force must be True or False; got {force!r}")
        self.delay, self.file, self.force = float(delay), file, force
        self.began = None  # when the call's first pass started (time.monotonic())
        self.bar = None  # the tqdm bar of the current pass, or None when none is drawn

    def start(self, total: int, *, unit: str, desc: str) -> None:
        """Begins a pass of `total` units (e.g. total=784, unit="output"), named `desc`."""
        if self.began is None:
            self.began = time.monotonic()
        if self.bar is not None:  # the next pass takes this line
            self.bar.close()
            self.bar = None
        file = sys.stderr if self.file is None else self.file
        if not (self.force or _is_terminal(file)):
            return
        try:
            from tqdm import tqdm
        except ImportError:  # (a dependency; an install without it stays silent)
            return
        waited = time.monotonic() - self.began
        self.bar = tqdm(total=int(total), unit=unit, desc=desc, file=file,
                        unit_scale=total >= 10_000, delay=max(0.0, self.delay - waited),
                        leave=False, dynamic_ncols=True)

    def update(self, n: int) -> None:
        """Reports `n` more units of the current pass done."""
        if self.bar is not None:
            self.bar.update(int(n))

    def close(self) -> None:
        """Ends the call: its bar (if one was drawn) is finished."""
        if self.bar is not None:
            self.bar.close()
        self.bar, self.began = None, None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Silent(Progress):
    """Reports nothing (`progress=False`)."""

    def __init__(self):
        super().__init__()

    def start(self, total: int, *, unit: str, desc: str) -> None:
        pass

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


SILENT = Silent()


def reporter(progress) -> Progress:
    """The `Progress` a measure's `progress` argument asks for: True a bar on stderr (when it is a
    terminal), False `SILENT`, or the `Progress` given."""
    if isinstance(progress, Progress):
        return progress
    if progress is True:
        return Progress()
    if progress is False:
        return SILENT
    raise TypeError(f"progress must be True, False or a deep_ei_jax.progress.Progress; got "
                    f"{progress!r}")


def reporting(function):
    """`function` with its keyword `progress` (True, False or a `Progress`) given as a `Progress`,
    closed when the function returns or raises."""
    @functools.wraps(function)
    def reported(*args, progress=True, **kwargs):
        with reporter(progress) as given:
            return function(*args, progress=given, **kwargs)
    return reported


def each(items, progress: Progress, *, unit: str, desc: str):
    """Yields `items` (a sized collection), reporting one unit per item done."""
    progress.start(len(items), unit=unit, desc=desc)
    with progress:
        for item in items:
            yield item
            progress.update(1)


def _is_terminal(file) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
