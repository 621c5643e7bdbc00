"""What the driver does when an actor of the run fails mid-iteration.

Rollout calls: a call whose actor died is retried by Ray on the restarted actor (the call names its
weight version and seed, so the redo is bit-identical); when the actor cannot be restarted, the
call is redone on another live actor with the same prompts and seed, and its scoring requested
again. Learner ranks: a failed rank stops the run at once (no rank left waiting in a collective),
with the last complete checkpoint named and the command that resumes it.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Mapping, Optional

import torch

from mixgrpo_ray.algo.rollout import RolloutMeta
from mixgrpo_ray.cluster.actors import actor_name
from mixgrpo_ray.cluster.retry import actor_died, get_each
from mixgrpo_ray.cluster.weight_sync import WeightSync
from mixgrpo_ray.common import checkpoint as ckpt
from mixgrpo_ray.learner.group import LearnerFailed
from mixgrpo_ray.rewards.server import RewardPoolDown
from mixgrpo_ray.train.faults import FaultLog


class RunStopped(RuntimeError):
    """The run cannot go on; the message says why and how to resume (one line)."""


def collect_rollouts(rollout, batches: list, redo: Callable[[int], object], faults: FaultLog,
                     weight_sync: Optional[WeightSync] = None, resend: Optional[Callable[[], None]] = None
                     ) -> list[RolloutMeta]:
    """The metadata of every rollout call of ``batches`` (updated in place); a call whose actor is
    gone for good is redone by ``redo(call)`` (a new batch) on a live actor. A call whose restarted
    actor lost the weights (``weight_sync.lost``: the ``collective`` transport) is redone after
    ``resend()`` sends the current weights again (the sync re-forms its group first)."""
    for _attempt in range(len(rollout.actors) + 1):
        results = get_each([b.meta for b in batches])
        failed = [c for c, r in enumerate(results) if isinstance(r, BaseException)]
        if not failed:
            break
        lost = [c for c in failed if weight_sync is not None and resend is not None and weight_sync.lost(results[c])]
        if lost:
            resend()
            faults.record("weights_resent", "mixgrpo/learner/0",
                          "a restarted rollout actor lost its weights; the sync group was re-formed and the "
                          "current version broadcast again")
        for c in failed:
            error = results[c]
            if c in lost:
                batches[c] = redo(c)
                continue
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


def check_finite(scores: Mapping[str, torch.Tensor], trained: Mapping[str, float], faults: FaultLog) -> None:
    """Count the non-finite scores of an iteration (they are left out of their reward's group
    statistics); raise RunStopped when a trained reward has no finite score at all."""
    for name, s in scores.items():
        bad = int((~torch.isfinite(s)).sum())
        if bad:
            faults.record("nonfinite_reward", f"mixgrpo/reward/{name}",
                          f"{bad} of {s.numel()} scores not finite; left out of the group statistics", count=bad)
        if bad == s.numel() and name in trained:
            raise RunStopped(f"reward {name!r} returned no finite score for a whole batch ({bad} images); "
                             f"check the reward model (rewards.{name}) and resume the run")


def check_finite_loss(stats: Mapping[str, float], samples: int, faults: FaultLog) -> None:
    """Count the samples of updates the learner skipped for a non-finite loss; raise RunStopped
    when every update of the iteration was skipped."""
    dropped = int(stats.get("nonfinite_samples", 0))
    faults.record("nonfinite_loss", "mixgrpo/learner/0", f"{dropped} samples dropped: their loss (or their update's "
                  "gradient) was not finite", count=dropped)
    if dropped and dropped >= samples:
        raise RunStopped(f"every update of the iteration had a non-finite loss ({dropped} samples); the weights "
                         "were left unchanged; lower optim.lr or check the model and rewards, then resume")


@contextlib.contextmanager
def stop_cleanly(driver) -> Iterator[None]:
    """Turn a failure the run cannot go on from into :class:`RunStopped`: a failed learner rank
    (the others are killed, so none waits in a collective) keeps the last complete checkpoint; a
    reward pool down for ``max_down_s`` first checkpoints the last complete iteration."""
    resume = f"continue with: mixgrpo-ray train --resume {driver.run_dir.path}"
    try:
        yield
    except LearnerFailed as exc:
        driver.learners.shutdown()
        latest = ckpt.latest_checkpoint(driver.run_dir.path)
        where = f"the last complete checkpoint is {latest}" if latest else "no checkpoint was written yet"
        raise RunStopped(f"{exc}; the run stopped, {where}; {resume}") from None
    except RewardPoolDown as exc:
        driver.rewind()
        path = driver.checkpoint()
        raise RunStopped(f"{exc}; the run stopped after checkpointing {path}; bring the pool's replicas "
                         f"back (or fix rewards.{exc.pool}), then {resume}") from None

