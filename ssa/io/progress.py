"""Progress of long stages (reading and hashing images, statistics, traversal, class jobs): one implementation.

On a terminal, a tqdm bar (rate and time left; it disappears when the stage ends). When stderr is not a
terminal (CI, ``nohup``, a Ray worker's log, a pipe), log lines instead, so that long work is never silent:
at most one line every 30 seconds (``SSA_PROGRESS_INTERVAL`` to change it) with the stage, done / total, the
rate and the time left, and one closing line for a stage that printed any::

    ssa: reading images: 1200/50000 img (40.1 img/s, about 20 min left)
    ssa: reading images: done, 50000/50000 img in 20.8 min (40.1 img/s)

A stage shorter than the interval prints nothing, so quick runs and their messages stay as they were.
A stage that cannot count its work (loading and preparing a model: tracing, canonical form, the ONNX
conversion and its parity check against onnxruntime) is :func:`busy`: without a terminal, one line every
interval while it runs (``ssa: preparing the model: still running after 1.0 min``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

__all__ = ["progress", "busy", "LogProgress", "INTERVAL_ENV"]

INTERVAL_ENV = "SSA_PROGRESS_INTERVAL"
_DEFAULT_INTERVAL = 30.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, _DEFAULT_INTERVAL)))
    except ValueError:
        return _DEFAULT_INTERVAL


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class LogProgress:
    """tqdm's ``update`` / ``close`` (and context manager) as log lines: see the module docstring."""

    def __init__(self, total: int | None, desc: str, unit: str, *, initial: int = 0, stream: TextIO | None = None,
                 interval: float | None = None, clock: Any = time.monotonic) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = self.initial = int(initial)
        self.stream = stream
        self.interval = _interval() if interval is None else float(interval)
        self._clock = clock
        self.start = self._last = clock()
        self.lines = 0

    def _rate(self, now: float) -> float | None:
        done = self.n - self.initial
        return done / (now - self.start) if done > 0 and now > self.start else None

    def _say(self, text: str) -> None:
        print(f"ssa: {self.desc}: {text}", file=self.stream or sys.stderr, flush=True)
        self.lines += 1

    def update(self, k: int = 1) -> None:
        self.n += int(k)
        now = self._clock()
        if now - self._last < self.interval:
            return
        self._last = now
        rate = self._rate(now)
        of = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        how = "" if rate is None else f" ({rate:.3g} {self.unit}/s" + (
            f", about {_duration((self.total - self.n) / rate)} left)" if self.total and self.total >= self.n else ")")
        self._say(f"{of} {self.unit}{how}")

    def close(self) -> None:
        if self.lines:
            now = self._clock()
            rate = self._rate(now)
            of = f"{self.n}/{self.total}" if self.total else f"{self.n}"
            self._say(f"done, {of} {self.unit} in {_duration(now - self.start)}"
                      + ("" if rate is None else f" ({rate:.3g} {self.unit}/s)"))
            self.lines = 0

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Silent:
    def update(self, k: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress(total: int | None, desc: str, unit: str, *, initial: int = 0, show: bool = True) -> Any:
    """A progress reporter for one stage (``update(n)``, ``close()``): a tqdm bar on a terminal, else
    :class:`LogProgress`; nothing when ``show`` is False."""
    if not show:
        return _Silent()
    stream = sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    if tty:
        from tqdm.auto import tqdm  # only on a terminal: keeps tqdm out of other runs

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
    return LogProgress(total, desc, unit, initial=initial, stream=stream)


@contextmanager
def busy(desc: str, *, interval: float | None = None) -> Iterator[None]:
    """A stage that cannot count its work: when stderr is not a terminal, one line every ``interval`` seconds
    (30, or ``SSA_PROGRESS_INTERVAL``) while it runs, and a closing line if any was printed; nothing on a
    terminal or for a stage shorter than the interval."""
    stream = sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    every = _interval() if interval is None else float(interval)
    if tty:
        yield
        return
    start = time.monotonic()
    stop = threading.Event()
    said = [0]

    def beat() -> None:
        while not stop.wait(max(every, 0.05)):
            print(f"ssa: {desc}: still running after {_duration(time.monotonic() - start)}", file=stream, flush=True)
            said[0] += 1

    thread = threading.Thread(target=beat, name="ssa-busy", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if said[0]:
            print(f"ssa: {desc}: done in {_duration(time.monotonic() - start)}", file=stream, flush=True)
