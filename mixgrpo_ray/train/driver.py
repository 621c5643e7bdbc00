"""The single-controller training loop: sample, score, advantage, train, broadcast.

The driver holds prompts, scalars, advantages and ObjectRefs only. Images travel from rollout
actors to reward servers and trajectories from rollout actors to learners as ObjectRefs that
the driver never opens. Each role is one group object built from its own config sections; with
``run.placement=colocated`` the rollout and learner groups are two views of the same hybrid workers
(:mod:`mixgrpo_ray.train.colocation`), whose trajectories stay where they were sampled.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Callable, Optional

import ray
import torch

from mixgrpo_ray.actors.rollout_workers import RolloutWorkers
from mixgrpo_ray.algo.advantages import batch_advantages
from mixgrpo_ray.algo.rollout import RolloutMeta
from mixgrpo_ray.cluster import metrics as ray_metrics, serialization
from mixgrpo_ray.cluster.actors import actor_name
from mixgrpo_ray.cluster.weight_sync import WeightSync
from mixgrpo_ray.common import checkpoint as ckpt
from mixgrpo_ray.common.seeds import GRID_SEED, eval_seeds
from mixgrpo_ray.config import Config
from mixgrpo_ray.core.window import SlidingWindow
from mixgrpo_ray.data.prompts import PromptSampler, load_prompts
from mixgrpo_ray.learner.group import LearnerGroup
from mixgrpo_ray.rewards.server import RewardPools
from mixgrpo_ray.train.colocation import colocated_roles
from mixgrpo_ray.train.faults import FaultLog
from mixgrpo_ray.train.metric_rows import eval_row, iteration_row, rollout_columns
from mixgrpo_ray.train.recovery import GroupReformed, check_finite, check_finite_loss, collect_rollouts, stop_cleanly
from mixgrpo_ray.train.run_dir import RunDir
from mixgrpo_ray.train.timing import PhaseTimer


@dataclasses.dataclass
class PendingRollout:
    """An iteration's rollout calls, started (and possibly not finished)."""

    iteration: int
    window: list[int]
    batches: list
    sampler_before: dict  # the prompt sampler's state before this iteration drew its prompts


@dataclasses.dataclass
class RolloutBatch:
    """One rollout call's results: refs the driver forwards, and what it reads itself."""

    prompts: list[str]  # one per image (each prompt repeated group_size times)
    images: dict  # reward input (None: as sampled) -> ObjectRef of the images as that input needs them
    trajectory: ray.ObjectRef
    meta: ray.ObjectRef  # -> RolloutMeta
    scores: dict  # reward name -> ObjectRef of (B,) scores, requested as soon as the call started


