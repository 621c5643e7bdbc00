"""CLIP score as a reward: cosine between a CLIP model's image and prompt embeddings.

Any transformers ``CLIPModel`` folder or hub id with its tokenizer and image processor config,
e.g. ``openai/clip-vit-large-patch14`` or ``apple/DFN5B-CLIP-ViT-H-14-378``. The score is
``scale * cos`` (``scale`` 1 by default; 100 gives the common "CLIPScore" units, without the
clamp at 0 that metric applies). Images are preprocessed as transformers' CLIP image processor
does on PIL images (shortest-edge PIL bicubic resize, centre crop). Weights are float32 by default
on every device, as the reference codes load them (``dtype`` overrides).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from mixgrpo_ray.models.reward import RewardModel
from mixgrpo_ray.rewards.clip.clip_common import embedder_from_pretrained


class CLIPScoreReward(RewardModel):
    """``scale * cos(image embedding, prompt embedding)`` of a CLIP model.

    Options:
      model: CLIP model folder (``config.json`` + weights) or hub id.
      processor: folder or hub id with tokenizer and ``preprocessor_config.json`` (default: ``model``).
      scale: multiplier of the cosine (default 1.0).
      device: default CUDA when available. dtype: weights, default fp32.
      batch_size: images (and distinct prompts) per forward pass.
    """

    name = "clip"

    def __init__(
        self,
        model: str | Path | None = None,
        processor: str | Path | None = None,
        scale: float = 1.0,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 16,
    ) -> None:
        self.scale = float(scale)
        self.score_range = (-abs(self.scale), abs(self.scale))
        self.embedder = embedder_from_pretrained("clip", model, processor, device, dtype, batch_size)
        self.input_size, self.input_resize = self.embedder.input_declaration()

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """``scale`` times the cosine of each image with its prompt, ``(B,)``."""
        return self.scale * self.embedder.cosine(images, prompts)
