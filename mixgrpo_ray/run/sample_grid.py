"""The job behind ``mixgrpo-ray sample`` (command line: :mod:`mixgrpo_ray.cli.sample`): sample the
tiny model (base weights, a random initialisation or an RL checkpoint) for prompts and write a
captioned PNG grid.

Images are deterministic ODE samples (Euler); prompt ``i`` starts from the noise of seed
``seed + i``. Without prompts, held-out prompts of the built-in task, spread over the set, are
used. A checkpoint is a safetensors file of trainable (transformer) weights as published by the
learner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch


def spread_eval_prompts(num: int) -> list[str]:
    """``num`` held-out prompts spread evenly over the held-out set (which is ordered by
    background, then colour), so a grid shows every colour and background."""
    from mixgrpo_ray.models.tiny import task

    pool = task.eval_prompts()
    num = min(num, len(pool))
    return [pool[(i * len(pool)) // num] for i in range(num)]


def read_prompts(prompts: Sequence[str], prompts_file: Optional[str], num: int) -> list[str]:
    """``prompts``, then the lines of ``prompts_file``; without any, :func:`spread_eval_prompts`.
    A missing file is a :class:`ValueError` naming ``--prompts-file``."""
    out = list(prompts)
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise ValueError(f"--prompts-file {path} not found")
        out += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return out or spread_eval_prompts(num)


def load_checkpoint(policy, path: str) -> None:
    """Load a safetensors file of trainable weights into ``policy`` (keys optionally prefixed
    ``transformer.``, stripped by :func:`~mixgrpo_ray.common.checkpoint.read_weights`)."""
    from mixgrpo_ray.common.checkpoint import read_weights

    policy.load_trainable_state_dict(read_weights(path))


def load_policy(model: Optional[str], random_init: bool, seed: int, checkpoint: Optional[str]):
    """The tiny policy: shipped (or ``model``) weights, or a random one seeded by ``seed``, with
    ``checkpoint`` loaded on top."""
    from mixgrpo_ray.models.tiny.model import TinyPolicy

    policy = TinyPolicy(seed=seed) if random_init else TinyPolicy.from_pretrained(model)
    if checkpoint:
        load_checkpoint(policy, checkpoint)
    return policy


def write_grid(out: str, policy, prompts: Sequence[str], *, seed: int, num_steps: int, shift: float,
               title: str, columns: Optional[int], scale: int) -> tuple[Path, torch.Tensor]:
    """Sample one image per prompt and write the captioned grid to ``out``; returns the PNG's path
    and the images."""
    from mixgrpo_ray.common.images import save_grid
    from mixgrpo_ray.run.tiny_eval import sample_prompts

    images = sample_prompts(policy, list(prompts), seed=seed, num_steps=num_steps, shift=shift)
    path = save_grid(out, images, captions=list(prompts), title=title, columns=columns, scale=scale)
    return path, images
