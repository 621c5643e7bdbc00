"""What the driver does when an actor of the run fails mid-iteration.

Rollout calls: a call whose actor died is retried by Ray on the restarted actor (the call names its
weight version and seed, so the redo is bit-identical); when the actor cannot be restarted, the
call is redone on another live actor with the same prompts and seed, and its scoring requested
again. Learner ranks: a failed rank stops its group at once (no rank left waiting in a collective);
in the training loop the group is re-formed from the last complete checkpoint (:func:`reform`);
elsewhere, or when ``learner.max_restarts`` is used up, the run stops with the last complete
checkpoint named and the command that resumes it.

Healing a lost learner rank (:func:`reform`): a collective cannot go on without one of its
ranks, so the whole group is re-formed: the surviving ranks are stopped, a new group is started
(new actors in a new placement group, a new weight-sync channel to the live rollout actors;
colocated, new hybrid workers), it loads the run's
last complete checkpoint, and the driver rewinds to that checkpoint's iteration: window, prompt
sampler and weight version from the checkpoint's state, the metrics rows written since dropped,
the iterations since redone with the same seeds. So the finished run's metrics equal an
uninterrupted run's, and the work redone is at most ``run.checkpoint_every`` iterations. Before the
first checkpoint the new group starts from the initial weights and the run from iteration 0 (the
driver keeps its starting state in memory).

At most ``learner.max_restarts`` times per run (each counted in ``faults/learner_restart``); then,
or when the new group cannot be placed (the cluster no longer has its resources), or when the
re-forming itself fails, the run stops: one line naming the rank, the last complete checkpoint
and the resume command.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, Mapping, Optional

import ray
import torch

from mixgrpo_ray.algo.rollout import RolloutMeta
from mixgrpo_ray.cluster.actors import actor_name
from mixgrpo_ray.cluster.retry import actor_died, get_each, object_lost
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


class GroupReformed(Exception):
    """Raised out of an iteration whose learner group was re-formed: the driver's loop goes on
    from the iteration :func:`reform` restored."""


def reform(driver, failure: LearnerFailed) -> str:
    """Re-form ``driver``'s learner group after ``failure`` and rewind the run to its last complete
    checkpoint; returns what was done, in words. Raises ``RuntimeError`` (with the reason) when the
    new group cannot be started or restored; ``LearnerFailed`` when a rank of the new group dies."""
    t0 = time.monotonic()
    driver.learners.shutdown()  # no rank is left waiting in a collective
    driver.learner_restarts += 1
    latest = ckpt.latest_checkpoint(driver.run_dir.path)
    driver.learners = None
    driver.start_learners()  # colocated: new hybrid workers, so a new rollout view too
    driver.restore(latest)
    driver.run_dir.truncate_metrics(driver.iteration)
    source = f"checkpoint {latest.name}" if latest is not None else "the initial weights (no checkpoint yet)"
    return (f"the learner group was re-formed from {source} in {time.monotonic() - t0:.1f} s "
            f"(re-forming {driver.learner_restarts} of learner.max_restarts={driver.cfg.learner.max_restarts}); "
            f"iterations from {driver.iteration + 1} are redone with the same seeds")


@contextlib.contextmanager
def stop_cleanly(driver, heal: bool = False) -> Iterator[None]:
    """Turn a failure the run cannot go on from into :class:`RunStopped`: a failed learner rank
    (the others are killed, so none waits in a collective) keeps the last complete checkpoint; a
    reward pool down for ``max_down_s`` first checkpoints the last complete iteration.

    ``heal``: a failed learner rank is healed instead while ``learner.max_restarts`` allows
    (:func:`reform`): the group is re-formed, the run rewound to its last checkpoint, and
    :class:`GroupReformed` raised for the loop to go on."""
    resume = f"continue with: mixgrpo-ray train --resume {driver.run_dir.path}"
    try:
        try:
            yield
        except ray.exceptions.RayError as error:  # e.g. weights unreachable: the rank that published them died
            found = driver.learners.failure(error) if driver.learners is not None and object_lost(error) else error
            if found is error:
                raise
            raise found from error
    except LearnerFailed as exc:
        failure: BaseException = exc
        while heal and isinstance(failure, LearnerFailed) and driver.learner_restarts < driver.cfg.learner.max_restarts:
            try:
                done = reform(driver, failure)
            except LearnerFailed as again:  # a rank of the new group died too: try again
                driver.faults.record("learner_restart", failure.actor, "its process died; the re-formed group lost "
                                     "a rank as well")
                failure = again
                continue
            except Exception as why:  # noqa: BLE001 - e.g. the cluster lost the group's resources
                failure = RuntimeError(f"{failure}; re-forming the learner group failed: {str(why).splitlines()[0]}")
                break
            driver.faults.record("learner_restart", failure.actor, f"its process died; {done}")
            raise GroupReformed(done) from None
        if driver.learners is not None:
            driver.learners.shutdown()
        latest = ckpt.latest_checkpoint(driver.run_dir.path)
        where = f"the last complete checkpoint is {latest}" if latest else "no checkpoint was written yet"
        used = (f" (learner.max_restarts={driver.cfg.learner.max_restarts}: no re-forming left)"
                if heal and isinstance(failure, LearnerFailed) else "")
        raise RunStopped(f"{failure}; the run stopped{used}, {where}; {resume}") from None
    except RewardPoolDown as exc:
        driver.rewind()
        path = driver.checkpoint()
        raise RunStopped(f"{exc}; the run stopped after checkpointing {path}; bring the pool's replicas "
                         f"back (or fix rewards.{exc.pool}), then {resume}") from None

