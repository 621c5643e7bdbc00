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

Each pool learns once, from its replicas' :meth:`RewardServer.info`, the input its model declares
(:class:`~mixgrpo_ray.models.reward_input.RewardInput`, ``None``: full resolution);
:meth:`RewardPools.inputs` tells the driver which image objects rollout actors must send, and
:meth:`RewardPools.submit` forwards to each pool the one it needs. A replica merges the requests
waiting for it into batches of up to ``rewards.<name>.batch_size`` images (:class:`RewardServer`).
"""

from __future__ import annotations

import collections
import inspect
import threading
import time
from typing import Callable, Mapping, Sequence

import ray
import torch

from mixgrpo_ray.cluster import metrics as ray_metrics, serialization
from mixgrpo_ray.cluster.actors import ActorGroup, actor_name, spawn_actors
from mixgrpo_ray.cluster.devices import actor_device
from mixgrpo_ray.cluster.retry import actor_died, get_each
from mixgrpo_ray.config import RewardConfig
from mixgrpo_ray.models.reward_input import RewardInput
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

    def __init__(self, name: str, seconds: float, reason: str = "") -> None:
        why = reason or f"has not answered for {seconds:.0f} s (rewards.{name}.max_down_s)"
        super().__init__(f"reward pool {name!r} (mixgrpo/reward/{name}/*) {why}")
        self.pool = name


class _Request:
    """One caller's images waiting to be scored, possibly over several merged batches."""

    def __init__(self, images: torch.Tensor, prompts: list[str]) -> None:
        self.images, self.prompts = images, prompts
        self.size = int(images.shape[0])
        self.taken = 0  # images handed to a batch so far
        self.parts: dict[int, torch.Tensor] = {}  # start -> scores of images[start : start + len]
        self.error: BaseException | None = None
        self.done = threading.Event()

    def key(self) -> tuple:
        """Requests merge only when their images concatenate (shape, dtype, device)."""
        return tuple(self.images.shape[1:]), self.images.dtype, self.images.device

    def finish(self, start: int, scores: torch.Tensor | None, error: BaseException | None = None) -> None:
        if error is not None and self.error is None:
            self.error = error
        if scores is not None:
            self.parts[start] = scores.clone()  # its own storage, not a view of the merged batch
        if self.error is not None or sum(len(p) for p in self.parts.values()) == self.size:
            self.done.set()

    def result(self) -> torch.Tensor:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return torch.cat([self.parts[k] for k in sorted(self.parts)]) if self.parts else torch.zeros(0)


