"""A hybrid worker of ``run.placement=colocated``: one learner rank and one rollout actor in one
process, on one GPU, holding one copy of the trainable model.

It samples its share of an iteration's prompts with its own current weights (the old policy: the
weights before this iteration's updates), trains its share of the updates, and starts the next
version in place: nothing is published or moved. Which weights it samples with is
``rollout.colocated_weights`` (resolved before the worker starts, see
:func:`mixgrpo_ray.plan.colocated_plan.sampling_weights`):

* ``module``: the training module itself; under ``learner.strategy=fsdp`` each block is gathered
  for its forward and freed after, so every worker must run the same forwards (the group gives
  every worker the same number of calls, and lets a worker without images of its own join the
  others' evaluation forwards);
* ``copy``: one compute-dtype copy of the whole model (under fsdp gathered once per iteration),
  refreshed after every update.

A sampling call keeps its trajectory here and hands the driver a :class:`LocalTrajectory` marker;
the worker trains on the samples it drew, and only the rows the update plan gives another rank
travel, as a :class:`~mixgrpo_ray.core.trajectory.Trajectory` of those rows (:meth:`rows_of`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import ray
import torch

from mixgrpo_ray.algo.sharding import is_dtensor
from mixgrpo_ray.cluster import metrics as ray_metrics
from mixgrpo_ray.cluster.sampling_endpoints import SamplingEndpoints
from mixgrpo_ray.config import GRPOConfig, LearnerConfig, ModelConfig, OptimConfig, RolloutConfig, SamplingConfig
from mixgrpo_ray.core.trajectory import Trajectory
from mixgrpo_ray.learner.worker import LearnerWorker
from mixgrpo_ray.models.build import build_sampler, eval_batch_size


@dataclass(frozen=True)
class LocalTrajectory:
    """A sampling call's trajectory, kept on the hybrid worker that sampled it under ``key`` (the
    call's seed; which worker holds it follows from the call, see ``HybridGroup.holder``)."""

    key: int


class HybridWorker(LearnerWorker, SamplingEndpoints):
    """One hybrid worker (create the group with :class:`~mixgrpo_ray.learner.group.HybridGroup`)."""

    def __init__(self, rank: int, world_size: int, model: ModelConfig, optim: OptimConfig, clip_range: float,
                 learner: LearnerConfig, seed: int, sampling: SamplingConfig, grpo: GRPOConfig,
                 rollout: RolloutConfig, weights: str, eval_batch: int = 0) -> None:
        super().__init__(rank, world_size, model, optim, clip_range, learner, seed)
        self.index = rank
        self.model, self.rollout = model, rollout
        self.sampling, self.grpo = sampling, grpo
        self.weights_way = weights  # "module" or "copy"
        self.eval_batch_size = eval_batch_size(model, eval_batch)
        self.sampler = None  # built once the process group (and, under fsdp, the sharding) exists
        self.kept: dict[int, Trajectory] = {}  # this iteration's trajectories, by call seed
        self._sampling_metrics = ray_metrics.RolloutMetrics(rank)

    def init_process_group(self, addr: str, port: int) -> int:
        rank = super().init_process_group(addr, port)
        if self.weights_way == "module":
            self.sampler = build_sampler(self.model, self.device, trained=self.policy)
        else:
            self.sampler = build_sampler(self.model, self.device)
            self._refresh_copy()
        self.sampler.train(False)
        self.sampler.offload_frozen(self.rollout.offload_encoders)
        return rank

    @torch.no_grad()
    def _refresh_copy(self) -> int:
        """Copy the current weights into the sampling copy, one tensor at a time (each shard
        gathered under fsdp: a collective); returns the bytes written."""
        targets = self.sampler.trainable_tensors()
        written = 0
        for key, value in self.policy.trainable_tensors().items():
            whole = value.full_tensor() if is_dtensor(value) else value
            targets[key].copy_(whole.detach())
            written += targets[key].numel() * targets[key].element_size()
            del whole
        return written

    # --- sampling (SamplingEndpoints) ----------------------------------------------------------
    def _prepare(self, version: int, weights: list) -> None:
        if version != self.weight_version:
            raise RuntimeError(f"hybrid worker {self.rank} holds weights v{self.weight_version}, the call names v{version}")
        self.sampler.train(False)

    def _hand_out(self, trajectory: Trajectory, seed: int) -> LocalTrajectory:
        self.kept[int(seed)] = trajectory
        return LocalTrajectory(int(seed))

    def rows_of(self, where: LocalTrajectory, rows: Sequence[int]) -> Trajectory:
        """Rows ``rows`` of a trajectory kept here, for the rank the update plan gives them to."""
        return self.kept[where.key].select(list(rows))

    def _fetch(self, refs: list) -> list[Trajectory]:
        return [self.kept[p.key] if isinstance(p, LocalTrajectory) else p for p in ray.get(list(refs))]

    def train(self, *args, **kwargs) -> dict:
        try:
            return super().train(*args, **kwargs)
        finally:
            self.kept.clear()  # the iteration's samples are trained (or the run stops)

    # --- the next version, in place -------------------------------------------------------------
    def advance(self, bump: bool = True) -> tuple[int, int]:
        """Start sampling with the current weights: bump the version (unless ``bump`` is false)
        and, with a sampling copy, refresh it (all ranks together under fsdp). Returns
        ``(version, bytes copied into the sampling weights)``."""
        if bump:
            self.weight_version += 1
        copied = self._refresh_copy() if self.weights_way == "copy" else 0
        self._sampling_metrics.version(self.weight_version)
        return self.weight_version, copied
