"""Advantages of a whole batch from its flat per-reward scores (docs/algorithm.md §8)."""

from __future__ import annotations

from typing import Mapping

import torch

from mixgrpo_ray.config import GRPOConfig
from mixgrpo_ray.core.grpo import group_advantages


def batch_advantages(scores: Mapping[str, torch.Tensor], weights: Mapping[str, float], grpo: GRPOConfig,
                     leave_out: Mapping[str, bool]) -> torch.Tensor:
    """Group-relative advantages over the trained rewards ``weights`` (eqs. (29)-(31)), flat in
    sample order (groups of ``grpo.group_size`` consecutive samples); the non-finite scores of a
    reward with ``leave_out[name]`` are left out of its group statistics."""
    g = grpo.group_size
    grouped = {n: scores[n].reshape(-1, g) for n in weights}
    valid = {n: torch.isfinite(grouped[n]) for n in weights if leave_out.get(n, False)}
    adv = group_advantages(grouped, dict(weights), mode=grpo.advantage_mode, clip=grpo.advantage_clip, valid=valid)
    return adv.reshape(-1)
