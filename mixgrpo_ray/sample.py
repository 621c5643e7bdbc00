"""The job behind ``mixgrpo-ray sample`` (command line: :mod:`mixgrpo_ray.cli.sample_cli`): sample the
tiny model (base weights, a random initialisation or an RL checkpoint) for prompts and write a
captioned PNG grid.

Images are deterministic ODE samples (Euler); prompt ``i`` starts from the noise of seed
``seed + i``. Without prompts, held-out prompts of the model's built-in task (shapes or pairs),
spread over the set, are used. A checkpoint is a safetensors file of trainable (transformer)
weights as published by the learner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch


def spread_eval_prompts(num: int, task: str = "shapes") -> list[str]:
    """``num`` held-out prompts of built-in ``task`` spread evenly over its held-out set (which is
    ordered by background first), so a grid shows every background and many colours."""
    from mixgrpo_ray.models.tiny.tasks import get_task

    pool = get_task(task).load().eval_prompts()
    num = min(num, len(pool))
    return [pool[(i * len(pool)) // num] for i in range(num)]


def read_prompts(prompts: Sequence[str], prompts_file: Optional[str], num: int, task: str = "shapes") -> list[str]:
    """``prompts``, then the lines of ``prompts_file``; without any, :func:`spread_eval_prompts` of
    ``task``. A missing file is a :class:`ValueError` naming ``--prompts-file``."""
    out = list(prompts)
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise ValueError(f"--prompts-file {path} not found")
        out += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return out or spread_eval_prompts(num, task)


def load_checkpoint(policy, path: str) -> None:
    """Load a safetensors file of trainable weights into ``policy`` (keys optionally prefixed
    ``transformer.``, stripped by :func:`~mixgrpo_ray.common.checkpoint.read_weights`)."""
    from mixgrpo_ray.common.checkpoint import read_weights

    policy.load_trainable_state_dict(read_weights(path))


def load_policy(model: Optional[str], random_init: bool, seed: int, checkpoint: Optional[str], task: str = "shapes"):
    """The tiny policy: shipped (or ``model``: a folder or ``builtin:<name>``) weights, or a random
    one of ``task``'s vocabulary seeded by ``seed``, with ``checkpoint`` loaded on top."""
    from mixgrpo_ray.models.tiny.model import TinyConfig, TinyPolicy

    policy = TinyPolicy(TinyConfig(task=task), seed=seed) if random_init else TinyPolicy.from_pretrained(model)
    if checkpoint:
        load_checkpoint(policy, checkpoint)
    return policy


def write_grid(out: str, policy, prompts: Sequence[str], *, seed: int, num_steps: int, shift: float,
               title: str, columns: Optional[int], scale: int) -> tuple[Path, torch.Tensor]:
    """Sample one image per prompt and write the captioned grid to ``out``; returns the PNG's path
    and the images."""
    from mixgrpo_ray.common.images import save_grid
    from mixgrpo_ray.eval.tiny_scores import sample_prompts

    images = sample_prompts(policy, list(prompts), seed=seed, num_steps=num_steps, shift=shift)
    path = save_grid(out, images, captions=list(prompts), title=title, columns=columns, scale=scale)
    return path, images
