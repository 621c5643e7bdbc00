"""The sliding SDE window of MixGRPO (docs/algorithm.md §7). Pure Python, no Ray.

The window is ``size`` consecutive denoising-step indices ``[start, start + size)`` of the
``num_steps``-step schedule. It never includes the last two steps (``T-2``, ``T-1``), so
``start`` ranges over ``0 .. T - 2 - size``.

Strategies
----------
* ``frozen``: ``start`` stays at ``initial_start`` (0 by default).
* ``random``: ``start ~ U{0 .. T-2-size}`` afresh every iteration (seeded, resumable).
* ``progressive``: ``start`` moves by ``stride`` after every ``tau(start)`` iterations
  (iterations ``0..tau-1`` use 0, the next ``tau`` use ``stride``, ...). Past the last valid start
  it rolls back to 0 (``at_end="rollback"``, as the reference code) or parks at the last valid
  start (``at_end="park"``, as the paper describes).

Interval schedules ``tau(start)`` for ``progressive``
----------------------------------------------------
* ``constant``: ``tau = shift_interval``.
* ``exp_decay``: ``tau = ceil(tau0 * exp(-k * max(0, start - lam)))`` with ``tau0 = shift_interval``,
  ``k = decay_rate`` (0.1), ``lam = decay_start`` (13).
* ``linear_decay``: ``tau = max(tau_min, int(tau_max*(1 - start/(T-2)) + tau_min*start/(T-2)))``
  with ``tau_max = shift_interval``, ``tau_min = min_shift_interval``.
"""

from __future__ import annotations

import math
import random
from typing import Any

STRATEGIES = ("frozen", "random", "progressive")
INTERVAL_SCHEDULES = ("constant", "linear_decay", "exp_decay")
AT_END = ("rollback", "park")


class SlidingWindow:
    """Which denoising steps are SDE (trained) steps at each training iteration."""

    def __init__(
        self,
        size: int = 4,
        shift_interval: int = 25,
        stride: int = 1,
        strategy: str = "progressive",
        num_steps: int = 25,
        interval_schedule: str = "constant",
        at_end: str = "rollback",
        seed: int = 0,
        *,
        initial_start: int = 0,
        min_shift_interval: int = 5,
        decay_rate: float = 0.1,
        decay_start: float = 13.0,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown window strategy {strategy!r}; choose one of {STRATEGIES}")
        if interval_schedule not in INTERVAL_SCHEDULES:
            raise ValueError(
                f"unknown interval schedule {interval_schedule!r}; choose one of {INTERVAL_SCHEDULES}"
            )
        if at_end not in AT_END:
            raise ValueError(f"unknown at_end {at_end!r}; choose one of {AT_END}")
        if size < 1:
            raise ValueError(f"window size must be >= 1, got {size}")
        if num_steps - 2 - size < 0:
            raise ValueError(
                f"window size {size} does not fit in the {num_steps - 2} trainable steps of a "
                f"{num_steps}-step schedule (the last two steps are never trained)"
            )
        if shift_interval < 1 or stride < 1 or min_shift_interval < 1:
            raise ValueError("shift_interval, stride and min_shift_interval must be >= 1")
        self.size = int(size)
        self.shift_interval = int(shift_interval)
        self.stride = int(stride)
        self.strategy = strategy
        self.num_steps = int(num_steps)
        self.interval_schedule = interval_schedule
        self.at_end = at_end
        self.seed = int(seed)
        self.min_shift_interval = int(min_shift_interval)
        self.decay_rate = float(decay_rate)
        self.decay_start = float(decay_start)
        if not 0 <= initial_start <= self.max_start:
            raise ValueError(f"initial_start must be in [0, {self.max_start}], got {initial_start}")
        self.initial_start = int(initial_start)
        self.iteration = 0
        self._since_move = 0
        self._start = self.initial_start
        if strategy == "random":
            self._start = self._random_start(0)

    # ------------------------------------------------------------------------------------
    @property
    def max_start(self) -> int:
        """The last valid window start: ``T - 2 - size``."""
        return self.num_steps - 2 - self.size

    @property
    def start(self) -> int:
        """The first step index of this iteration's window."""
        return self._start

    def current(self) -> list[int]:
        """This iteration's window: ``[start, start + size)``."""
        return list(range(self._start, self._start + self.size))

    def interval(self, start: int | None = None) -> int:
        """``tau(start)``: iterations the window stays at ``start`` (progressive strategy)."""
        start = self._start if start is None else start
        tau = self.shift_interval
        if self.interval_schedule == "exp_decay":
            return max(1, math.ceil(tau * math.exp(-self.decay_rate * max(0.0, start - self.decay_start))))
        if self.interval_schedule == "linear_decay":
            frac = start / (self.num_steps - 2)
            tau_min = self.min_shift_interval
            return max(tau_min, int(tau * (1.0 - frac) + tau_min * frac))
        return tau

    def step(self) -> list[int]:
        """Advance one training iteration; returns the new window."""
        self.iteration += 1
        if self.strategy == "random":
            self._start = self._random_start(self.iteration)
        elif self.strategy == "progressive":
            self._since_move += 1
            if self._since_move >= self.interval(self._start):
                self._since_move = 0
                nxt = self._start + self.stride
                if nxt > self.max_start:
                    nxt = 0 if self.at_end == "rollback" else self.max_start
                self._start = nxt
        return self.current()

    def _random_start(self, iteration: int) -> int:
        # One generator per (seed, iteration): deterministic and trivially resumable.
        return random.Random(self.seed * 1_000_003 + iteration).randint(0, self.max_start)

    # ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this scheduler is."""
        return {"iteration": self.iteration, "start": self._start, "since_move": self._since_move}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        start = int(state["start"])
        if not 0 <= start <= self.max_start:
            raise ValueError(f"window state start={start} is outside [0, {self.max_start}]")
        self.iteration = int(state["iteration"])
        self._start = start
        self._since_move = int(state["since_move"])

    def __repr__(self) -> str:
        return (
            f"SlidingWindow(strategy={self.strategy!r}, size={self.size}, start={self._start}, "
            f"iteration={self.iteration})"
        )
