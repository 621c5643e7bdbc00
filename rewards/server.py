"""Reward servers: a pool of replica actors per reward model and a router over them.

Each configured reward gets its own :class:`RewardPool` of ``replicas`` actors named
``mixgrpo/reward/<name>/<i>``, with that reward's own resources and batch size, so scaling one
pool never touches another. :meth:`RewardPool.submit` takes an images ObjectRef straight from a
rollout actor (the driver never opens it) and routes it to the replica with the fewest requests
in flight.
"""

from __future__ import annotations

import inspect
import time
from typing import Sequence

import ray
import torch

from mixgrpo_ray.cluster import metrics as ray_metrics
from mixgrpo_ray.cluster.actors import ActorGroup, spawn_actors
from mixgrpo_ray.cluster.devices import actor_device
from mixgrpo_ray.config import RewardConfig
from mixgrpo_ray.rewards.registry import build_reward, reward_class


def placed_options(kind: str, options: dict, device: torch.device) -> dict:
    """``options`` with ``device`` set to the replica's own device when reward ``kind`` takes a
    ``device`` option: CPU for ``num_gpus: 0`` (an actor without GPUs still *sees* every GPU of
    its node in Ray 2.60, so a model's own "CUDA when available" would land on another role's
    GPU), else the GPU Ray assigned to the replica."""
    if "device" not in inspect.signature(reward_class(kind).__init__).parameters:
        return dict(options)
    return {**options, "device": str(device)}


class RewardServer:
    """One replica: a reward model on its own device (:func:`placed_options`) that scores image
    batches in chunks of ``batch_size``."""

    def __init__(self, name: str, kind: str, options: dict, batch_size: int, torch_threads: int, replica: int,
                 num_gpus: float = 0.0) -> None:
        torch.set_num_threads(torch_threads)
        self.name = name
        self.device = actor_device(num_gpus)
        self.model = build_reward(kind, **placed_options(kind, options, self.device))
        self.batch_size = int(batch_size)
        self._metrics = ray_metrics.RewardMetrics(name, replica)

    def info(self) -> dict:
        return {"name": self.name, "can_fail": bool(self.model.can_fail), "range": list(self.model.score_range),
                "device": str(self.device)}

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """``(B,)`` float32 scores; NaN marks an image the model failed to score."""
        t0 = time.perf_counter()
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            out.append(self.model(images[i : i + self.batch_size], list(prompts[i : i + self.batch_size])))
        scores = torch.cat(out) if out else torch.zeros(0)
        failures = int((~torch.isfinite(scores)).sum())
        if failures and not self.model.can_fail:
            raise RuntimeError(f"reward {self.name!r} returned {failures} non-finite score(s)")
        self._metrics.record(int(images.shape[0]), failures, time.perf_counter() - t0)
        return scores


class RewardPool(ActorGroup):
    """The replicas of one reward model (``mixgrpo/reward/<name>/<i>``) and a least-in-flight
    router over them."""

    def __init__(self, name: str, cfg: RewardConfig) -> None:
        super().__init__(spawn_actors(
            RewardServer, f"reward/{name}", cfg.replicas, cfg,
            lambda i: (name, cfg.kind, cfg.model_kwargs(), cfg.batch_size, cfg.torch_threads, i, cfg.num_gpus),
        ))
        self.name = name
        self.cfg = cfg
        self._in_flight: list[list[ray.ObjectRef]] = [[] for _ in self.actors]
        self._next = 0
        self.info = ray.get(self.actors[0].info.remote())

    @property
    def replicas(self) -> list:
        return self.actors

    @property
    def can_fail(self) -> bool:
        return bool(self.info["can_fail"])

    def _pick(self) -> int:
        for i, refs in enumerate(self._in_flight):
            if refs:
                _done, pending = ray.wait(refs, num_returns=len(refs), timeout=0)
                self._in_flight[i] = pending
        loads = [len(r) for r in self._in_flight]
        best = min(loads)
        # round-robin among the least loaded replicas
        for k in range(len(self.actors)):
            i = (self._next + k) % len(self.actors)
            if loads[i] == best:
                self._next = i + 1
                return i
        return 0  # unreachable

    def submit(self, images_ref: ray.ObjectRef, prompts: Sequence[str]) -> ray.ObjectRef:
        """Score the images behind ``images_ref``; returns the ObjectRef of the ``(B,)`` scores."""
        i = self._pick()
        ref = self.actors[i].score.remote(images_ref, list(prompts))
        self._in_flight[i].append(ref)
        return ref


class RewardPools(dict):
    """One :class:`RewardPool` per configured reward, by name."""

    def __init__(self, rewards: dict[str, RewardConfig]) -> None:
        super().__init__()
        try:
            for name, rc in rewards.items():
                self[name] = RewardPool(name, rc)
        except BaseException:
            self.shutdown()
            raise

    def submit(self, images_ref: ray.ObjectRef, prompts: Sequence[str]) -> dict[str, ray.ObjectRef]:
        """Every pool scores the images behind ``images_ref``: name -> scores ObjectRef."""
        return {name: pool.submit(images_ref, prompts) for name, pool in self.items()}

    @property
    def actors(self) -> list:
        return [a for pool in self.values() for a in pool.actors]

    def shutdown(self) -> None:
        for pool in self.values():
            pool.shutdown()
