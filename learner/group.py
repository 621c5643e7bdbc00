"""The learner group: N learner actors joined in one torch.distributed process group.

Rank 0 is created first and chooses the rendezvous address; every rank loads the same initial
weights, trains on its share of each update (:func:`mixgrpo_ray.algo.update.update_plan`), and
gradients are averaged across ranks, so all ranks hold identical weights. After an iteration
rank 0 publishes the trainable weights once (``ray.put``) with a new version; rollout actors
fetch that object themselves.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Sequence

import ray
import torch
import torch.distributed as dist

from mixgrpo_ray.algo.update import GRPOTrainer, OptimSettings
from mixgrpo_ray.cluster import metrics as ray_metrics
from mixgrpo_ray.cluster.actors import kill_actors
from mixgrpo_ray.config import Config, from_dict
from mixgrpo_ray.models.build import build_policy, pick_device
from mixgrpo_ray.core.trajectory import Trajectory


class StaleRolloutError(RuntimeError):
    """A rollout was sampled with weights older than the learner allows."""


class LearnerWorker:
    """One learner rank (create the group with :class:`LearnerGroup`)."""

    def __init__(self, config: dict, rank: int, world_size: int) -> None:
        self.cfg = from_dict(config)
        lc = self.cfg.learner
        torch.set_num_threads(lc.torch_threads)
        torch.manual_seed(self.cfg.run.seed)
        self.rank, self.world_size = rank, world_size
        self.device = pick_device(lc.num_gpus)
        self.policy = build_policy(self.cfg.model, self.device, trainable=True)
        o = self.cfg.optim
        self.settings = OptimSettings(
            lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
            max_grad_norm=o.max_grad_norm, clip_range=self.cfg.grpo.clip_range,
        )
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
            backend = self.cfg.learner.backend
            if backend == "auto":
                backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(
                backend=backend, init_method=f"tcp://{addr}:{port}", rank=self.rank, world_size=self.world_size
            )
            group = dist.group.WORLD
        self.trainer = GRPOTrainer(
            self.policy, self.settings, rank=self.rank, world_size=self.world_size, process_group=group
        )
        return self.rank

    # --- training ----------------------------------------------------------------------------
    def train(self, trajectory_refs: list, advantages: torch.Tensor, plan: Sequence, max_staleness: int) -> dict:
        """One iteration's updates on this rank's share. ``trajectory_refs`` is a list of
        ObjectRefs (fetched here, never by the driver)."""
        parts: list[Trajectory] = ray.get(list(trajectory_refs))
        oldest = min(p.version for p in parts)
        if self.weight_version - oldest > max_staleness:
            raise StaleRolloutError(
                f"rollout sampled with weight version {oldest} but the learner is at version "
                f"{self.weight_version} (allowed lag {max_staleness}); refusing the stale batch"
            )
        traj = Trajectory.concat(parts)
        stats = self.trainer.train_iteration(traj, advantages, plan)
        self._metrics.record(int(stats["updates"]))
        return stats

    def publish(self, bump: bool = True) -> tuple[int, list]:
        """Bump the version (unless ``bump`` is false); rank 0 puts the trainable weights in the
        object store once and returns ``(version, [ObjectRef])`` (other ranks ``(version, [])``)."""
        if bump:
            self.weight_version += 1
        if self.rank != 0:
            return self.weight_version, []
        dtype = torch.bfloat16 if self.cfg.learner.publish_dtype == "bf16" else None
        state = {
            k: (v.detach().to("cpu", dtype) if dtype is not None and v.is_floating_point() else v.detach().to("cpu"))
            for k, v in self.policy.trainable_state_dict().items()
        }
        return self.weight_version, [ray.put(state)]

    def version(self) -> int:
        return self.weight_version

    def trainable_state(self) -> dict:
        return {k: v.detach().to("cpu").clone() for k, v in self.policy.trainable_state_dict().items()}

    # --- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self, directory: str) -> str:
        """Rank 0 writes weights (safetensors) and optimiser state into ``directory``."""
        from safetensors.torch import save_file

        if self.rank != 0:
            return ""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.trainable_state().items()}
        save_file(state, str(path / "weights.safetensors"), metadata={"version": str(self.weight_version)})
        torch.save(
            {"optimizer": self.trainer.optimizer.state_dict(), "version": self.weight_version,
             "torch_rng": torch.get_rng_state()},
            path / "optimizer.pt",
        )
        return str(path)

    def load_checkpoint(self, directory: str) -> int:
        """Every rank loads weights and optimiser state from ``directory``."""
        from safetensors.torch import load_file

        path = Path(directory)
        self.policy.load_trainable_state_dict(load_file(str(path / "weights.safetensors")))
        extra = torch.load(path / "optimizer.pt", weights_only=False, map_location="cpu")
        self.trainer.optimizer.load_state_dict(extra["optimizer"])
        self.weight_version = int(extra["version"])
        torch.set_rng_state(extra["torch_rng"])
        return self.weight_version


class LearnerGroup:
    """Creates the learner actors (rank 0 first), joins them, and calls them together."""

    def __init__(self, cfg: Config) -> None:
        lc = cfg.learner
        cls = ray.remote(LearnerWorker)
        self.cfg = cfg
        self.workers = []
        for rank in range(lc.num_workers):
            self.workers.append(
                cls.options(
                    name=f"mixgrpo/learner/{rank}",
                    num_cpus=lc.num_cpus,
                    num_gpus=lc.num_gpus,
                    resources=dict(lc.resources) or None,
                ).remote(cfg.to_dict(), rank, lc.num_workers)
            )
        addr, port = ray.get(self.workers[0].rendezvous.remote())
        ray.get([w.init_process_group.remote(addr, port) for w in self.workers])

    @property
    def world_size(self) -> int:
        return len(self.workers)

    def train(self, trajectory_refs: list, advantages: torch.Tensor, plan: Sequence) -> dict:
        """Run the iteration on all ranks; returns rank 0's statistics."""
        max_stale = self.cfg.learner.max_staleness
        stats = ray.get([w.train.remote(list(trajectory_refs), advantages, plan, max_stale) for w in self.workers])
        return stats[0]

    def publish(self, bump: bool = True) -> tuple[int, list]:
        results = ray.get([w.publish.remote(bump) for w in self.workers])
        versions = {v for v, _ in results}
        if len(versions) != 1:
            raise RuntimeError(f"learner ranks disagree on the weight version: {sorted(versions)}")
        return results[0]

    def save_checkpoint(self, directory: str) -> None:
        ray.get(self.workers[0].save_checkpoint.remote(directory))

    def load_checkpoint(self, directory: str) -> int:
        versions = ray.get([w.load_checkpoint.remote(directory) for w in self.workers])
        return versions[0]

    def shutdown(self) -> None:
        kill_actors(self.workers)
