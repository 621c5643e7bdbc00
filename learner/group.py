"""The learner group: N learner ranks joined in one torch.distributed process group.

The ranks start in one placement group (:mod:`mixgrpo_ray.cluster.placement`); rank 0 is
created first and chooses the rendezvous address; every rank loads the same initial
weights, trains on its share of each update of the assignment the group draws for the iteration
(docs/algorithm.md eq. (35)), and gradients are averaged across ranks, so all ranks hold
identical weights (``replicate``) or shards of them (``fsdp``). A rank is handed, and fetches,
only the rollout calls that hold its samples (:func:`~mixgrpo_ray.algo.update.rank_shares`). After an iteration every rank
publishes what it owns through :class:`~mixgrpo_ray.cluster.weight_sync.WeightSync`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import ray
import torch

from mixgrpo_ray.algo.update import rank_shares, update_assignment
from mixgrpo_ray.cluster.actors import ActorGroup, actor_name, spawn_actors
from mixgrpo_ray.cluster.placement import place, remove_placement_group
from mixgrpo_ray.cluster.retry import GroupCallFailed, actor_died, describe, get_all_or_stop, get_each
from mixgrpo_ray.common.seeds import update_assignment_seed
from mixgrpo_ray.config import LearnerConfig, ModelConfig, OptimConfig
from mixgrpo_ray.learner.worker import LearnerWorker


class LearnerFailed(RuntimeError):
    """A learner rank's process died; the group cannot go on."""


class LearnerGroup(ActorGroup):
    """Creates the learner ranks, joins them, and runs each iteration's updates on all."""

    def __init__(self, model: ModelConfig, optim: OptimConfig, clip_range: float, learner: LearnerConfig,
                 seed: int, max_importance_weight: float = 2.0) -> None:
        n = learner.num_workers
        self.placement = place("learner", learner, n, learner.placement_timeout_s)  # all ranks or none
        try:
            actors = spawn_actors(LearnerWorker, "learner", n, learner,
                                  lambda rank: (rank, n, model, optim, clip_range, learner, seed),
                                  placement_group=self.placement)
        except BaseException:
            remove_placement_group(self.placement)
            raise
        super().__init__(actors)
        self.samples_per_update = optim.samples_per_update
        self.max_staleness = learner.max_staleness
        self.max_importance_weight = max_importance_weight
        self.seed = seed
        try:
            addr, port = ray.get(self.actors[0].rendezvous.remote())
            self.get_all("init_process_group", addr, port)
        except BaseException:
            self.shutdown()
            raise

    @property
    def world_size(self) -> int:
        return len(self.actors)

    def assignment(self, num_samples: int, iteration: int) -> list:
        """Which samples each rank trains on in each update of ``iteration``."""
        return update_assignment(num_samples, self.samples_per_update, self.world_size, seed=update_assignment_seed(self.seed, iteration))

    def train(self, trajectory_refs: list, advantages: torch.Tensor, iteration: int,
              sizes: Optional[Sequence[int]] = None) -> dict:
        """Run the iteration's updates on all ranks; returns rank 0's statistics.

        ``trajectory_refs``: one ObjectRef per rollout call, ``sizes`` its rows (samples in order:
        the calls' rows concatenated; may be left out for a single call). Each rank receives only
        the refs of the calls that hold its samples of the assignment, the rows it needs in them and
        their advantages."""
        refs = list(trajectory_refs)
        if sizes is None:
            if len(refs) != 1:
                raise ValueError("LearnerGroup.train needs the rows of each rollout call (sizes) for more than one call")
            sizes = [len(advantages)]
        if len(sizes) != len(refs) or sum(sizes) != len(advantages):
            raise ValueError(f"{len(refs)} rollout calls of {list(sizes)} rows do not hold {len(advantages)} samples")
        shares = rank_shares(self.assignment(len(advantages), iteration), sizes)
        return self.wait_together([
            actor.train.remote([refs[c] for c in share.calls], share.rows, advantages[share.samples], share.updates,
                               self.max_staleness, self.max_importance_weight)
            for actor, share in zip(self.actors, shares)
        ])[0]

    def get_together(self, method: str, *args) -> list:
        """``method`` on every rank, returning as soon as one rank fails (see :meth:`wait_together`)."""
        return self.wait_together(self.call_all(method, *args))

    def wait_together(self, calls: list) -> list:
        """Results of one call per rank, returning as soon as one rank fails: a rank whose process
        died raises :class:`LearnerFailed` naming it (the caller stops the group, so no rank is
        left waiting in a collective); a rank that raised re-raises its error."""
        try:
            return get_all_or_stop(calls)
        except GroupCallFailed as exc:
            if not actor_died(exc.error):
                raise exc.error from None
            raise LearnerFailed(f"learner {actor_name('learner', exc.index)} failed: {describe(exc.error)}") from exc.error

    def failure(self, error: BaseException) -> BaseException:
        """What a call that involved the learners (e.g. a weight sync) failing with ``error``
        means: :class:`LearnerFailed` naming the rank whose process died, else ``error``."""
        if not actor_died(error):
            return error
        states = get_each([a.version.remote() for a in self.actors], timeout_s=30)
        for rank, st in enumerate(states):
            if isinstance(st, BaseException) and actor_died(st):
                return LearnerFailed(f"learner {actor_name('learner', rank)} failed: {describe(st)}")
        return error

    def save_checkpoint(self, directory: str) -> None:
        self.get_together("save_checkpoint", directory)  # rank 0 alone writes unless sharded

    def load_checkpoint(self, directory: str) -> int:
        return self.get_together("load_checkpoint", directory)[0]

    def shutdown(self) -> None:
        super().shutdown()
        remove_placement_group(self.placement)
