"""Sampling a policy deterministically and scoring it with a built-in tiny task's offline rewards.

Used by pre-training (held-out progress), by ``mixgrpo-ray sample`` and by the tests that pin
down how good the shipped base model is.
"""

from __future__ import annotations

from typing import Sequence

import torch

from mixgrpo_ray.algo.rollout import sample_images
from mixgrpo_ray.common.stats import mean_se
from mixgrpo_ray.models.policy import Policy


def sample_prompts(
    policy: Policy,
    prompts: Sequence[str],
    seed: int = 0,
    num_steps: int = 25,
    shift: float = 3.0,
    batch_size: int = 64,
) -> torch.Tensor:
    """Deterministic ODE (Euler) samples, one per prompt, as float32 images ``(B, 3, H, W)`` in
    ``[0, 1]``. Prompt ``i`` starts from the noise of seed ``seed + i``, so results do not
    depend on ``batch_size``."""
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        seeds = [seed + start + i for i in range(len(chunk))]
        out.append(sample_images(policy, chunk, seeds, num_steps=num_steps, shift=shift, float_images=True))
    return torch.cat(out) if out else torch.zeros((0, *policy.latent_shape()))


def score_images(images: torch.Tensor, prompts: Sequence[str], task: str = "shapes") -> dict[str, tuple[float, float]]:
    """``{reward name: (mean, standard error)}`` of the offline rewards of built-in ``task``
    (:attr:`mixgrpo_ray.models.tiny.tasks.BuiltinTask.scores`: shapes ``prompt_following`` and
    ``quality``, pairs ``pair_following`` and ``pair_layout``; the error is NaN for a single
    image). Prompts outside the task's grammar raise ``ValueError``."""
    from mixgrpo_ray.models.tiny.tasks import get_task

    out = {}
    for reward in get_task(task).score_rewards():
        mean, se = mean_se(reward(images, list(prompts)))
        out[reward.name] = (mean, float("nan") if se is None else se)
    return out
