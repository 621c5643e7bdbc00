"""The learner group: N learner ranks joined in one torch.distributed process group.

Rank 0 is created first and chooses the rendezvous address; every rank loads the same initial
weights, trains on its share of each update of the plan the group draws for the iteration
(docs/algorithm.md eq. (35)), and gradients are averaged across ranks, so all ranks hold
identical weights. After an iteration rank 0 publishes the trainable weights once
(``ray.put``) with a new version; rollout actors fetch that object themselves.
"""

from __future__ import annotations

import ray
import torch

from mixgrpo_ray.algo.update import update_plan
from mixgrpo_ray.cluster.actors import ActorGroup, actor_name, spawn_actors
from mixgrpo_ray.cluster.retry import GroupCallFailed, actor_died, describe, get_all_or_stop
from mixgrpo_ray.common.seeds import update_plan_seed
from mixgrpo_ray.config import LearnerConfig, ModelConfig, OptimConfig
from mixgrpo_ray.learner.worker import LearnerWorker


class LearnerFailed(RuntimeError):
    """A learner rank's process died; the group cannot go on."""


class LearnerGroup(ActorGroup):
    """Creates the learner ranks, joins them, and runs each iteration's updates on all."""

    def __init__(self, model: ModelConfig, optim: OptimConfig, clip_range: float, learner: LearnerConfig,
                 seed: int, max_importance_weight: float = 2.0) -> None:
        n = learner.num_workers
        super().__init__(spawn_actors(
            LearnerWorker, "learner", n, learner, lambda rank: (rank, n, model, optim, clip_range, learner, seed)
        ))
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

    def plan(self, num_samples: int, iteration: int) -> list:
        """Which samples each rank trains on in each update of ``iteration``."""
        return update_plan(num_samples, self.samples_per_update, self.world_size, seed=update_plan_seed(self.seed, iteration))

    def train(self, trajectory_refs: list, advantages: torch.Tensor, iteration: int) -> dict:
        """Run the iteration's updates on all ranks; returns rank 0's statistics."""
        plan = self.plan(len(advantages), iteration)
        return self.get_together("train", list(trajectory_refs), advantages, plan, self.max_staleness,
                                 self.max_importance_weight)[0]

    def get_together(self, method: str, *args) -> list:
        """``method`` on every rank, returning as soon as one rank fails: a rank whose process
        died raises :class:`LearnerFailed` naming it (the caller stops the group, so no rank is
        left waiting in a collective); a rank that raised re-raises its error."""
        try:
            return get_all_or_stop(self.call_all(method, *args))
        except GroupCallFailed as exc:
            if not actor_died(exc.error):
                raise exc.error from None
            raise LearnerFailed(f"learner {actor_name('learner', exc.index)} failed: {describe(exc.error)}") from exc.error

    def publish(self, bump: bool = True) -> tuple[int, list]:
        results = self.get_together("publish", bump)
        versions = {v for v, _ in results}
        if len(versions) != 1:
            raise RuntimeError(f"learner ranks disagree on the weight version: {sorted(versions)}")
        return results[0]

    def save_checkpoint(self, directory: str) -> None:
        ray.get(self.actors[0].save_checkpoint.remote(directory))

    def load_checkpoint(self, directory: str) -> int:
        return self.get_together("load_checkpoint", directory)[0]
