"""PickScore as a reward: a CLIP ViT-H/14 fine-tuned on Pick-a-Pic human preferences.

Checkpoint ``yuvalkirstain/PickScore_v1`` is a transformers ``CLIPModel``; its reference usage
takes the processor (tokenizer + image processing) of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``.
Raw score ``s = exp(logit_scale) * cos(image, prompt)`` (about 18-24 for real images), i.e. the
diagonal of ``CLIPModel(...).logits_per_image``. Codebases rescale it differently; the
``normalize`` setting picks one:

* ``"raw"``: ``s``
* ``"mixgrpo"``: ``(s - 18) / 8`` (MixGRPO training)
* ``"flowgrpo"``: ``s / 26`` (Flow-GRPO)
* ``"dancegrpo"``: ``cos`` itself, without the logit scale (DanceGRPO)

Images are preprocessed as the reference's ``CLIPProcessor`` does on PIL images (8-bit PIL
bicubic shortest-edge resize, centre crop). Precision as the reference, which loads the model
with ``AutoModel.from_pretrained`` (float32) and runs it without autocast: float32 weights by
default on every device (``dtype`` overrides); ``exp(logit_scale)`` is always read in float32
before any cast (the x100 scale would amplify an fp16 rounding of it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from mixgrpo_ray.models.reward import RewardModel
from mixgrpo_ray.rewards.clip.clip_common import embedder_from_pretrained

#: normalisation name -> (use logit scale, offset, divisor):
#: score = ((exp(logit_scale) if use logit scale else 1) * cos - offset) / divisor
NORMALIZATIONS: dict[str, tuple[bool, float, float]] = {
    "raw": (True, 0.0, 1.0),
    "mixgrpo": (True, 18.0, 8.0),
    "flowgrpo": (True, 0.0, 26.0),
    "dancegrpo": (False, 0.0, 1.0),
}


class PickScoreReward(RewardModel):
    """PickScore ``exp(logit_scale) * cos``, normalised as configured.

    Options:
      model: PickScore model folder (``config.json`` + weights) or hub id.
      processor: folder or hub id with the tokenizer and ``preprocessor_config.json``
        (default: ``model``; the reference setup uses laion/CLIP-ViT-H-14-laion2B-s32B-b79K).
      normalize: ``"raw"``, ``"mixgrpo"`` ((s-18)/8), ``"flowgrpo"`` (s/26) or ``"dancegrpo"``
        (cosine, no logit scale); default mixgrpo.
      device: default CUDA when available. dtype: weights, default fp32 (as the reference).
      batch_size: images (and distinct prompts) per forward pass.
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
        self.use_scale, self.offset, self.divisor = NORMALIZATIONS[normalize]
        self.embedder = embedder_from_pretrained("pickscore", model, processor, device, dtype, batch_size)
        self.input_size, self.input_resize = self.embedder.input_declaration()
        self.scale = self.embedder.logit_scale()  # float32, read before the cast to dtype
        top = self.scale if self.use_scale else 1.0
        self.score_range = ((-top - self.offset) / self.divisor, (top - self.offset) / self.divisor)

    def raw(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Unnormalised PickScore ``exp(logit_scale) * cos``, ``(B,)``."""
        return self.scale * self.embedder.cosine(images, prompts)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """PickScore under the configured normalisation, ``(B,)``."""
        cos = self.embedder.cosine(images, prompts)
        if self.use_scale:
            cos = self.scale * cos
        return (cos - self.offset) / self.divisor
