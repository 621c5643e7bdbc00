"""The single-controller training loop: sample, score, advantage, train, broadcast.

The driver holds prompts, scalars, advantages and ObjectRefs only. Images travel from rollout
actors to reward servers and trajectories from rollout actors to learners as ObjectRefs that
the driver never opens.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import ray
import torch

from mixgrpo_ray.actors.rollout import create_rollout_workers
from mixgrpo_ray.learner.group import LearnerGroup
from mixgrpo_ray.algo.update import update_plan
from mixgrpo_ray.cluster import metrics as ray_metrics
from mixgrpo_ray.cluster.actors import kill_actors
from mixgrpo_ray.config import Config
from mixgrpo_ray.core.grpo import group_advantages
from mixgrpo_ray.data.prompts import PromptSampler, load_prompts
from mixgrpo_ray.run.run_dir import RunDir
from mixgrpo_ray.core.window import SlidingWindow
from mixgrpo_ray.rewards.server import create_reward_pools


def make_window(cfg: Config) -> SlidingWindow:
    w = cfg.window
    return SlidingWindow(
        size=w.size, shift_interval=w.shift_interval, stride=w.stride, strategy=w.strategy,
        num_steps=cfg.sampling.num_steps, interval_schedule=w.interval_schedule, at_end=w.at_end,
        seed=cfg.run.seed, initial_start=w.initial_start, min_shift_interval=w.min_shift_interval,
    )


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


@dataclass
class RolloutBatch:
    """One rollout call's results: refs the driver forwards, and what it reads itself."""

    prompts: list[str]  # one per image (each prompt repeated group_size times)
    images: ray.ObjectRef
    trajectory: ray.ObjectRef
    meta: ray.ObjectRef


