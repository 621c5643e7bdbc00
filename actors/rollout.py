"""The rollout workers: actors that hold the old policy, sample groups, and hand results on as
ObjectRefs.

``sample`` returns three objects (``num_returns=3``): the images (uint8), the trajectory of the
trained steps (fp32) and a :class:`~mixgrpo_ray.algo.rollout.RolloutMeta`. The driver forwards
the first two, unopened, to the reward servers and the learners; it only reads the metadata.
"""

from __future__ import annotations

import time
from typing import Sequence

import ray
import torch

from mixgrpo_ray.algo.rollout import RolloutMeta, sample_groups, sample_images
from mixgrpo_ray.cluster import metrics as ray_metrics
from mixgrpo_ray.cluster.actors import ActorGroup, spawn_actors
from mixgrpo_ray.cluster.weight_sync import WeightReceiver
from mixgrpo_ray.common.images import grid_png
from mixgrpo_ray.common.seeds import rollout_seed
from mixgrpo_ray.config import GRPOConfig, ModelConfig, RolloutConfig, SamplingConfig
from mixgrpo_ray.models.build import build_policy, pick_device


class RolloutWorker:
    """One rollout actor (create the group with :class:`RolloutWorkers`)."""

    def __init__(self, index: int, model: ModelConfig, sampling: SamplingConfig, grpo: GRPOConfig,
                 rollout: RolloutConfig, seed: int) -> None:
        self.index = index
        torch.set_num_threads(rollout.torch_threads)
        torch.manual_seed(seed)
        self.device = pick_device(rollout.num_gpus)
        self.policy = build_policy(model, self.device, trainable=False)
        self.policy.train(False)
        self.sampling, self.grpo = sampling, grpo
        self.weight_version = 0
        self.weights_ok = True  # false after a sync failed half-way, until one succeeds
        self.receiver = WeightReceiver()
        self._metrics = ray_metrics.RolloutMetrics(index)

    def version(self) -> int:
        """The weight version this actor samples with."""
        return self.weight_version

    def join_weight_sync(self, learner_rank: int, addr: str, port: int, rank: int, size: int, backend: str) -> None:
        self.receiver.join(learner_rank, addr, port, rank, size, backend)

    def set_weights(self, version: int, manifest: list) -> int:
        """Load a sync's buckets (``[BucketRef]`` of every learner rank) in place, each checked
        against its checksum before it is loaded; reports ``version`` only when all loaded."""
        self.weights_ok = False
        self.receiver.load(version, manifest, self.policy.trainable_tensors())
        self.weights_ok = True
        self.weight_version = int(version)
        self._metrics.version(self.weight_version)
        return self.weight_version

    def trainable_state(self) -> dict:
        """Copies of the trainable weights this actor samples with."""
        return self.policy.trainable_state_dict()

    @ray.method(num_returns=3)
    def sample(self, prompts: Sequence[str], window: Sequence[int], seed: int):
        """``grpo.group_size`` images per prompt; returns (images, trajectory, RolloutMeta)."""
        if not self.weights_ok:
            raise RuntimeError(f"rollout actor {self.index}: the last weight sync failed; refusing to sample")
        t0 = time.perf_counter()
        out = sample_groups(self.policy, prompts, self.grpo.group_size, window, self.sampling, self.grpo,
                            seed=seed, version=self.weight_version)
        elapsed = time.perf_counter() - t0
        meta = RolloutMeta(worker=self.index, version=self.weight_version, nfe=out.nfe,
                           num_images=int(out.images.shape[0]),
                           num_trained_steps=out.trajectory.num_trained_steps, time_s=elapsed)
        self._metrics.sampled(meta.num_images, out.nfe, elapsed)
        return out.images, out.trajectory, meta

    def sample_eval(self, prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
        """Deterministic ODE images (full Euler schedule) for evaluation, uint8."""
        return sample_images(self.policy, prompts, seeds, num_steps=self.sampling.num_steps, shift=self.sampling.shift)

    def grid_png(self, prompts: Sequence[str], seed: int, title: str = "") -> bytes:
        """A captioned PNG grid of one deterministic image per prompt."""
        images = self.sample_eval(prompts, [seed + i for i in range(len(prompts))])
        return grid_png(images, list(prompts), title=title)


class RolloutWorkers(ActorGroup):
    """``rollout.num_workers`` actors ``mixgrpo/rollout/<i>``; an iteration's prompts are split
    over them (or cut into calls of ``rollout.prompts_per_call`` prompts)."""

    def __init__(self, model: ModelConfig, sampling: SamplingConfig, grpo: GRPOConfig, rollout: RolloutConfig,
                 seed: int) -> None:
        super().__init__(spawn_actors(
            RolloutWorker, "rollout", rollout.num_workers, rollout, lambda i: (i, model, sampling, grpo, rollout, seed)
        ))
        self.prompts_per_call = rollout.prompts_per_call
        self.group_size = grpo.group_size
        self.seed = seed

    def calls(self, prompts: list) -> list[list]:
        """The prompts of each sampling call, in order."""
        if self.prompts_per_call:
            n = self.prompts_per_call
            return [prompts[i : i + n] for i in range(0, len(prompts), n)]
        return split_evenly(prompts, len(self.actors))

    def sample(self, prompts: list[str], window: Sequence[int], iteration: int) -> list[tuple]:
        """Start every sampling call; returns ``(prompts, images_ref, trajectory_ref, meta_ref)``
        per call, with each prompt repeated ``group_size`` times (one per image)."""
        out = []
        for c, chunk in enumerate(self.calls(prompts)):
            actor = self.actors[c % len(self.actors)]
            images, traj, meta = actor.sample.remote(chunk, list(window), rollout_seed(self.seed, iteration, c))
            out.append(([p for p in chunk for _ in range(self.group_size)], images, traj, meta))
        return out

    def sample_eval(self, prompts: list[str], seeds: list[int]) -> list[tuple[list[str], ray.ObjectRef]]:
        """Evaluation images of every (prompt, seed) pair, spread over the actors:
        ``(prompts, images_ref)`` per call."""
        pairs = list(zip(prompts, seeds))
        out = []
        for c, chunk in enumerate(split_evenly(pairs, len(self.actors))):
            ps = [p for p, _ in chunk]
            out.append((ps, self.actors[c].sample_eval.remote(ps, [s for _, s in chunk])))
        return out

    def grid_png(self, prompts: list[str], seed: int, title: str) -> bytes:
        return ray.get(self.actors[0].grid_png.remote(prompts, seed, title))


def split_evenly(items: list, parts: int) -> list[list]:
    """``items`` cut into ``parts`` consecutive pieces whose sizes differ by at most one (empty
    pieces dropped)."""
    n = len(items)
    out, start = [], 0
    for i in range(parts):
        size = n // parts + (1 if i < n % parts else 0)
        if size:
            out.append(items[start : start + size])
        start += size
    return out
