"""One learner rank: the trainable policy, its optimiser, and its share of each update.

Created by :class:`mixgrpo_ray.learner.group.LearnerGroup`. A rank receives only the config
sections it uses (model, optimiser, clip range, learner resources, seed).
"""

from __future__ import annotations

import socket
from typing import Sequence

import ray
import torch
import torch.distributed as dist

from mixgrpo_ray.algo.update import GRPOTrainer
from mixgrpo_ray.cluster import metrics as ray_metrics
from mixgrpo_ray.cluster.devices import actor_device, join_process_group
from mixgrpo_ray.common import checkpoint as ckpt
from mixgrpo_ray.common.dtypes import parse_dtype
from mixgrpo_ray.config import LearnerConfig, ModelConfig, OptimConfig
from mixgrpo_ray.core.trajectory import Trajectory
from mixgrpo_ray.models.build import build_policy


class StaleRolloutError(RuntimeError):
    """A rollout was sampled with weights older than the learner allows."""


class LearnerWorker:
    """One learner rank (create the group with :class:`LearnerGroup`)."""

    def __init__(self, rank: int, world_size: int, model: ModelConfig, optim: OptimConfig, clip_range: float,
                 learner: LearnerConfig, seed: int) -> None:
        torch.set_num_threads(learner.torch_threads)
        torch.manual_seed(seed)
        self.rank, self.world_size = rank, world_size
        self.learner = learner
        self.device = actor_device(learner.num_gpus)
        self.policy = build_policy(model, self.device, trainable=True)
        self.optim, self.clip_range = optim, clip_range
        self.trainer: GRPOTrainer | None = None
        self.weight_version = 0
        self._metrics = ray_metrics.LearnerMetrics(rank)

    # --- process group ---------------------------------------------------------------------
    def rendezvous(self) -> tuple[str, int]:
        """(address, free port) on this node, for rank 0 to host the process group."""
        addr = ray.util.get_node_ip_address()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return addr, port

    def init_process_group(self, addr: str, port: int) -> int:
        group = None
        if self.world_size > 1:
            join_process_group(self.learner.backend, self.device, addr, port, self.rank, self.world_size)
            group = dist.group.WORLD
        self.trainer = GRPOTrainer(
            self.policy, self.optim, self.clip_range, rank=self.rank, world_size=self.world_size, process_group=group
        )
        return self.rank

    # --- training ----------------------------------------------------------------------------
    def train(self, trajectory_refs: list, advantages: torch.Tensor, plan: Sequence, max_staleness: int,
              max_importance_weight: float = 2.0) -> dict:
        """One iteration's updates on this rank's share. ``trajectory_refs`` is a list of
        ObjectRefs (fetched here, never by the driver). Rollouts sampled with older weights
        (at most ``max_staleness`` versions) train with the decoupled objective."""
        parts: list[Trajectory] = ray.get(list(trajectory_refs))
        oldest = min(p.version for p in parts)
        if self.weight_version - oldest > max_staleness:
            raise StaleRolloutError(
                f"rollout sampled with weight version {oldest} but the learner is at version "
                f"{self.weight_version} (allowed lag {max_staleness}); refusing the stale batch"
            )
        stats = self.trainer.train_iteration(Trajectory.concat(parts), advantages, plan,
                                             proximal=oldest < self.weight_version,
                                             max_importance_weight=max_importance_weight)
        self._metrics.record(int(stats["updates"]))
        return stats

    def publish(self, bump: bool = True) -> tuple[int, list]:
        """Bump the version (unless ``bump`` is false); rank 0 puts the trainable weights in the
        object store once and returns ``(version, [ObjectRef])`` (other ranks ``(version, [])``)."""
        if bump:
            self.weight_version += 1
        if self.rank != 0:
            return self.weight_version, []
        dtype = parse_dtype(self.learner.publish_dtype)
        state = {
            k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().to("cpu"))
            for k, v in self.policy.trainable_state_dict().items()
        }
        return self.weight_version, [ray.put(state)]

    def version(self) -> int:
        return self.weight_version

    def trainable_state(self) -> dict:
        return {k: v.detach().to("cpu").clone() for k, v in self.policy.trainable_state_dict().items()}

    # --- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self, directory: str) -> str:
        """Rank 0 writes weights and optimiser state into ``directory``."""
        if self.rank != 0:
            return ""
        ckpt.save_weights(directory, self.trainable_state(), self.weight_version)
        ckpt.save_trainer_state(directory, self.trainer.optimizer.state_dict(), self.weight_version)
        return directory

    def load_checkpoint(self, directory: str) -> int:
        """Every rank loads weights and optimiser state from ``directory``."""
        self.policy.load_trainable_state_dict(ckpt.read_weights(directory))
        extra = ckpt.load_trainer_state(directory)
        self.trainer.optimizer.load_state_dict(extra["optimizer"])
        self.weight_version = int(extra["version"])
        torch.set_rng_state(extra["torch_rng"])
        return self.weight_version
