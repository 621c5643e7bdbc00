"""Reward servers: a pool of replica actors per reward model and a router over them.

Each configured reward gets its own :class:`RewardPool` of ``replicas`` actors named
``mixgrpo/reward/<name>/<i>``, with that reward's own resources and batch size, so scaling one
pool never touches another. :meth:`RewardPool.submit` takes an images ObjectRef straight from a
rollout actor (the driver never opens it) and routes it to the replica with the fewest requests
in flight. A replica whose process dies is restarted by Ray (``rewards.<name>.max_restarts``);
:meth:`RewardPool.gather` waits for scores, sends a request whose replica died, or that took
longer than ``rewards.<name>.timeout_s`` (the hung replica is then killed and restarted), to
another replica, and raises :class:`RewardPoolDown` when no replica has answered for
``rewards.<name>.max_down_s``.
"""

from __future__ import annotations

import inspect
import time
from typing import Callable, Sequence

import ray
import torch

from mixgrpo_ray.cluster import metrics as ray_metrics, serialization
from mixgrpo_ray.cluster.actors import ActorGroup, actor_name, spawn_actors
from mixgrpo_ray.cluster.devices import actor_device
from mixgrpo_ray.cluster.retry import actor_died
from mixgrpo_ray.config import RewardConfig
from mixgrpo_ray.rewards.fault_injection import InjectedFaults
from mixgrpo_ray.rewards.registry import build_reward, reward_class


def placed_options(kind: str, options: dict, device: torch.device) -> dict:
    """``options`` with ``device`` set to the replica's own device when reward ``kind`` takes a
    ``device`` option: CPU for ``num_gpus: 0`` (an actor without GPUs still *sees* every GPU of
    its node in Ray 2.60, so a model's own "CUDA when available" would land on another role's
    GPU), else the GPU Ray assigned to the replica."""
    if "device" not in inspect.signature(reward_class(kind).__init__).parameters:
        return dict(options)
    return {**options, "device": str(device)}


#: ``on_fault(kind, actor_name, message)``: how a pool reports a fault it handled
OnFault = Callable[[str, str, str], None]


class RewardPoolDown(RuntimeError):
    """No replica of a pool answered for ``max_down_s``."""

    def __init__(self, name: str, seconds: float) -> None:
        super().__init__(f"reward pool {name!r} (mixgrpo/reward/{name}/*) has not answered for {seconds:.0f} s "
                         f"(rewards.{name}.max_down_s)")
        self.pool = name


class RewardServer:
    """One replica: a reward model on its own device (:func:`placed_options`) that scores image
    batches in chunks of ``batch_size``."""

    def __init__(self, name: str, kind: str, options: dict, batch_size: int, torch_threads: int, replica: int,
                 num_gpus: float = 0.0) -> None:
        serialization.install()
        torch.set_num_threads(torch_threads)
        self.name = name
        self.device = actor_device(num_gpus)
        options = dict(options)
        inject = options.pop("_inject", None)
        self.model = build_reward(kind, **placed_options(kind, options, self.device))
        if inject:
            self.model = InjectedFaults(self.model, inject, replica)
        self.batch_size = int(batch_size)
        self._metrics = ray_metrics.RewardMetrics(name, replica)

    def info(self) -> dict:
        return {"name": self.name, "can_fail": bool(self.model.can_fail), "range": list(self.model.score_range),
                "device": str(self.device)}

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """``(B,)`` float32 scores; NaN marks an image the model failed to score (the driver
        leaves those out of the reward's group statistics and counts them)."""
        t0 = time.perf_counter()
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            out.append(self.model(images[i : i + self.batch_size], list(prompts[i : i + self.batch_size])))
        scores = torch.cat(out) if out else torch.zeros(0)
        failures = int((~torch.isfinite(scores)).sum())
        self._metrics.record(int(images.shape[0]), failures, time.perf_counter() - t0)
        return scores


