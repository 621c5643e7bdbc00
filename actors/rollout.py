"""The rollout actor: holds the old policy, samples groups, and hands results on as ObjectRefs.

``sample`` returns three objects (``num_returns=3``): the images (uint8), the trajectory of the
trained steps (fp32) and a small metadata dict. The driver forwards the first two, unopened,
to the reward servers and the learners; it only reads the metadata.
"""

from __future__ import annotations

import io
import time
from typing import Sequence

import ray
import torch

from mixgrpo_ray.config import Config, from_dict
from mixgrpo_ray.models.build import build_policy, pick_device
from mixgrpo_ray.algo.rollout import RolloutSettings, sample_groups, sample_images
from mixgrpo_ray.cluster import metrics as ray_metrics


def rollout_settings(cfg: Config) -> RolloutSettings:
    s = cfg.sampling
    return RolloutSettings(
        num_steps=s.num_steps,
        shift=s.shift,
        noise_level=s.noise_level,
        sde_kind=s.sde_kind,
        tail=s.tail,
        tail_compression=s.tail_compression,
        share_group_noise=s.share_group_noise,
        algorithm=cfg.grpo.algorithm,
        dance_train_fraction=cfg.grpo.dance_train_fraction,
    )


class RolloutWorker:
    """One rollout actor (create with :func:`create_rollout_workers`)."""

    def __init__(self, config: dict, index: int) -> None:
        self.cfg = from_dict(config)
        self.index = index
        torch.set_num_threads(self.cfg.rollout.torch_threads)
        torch.manual_seed(self.cfg.run.seed)
        self.device = pick_device(self.cfg.rollout.num_gpus)
        self.policy = build_policy(self.cfg.model, self.device, trainable=False)
        self.policy.train(False)
        self.settings = rollout_settings(self.cfg)
        self.weight_version = 0
        self._metrics = ray_metrics.RolloutMetrics(index)

    def ready(self) -> int:
        return self.index

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
    def sample(self, prompts: Sequence[str], group_size: int, window: Sequence[int], seed: int):
        """Groups of ``group_size`` images per prompt; returns (images, trajectory, meta)."""
        t0 = time.perf_counter()
        out = sample_groups(
            self.policy, prompts, group_size, window, self.settings, seed=seed, version=self.weight_version
        )
        elapsed = time.perf_counter() - t0
        meta = {
            "worker": self.index,
            "version": self.weight_version,
            "nfe": out.nfe,
            "num_images": int(out.images.shape[0]),
            "trained_steps": out.trajectory.num_trained_steps,
            "time_s": elapsed,
        }
        self._metrics.sampled(meta["num_images"], out.nfe, elapsed)
        return out.images, out.trajectory, meta

    @ray.method(num_returns=2)
    def sample_eval(self, prompts: Sequence[str], seeds: Sequence[int]):
        """Deterministic ODE images (full Euler schedule) for evaluation; returns (images, meta)."""
        images = sample_images(
            self.policy, prompts, seeds, num_steps=self.cfg.sampling.num_steps, shift=self.cfg.sampling.shift
        )
        return images, {"worker": self.index, "version": self.weight_version, "num_images": len(prompts)}

    def grid_png(self, prompts: Sequence[str], seed: int, title: str = "") -> bytes:
        """A captioned PNG grid of one deterministic image per prompt."""
        from mixgrpo_ray.common.images import image_grid

        images = sample_images(
            self.policy, prompts, [seed + i for i in range(len(prompts))],
            num_steps=self.cfg.sampling.num_steps, shift=self.cfg.sampling.shift,
        )
        scale = max(1, min(4, 128 // int(images.shape[-1])))  # enlarge small images, keep big ones
        grid = image_grid(images, captions=list(prompts), title=title, scale=scale)
        buf = io.BytesIO()
        grid.save(buf, format="PNG")
        return buf.getvalue()


def create_rollout_workers(cfg: Config) -> list:
    """``rollout.num_workers`` named actors ``mixgrpo/rollout/<i>`` with their resources."""
    rc = cfg.rollout
    cls = ray.remote(RolloutWorker)
    workers = []
    for i in range(rc.num_workers):
        workers.append(
            cls.options(
                name=f"mixgrpo/rollout/{i}",
                num_cpus=rc.num_cpus,
                num_gpus=rc.num_gpus,
                resources=dict(rc.resources) or None,
                max_concurrency=1,
            ).remote(cfg.to_dict(), i)
        )
    ray.get([w.ready.remote() for w in workers])
    return workers
