"""The reward-model interface shared by every reward (toy task rewards, HPS, PickScore, ...).

A reward model takes a batch of images and their prompts and returns one float per image.
Images arrive as ``(batch, 3, H, W)`` tensors, either ``uint8`` in ``[0, 255]`` or floating
point in ``[0, 1]``; :func:`as_float01` / :func:`as_uint8` convert. Scores are float32 on CPU.

A model that can fail per image (a remote judge that times out, an unparsable answer) sets
``can_fail = True`` and returns ``NaN`` for the failed images; those are reported and
excluded from that reward's statistics. Every other model must return finite scores.

A model whose preprocessing starts by resizing the image declares it (``input_size``, the square
side, and ``input_resize``, how; :mod:`mixgrpo_ray.models.reward_input`): rollout actors then send
its replicas images already resized, and :meth:`RewardModel.__call__` applies the same resize to
any image that is not, so :meth:`RewardModel.score` sees the same pixels either way. ``None`` (the
default, and what a plug-in that declares nothing gets) means the images as sampled.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Optional, Sequence

import torch

from mixgrpo_ray.common.images import as_float01, as_uint8  # noqa: F401 - part of the reward plug-in API
from mixgrpo_ray.models.reward_input import RewardInput, declared_input


class RewardModel(ABC):
    """Scores images against prompts."""

    #: the reward's name in configs, logs and metrics (``reward/<name>``)
    name: str = "reward"
    #: declared range of the scores ``(low, high)``; informative, not enforced
    score_range: tuple[float, float] = (float("-inf"), float("inf"))
    #: whether :meth:`score` may return NaN for images it failed to score
    can_fail: bool = False
    #: the square side the model's preprocessing first resizes to; ``None``: the images as sampled
    input_size: Optional[int] = None
    #: how it resizes (``"shortest_edge"``, ``"shortest_edge_pil"``, ``"longest_edge_float"``)
    input_resize: str = "shortest_edge"

    def input(self) -> Optional[RewardInput]:
        """The declared first resize, or ``None`` (full resolution)."""
        return declared_input(self)

    @abstractmethod
    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """One float32 score per image, shape ``(batch,)``."""

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"reward {self.name!r}: images must be (batch, 3, H, W), got {tuple(images.shape)}"
            )
        if len(prompts) != images.shape[0]:
            raise ValueError(
                f"reward {self.name!r}: {images.shape[0]} images but {len(prompts)} prompts"
            )
        spec = self.input()
        if spec is not None:  # a no-op on images a rollout actor resized already
            images = spec.apply(images)
        out = self.score(images, list(prompts)).detach().to("cpu", torch.float32).reshape(-1)
        if out.shape[0] != images.shape[0]:
            raise RuntimeError(f"reward {self.name!r} returned {out.shape[0]} scores for {images.shape[0]} images")
        return out
