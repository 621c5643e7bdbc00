"""One learner rank: the trainable policy, its optimiser, and its share of each update.

Created by :class:`mixgrpo_ray.learner.group.LearnerGroup`. A rank receives only the config
sections it uses (model, optimiser, clip range, learner resources, seed).
"""

from __future__ import annotations

from typing import Sequence

import ray
import torch
import torch.distributed as dist

from mixgrpo_ray.algo.sharding import all_reduce_int, full_tensors, shard_module
from mixgrpo_ray.algo.update import GRPOTrainer
from mixgrpo_ray.cluster import metrics as ray_metrics, serialization
from mixgrpo_ray.cluster.devices import actor_device, join_process_group
from mixgrpo_ray.cluster.weight_sync import SenderEndpoints, WeightSender, node_endpoint
from mixgrpo_ray.common import checkpoint as ckpt
from mixgrpo_ray.common.dtypes import parse_dtype
from mixgrpo_ray.common.process_memory import PeakMemory
from mixgrpo_ray.common.sharded_checkpoint import sharded_dir
from mixgrpo_ray.config import LearnerConfig, ModelConfig, OptimConfig
from mixgrpo_ray.core.trajectory import Trajectory
from mixgrpo_ray.learner import dcp_checkpoint
from mixgrpo_ray.models.build import build_policy, import_model_code


class StaleRolloutError(RuntimeError):
    """A rollout was sampled with weights older than the learner allows."""


