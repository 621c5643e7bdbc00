"""Named wall-clock phases of an iteration (``with timer.phase("rollout"): ...``)."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator


class PhaseTimer:
    """Seconds spent in each named phase since the last :meth:`reset`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def reset(self) -> None:
        self.seconds = {}
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def total(self) -> float:
        """Seconds since the last reset."""
        return time.perf_counter() - self._start
