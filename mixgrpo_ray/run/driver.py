"""The single-controller training loop: sample, score, advantage, train, broadcast.

The driver holds prompts, scalars, advantages and ObjectRefs only. Images travel from rollout
actors to reward servers and trajectories from rollout actors to learners as ObjectRefs that
the driver never opens. Each role is one group object built from its own config sections.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

import ray
import torch

from mixgrpo_ray.actors.rollout import RolloutWorkers
from mixgrpo_ray.algo.rollout import RolloutMeta
from mixgrpo_ray.cluster import metrics as ray_metrics
from mixgrpo_ray.cluster.weight_sync import WeightSync
from mixgrpo_ray.common import checkpoint as ckpt
from mixgrpo_ray.common.seeds import GRID_SEED, eval_seeds
from mixgrpo_ray.config import Config
from mixgrpo_ray.core.grpo import group_advantages
from mixgrpo_ray.core.window import SlidingWindow
from mixgrpo_ray.data.prompts import PromptSampler, load_prompts
from mixgrpo_ray.learner.group import LearnerGroup
from mixgrpo_ray.rewards.server import RewardPools
from mixgrpo_ray.run.metric_rows import eval_row, iteration_row, rollout_columns
from mixgrpo_ray.run.run_dir import RunDir
from mixgrpo_ray.run.timing import PhaseTimer


@dataclasses.dataclass
class RolloutBatch:
    """One rollout call's results: refs the driver forwards, and what it reads itself."""

    prompts: list[str]  # one per image (each prompt repeated group_size times)
    images: ray.ObjectRef
    trajectory: ray.ObjectRef
    meta: ray.ObjectRef  # -> RolloutMeta
    scores: dict  # reward name -> ObjectRef of (B,) scores, requested as soon as the call started


