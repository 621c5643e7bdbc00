"""The rollout workers: actors that hold the old policy, sample groups, and hand results on as
ObjectRefs.

A sampling call returns one ObjectRef per reward input the reward pools asked for (the images as
that reward needs them, uint8), the trajectory of the trained steps (fp32) and a
:class:`~mixgrpo_ray.algo.rollout.RolloutMeta`. The driver forwards the images and the
trajectory, unopened, to the reward servers and the learners; it only reads the metadata.

:class:`RolloutWorkers` owns what every call carries: the reward inputs (given when the group is
made), the weight version and the published weights' manifest (set by :meth:`RolloutWorkers.receive`,
the one way new weights reach the group). Every call names that version and manifest, and its
noise comes from the call's own seed; so a call is safe to repeat: an actor
that Ray restarted after its process died (``rollout.max_restarts``) loads that version first and
redoes the call bit-identically, and a call whose actor cannot come back runs on another actor.
"""

from __future__ import annotations

from typing import Optional, Sequence

import ray
import torch

from mixgrpo_ray.algo.rollout import RolloutMeta
from mixgrpo_ray.cluster import metrics as ray_metrics, serialization
from mixgrpo_ray.cluster.actors import ActorGroup, actor_name, spawn_actors
from mixgrpo_ray.cluster.devices import actor_device
from mixgrpo_ray.cluster.retry import actor_died, get_each
from mixgrpo_ray.cluster.sampling_endpoints import SamplingEndpoints
from mixgrpo_ray.cluster.weight_sync import WeightReceiver, WeightsLost, WeightSync
from mixgrpo_ray.common.seeds import rollout_seed
from mixgrpo_ray.config import GRPOConfig, ModelConfig, RolloutConfig, SamplingConfig
from mixgrpo_ray.common.process_memory import PeakMemory
from mixgrpo_ray.models.build import build_policy, eval_batch_size, import_model_code
from mixgrpo_ray.models.reward_input import RewardInput


class RolloutWorker(SamplingEndpoints):
    """One rollout actor (create the group with :class:`RolloutWorkers`); its sampling calls are
    :class:`~mixgrpo_ray.cluster.sampling_endpoints.SamplingEndpoints`'."""

    def __init__(self, index: int, model: ModelConfig, sampling: SamplingConfig, grpo: GRPOConfig,
                 rollout: RolloutConfig, seed: int, eval_batch: int = 0) -> None:
        serialization.install()
        self.index = index
        self.eval_batch_size = eval_batch_size(model, eval_batch)
        torch.set_num_threads(rollout.torch_threads)
        torch.manual_seed(seed)
        self.device = actor_device(rollout.num_gpus)
        import_model_code(model)
        self.memory = PeakMemory(self.device)  # memory/rollout_peak_gb: what this actor holds from here on
        self.policy = build_policy(model, self.device, trainable=False)
        self.policy.train(False)
        self.policy.offload_frozen(rollout.offload_encoders)
        self.memory.loaded()
        self.sampling, self.grpo = sampling, grpo
        self.weight_version = 0
        self._loaded = False  # published weights loaded since this process started
        self.weights_ok = True  # false after a sync failed half-way, until one succeeds
        self.receiver = WeightReceiver()
        self._metrics = self._sampling_metrics = ray_metrics.RolloutMetrics(index)

    @property
    def sampler(self):
        """The policy this actor samples with: its own (:attr:`policy`)."""
        return self.policy

    def version(self) -> int:
        """The weight version this actor samples with."""
        return self.weight_version

    def _prepare(self, version: int, weights: list) -> None:
        self._use(version, weights)
        if not self.weights_ok:
            raise RuntimeError(f"rollout actor {self.index}: the last weight sync failed; refusing to sample")

    def _use(self, version: int, manifest: list) -> None:
        """Hold weight ``version`` before sampling: load its buckets (``manifest``) unless already
        loaded (none published yet: the initial weights). A restarted actor reloads this way; over
        the collective transport it cannot (the buckets are only broadcast once): it raises
        :class:`WeightsLost`, and the driver re-forms the sync group and resends them."""
        if not manifest or (self._loaded and version == self.weight_version):
            return
        if any(b.ref is None for b in manifest):  # collective: nothing to fetch by ourselves
            if not self._loaded:
                raise WeightsLost(f"rollout actor {self.index} restarted and lost weights v{version} "
                                  "(learner.sync_transport=collective broadcasts each version once)")
            raise RuntimeError(f"rollout actor {self.index} holds weights v{self.weight_version}, the call names "
                               f"v{version}, and the collective transport cannot fetch it")
        self.set_weights(version, manifest)

    def join_weight_sync(self, learner_rank: int, addr: str, port: int, rank: int, size: int, backend: str) -> None:
        self.receiver.join(learner_rank, addr, port, rank, size, backend)

    def set_weights(self, version: int, manifest: list) -> int:
        """Load a sync's buckets (``[BucketRef]`` of every learner rank) in place, each checked
        against its checksum before it is loaded; reports ``version`` only when all loaded."""
        self.weights_ok = False
        self.receiver.load(version, manifest, self.policy.trainable_tensors())
        self.weights_ok = True
        self.weight_version = int(version)
        self._loaded = True
        self._metrics.version(self.weight_version)
        return self.weight_version

    def trainable_state(self) -> dict:
        """Copies of the trainable weights this actor samples with."""
        return self.policy.trainable_state_dict()