class RewardPool(ActorGroup):
    """The replicas of one reward model (``mixgrpo/reward/<name>/<i>``) and a least-in-flight
    router over them."""

    def __init__(self, name: str, cfg: RewardConfig) -> None:
        super().__init__(spawn_actors(
            RewardServer, f"reward/{name}", cfg.replicas, cfg,
            lambda i: (name, cfg.kind, cfg.model_kwargs(), cfg.batch_size, cfg.torch_threads, i, cfg.num_gpus),
            max_restarts=cfg.max_restarts,
        ))
        self.name = name
        self.cfg = cfg
        self._in_flight: list[list[ray.ObjectRef]] = [[] for _ in self.actors]
        self._requests: dict[ray.ObjectRef, tuple] = {}  # ref -> (images_ref, prompts, replica)
        self._next = 0
        self.info = ray.get(self.actors[0].info.remote())

    @property
    def replicas(self) -> list:
        return self.actors

    @property
    def can_fail(self) -> bool:
        return bool(self.info["can_fail"])

    def _pick(self, avoid: int = -1) -> int:
        for i, refs in enumerate(self._in_flight):
            if refs:
                _done, pending = ray.wait(refs, num_returns=len(refs), timeout=0)
                self._in_flight[i] = pending
        loads = [len(r) if i != avoid or len(self.actors) == 1 else 1 << 30 for i, r in enumerate(self._in_flight)]
        best = min(loads)
        # round-robin among the least loaded replicas
        for k in range(len(self.actors)):
            i = (self._next + k) % len(self.actors)
            if loads[i] == best:
                self._next = i + 1
                return i
        return 0  # unreachable

    def submit(self, images_ref: ray.ObjectRef, prompts: Sequence[str], avoid: int = -1) -> ray.ObjectRef:
        """Score the images behind ``images_ref`` (on another replica than ``avoid`` when there
        is one); returns the ObjectRef of the ``(B,)`` scores."""
        i = self._pick(avoid)
        ref = self.actors[i].score.remote(images_ref, list(prompts))
        self._in_flight[i].append(ref)
        self._requests[ref] = (images_ref, list(prompts), i)
        return ref

    def gather(self, refs: Sequence[ray.ObjectRef], on_fault: OnFault) -> list[torch.Tensor]:
        """The scores of every request in ``refs``, retrying failed and timed-out requests on
        another replica; raises :class:`RewardPoolDown` after ``max_down_s`` without an answer."""
        return [self._result(ref, on_fault) for ref in refs]

    def _result(self, ref: ray.ObjectRef, on_fault: OnFault) -> torch.Tensor:
        timeout = self.cfg.timeout_s or None
        since = time.monotonic()
        while True:
            images_ref, prompts, i = self._requests.pop(ref)
            replica = actor_name(f"reward/{self.name}", i)
            try:
                return ray.get(ref, timeout=timeout)
            except ray.exceptions.GetTimeoutError:
                on_fault("reward_timeout", replica, f"no answer within rewards.{self.name}.timeout_s={timeout:g} s; "
                         "restarting it and sending the request to another replica")
                ray.kill(self.actors[i], no_restart=False)  # Ray restarts the hung replica
            except ray.exceptions.RayError as exc:
                if not actor_died(exc):
                    raise
                on_fault("reward_retry", replica, "died while scoring; the request goes to another replica")
            if time.monotonic() - since > self.cfg.max_down_s:
                raise RewardPoolDown(self.name, time.monotonic() - since)
            ref = self.submit(images_ref, prompts, avoid=i)


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

    def gather(self, requests: Sequence[dict], on_fault: OnFault) -> dict[str, torch.Tensor]:
        """Every reward's scores of ``requests`` (results of :meth:`submit`), flat in order."""
        return {name: torch.cat(pool.gather([r[name] for r in requests], on_fault)) for name, pool in self.items()}

    @property
    def actors(self) -> list:
        return [a for pool in self.values() for a in pool.actors]

    def shutdown(self) -> None:
        for pool in self.values():
            pool.shutdown()
