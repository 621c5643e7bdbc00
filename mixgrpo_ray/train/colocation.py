"""``run.placement=colocated``: the driver's three role objects over one set of hybrid workers.

:func:`colocated_roles` starts the :class:`~mixgrpo_ray.learner.group.HybridGroup` and gives the
driver what it drives in every placement: the learner group (the hybrid group itself), a rollout
group over the same actors (:class:`HybridRollout`) and a weight sync that starts the next version
in place (:class:`InPlaceSync`). The driver's loop, "sample, score, advantage, train,
broadcast", is unchanged.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import ray

from mixgrpo_ray.actors.rollout_workers import RolloutWorkers
from mixgrpo_ray.cluster.retry import actor_died
from mixgrpo_ray.cluster.sampling_endpoints import grid_seeds
from mixgrpo_ray.config import Config
from mixgrpo_ray.learner.group import HybridGroup
from mixgrpo_ray.plan.colocated_plan import sampling_weights


class InPlaceSync:
    """The colocated "broadcast": every hybrid worker starts the next version with the weights it
    trained (a sampling copy is refreshed, on all workers together under fsdp). The interface of
    :class:`~mixgrpo_ray.cluster.weight_sync.WeightSync` that :meth:`RolloutWorkers.receive` uses."""

    def __init__(self, group: HybridGroup) -> None:
        self.group = group
        self.manifest: list = []  # nothing is published: calls name the version only
        self.gone: list[int] = []

    @staticmethod
    def lost(error: BaseException) -> bool:
        return False  # a hybrid worker never loses its own weights

    def sync(self, bump: bool = True, rollouts: Optional[Sequence] = None) -> tuple[int, dict]:
        t0 = time.perf_counter()
        results = self.group.get_together("advance", bump)
        seconds = time.perf_counter() - t0
        versions = {v for v, _ in results}
        if len(versions) != 1:
            raise RuntimeError(f"hybrid workers disagree on the weight version: {sorted(versions)}")
        copied = sum(c for _, c in results)
        return versions.pop(), {"sync/bytes": copied, "sync/seconds": seconds,
                                "sync/gbps": copied / max(seconds, 1e-9) / 1e9}


class HybridRollout(RolloutWorkers):
    """The rollout side of the hybrid workers: call ``c`` on worker ``c mod N`` (none is ever
    taken out: a worker that died is a lost learner rank and stops the run). With ``lockstep``
    (fsdp, sampling on the sharded module) every worker runs the same evaluation forwards: one
    without images of its own joins with a sample it throws away."""

    def __init__(self, cfg: Config, group: HybridGroup, inputs) -> None:
        super().__init__(cfg.model, cfg.sampling, cfg.grpo, cfg.rollout, cfg.run.seed, cfg.data.eval_batch_size,
                         inputs=inputs, actors=group.actors)
        self.group = group
        self.lockstep = group.lockstep

    def dead_of(self, error: BaseException) -> list[int]:
        """A hybrid worker that died is a lost learner rank: :class:`~mixgrpo_ray.learner.group.LearnerFailed` (the run stops
        cleanly and resumes from its last checkpoint), never a call moved elsewhere."""
        if actor_died(error):
            raise self.group.failure(error)
        return []

    def restarted(self, metas) -> list[str]:
        return []  # hybrid workers are never restarted

    def sample_eval(self, prompts: list[str], seeds: list[int]) -> list[tuple[list[str], dict]]:
        if not self.lockstep:
            return super().sample_eval(prompts, seeds)
        chunks = self.eval_chunks(prompts, seeds)
        chunks += [[] for _ in range(len(self.actors) - len(chunks))]
        out = []
        for r in range(max(len(c) for c in chunks)):
            for actor, mine in zip(self.actors, chunks):
                if r < len(mine):
                    out.append(self.submit_eval(actor, mine[r]))
                else:  # the same forwards, nothing kept
                    actor.sample_eval.remote(prompts[:1], seeds[:1], self.version, self.weights, None, keep=False)
        return out

    def grid_png(self, prompts: list[str], seed: int, title: str) -> bytes:
        if self.lockstep:
            for actor in self.actors[1:]:
                actor.sample_eval.remote(prompts, grid_seeds(seed, len(prompts)), self.version, self.weights, None,
                                         keep=False)
        return ray.get(self.actors[0].grid_png.remote(prompts, seed, self.version, self.weights, title))

    def shutdown(self) -> None:
        pass  # the hybrid group owns (and stops) the actors


def colocated_roles(cfg: Config, inputs) -> tuple[HybridGroup, HybridRollout, InPlaceSync]:
    """Start ``learner.num_workers`` hybrid workers and return the learner group, rollout group
    and weight sync the driver uses over them."""
    group = HybridGroup(cfg.model, cfg.optim, cfg.grpo.clip_range, cfg.learner, cfg.run.seed,
                        cfg.grpo.max_importance_weight, cfg.sampling, cfg.grpo, cfg.rollout,
                        sampling_weights(cfg), cfg.data.eval_batch_size)
    try:
        return group, HybridRollout(cfg, group, inputs), InPlaceSync(group)
    except BaseException:
        group.shutdown()
        raise