class RolloutWorkers(ActorGroup):
    """``rollout.num_workers`` actors ``mixgrpo/rollout/<i>``; an iteration's prompts are split
    into ``num_workers`` calls (or calls of ``rollout.prompts_per_call`` prompts), call ``c`` on
    live actor ``c mod live``. The calls and their seeds never depend on which actors are alive, so
    a call redone elsewhere gives the same samples. ``eval_batch`` is ``data.eval_batch_size`` (0:
    the model's default)."""

    def __init__(self, model: ModelConfig, sampling: SamplingConfig, grpo: GRPOConfig, rollout: RolloutConfig,
                 seed: int, eval_batch: int = 0, inputs: Sequence[Optional[RewardInput]] = (None,),
                 actors: Optional[list] = None) -> None:
        """``inputs``: the images every call returns, one object per reward input the reward
        pools need (:meth:`~mixgrpo_ray.rewards.server.RewardPools.inputs`; ``None``: as sampled).
        ``actors``: sample on these (actors answering the same calls, e.g. colocated hybrid
        workers) instead of starting ``rollout.num_workers`` rollout actors."""
        super().__init__(actors if actors is not None else spawn_actors(
            RolloutWorker, "rollout", rollout.num_workers, rollout,
            lambda i: (i, model, sampling, grpo, rollout, seed, eval_batch),
            max_restarts=rollout.max_restarts, max_task_retries=rollout.max_restarts,
        ))
        self.eval_batch_size = eval_batch_size(model, eval_batch)
        self.prompts_per_call = rollout.prompts_per_call
        self.num_calls = rollout.num_workers
        self.group_size = grpo.group_size
        self.seed = seed
        self.live = list(range(len(self.actors)))  # indices of actors that can still take calls
        self.pids = self.get_all("pid")
        self.inputs: tuple = tuple(inputs)
        self.version, self.weights = 0, []  # the published weights (sync manifest) every call names

    def receive(self, weight_sync: WeightSync, bump: bool = True) -> tuple[int, dict, list[int]]:
        """Load new weights on every live actor through ``weight_sync`` (``bump=False``: the
        current version again, e.g. after a restarted actor lost it); returns ``(version, sync
        statistics, indices of actors found dead for good)``. The dead are out of the rotation;
        later calls name the version and its manifest. Raises when no actor is left."""
        live = list(self.live)
        version, stats = weight_sync.sync(bump=bump, rollouts=[self.actors[i] for i in live])
        gone = [live[pos] for pos in weight_sync.gone]
        for index in gone:
            self.drop(index)
        self.actor_for(0)  # raises when no rollout actor is left
        self.version, self.weights = version, list(weight_sync.manifest)
        return version, stats, gone

    def calls(self, prompts: list) -> list[list]:
        """The prompts of each sampling call, in order."""
        if self.prompts_per_call:
            n = self.prompts_per_call
            return [prompts[i : i + n] for i in range(0, len(prompts), n)]
        return split_evenly(prompts, self.num_calls)

    def actor_for(self, call: int) -> int:
        if not self.live:
            raise RuntimeError("every rollout actor is dead and cannot be restarted (rollout.max_restarts)")
        return self.live[call % len(self.live)]

    def submit(self, call: int, chunk: list[str], window: Sequence[int], iteration: int) -> tuple:
        """Start sampling call ``call`` of ``iteration``: ``(prompts, images, trajectory_ref,
        meta_ref)``, each prompt repeated ``group_size`` times (one per image); ``images`` maps each
        of :attr:`inputs` to the ObjectRef of the images as that reward input needs them."""
        actor = self.actors[self.actor_for(call)]
        inputs = list(self.inputs)
        *images, traj, meta = actor.sample.options(num_returns=len(inputs) + 2).remote(
            chunk, list(window), rollout_seed(self.seed, iteration, call), self.version, self.weights, inputs)
        return [p for p in chunk for _ in range(self.group_size)], dict(zip(inputs, images)), traj, meta

    def sample(self, prompts: list[str], window: Sequence[int], iteration: int) -> list[tuple]:
        """Start every sampling call of ``iteration`` (see :meth:`submit`)."""
        return [self.submit(c, chunk, window, iteration) for c, chunk in enumerate(self.calls(prompts))]

    def restarted(self, metas: Sequence[RolloutMeta]) -> list[str]:
        """Names of the actors whose process changed since it was last seen (Ray restarted them)."""
        names = []
        for m in metas:
            if m.pid and m.pid != self.pids[m.worker]:
                self.pids[m.worker] = m.pid
                names.append(actor_name("rollout", m.worker))
        return names

    def drop(self, index: int) -> None:
        """Take actor ``index`` out of the rotation (it died and cannot be restarted)."""
        if index in self.live:
            self.live.remove(index)

    def dead_of(self, error: BaseException) -> list[int]:
        """The live actors that are gone for good, after a call failed with ``error``."""
        if not actor_died(error):
            return []
        states = get_each([self.actors[i].pid.remote() for i in self.live], timeout_s=60)
        return [i for i, st in zip(list(self.live), states) if isinstance(st, BaseException) and actor_died(st)]

    def sample_eval(self, prompts: list[str], seeds: list[int]) -> list[tuple[list[str], dict]]:
        """Evaluation images of every (prompt, seed) pair, spread evenly over the live actors in
        calls of at most ``eval_batch_size`` images (in order): ``(prompts, images)`` per call,
        ``images`` mapping each of :attr:`inputs` to an ObjectRef as in :meth:`submit`."""
        return [self.submit_eval(self.actors[self.actor_for(c)], chunk)
                for c, chunks in enumerate(self.eval_chunks(prompts, seeds)) for chunk in chunks]

    def eval_chunks(self, prompts: list[str], seeds: list[int]) -> list[list[list[tuple[str, int]]]]:
        """The (prompt, seed) pairs spread evenly over the live actors (in order), each actor's
        share cut into calls of at most ``eval_batch_size`` images."""
        shares = split_evenly(list(zip(prompts, seeds)), len(self.live))
        return [[share[i : i + self.eval_batch_size] for i in range(0, len(share), self.eval_batch_size)]
                for share in shares]

    def submit_eval(self, actor, chunk: list[tuple[str, int]]) -> tuple[list[str], dict]:
        """Start one evaluation call of ``chunk`` on ``actor``: ``(prompts, images)`` as in
        :meth:`sample_eval`."""
        inputs = list(self.inputs)
        ps = [p for p, _ in chunk]
        refs = actor.sample_eval.options(num_returns=len(inputs)).remote(
            ps, [s for _, s in chunk], self.version, self.weights, inputs)
        refs = refs if len(inputs) > 1 else [refs]  # Ray returns one ref itself for num_returns=1
        return ps, dict(zip(inputs, refs))

    def grid_png(self, prompts: list[str], seed: int, title: str) -> bytes:
        actor = self.actors[self.actor_for(0)]
        return ray.get(actor.grid_png.remote(prompts, seed, self.version, self.weights, title))


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
