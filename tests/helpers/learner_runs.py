"""The sharded-learner tests' fixed setup: 3 iterations of fixed batches for the tiny policy or a
tiny FLUX folder, and the optimizer they train with."""

from __future__ import annotations

import torch

from mixgrpo_ray.algo.rollout import sample_groups
from mixgrpo_ray.config import GRPOConfig, ModelConfig, OptimConfig, SamplingConfig
from mixgrpo_ray.models.build import build_policy

ITERATIONS = 3
PROMPTS = ["a small red circle on a white background, top left", "a large blue square on a black background, center"]
FLUX_PROMPTS = ["a red cat", "a blue dog on the mat"]
# a small clip norm so that clipping is active (the sharded global norm is exercised)
OPTIM = OptimConfig(lr=1e-3, samples_per_update=4, max_grad_norm=1e-3)


def model_config(flux_dir) -> ModelConfig:
    if flux_dir is None:
        return ModelConfig(kind="tiny", path="random")
    return ModelConfig(kind="flux", path=str(flux_dir), height=16, width=16, max_sequence_length=8, dtype="fp32")


def batches(flux_dir):
    """One fixed (trajectory, advantages) per iteration, sampled with the initial weights."""
    pol = build_policy(model_config(flux_dir), trainable=False)
    prompts = PROMPTS if flux_dir is None else FLUX_PROMPTS
    out = []
    for it in range(ITERATIONS):
        traj = sample_groups(pol, prompts, 4, [0, 1], SamplingConfig(num_steps=6), GRPOConfig(), seed=it).trajectory
        out.append((traj, torch.randn(8, generator=torch.Generator().manual_seed(it))))
    return out