class Driver:
    def __init__(self, cfg: Config, run_dir: RunDir) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.window = SlidingWindow(num_steps=cfg.sampling.num_steps, seed=cfg.run.seed, **vars(cfg.window))
        self.sampler = PromptSampler(load_prompts(cfg.data.train), seed=cfg.run.seed, shuffle=cfg.data.shuffle)
        eval_prompts = load_prompts(cfg.data.eval)
        self.eval_prompts = eval_prompts[: cfg.data.eval_prompts] if cfg.data.eval_prompts else eval_prompts
        # grid prompts spread evenly over the held-out set (it is ordered by attributes)
        n = min(cfg.run.grid_prompts, len(self.eval_prompts))
        self.grid_prompts = [self.eval_prompts[(i * len(self.eval_prompts)) // n] for i in range(n)] if n else []
        self.weights = {name: r.weight for name, r in cfg.rewards.items() if r.weight > 0}
        self.iteration = 0
        self.version = 0
        self.sync_stats: dict = {}
        self.timer = PhaseTimer()
        self.rollout: Optional[RolloutWorkers] = None
        self.rewards: Optional[RewardPools] = None
        self.learners: Optional[LearnerGroup] = None
        try:  # the roles, each scaled by its own config section
            self.rollout = RolloutWorkers(cfg.model, cfg.sampling, cfg.grpo, cfg.rollout, cfg.run.seed)
            self.rewards = RewardPools(cfg.rewards)
            self.learners = LearnerGroup(cfg.model, cfg.optim, cfg.grpo.clip_range, cfg.learner, cfg.run.seed)
            self.weight_sync = WeightSync(self.learners.actors, self.rollout.actors, cfg.learner.sync_transport,
                                          sync_backend(cfg))
        except BaseException:
            self.shutdown()  # leave no half-started run behind
            raise
        self.metrics = ray_metrics.DriverMetrics()

    # ------------------------------------------------------------------------------------------
    # The five phases of an iteration
    # ------------------------------------------------------------------------------------------
    def sample(self, prompts: list[str], window: list[int], iteration: int) -> list[RolloutBatch]:
        """Start every rollout call and, for each, its scoring at every reward pool (Ray runs a
        scoring request as soon as that call's images exist)."""
        return [
            RolloutBatch(ps, images, traj, meta, self.rewards.submit(images, ps))
            for ps, images, traj, meta in self.rollout.sample(prompts, window, iteration)
        ]

    def score(self, batches: list[RolloutBatch]) -> dict[str, torch.Tensor]:
        """Every reward's scores, flat in sample order."""
        return {name: torch.cat(ray.get([b.scores[name] for b in batches])) for name in self.rewards}

    def advantages(self, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """Group-relative advantages over the trained rewards (docs/algorithm.md eqs. (29)-(31)),
        flat in sample order; NaN scores of a reward that may fail are left out."""
        g = self.cfg.grpo.group_size
        grouped = {n: scores[n].reshape(-1, g) for n in self.weights}
        valid = {n: torch.isfinite(grouped[n]) for n in self.weights if self.rewards[n].can_fail}
        adv = group_advantages(grouped, self.weights, mode=self.cfg.grpo.advantage_mode,
                               clip=self.cfg.grpo.advantage_clip, valid=valid)
        return adv.reshape(-1)

    def train(self, batches: list[RolloutBatch], advantages: torch.Tensor, iteration: int) -> dict:
        return self.learners.train([b.trajectory for b in batches], advantages, iteration)

    def broadcast(self, bump: bool = True) -> int:
        """Every learner rank publishes what it owns; every rollout actor loads and verifies it
        before sampling (``learner.sync_transport``)."""
        version, self.sync_stats = self.weight_sync.sync(bump=bump)
        self.version = version
        return version

    def run_iteration(self) -> dict:
        """One iteration of the five phases; returns its metrics row."""
        it = self.iteration + 1
        window = self.window.current()
        prompts = self.sampler.next_batch(self.cfg.data.prompts_per_iteration)
        self.timer.reset()
        with self.timer.phase("rollout"):
            batches = self.sample(prompts, window, it)
            metas: list[RolloutMeta] = ray.get([b.meta for b in batches])
        with self.timer.phase("reward"):
            scores = self.score(batches)
        with self.timer.phase("train"):
            adv = self.advantages(scores)
            stats = self.train(batches, adv, it)
        with self.timer.phase("sync"):
            self.broadcast()
        self.window.step()
        self.iteration = it

        window_start = window[0] if self.cfg.grpo.algorithm == "mixgrpo" else -1
        can_fail = {name: pool.can_fail for name, pool in self.rewards.items()}
        row = iteration_row(it, window_start, self.version, metas, scores, self.weights, can_fail, adv, stats,
                            self.timer.seconds)
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
        while self.iteration < iterations:
            row = self.run_iteration()
            it = self.iteration
            if r.eval_every and it % r.eval_every == 0 and it < iterations:
                row.update(self.evaluate())
            if r.grid_every and it % r.grid_every == 0:
                self.grid(ckpt.checkpoint_name(it))
            self.run_dir.append_metrics(row)
            self.metrics.record(row)
            if r.checkpoint_every and it % r.checkpoint_every == 0:
                self.checkpoint()
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
        refs = [self.rewards.submit(images, ps) for ps, images in calls]
        scores = {name: torch.cat(ray.get([r[name] for r in refs])) for name in self.rewards}
        return {**eval_row(scores), "eval/images": len(pairs)}

    def grid(self, label: str) -> Optional[Path]:
        if not self.grid_prompts:
            return None
        png = self.rollout.grid_png(self.grid_prompts, GRID_SEED, f"{label} (weights v{self.version})")
        return self.run_dir.write_grid(f"{label}.png", png)

    def checkpoint(self) -> Path:
        staging = ckpt.staging_dir(self.run_dir.path, self.iteration)
        self.learners.save_checkpoint(str(staging))
        state = {
            "iteration": self.iteration,
            "version": self.version,
            "window": self.window.state_dict(),
            "sampler": self.sampler.state_dict(),
        }
        return ckpt.commit(self.run_dir.path, staging, self.iteration, state)

    def restore(self, checkpoint: Path) -> None:
        state = ckpt.read_state(checkpoint)
        version = self.learners.load_checkpoint(str(checkpoint))
        if version != state["version"]:
            raise RuntimeError(f"checkpoint {checkpoint} is inconsistent: learner v{version}, driver v{state['version']}")
        self.window.load_state_dict(state["window"])
        self.sampler.load_state_dict(state["sampler"])
        self.iteration = int(state["iteration"])
        self.broadcast(bump=False)

    def actors(self) -> list:
        return [a for g in (self.rollout, self.rewards, self.learners) if g is not None for a in g.actors]

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