class LearnerWorker(SenderEndpoints):
    """One learner rank (create the group with :class:`LearnerGroup`)."""

    def __init__(self, rank: int, world_size: int, model: ModelConfig, optim: OptimConfig, clip_range: float,
                 learner: LearnerConfig, seed: int) -> None:
        serialization.install()
        torch.set_num_threads(learner.torch_threads)
        torch.manual_seed(seed)
        self.rank, self.world_size = rank, world_size
        self.learner = learner
        self.device = actor_device(learner.num_gpus)
        import_model_code(model)
        self.memory = PeakMemory(self.device)  # memory/learner_peak_gb: what this rank holds from here on
        self.policy = build_policy(model, self.device, trainable=True)
        self.memory.loaded()
        self.optim, self.clip_range = optim, clip_range
        self.trainer: GRPOTrainer | None = None
        self.fetched: list[str] = []  # ids of the trajectory ObjectRefs the last train() fetched
        self.weight_version = 0
        self._metrics = ray_metrics.LearnerMetrics(rank)
        self.sharded = learner.strategy == "fsdp"
        self.sender = WeightSender(learner.sync_transport, parse_dtype(learner.publish_dtype), learner.sync_bucket_mb,
                                   rank, world_size)

    # --- process group ---------------------------------------------------------------------
    def rendezvous(self) -> tuple[str, int]:
        """(address, free port) on this node, for rank 0 to host the process group."""
        return node_endpoint()

    def init_process_group(self, addr: str, port: int) -> int:
        group = None
        if self.world_size > 1 or self.sharded:  # FSDP2 needs a process group, even of one rank
            join_process_group(self.learner.backend, self.device, addr, port, self.rank, self.world_size,
                               timeout_s=self.learner.init_timeout_s)
            group = dist.group.WORLD
        if self.sharded:
            shard_module(self.policy.trainable_module(), self.device, self.world_size,
                         offload_optimizer=self.learner.offload_optimizer)
        self.trainer = GRPOTrainer(
            self.policy, self.optim, self.clip_range, rank=self.rank, world_size=self.world_size, process_group=group,
            sharded=self.sharded, reduce_bucket_mb=self.learner.reduce_bucket_mb,
        )
        return self.rank

    # --- training ----------------------------------------------------------------------------
    def train(self, trajectory_refs: list, rows: Sequence[Sequence[int]], advantages: torch.Tensor,
              updates: Sequence[Sequence[int]], max_staleness: int, max_importance_weight: float = 2.0) -> dict:
        """One iteration's updates on this rank's share (a
        :class:`~mixgrpo_ray.algo.update.RankShare`): ``trajectory_refs`` are the ObjectRefs of
        the rollout calls holding its samples (fetched here, never by the driver), ``rows[c]`` its
        rows in call ``c``, ``advantages`` theirs, ``updates[u]`` its samples of update ``u`` as
        indices into those rows. Rollouts sampled with older weights (at most ``max_staleness``
        versions, over every rank's calls) train with the decoupled objective."""
        self.fetched = [ref.hex() for ref in trajectory_refs]  # ids only: holding refs would pin the objects
        parts: list[Trajectory] = self._fetch(trajectory_refs)
        mine = Trajectory.concat([part.select(list(r)) for part, r in zip(parts, rows)])
        del parts  # keep only this rank's rows while training
        oldest = self._oldest_version(mine.version)
        if self.weight_version - oldest > max_staleness:
            raise StaleRolloutError(
                f"rollout sampled with weight version {oldest} but the learner is at version "
                f"{self.weight_version} (allowed lag {max_staleness}); refusing the stale batch"
            )
        stats = self.trainer.train_updates(mine, advantages, updates, proximal=oldest < self.weight_version,
                                           max_importance_weight=max_importance_weight)
        self._metrics.record(int(stats["updates"]))
        return {**stats, "memory_gb": self.memory.peak_gb()}

    def _fetch(self, refs: list) -> list[Trajectory]:
        """The trajectories of the rollout calls ``refs`` name (fetched from the object store)."""
        return ray.get(list(refs))

    def _oldest_version(self, version: int) -> int:
        """The oldest weight version among every rank's rollout calls: each rank fetched only its
        own, but all must agree on the objective (the decoupled one runs extra forward passes,
        which are collectives under fsdp)."""
        if self.world_size == 1:
            return version
        return all_reduce_int(version, self.device, op=dist.ReduceOp.MIN)

    def fetched_ids(self) -> list[str]:
        """The ids (``ObjectRef.hex()``) of the rollout calls this rank fetched in its last
        :meth:`train`."""
        return list(self.fetched)

    # --- weight sync (mixgrpo_ray.cluster.weight_sync; send_weights etc. from SenderEndpoints) ---
    def publish(self, bump: bool = True) -> tuple[int, list]:
        """Bump the version (unless ``bump`` is false) and lay out the buckets of the weights this
        rank owns: ``(version, [BucketRef])`` (object_store: already in the object store)."""
        if bump:
            self.weight_version += 1
        return self.weight_version, self.sender.publish(self.policy.trainable_tensors())

    def version(self) -> int:
        return self.weight_version

    def trainable_state(self) -> dict:
        """Whole CPU copies of the trainable weights (under fsdp a collective: call on every rank)."""
        return full_tensors(self.policy.trainable_tensors())

    # --- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self, directory: str) -> str:
        """Rank 0 writes weights and optimiser state into ``directory``; under fsdp every rank
        writes its shards (``sharded/``, torch.distributed.checkpoint; call on all ranks)."""
        if self.sharded:
            dcp_checkpoint.save(directory, self.policy.trainable_module(), self.trainer.optimizer, self.weight_version)
            return directory
        if self.rank != 0:
            return ""
        ckpt.save_weights(directory, self.trainable_state(), self.weight_version)
        ckpt.save_trainer_state(directory, self.trainer.optimizer.state_dict(), self.weight_version)
        return directory

    def load_checkpoint(self, directory: str) -> int:
        """Every rank loads weights and optimiser state from ``directory`` (a sharded checkpoint,
        or a single-file one into a sharded group: see ``learner/dcp_checkpoint.py``)."""
        if self.sharded or sharded_dir(directory) is not None:
            self.weight_version = dcp_checkpoint.load(directory, self.policy.trainable_module(), self.trainer.optimizer)
            return self.weight_version
        self.policy.load_trainable_state_dict(ckpt.read_weights(directory))
        extra = ckpt.load_trainer_state(directory)
        self.trainer.optimizer.load_state_dict(extra["optimizer"])
        self.weight_version = int(extra["version"])
        torch.set_rng_state(extra["torch_rng"])
        return self.weight_version