class RewardServer:
    """One replica: a reward model on its own device (:func:`placed_options`) that scores images
    in batches of at most ``batch_size``.

    The replica takes up to ``MAX_CONCURRENCY`` requests at once (a threaded Ray actor); they wait
    in one queue, and a single scoring thread takes the next batch from its head: the oldest
    requests' images up to ``batch_size`` (a larger request is split over batches), so requests
    that arrive while a batch is being scored are merged into the next one; each caller gets
    exactly its own scores back. Requests merge only when their images concatenate (same shape
    and dtype); when a merged batch raises, each request in it is scored on its own, so one bad
    request fails only its own caller."""

    #: requests a replica accepts at once (each waits on a Ray actor thread)
    MAX_CONCURRENCY = 64

    def __init__(self, name: str, kind: str, options: dict, batch_size: int, torch_threads: int, replica: int,
                 num_gpus: float = 0.0) -> None:
        serialization.install()
        torch.set_num_threads(torch_threads)
        self.name = name
        self.batch_size = int(batch_size)
        # a threaded Ray actor whose constructor raises dies with "Fatal Python error: Aborted" on
        # its stderr; so a model that fails to load is kept as this replica's answer to every call
        # (:meth:`info` first, which the pool asks at start) and the pool stops the replica
        self._init_error: Exception | None = None
        try:
            self.device = actor_device(num_gpus)
            options = dict(options)
            inject = options.pop("_inject", None)
            self.model = build_reward(kind, **placed_options(kind, options, self.device))
            if inject:
                self.model = InjectedFaults(self.model, inject, replica)
        except Exception as exc:  # noqa: BLE001 - re-raised by every call
            self._init_error = exc
        self._metrics = ray_metrics.RewardMetrics(name, replica)
        self._queue: collections.deque[_Request] = collections.deque()
        self._wake = threading.Condition()
        self._stats = {"requests": 0, "images": 0, "model_calls": 0}
        self._scorer: threading.Thread | None = None

    def _check_started(self) -> None:
        if self._init_error is not None:
            raise self._init_error

    def info(self) -> dict:
        self._check_started()
        spec = self.model.input()
        return {"name": self.name, "can_fail": bool(self.model.can_fail), "range": list(self.model.score_range),
                "device": str(self.device), "input": None if spec is None else spec.to_dict(),
                "batch_size": self.batch_size}

    def stats(self) -> dict:
        """Requests and images scored since the replica started, and the model calls (batches) it took."""
        with self._wake:
            return dict(self._stats)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """``(B,)`` float32 scores; NaN marks an image the model failed to score (the driver
        leaves those out of the reward's group statistics and counts them)."""
        self._check_started()
        t0 = time.perf_counter()
        prompts = list(prompts)
        if images.ndim != 4 or images.shape[1] != 3 or len(prompts) != images.shape[0]:
            self.model(images, prompts)  # raises the model's own one-line error, for this caller only
        request = _Request(images, prompts)
        if request.size:
            with self._wake:
                self._queue.append(request)
                self._stats["requests"] += 1
                self._stats["images"] += request.size
                if self._scorer is None:
                    self._scorer = threading.Thread(target=self._score_loop, name=f"reward-{self.name}", daemon=True)
                    self._scorer.start()
                self._wake.notify()
        scores = request.result() if request.size else torch.zeros(0)
        failures = int((~torch.isfinite(scores)).sum())
        self._metrics.record(int(images.shape[0]), failures, time.perf_counter() - t0)
        return scores

    def _next_batch(self) -> list[tuple[_Request, int, int]]:
        """``(request, start, stop)`` slices of the oldest waiting requests, at most ``batch_size``
        images in all, all of one :meth:`_Request.key` (called holding the lock)."""
        batch, n = [], 0
        while self._queue and n < self.batch_size:
            request = self._queue[0]
            if request.error is not None:  # an earlier part failed: the caller has its answer
                self._queue.popleft()
                continue
            if batch and request.key() != batch[0][0].key():
                break
            k = min(self.batch_size - n, request.size - request.taken)
            batch.append((request, request.taken, request.taken + k))
            request.taken += k
            n += k
            if request.taken == request.size:
                self._queue.popleft()
        return batch

    def _score_loop(self) -> None:
        while True:
            with self._wake:
                while not self._queue:
                    self._wake.wait()
                batch = self._next_batch()
            if not batch:
                continue
            try:
                self._score_batch(batch)
            except BaseException as exc:  # noqa: BLE001 - never leave a caller waiting
                for request, start, _stop in batch:
                    request.finish(start, None, exc)

    def _call_model(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        with self._wake:
            self._stats["model_calls"] += 1
        return self.model(images, prompts)

    def _score_batch(self, batch: list[tuple[_Request, int, int]]) -> None:
        try:
            if len(batch) == 1:
                images = batch[0][0].images[batch[0][1] : batch[0][2]]
            else:
                images = torch.cat([r.images[a:b] for r, a, b in batch])
            scores = self._call_model(images, [p for r, a, b in batch for p in r.prompts[a:b]])
        except BaseException as exc:  # noqa: BLE001 - handed to the callers
            if len(batch) == 1:
                batch[0][0].finish(batch[0][1], None, exc)
                return
            for part in batch:  # one bad request must not fail the others merged with it
                self._score_batch([part])
            return
        at = 0
        for r, a, b in batch:
            r.finish(a, scores[at : at + b - a])
            at += b - a


class RewardPool(ActorGroup):
    """The replicas of one reward model (``mixgrpo/reward/<name>/<i>``) and a least-in-flight
    router over them."""

    def __init__(self, name: str, cfg: RewardConfig) -> None:
        super().__init__(spawn_actors(
            RewardServer, f"reward/{name}", cfg.replicas, cfg,
            lambda i: (name, cfg.kind, cfg.model_kwargs(), cfg.batch_size, cfg.torch_threads, i, cfg.num_gpus),
            max_restarts=cfg.max_restarts, max_concurrency=RewardServer.MAX_CONCURRENCY,
        ))
        self.name = name
        self.cfg = cfg
        self._in_flight: list[list[ray.ObjectRef]] = [[] for _ in self.actors]
        self._requests: dict[ray.ObjectRef, tuple] = {}  # ref -> (images_ref, prompts, replica)
        self._dead: set[int] = set()  # replicas gone for good (restarts used up): out of the rotation
        self._next = 0
        try:
            self.info = ray.get([a.info.remote() for a in self.actors])[0]  # raises a model that did not load
        except BaseException:
            self.shutdown()
            raise

    @property
    def replicas(self) -> list:
        return self.actors

    @property
    def can_fail(self) -> bool:
        return bool(self.info["can_fail"])

    @property
    def input(self) -> RewardInput | None:
        """The images this reward needs (:class:`RewardInput`; ``None``: as sampled), as its
        replicas declared it once at start."""
        return RewardInput.from_dict(self.info.get("input"))

    def _pick(self, avoid: int = -1) -> int:
        for i, refs in enumerate(self._in_flight):
            if refs:
                _done, pending = ray.wait(refs, num_returns=len(refs), timeout=0)
                self._in_flight[i] = pending
        if len(self._dead) == len(self.actors):
            raise RewardPoolDown(self.name, 0.0, "has no replica left: every one died and could not be restarted "
                                 f"(rewards.{self.name}.max_restarts)")
        loads = [len(r) if i != avoid or len(self.actors) - len(self._dead) == 1 else 1 << 30
                 for i, r in enumerate(self._in_flight)]
        loads = [1 << 40 if i in self._dead else n for i, n in enumerate(loads)]
        best = min(loads)
        # round-robin among the least loaded replicas
        for k in range(len(self.actors)):
            i = (self._next + k) % len(self.actors)
            if loads[i] == best:
                self._next = i + 1
                return i
        return 0  # unreachable

    def _gone_for_good(self, i: int, probe_s: float = 2.0) -> bool:
        """After replica ``i`` died: is it dead for good (Ray will not restart it)? A dead actor
        fails a call at once; one being restarted does not answer within ``probe_s`` (kept)."""
        (reply,) = get_each([self.actors[i].info.remote()], timeout_s=probe_s)
        if isinstance(reply, BaseException) and actor_died(reply):
            self._dead.add(i)
            self._in_flight[i] = []
            return True
        return False

    @property
    def live(self) -> list[int]:
        """Replicas in the rotation."""
        return [i for i in range(len(self.actors)) if i not in self._dead]

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
                gone = self._gone_for_good(i)
                on_fault("reward_retry", replica, "died while scoring; the request goes to another replica"
                         + ("; it cannot be restarted and leaves the rotation" if gone else ""))
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

    def inputs(self) -> list[RewardInput | None]:
        """The distinct inputs the pools need, in pool order (``None``: full resolution): what a
        rollout actor sends (:func:`pick_images`)."""
        return list(dict.fromkeys(pool.input for pool in self.values()))

    def submit(self, images: ray.ObjectRef | Mapping, prompts: Sequence[str]) -> dict[str, ray.ObjectRef]:
        """Every pool scores the images: ``images`` is one ObjectRef for all pools, or a mapping
        of input (:meth:`inputs`) -> ObjectRef from which each pool takes its own
        (:func:`pick_images`). Returns name -> scores ObjectRef."""
        return {name: pool.submit(pick_images(images, pool.input), prompts) for name, pool in self.items()}

    def gather(self, requests: Sequence[dict], on_fault: OnFault) -> dict[str, torch.Tensor]:
        """Every reward's scores of ``requests`` (results of :meth:`submit`), flat in order."""
        return {name: torch.cat(pool.gather([r[name] for r in requests], on_fault)) for name, pool in self.items()}

    @property
    def actors(self) -> list:
        return [a for pool in self.values() for a in pool.actors]

    def shutdown(self) -> None:
        for pool in self.values():
            pool.shutdown()


def pick_images(images: ray.ObjectRef | Mapping, needed: RewardInput | None) -> ray.ObjectRef:
    """The ObjectRef a pool that needs ``needed`` scores: ``images`` itself when it is one ref
    (images as sampled serve every reward: its model resizes them itself), else
    ``images[needed]``, or the full-resolution ``images[None]`` when the rollout did not send that
    size."""
    if not isinstance(images, Mapping):
        return images
    if needed in images:
        return images[needed]
    if None in images:
        return images[None]
    raise KeyError(f"no images for reward input {needed} (sent: {', '.join(map(str, images))})")
