"""The sampling calls every actor that samples answers: a rollout actor
(:class:`~mixgrpo_ray.actors.rollout_workers.RolloutWorker`) and a hybrid worker of the colocated
placement (:class:`~mixgrpo_ray.learner.hybrid_worker.HybridWorker`).

An actor mixing in :class:`SamplingEndpoints` sets ``index``, ``sampler`` (the policy it samples
with), ``sampling``, ``grpo``, ``eval_batch_size``, ``_sampling_metrics`` (a
:class:`~mixgrpo_ray.cluster.metrics.RolloutMetrics`) and ``memory`` (a
:class:`~mixgrpo_ray.common.process_memory.PeakMemory`), and implements :meth:`_prepare` (hold the
weights a call names) and :meth:`_hand_out` (what the driver gets for a call's trajectory).
"""

from __future__ import annotations

import os
import time
from typing import Optional, Sequence

import ray

from mixgrpo_ray.algo.rollout import RolloutMeta, images_for, sample_groups, sample_images
from mixgrpo_ray.common.images import grid_png
from mixgrpo_ray.models.reward_input import RewardInput


class SamplingEndpoints:
    """``sample`` (training groups), ``sample_eval`` (deterministic ODE images) and ``grid_png``."""

    def _prepare(self, version: int, weights: list) -> None:
        """Hold weight ``version`` (its sync manifest ``weights``) before sampling."""
        raise NotImplementedError

    def _hand_out(self, trajectory, seed: int):
        """What :meth:`sample` returns for the call's trajectory (default: the trajectory itself)."""
        return trajectory

    def pid(self) -> int:
        """This actor's process id (it changes when Ray restarts the actor)."""
        return os.getpid()

    @ray.method(num_returns=3)
    def sample(self, prompts: Sequence[str], window: Sequence[int], seed: int, version: int, weights: list,
               inputs: Sequence[Optional[RewardInput]] = (None,)):
        """``grpo.group_size`` images per prompt with weight ``version`` (whose sync manifest is
        ``weights``); returns (images, trajectory, RolloutMeta), the images once per entry of
        ``inputs`` (:func:`~mixgrpo_ray.algo.rollout.images_for`: ``None`` as sampled, else resized
        as that reward input needs; call with ``num_returns=len(inputs) + 2``)."""
        self._prepare(version, weights)
        t0 = time.perf_counter()
        out = sample_groups(self.sampler, prompts, self.grpo.group_size, window, self.sampling, self.grpo,
                            seed=seed, version=self.weight_version)
        elapsed = time.perf_counter() - t0
        meta = RolloutMeta(worker=self.index, version=self.weight_version, nfe=out.nfe,
                           num_images=int(out.images.shape[0]),
                           num_trained_steps=out.trajectory.num_trained_steps, time_s=elapsed, pid=os.getpid(),
                           memory_gb=self.memory.peak_gb(), passes=out.passes)
        self._sampling_metrics.sampled(meta.num_images, out.nfe, elapsed)
        return (*images_for(out.images, inputs), self._hand_out(out.trajectory, seed), meta)

    def sample_eval(self, prompts: Sequence[str], seeds: Sequence[int], version: int, weights: list,
                    inputs: Optional[Sequence[Optional[RewardInput]]] = None, keep: bool = True):
        """Deterministic ODE images (full Euler schedule) with weight ``version``, uint8; the policy
        sees at most ``data.eval_batch_size`` images at once. With ``inputs``, a tuple: the images
        once per entry, as :meth:`sample` (call with ``num_returns=len(inputs)``). ``keep=False``
        samples and returns None: a worker of a sharded module takes part in the others'
        collectives this way when it has no images of its own to make."""
        self._prepare(version, weights)
        s = self.sampling
        images = sample_images(self.sampler, prompts, seeds, num_steps=s.num_steps, shift=s.shift,
                               batch_size=self.eval_batch_size, cfg_scale=s.cfg_scale, negative_prompt=s.negative_prompt)
        if not keep:
            return None if inputs is None or len(inputs) == 1 else (None,) * len(inputs)
        if inputs is None:
            return images
        out = images_for(images, inputs)
        return out[0] if len(out) == 1 else out

    def grid_png(self, prompts: Sequence[str], seed: int, version: int, weights: list, title: str = "") -> bytes:
        """A captioned PNG grid of one deterministic image per prompt."""
        images = self.sample_eval(prompts, grid_seeds(seed, len(prompts)), version, weights, None)
        return grid_png(images, list(prompts), title=title)


def grid_seeds(seed: int, count: int) -> list[int]:
    """The noise seeds of a grid's images."""
    return [seed + i for i in range(count)]
