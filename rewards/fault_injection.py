"""Faults injected into a reward model on purpose, to prove the run survives them (tests, drills).

Any reward takes the hidden option ``_inject`` (``rewards.<name>.options._inject``), a mapping of:

* ``hang_s``: sleep this long in every scoring call (a hung model);
* ``hang_replica``: only replica ``i`` hangs (default: every replica);
* ``hang_once_file``: hang only while this file does not exist yet, creating it with the hanging
  process's id in it (so a restarted replica, or a later request, does not hang again);
* ``hang_while_file``: hang only while this file exists;
* ``nan_every``: every ``k``-th image of a call is scored NaN (``1``: all of them).

Not meant for real runs: it exists so the fault handling can be tested for real.
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping, Sequence

import torch

from mixgrpo_ray.models.reward import RewardModel

KEYS = ("hang_s", "hang_replica", "hang_once_file", "hang_while_file", "nan_every")


class InjectedFaults(RewardModel):
    """``model`` with the faults of ``spec`` injected (see the module docstring)."""

    def __init__(self, model: RewardModel, spec: Mapping[str, Any], replica: int) -> None:
        unknown = sorted(set(spec) - set(KEYS))
        if unknown:
            raise ValueError(f"options._inject: unknown key(s) {unknown}; use {', '.join(KEYS)}")
        self.model, self.spec, self.replica = model, dict(spec), replica
        self.name, self.score_range, self.can_fail = model.name, model.score_range, model.can_fail
        self.input_size, self.input_resize = model.input_size, model.input_resize

    def _hangs(self) -> bool:
        s = self.spec
        if not s.get("hang_s") or s.get("hang_replica", self.replica) != self.replica:
            return False
        if s.get("hang_while_file") and not os.path.exists(s["hang_while_file"]):
            return False
        once = s.get("hang_once_file")
        if once:
            try:
                fd = os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # first caller only
            except FileExistsError:
                return False
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
        return True

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if self._hangs():
            time.sleep(float(self.spec["hang_s"]))
        out = self.model(images, prompts).clone()
        every = int(self.spec.get("nan_every", 0))
        if every:
            out[every - 1 :: every] = float("nan")
        return out
