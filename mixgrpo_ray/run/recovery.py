"""What the driver does when an actor of the run fails mid-iteration.

Rollout calls: a call whose actor died is retried by Ray on the restarted actor (the call names its
weight version and seed, so the redo is bit-identical); when the actor cannot be restarted, the
call is redone on another live actor with the same prompts and seed, and its scoring requested
again. Learner ranks: a failed rank stops the run at once (no rank left waiting in a collective),
with the last complete checkpoint named and the command that resumes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from mixgrpo_ray.algo.rollout import RolloutMeta
from mixgrpo_ray.cluster.actors import actor_name
from mixgrpo_ray.cluster.retry import actor_died, get_each
from mixgrpo_ray.run.faults import FaultLog


class RunStopped(RuntimeError):
    """The run cannot go on; the message says why and how to resume (one line)."""


def collect_rollouts(rollout, batches: list, redo: Callable[[int], object], faults: FaultLog) -> list[RolloutMeta]:
    """The metadata of every rollout call of ``batches`` (updated in place); a call whose actor is
    gone for good is redone by ``redo(call)`` (a new batch) on a live actor."""
    for _attempt in range(len(rollout.actors) + 1):
        results = get_each([b.meta for b in batches])
        failed = [c for c, r in enumerate(results) if isinstance(r, BaseException)]
        if not failed:
            break
        for c in failed:
            error = results[c]
            if not actor_died(error):
                raise error
            for i in rollout.dead_of(error):
                rollout.drop(i)
                faults.record("rollout_reassigned", actor_name("rollout", i),
                              "died and cannot be restarted (rollout.max_restarts); the other actors take its calls")
            batches[c] = redo(c)
    else:
        raise RunStopped("rollout calls keep failing on every actor; see the actors' logs")
    metas: list[RolloutMeta] = results
    for name in rollout.restarted(metas):
        faults.record("rollout_restart", name, "its process died; Ray restarted it and the call was redone "
                      "with the same weight version and seed")
    return metas


def learner_stopped(error: BaseException, rank: int, run: Path, latest: Optional[Path]) -> RunStopped:
    """The error that ends a run whose learner rank ``rank`` failed."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    where = f"the last complete checkpoint is {latest}" if latest else "no checkpoint was written yet"
    return RunStopped(f"learner {actor_name('learner', rank)} failed ({first[:200]}); the run stopped, "
                      f"{where}; continue with: mixgrpo-ray train --resume {run}")

