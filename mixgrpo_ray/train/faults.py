"""Faults a run handled: counted per kind for the iteration's metrics row (``faults/<kind>``),
counted in the ``mixgrpo_faults`` Ray metric, and logged with the actor's name.

The kinds are a stable user API (dashboards read them); every row carries all of them.
"""

from __future__ import annotations

import sys
from collections import Counter

from mixgrpo_ray.cluster.metrics import FaultMetrics

FAULT_KINDS = (
    "rollout_restart",  # a rollout actor's process died; Ray restarted it and its call was redone
    "rollout_reassigned",  # a rollout actor could not be restarted; its call ran on another actor
    "weights_resent",  # collective transport: a restarted rollout actor lost its weights; group re-formed, resent
    "reward_retry",  # a scoring request failed (replica died) and went to another replica
    "reward_timeout",  # a scoring request exceeded rewards.<name>.timeout_s and was retried elsewhere
    "nonfinite_reward",  # scores that were NaN/inf: left out of that reward's group statistics
    "nonfinite_loss",  # samples whose loss was not finite: dropped from the update
    "learner_restart",  # a learner rank (or hybrid worker) died; the group was re-formed from the last checkpoint
)


class FaultLog:
    """Counts of the faults handled since the last :meth:`take`, plus Ray-metric and log output."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.total: Counter = Counter()
        self.metrics = FaultMetrics()

    def record(self, kind: str, actor: str, message: str, count: int = 1) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        if count <= 0:
            return
        self.counts[kind] += count
        self.total[kind] += count
        self.metrics.record(kind, count)
        print(f"mixgrpo-ray: fault {kind} ({actor}): {message}", file=sys.stderr, flush=True)

    def take(self) -> dict:
        """``faults/<kind>`` for every kind, counted since the previous call; resets the counts."""
        row = {f"faults/{k}": int(self.counts.get(k, 0)) for k in FAULT_KINDS}
        self.counts.clear()
        return row