class Driver:
    def __init__(self, cfg: Config, run_dir: RunDir) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.window = make_window(cfg)
        self.sampler = PromptSampler(load_prompts(cfg.data.train), seed=cfg.run.seed, shuffle=cfg.data.shuffle)
        eval_prompts = load_prompts(cfg.data.eval)
        if cfg.data.eval_prompts:
            eval_prompts = eval_prompts[: cfg.data.eval_prompts]
        self.eval_prompts = eval_prompts
        # grid prompts spread evenly over the held-out set (it is ordered by attributes)
        n = min(cfg.run.grid_prompts, len(eval_prompts))
        self.grid_prompts = [eval_prompts[(i * len(eval_prompts)) // n] for i in range(n)] if n else []
        self.weights = {n: r.weight for n, r in cfg.rewards.items() if r.weight > 0}
        self.iteration = 0
        self.version = 0
        # the roles, each scaled by its own config
        self.rollout: list = []
        self.rewards: dict = {}
        self.learners = None
        try:
            self.rollout = create_rollout_workers(cfg)
            self.rewards = create_reward_pools(cfg.rewards)
            self.learners = LearnerGroup(cfg)
        except BaseException:
            self.shutdown()  # leave no half-started run behind
            raise
        self.metrics = ray_metrics.DriverMetrics()

    # ------------------------------------------------------------------------------------------
    # The five phases of an iteration
    # ------------------------------------------------------------------------------------------
    def sample(self, prompts: list[str], window: list[int], iteration: int) -> list[RolloutBatch]:
        """Split the prompts over the rollout actors; each returns images/trajectory refs."""
        g = self.cfg.grpo.group_size
        per_call = self.cfg.rollout.prompts_per_call
        if per_call:
            chunks = [prompts[i : i + per_call] for i in range(0, len(prompts), per_call)]
        else:
            chunks = split_evenly(prompts, len(self.rollout))
        batches = []
        for c, chunk in enumerate(chunks):
            worker = self.rollout[c % len(self.rollout)]
            seed = self.cfg.run.seed * 1_000_003 + iteration * 1009 + c
            images, traj, meta = worker.sample.remote(chunk, g, window, seed)
            batches.append(RolloutBatch([p for p in chunk for _ in range(g)], images, traj, meta))
        return batches

    def score(self, image_refs: list[ray.ObjectRef], prompts: list[list[str]]) -> dict[str, torch.Tensor]:
        """Every reward pool scores every batch (requests go out at once; Ray starts each as
        soon as its images exist). Returns name -> flat scores in batch order."""
        refs = {name: [pool.submit(img, p) for img, p in zip(image_refs, prompts)] for name, pool in self.rewards.items()}
        return {name: torch.cat(ray.get(r)) for name, r in refs.items()}

    def advantages(self, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """Group-relative advantages over the trained rewards, flat in sample order."""
        g = self.cfg.grpo.group_size
        grouped = {n: scores[n].reshape(-1, g) for n in self.weights}
        valid = {n: torch.isfinite(grouped[n]) for n in self.weights if self.rewards[n].can_fail}
        adv = group_advantages(
            grouped, self.weights, mode=self.cfg.grpo.advantage_mode, clip=self.cfg.grpo.advantage_clip, valid=valid
        )
        return adv.reshape(-1)

    def train(self, batches: list[RolloutBatch], advantages: torch.Tensor, iteration: int) -> dict:
        plan = update_plan(
            len(advantages), self.cfg.optim.samples_per_update, self.learners.world_size,
            seed=self.cfg.run.seed * 7 + iteration,
        )
        return self.learners.train([b.trajectory for b in batches], advantages, plan)

    def broadcast(self, bump: bool = True) -> int:
        """Publish the learner's weights once; every rollout actor loads them before sampling."""
        version, ref = self.learners.publish(bump=bump)
        loaded = ray.get([w.set_weights.remote(version, ref) for w in self.rollout])
        if set(loaded) != {version}:
            raise RuntimeError(f"rollout actors hold versions {loaded}, expected {version}")
        self.version = version
        return version

    # ------------------------------------------------------------------------------------------
    def run_iteration(self) -> dict:
        it = self.iteration + 1
        t0 = time.perf_counter()
        window = self.window.current()
        prompts = self.sampler.next_batch(self.cfg.data.prompts_per_iteration)

        batches = self.sample(prompts, window, it)
        metas = ray.get([b.meta for b in batches])
        t_rollout = time.perf_counter()
        scores = self.score([b.images for b in batches], [b.prompts for b in batches])
        t_reward = time.perf_counter()
        adv = self.advantages(scores)
        stats = self.train(batches, adv, it)
        t_train = time.perf_counter()
        self.broadcast()
        t_sync = time.perf_counter()
        self.window.step()
        self.iteration = it

        row = self._iteration_row(it, window, metas, scores, adv, stats,
                                  (t0, t_rollout, t_reward, t_train, t_sync))
        if self.cfg.run.log_rollouts:
            self._write_rollouts(it, batches, metas, scores, adv, window)
        return row

    def _iteration_row(self, it, window, metas, scores, adv, stats, times) -> dict:
        t0, t_rollout, t_reward, t_train, t_sync = times
        images = sum(m["num_images"] for m in metas)
        row: dict = {
            "iteration": it,
            "window_start": window[0] if self.cfg.grpo.algorithm == "mixgrpo" else -1,
            "weight_version": self.version,
            "rollout_versions": sorted({m["version"] for m in metas}),
        }
        total = 0.0
        wsum = sum(self.weights.values())
        for name, s in scores.items():
            ok = s[torch.isfinite(s)]
            mean = float(ok.mean()) if ok.numel() else float("nan")
            row[f"reward/{name}"] = mean
            row[f"reward/{name}_std"] = float(ok.std()) if ok.numel() > 1 else 0.0
            if self.rewards[name].can_fail:
                row[f"reward/{name}_failures"] = int(s.numel() - ok.numel())
            if name in self.weights:
                total += self.weights[name] / wsum * mean
        row["reward_mean"] = total
        row["advantage_abs_mean"] = float(adv.abs().mean())
        row["advantage_std"] = float(adv.std()) if adv.numel() > 1 else 0.0
        for key in ("loss", "ratio_mean", "ratio_min", "ratio_max", "clip_fraction", "approx_kl", "grad_norm",
                    "first_ratio_mean", "first_ratio_min", "first_ratio_max", "updates"):
            if key in stats:
                row[f"train/{key}"] = stats[key]
        row["nfe/rollout"] = max(m["nfe"] for m in metas)
        row["nfe/policy"] = metas[0]["trained_steps"]
        row["time/rollout_s"] = t_rollout - t0
        row["time/reward_s"] = t_reward - t_rollout
        row["time/train_s"] = t_train - t_reward
        row["time/sync_s"] = t_sync - t_train
        row["time/iteration_s"] = t_sync - t0
        row["images_per_second"] = images / max(t_rollout - t0, 1e-9)
        return row

    def _write_rollouts(self, it, batches, metas, scores, adv, window) -> None:
        g = self.cfg.grpo.group_size
        prompts = [p for b in batches for p in b.prompts]
        versions = [m["version"] for b, m in zip(batches, metas) for _ in b.prompts]
        cols = {
            "iteration": [it] * len(prompts),
            "prompt": prompts,
            "group": [i // g for i in range(len(prompts))],
            "sample": [i % g for i in range(len(prompts))],
            "weight_version": versions,
            "window_start": [window[0]] * len(prompts),
            "advantage": adv.tolist(),
        }
        for name, s in scores.items():
            cols[f"reward/{name}"] = s.tolist()
        self.run_dir.write_rollouts(it, cols)

    # ------------------------------------------------------------------------------------------
    # Evaluation, pictures, checkpoints
    # ------------------------------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Every reward on the held-out prompts, ``data.eval_seeds`` fixed noises each: mean and
        standard error per reward (deterministic ODE sampling with the current weights)."""
        seeds = list(range(10_000, 10_000 + self.cfg.data.eval_seeds))
        pairs = [(p, s) for s in seeds for p in self.eval_prompts]
        chunks = split_evenly(pairs, len(self.rollout))
        image_refs, prompts = [], []
        for c, chunk in enumerate(chunks):
            images, _meta = self.rollout[c % len(self.rollout)].sample_eval.remote(
                [p for p, _ in chunk], [s for _, s in chunk]
            )
            image_refs.append(images)
            prompts.append([p for p, _ in chunk])
        scores = self.score(image_refs, prompts)
        out = {}
        for name, s in scores.items():
            ok = s[torch.isfinite(s)]
            out[f"eval/reward/{name}"] = float(ok.mean())
            out[f"eval/reward/{name}_se"] = float(ok.std() / math.sqrt(ok.numel())) if ok.numel() > 1 else 0.0
        out["eval/images"] = len(pairs)
        return out

    def grid(self, label: str) -> Optional[Path]:
        if not self.grid_prompts:
            return None
        png = ray.get(self.rollout[0].grid_png.remote(self.grid_prompts, 1234, f"{label} (weights v{self.version})"))
        return self.run_dir.write_grid(f"{label}.png", png)

    def checkpoint(self) -> Path:
        staging = self.run_dir.staging_path(self.iteration)
        self.learners.save_checkpoint(str(staging))
        state = {
            "iteration": self.iteration,
            "version": self.version,
            "window": self.window.state_dict(),
            "sampler": self.sampler.state_dict(),
        }
        return self.run_dir.commit_checkpoint(staging, self.iteration, state)

    def restore(self, checkpoint: Path) -> None:
        state = json.loads((checkpoint / "state.json").read_text())
        version = self.learners.load_checkpoint(str(checkpoint))
        if version != state["version"]:
            raise RuntimeError(f"checkpoint {checkpoint} is inconsistent: learner v{version}, driver v{state['version']}")
        self.window.load_state_dict(state["window"])
        self.sampler.load_state_dict(state["sampler"])
        self.iteration = int(state["iteration"])
        self.broadcast(bump=False)

    def actors(self) -> list:
        learners = self.learners.workers if self.learners is not None else []
        return self.rollout + [a for p in self.rewards.values() for a in p.replicas] + learners

    def shutdown(self) -> None:
        """Kill every actor of the run and wait until their names are free again."""
        kill_actors(self.actors())
