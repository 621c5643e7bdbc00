"""Small tiny-model runs the system tests share: override lists, metric rows, a fixed batch, and
the metrics of an uninterrupted run to compare a faulted one with."""

from __future__ import annotations

from pathlib import Path

import torch

from mixgrpo_ray.algo.rollout import sample_groups
from mixgrpo_ray.config import GRPOConfig, SamplingConfig, resolve
from mixgrpo_ray.models.tiny.model import TinyPolicy
from mixgrpo_ray.train.run_dir import RunDir
from mixgrpo_ray.train.training_run import run

#: image grids every 2 iterations, of 2 prompts
GRIDS = ["run.grid_every=2", "run.grid_prompts=2"]
#: a 2-iteration run with 2 rollout actors, 2 learners and 2 + 1 reward replicas (fractional CPUs)
SMALL = [
    "model.path=random",
    "data.prompts_per_iteration=2",
    "data.eval_prompts=4",
    "grpo.group_size=4",
    "optim.samples_per_update=4",
    "optim.lr=1e-3",
    "sampling.num_steps=8",
    "window.size=2",
    "window.initial_start=0",
    "window.strategy=progressive",  # the tiny preset's window is frozen; this test follows it moving
    "window.shift_interval=1",
    "rollout.num_workers=2",
    "rollout.num_cpus=0.5",
    "learner.num_workers=2",
    "learner.num_cpus=0.5",
    "rewards.prompt_following.replicas=2",
    "rewards.prompt_following.num_cpus=0.25",
    "rewards.quality.replicas=1",
    "rewards.quality.num_cpus=0.25",
    "run.iterations=2",
    "run.checkpoint_every=0",
    "run.grid_every=0",
    "run.grid_prompts=0",
    "run.progress=false",
]

#: the fault tests' run: 12 sampling steps, a moving window, no checkpoints or grids
FAST = [
    "model.path=random", "data.prompts_per_iteration=4", "data.eval_prompts=4", "grpo.group_size=4",
    "optim.samples_per_update=8", "optim.lr=1e-3", "sampling.num_steps=12", "window.size=2",
    "window.initial_start=0", "window.strategy=progressive", "window.shift_interval=1", "rollout.num_workers=2",
    "rollout.num_cpus=0.5",
    "learner.num_cpus=0.5", "rewards.prompt_following.num_cpus=0.25", "rewards.quality.num_cpus=0.25",
    "run.checkpoint_every=0", "run.grid_every=0", "run.grid_prompts=0", "run.progress=false",
]
#: keys that measure time or count faults: the only ones allowed to differ
# wall-clock dependent, and each process's peak memory (a restarted actor starts afresh)
VOLATILE = ("time/", "images_per_second", "faults/", "sync/seconds", "sync/gbps", "memory/")


def rows_of(run_dir):
    return [r for r in RunDir(run_dir).read_metrics() if "reward_mean" in r]


def tiny_batch():
    """One (trajectory, advantages) of the tiny policy: 2 prompts x 4 images, window [0, 1]."""
    pol = TinyPolicy(seed=0)
    out = sample_groups(pol, ["a small red circle on a white background, top left",
                              "a large blue square on a black background, center"],
                        4, [0, 1], SamplingConfig(num_steps=8), GRPOConfig(), seed=3)
    adv = torch.randn(8, generator=torch.Generator().manual_seed(0))
    return out.trajectory, adv


_BASELINES: dict = {}


def baseline(out, overrides):
    """The metrics of an uninterrupted run with ``overrides`` (run once per test session and config)."""
    key = tuple(overrides)
    if key not in _BASELINES:
        assert run(resolve(None, list(overrides) + [f"run.output_dir={out}", "run.name=clean"])) == 0
        _BASELINES[key] = comparable(Path(out) / "clean")
    return _BASELINES[key]


def comparable(run_dir):
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in RunDir(run_dir).read_metrics()]
