"""PickScore as a reward: a CLIP ViT-H/14 fine-tuned on Pick-a-Pic human preferences.

Checkpoint ``yuvalkirstain/PickScore_v1`` is a transformers ``CLIPModel``; its reference usage
takes the processor (tokenizer + image processing) of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``.
Raw score ``s = exp(logit_scale) * cos(image, prompt)`` (about 18-24 for real images), i.e. the
diagonal of ``CLIPModel(...).logits_per_image``. Codebases rescale it differently; the
``normalize`` setting picks one:

* ``"raw"``: ``s``
* ``"mixgrpo"``: ``(s - 18) / 8`` (MixGRPO training)
* ``"flowgrpo"``: ``s / 26`` (Flow-GRPO)
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from mixgrpo_ray.models.reward import RewardModel
from mixgrpo_ray.rewards.clip_common import embedder_from_pretrained

#: normalisation name -> (offset, divisor): score = (s - offset) / divisor
NORMALIZATIONS: dict[str, tuple[float, float]] = {
    "raw": (0.0, 1.0),
    "mixgrpo": (18.0, 8.0),
    "flowgrpo": (0.0, 26.0),
}


class PickScoreReward(RewardModel):
    """PickScore ``exp(logit_scale) * cos``, normalised as configured.

    Options:
      model: PickScore model folder (``config.json`` + weights) or hub id.
      processor: folder or hub id with the tokenizer and ``preprocessor_config.json``
        (default: ``model``; the reference setup uses laion/CLIP-ViT-H-14-laion2B-s32B-b79K).
      normalize: ``"raw"``, ``"mixgrpo"`` ((s-18)/8) or ``"flowgrpo"`` (s/26); default mixgrpo.
      device / dtype / batch_size: as for every CLIP reward (default CUDA + fp16 when available).
    """

    name = "pickscore"

    def __init__(
        self,
        model: str | Path | None = None,
        processor: str | Path | None = None,
        normalize: str = "mixgrpo",
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 16,
    ) -> None:
        if normalize not in NORMALIZATIONS:
            raise ValueError(
                f"reward 'pickscore': normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}"
            )
        self.normalize = normalize
        self.offset, self.divisor = NORMALIZATIONS[normalize]
        self.embedder = embedder_from_pretrained("pickscore", model, processor, device, dtype, batch_size)
        self.scale = self.embedder.logit_scale()
        self.score_range = ((-self.scale - self.offset) / self.divisor, (self.scale - self.offset) / self.divisor)

    def raw(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Unnormalised PickScore ``exp(logit_scale) * cos``, ``(B,)``."""
        return self.scale * self.embedder.cosine(images, prompts)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """PickScore under the configured normalisation, ``(B,)``."""
        return (self.raw(images, prompts) - self.offset) / self.divisor