class Driver:
    def __init__(self, cfg: Config, run_dir: Optional[RunDir] = None) -> None:
        serialization.install()
        self.cfg = cfg
        self.run_dir = run_dir
        self.window = SlidingWindow(num_steps=cfg.sampling.num_steps, seed=cfg.run.seed, **vars(cfg.window))
        self.sampler = PromptSampler(load_prompts(cfg.data.train), seed=cfg.run.seed, shuffle=cfg.data.shuffle)
        self.sampler_before: Optional[dict] = None  # set while an iteration is under way
        eval_prompts = load_prompts(cfg.data.eval)
        self.eval_prompts = eval_prompts[: cfg.data.eval_prompts] if cfg.data.eval_prompts else eval_prompts
        # grid prompts spread evenly over the held-out set (it is ordered by attributes)
        n = min(cfg.run.grid_prompts, len(self.eval_prompts))
        self.grid_prompts = [self.eval_prompts[(i * len(self.eval_prompts)) // n] for i in range(n)] if n else []
        self.weights = {name: r.weight for name, r in cfg.rewards.items() if r.weight > 0}
        self.iteration = 0
        self.version = 0
        self.last_iteration = cfg.run.iterations
        # the next iteration, already sampling: started right after a sync (with the weights just
        # published) or, with run.pipeline=async, while the learner trains (one version behind)
        self._next: Optional[PendingRollout] = None
        self.sync_stats: dict = {}
        self.timer = PhaseTimer()
        self.faults = FaultLog()
        self.checkpointed_at = time.monotonic()
        # where a re-formed learner group starts when no checkpoint was written yet (train/recovery.py)
        self.initial_state = {"window": self.window.state_dict(), "sampler": self.sampler.state_dict()}
        self.learner_restarts = 0  # re-formings of the learner group so far (learner.max_restarts)
        self.rollout: Optional[RolloutWorkers] = None
        self.rewards: Optional[RewardPools] = None
        self.learners: Optional[LearnerGroup] = None
        try:  # the roles, each scaled by its own config section
            self.rewards = RewardPools(cfg.rewards)
            # learned once from the reward servers: rollout actors send each pool images resized
            # as its model needs them (full resolution only where one needs it)
            self.inputs = self.rewards.inputs()
            if cfg.run.placement != "colocated":
                self.rollout = RolloutWorkers(cfg.model, cfg.sampling, cfg.grpo, cfg.rollout, cfg.run.seed,
                                              cfg.data.eval_batch_size, inputs=self.inputs)
            self.start_learners()
        except BaseException:
            self.shutdown()  # leave no half-started run behind
            raise
        self.metrics = ray_metrics.DriverMetrics()

    def start_learners(self) -> None:
        """Start the learner group and the weight sync to the live rollout actors; colocated, the
        hybrid workers, which are the rollout group too (at the start, and when a lost group is
        re-formed: :func:`mixgrpo_ray.train.recovery.reform`)."""
        cfg = self.cfg
        if cfg.run.placement == "colocated":  # hybrid workers: one set of actors plays both roles
            self.learners, self.rollout, self.weight_sync = colocated_roles(cfg, self.inputs)
            return
        self.learners = LearnerGroup(cfg.model, cfg.optim, cfg.grpo.clip_range, cfg.learner, cfg.run.seed,
                                     max_importance_weight=cfg.grpo.max_importance_weight)
        self.weight_sync = WeightSync(self.learners.actors, [self.rollout.actors[i] for i in self.rollout.live],
                                      cfg.learner.sync_transport, sync_backend(cfg))

    # ------------------------------------------------------------------------------------------
    # The five phases of an iteration
    # ------------------------------------------------------------------------------------------
    def sample(self, prompts: list[str], window: list[int], iteration: int) -> list[RolloutBatch]:
        """Start every rollout call and, for each, its scoring at every reward pool (Ray runs a
        scoring request as soon as that call's images exist)."""
        return [self._scored(*call) for call in self.rollout.sample(prompts, window, iteration)]

    def _scored(self, prompts: list[str], images, trajectory, meta) -> RolloutBatch:
        return RolloutBatch(prompts, images, trajectory, meta, self.rewards.submit(images, prompts))

    def collect(self, batches: list[RolloutBatch], window: list[int], iteration: int) -> list[RolloutMeta]:
        """Wait for the rollout calls; a call whose actor is gone for good is redone on another, and
        one whose restarted actor lost the weights is redone after they are sent again."""
        chunks = [b.prompts[:: self.cfg.grpo.group_size] for b in batches]
        return collect_rollouts(self.rollout, batches,
                                lambda c: self._scored(*self.rollout.submit(c, chunks[c], window, iteration)), self.faults,
                                self.weight_sync, resend=lambda: self.broadcast(bump=False))

    def score(self, batches: list[RolloutBatch]) -> dict[str, torch.Tensor]:
        """Every reward's scores, flat in sample order (failed replicas and timeouts retried)."""
        return self.rewards.gather([b.scores for b in batches], self.faults.record)

    def advantages(self, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """Group-relative advantages over the trained rewards (docs/algorithm.md eqs. (29)-(31)),
        flat in sample order; non-finite scores are left out of their reward's statistics and counted."""
        check_finite(scores, self.weights, self.faults)
        return batch_advantages(scores, self.weights, self.cfg.grpo, {n: True for n in self.weights})

    def can_fail(self) -> dict[str, bool]:
        """Which rewards may return NaN for an image by design (their failures are reported per row)."""
        return {name: pool.can_fail for name, pool in self.rewards.items()}

    def train(self, batches: list[RolloutBatch], advantages: torch.Tensor, iteration: int) -> dict:
        stats = self.learners.train([b.trajectory for b in batches], advantages, iteration,
                                    sizes=[len(b.prompts) for b in batches])
        check_finite_loss(stats, len(advantages), self.faults)
        return stats

    def broadcast(self, bump: bool = True) -> int:
        """Every learner rank publishes what it owns; every live rollout actor loads and verifies
        it before sampling (``learner.sync_transport``), and every later call names it."""
        try:
            version, self.sync_stats, gone = self.rollout.receive(self.weight_sync, bump=bump)
        except ray.exceptions.RayError as exc:  # a learner rank died while publishing: LearnerFailed
            raise self.learners.failure(exc) from exc
        for index in gone:
            self.faults.record("rollout_reassigned", actor_name("rollout", index),
                               "died and cannot be restarted; the other actors take its calls")
        self.version = version
        return version

    def start_rollout(self, iteration: int, window: list[int]) -> PendingRollout:
        """Draw the iteration's prompts and start its sampling (and scoring)."""
        before = self.sampler.state_dict()
        prompts = self.sampler.next_batch(self.cfg.data.prompts_per_iteration)
        return PendingRollout(iteration, window, self.sample(prompts, window, iteration), before)

    def prefetch_allowed(self, iteration: int) -> bool:
        """``run.pipeline=async``: may the next iteration be sampled now, with the current weights,
        while the learner trains? Its rollout then lags one version (needs ``learner.max_staleness``
        >= 1); not past the last iteration, nor before a checkpoint (whose sampler state must not
        include a batch already drawn)."""
        every = self.cfg.run.checkpoint_every
        return (self.cfg.run.pipeline == "async" and self.cfg.learner.max_staleness >= 1
                and iteration < self.last_iteration and not (every and iteration % every == 0))

    def run_iteration(self) -> dict:
        """One iteration of the five phases; returns its metrics row."""
        it = self.iteration + 1
        if self._next is not None:  # already sampled (and being scored): after the last sync, or async
            pending, self._next = self._next, None
        else:
            pending = self.start_rollout(it, self.window.current())
        window, batches = pending.window, pending.batches
        self.sampler_before = pending.sampler_before
        self.timer.reset()
        with self.timer.phase("rollout"):
            metas = self.collect(batches, window, it)
        with self.timer.phase("reward"):
            scores = self.score(batches)
        if self.prefetch_allowed(it):  # rollout actors sample it + 1 while the learner trains it
            ahead = copy.deepcopy(self.window)
            ahead.step()
            self._next = self.start_rollout(it + 1, ahead.current())
        with self.timer.phase("train"):
            adv = self.advantages(scores)
            stats = self.train(batches, adv, it)
        with self.timer.phase("sync"):
            self.broadcast()
        self.window.step()
        self.iteration = it
        self.sampler_before = None
        if self._next is None and it < self.last_iteration:
            # the next iteration samples with the weights just published (exactly on-policy) while
            # this one's metrics, rollout log, evaluation and checkpoint are written
            self._next = self.start_rollout(it + 1, self.window.current())

        window_start = window[0] if self.cfg.grpo.algorithm == "mixgrpo" else -1
        row = iteration_row(it, window_start, self.version, metas, scores, self.weights, self.can_fail(), adv, stats,
                            self.timer.seconds)
        row.update(self.faults.take())
        row.update(self.sync_stats)
        if self.cfg.run.log_rollouts:
            versions = [m.version for b, m in zip(batches, metas) for _ in b.prompts]
            self.run_dir.write_rollouts(it, rollout_columns(
                it, [p for b in batches for p in b.prompts], self.cfg.grpo.group_size, versions, window[0], adv, scores))
        return row

    def train_until(self, iterations: int, after_iteration: Callable[[dict], None]) -> None:
        """The training loop: iterations until ``iterations``, each followed by periodic
        evaluation, grids and checkpoints, then ``after_iteration(row)`` (logging, progress)."""
        r = self.cfg.run
        self.last_iteration = iterations
        while self.iteration < iterations:
            try:
                # a learner rank (colocated: a hybrid worker) that dies in here is healed: the group
                # is re-formed from the last checkpoint and the loop goes on from there
                with stop_cleanly(self, heal=True):
                    row = self.run_iteration()
                    it = self.iteration
                    if r.eval_every and it % r.eval_every == 0 and it < iterations:
                        row.update(self.evaluate())
                    if r.grid_every and it % r.grid_every == 0:
                        self.grid(ckpt.checkpoint_name(it))
                    self.run_dir.append_metrics(row)
                    self.metrics.record(row)
                    if self.checkpoint_due():
                        self.checkpoint()
            except GroupReformed:
                continue
            after_iteration(row)

    # ------------------------------------------------------------------------------------------
    # Evaluation, pictures, checkpoints
    # ------------------------------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Every reward on the held-out prompts, ``data.eval_seeds`` fixed noises each: mean and
        standard error per reward (deterministic ODE sampling with the current weights)."""
        seeds = eval_seeds(self.cfg.data.eval_seeds)
        pairs = [(p, s) for s in seeds for p in self.eval_prompts]
        calls = self.rollout.sample_eval([p for p, _ in pairs], [s for _, s in pairs])
        scores = self.rewards.gather([self.rewards.submit(images, ps) for ps, images in calls], self.faults.record)
        return {**eval_row(scores), "eval/images": len(pairs)}

    def grid(self, label: str) -> Optional[Path]:
        if not self.grid_prompts:
            return None
        png = self.rollout.grid_png(self.grid_prompts, GRID_SEED, f"{label} (weights v{self.version})")
        return self.run_dir.write_grid(f"{label}.png", png)

    def rewind(self) -> None:
        """Undo the prompt draw of an iteration that did not complete (if one is under way)."""
        if self.sampler_before is not None:
            self.sampler.load_state_dict(self.sampler_before)
            self.sampler_before = None

    def checkpoint_due(self) -> bool:
        """Every ``run.checkpoint_every`` iterations, or ``run.checkpoint_every_s`` seconds."""
        r = self.cfg.run
        every_it = bool(r.checkpoint_every) and self.iteration % r.checkpoint_every == 0
        return every_it or bool(r.checkpoint_every_s) and time.monotonic() - self.checkpointed_at >= r.checkpoint_every_s

    def checkpoint(self) -> Path:
        staging = ckpt.staging_dir(self.run_dir.path, self.iteration)
        self.learners.save_checkpoint(str(staging))
        state = {
            "iteration": self.iteration,
            "version": self.version,
            "window": self.window.state_dict(),
            # the next iteration's prompts may be drawn already: they are drawn again on resume
            "sampler": self._next.sampler_before if self._next is not None else self.sampler.state_dict(),
        }
        path = ckpt.commit(self.run_dir.path, staging, self.iteration, state)
        ckpt.prune(self.run_dir.path, self.cfg.run.keep_checkpoints)
        self.checkpointed_at = time.monotonic()
        return path

    def restore(self, checkpoint: Optional[Path]) -> None:
        """Continue from ``checkpoint`` (the learners load it); ``None``: from the start of the
        run (the learners as they started, which a new group is). The rollout actors get the
        weights and the next rollout starts afresh."""
        self._next = None
        if checkpoint is None:
            state, version = {"iteration": 0, "version": 0, **self.initial_state}, self.learners.get_together("version")[0]
        else:
            ckpt.verify(checkpoint)
            state = ckpt.read_state(checkpoint)
            version = self.learners.load_checkpoint(str(checkpoint))
        if version != state["version"]:
            raise RuntimeError(f"checkpoint {checkpoint} is inconsistent: learner v{version}, driver v{state['version']}")
        self.window.load_state_dict(state["window"])
        self.sampler.load_state_dict(state["sampler"])
        self.sampler_before = None
        self.iteration = int(state["iteration"])
        self.broadcast(bump=False)

    def actors(self) -> list:
        seen: dict = {}
        for group in (self.rollout, self.rewards, self.learners):
            for a in group.actors if group is not None else []:
                seen.setdefault(a._actor_id, a)  # colocated: the rollout and learner groups share actors
        return list(seen.values())

    def shutdown(self) -> None:
        """Kill every actor of the run and wait until their names are free again."""
        for group in (self.rollout, self.rewards, self.learners):
            if group is not None:
                group.shutdown()


def sync_backend(cfg: Config) -> str:
    """The collective weight-sync backend: ``learner.backend``, or with ``auto`` NCCL when both
    learners and rollout actors have GPUs, else gloo."""
    if cfg.learner.backend != "auto":
        return cfg.learner.backend
    return "nccl" if cfg.learner.num_gpus > 0 and cfg.rollout.num_gpus > 0 else "gloo"
