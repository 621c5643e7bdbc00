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
from mixgrpo_ray.cluster.devices import actor_device
from mixgrpo_ray.common.images import grid_png
from mixgrpo_ray.common.seeds import rollout_seed
from mixgrpo_ray.config import GRPOConfig, ModelConfig, RolloutConfig, SamplingConfig
from mixgrpo_ray.models.build import build_policy, eval_batch_size


class RolloutWorker:
    """One rollout actor (create the group with :class:`RolloutWorkers`)."""

    def __init__(self, index: int, model: ModelConfig, sampling: SamplingConfig, grpo: GRPOConfig,
                 rollout: RolloutConfig, seed: int, eval_batch: int = 0) -> None:
        self.index = index
        self.eval_batch_size = eval_batch_size(model, eval_batch)
        torch.set_num_threads(rollout.torch_threads)
        torch.manual_seed(seed)
        self.device = actor_device(rollout.num_gpus)
        self.policy = build_policy(model, self.device, trainable=False)
        self.policy.train(False)
        self.sampling, self.grpo = sampling, grpo
        self.weight_version = 0
        self._metrics = ray_metrics.RolloutMetrics(index)

    def version(self) -> int:
        """The weight version this actor samples with."""
        return self.weight_version

    def set_weights(self, version: int, state_ref: list) -> int:
        """Load published weights (``state_ref`` is ``[ObjectRef]``, fetched here, not by the driver)."""
        state = ray.get(state_ref[0]) if isinstance(state_ref[0], ray.ObjectRef) else state_ref[0]
        self.policy.load_trainable_state_dict(state)
        self.weight_version = int(version)
        self._metrics.version(self.weight_version)
        return self.weight_version

    @ray.method(num_returns=3)
    def sample(self, prompts: Sequence[str], window: Sequence[int], seed: int):
        """``grpo.group_size`` images per prompt; returns (images, trajectory, RolloutMeta)."""
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
        """Deterministic ODE images (full Euler schedule) for evaluation, uint8; the policy sees at
        most ``data.eval_batch_size`` images at once."""
        return sample_images(self.policy, prompts, seeds, num_steps=self.sampling.num_steps, shift=self.sampling.shift,
                             batch_size=self.eval_batch_size)

    def grid_png(self, prompts: Sequence[str], seed: int, title: str = "") -> bytes:
        """A captioned PNG grid of one deterministic image per prompt."""
        images = self.sample_eval(prompts, [seed + i for i in range(len(prompts))])
        return grid_png(images, list(prompts), title=title)


class RolloutWorkers(ActorGroup):
    """``rollout.num_workers`` actors ``mixgrpo/rollout/<i>``; an iteration's prompts are split
    over them (or cut into calls of ``rollout.prompts_per_call`` prompts). ``eval_batch`` is
    ``data.eval_batch_size`` (0: the model's default)."""

    def __init__(self, model: ModelConfig, sampling: SamplingConfig, grpo: GRPOConfig, rollout: RolloutConfig,
                 seed: int, eval_batch: int = 0) -> None:
        super().__init__(spawn_actors(
            RolloutWorker, "rollout", rollout.num_workers, rollout,
            lambda i: (i, model, sampling, grpo, rollout, seed, eval_batch),
        ))
        self.eval_batch_size = eval_batch_size(model, eval_batch)
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
        """Evaluation images of every (prompt, seed) pair, spread evenly over the actors in calls
        of at most ``eval_batch_size`` images (in order): ``(prompts, images_ref)`` per call."""
        pairs = list(zip(prompts, seeds))
        out = []
        for c, share in enumerate(split_evenly(pairs, len(self.actors))):
            for start in range(0, len(share), self.eval_batch_size):
                chunk = share[start : start + self.eval_batch_size]
                ps = [p for p, _ in chunk]
                out.append((ps, self.actors[c].sample_eval.remote(ps, [s for _, s in chunk])))
        return out

    def load_weights(self, version: int, state_ref: list) -> None:
        """Every actor loads the published weights; raises unless all report ``version``."""
        loaded = self.get_all("set_weights", version, state_ref)
        if set(loaded) != {version}:
            raise RuntimeError(f"rollout actors hold versions {loaded}, expected {version}")

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
