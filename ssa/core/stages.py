"""Wall time per stage of a model's preparation (loading, conversion, parity, ...), for ``ssa check``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["StageTimes"]


class StageTimes:
    """Seconds spent in each named stage, in the order the stages first ran.

    A stage entered inside another is not counted in the outer one (each second is counted once), so the
    stages add up to the time they cover together. Entering a stage again adds to it.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._inner: list[float] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            inner = self._inner.pop()
            total = time.perf_counter() - start
            self.seconds[name] = self.seconds.get(name, 0.0) + total - inner
            if self._inner:
                self._inner[-1] += total

    def add(self, name: str, seconds: float) -> None:
        """Record time measured elsewhere (e.g. before the network existed)."""
        self.seconds[name] = self.seconds.get(name, 0.0) + float(seconds)
