"""ImageReward (THUDM, ``ImageReward-v1.0``) on transformers BLIP modules.

Score of an image for a prompt, as in the original ``ImageReward.score``:

1. image -> ``resize shorter side to 224 (PIL bicubic)`` -> ``centre crop 224`` -> ``[0, 1]`` ->
   normalise with the CLIP mean/std ``(0.48145466, 0.4578275, 0.40821073)`` /
   ``(0.26862954, 0.26130258, 0.27577711)`` (the original's torchvision ``_transform(224)``);
2. image tokens = BLIP ViT-L/16 last hidden states (all tokens, after the final LayerNorm);
3. prompt -> ``bert-base-uncased`` tokenizer with ``[DEC]``/``[ENC]`` added, padded/truncated to
   35 tokens; BERT text encoder with bidirectional self-attention and cross-attention to all image
   tokens; feature = the ``[CLS]`` position of the last hidden state;
4. reward = ``MLP(feature)`` (768->1024->128->64->16->1, no activations), then
   ``(r - 0.16717362830052426) / 1.0333394966054072``.

Precision and placement as the original ``ImageReward.load(name, device)``: float32 weights on the
device (CUDA when available), no autocast; ``dtype`` overrides.

The checkpoint is the original ``ImageReward.pt`` + ``med_config.json``, converted at load time by
:mod:`mixgrpo_ray.rewards.imagereward_convert`. Parity with the original package on the real weights is an
open item (needs one GPU run with the checkpoint); the tests check the conversion and the forward
against an independent re-implementation of the original modules on a tiny model.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import BertTokenizer, BlipTextModel, BlipVisionModel

from mixgrpo_ray.models.reward import RewardModel, as_uint8
from mixgrpo_ray.rewards.clip.clip_common import resolve_device, resolve_dtype
from mixgrpo_ray.rewards.imagereward_convert import (
    HEAD_WIDTHS,
    convert_head,
    convert_text,
    convert_vision,
    split_original_state_dict,
    text_config_from_med_config,
    unwrap_checkpoint,
    vision_config_from_state_dict,
)

logger = logging.getLogger(__name__)

#: reward normalisation of ImageReward-v1.0 (``self.mean`` / ``self.std`` in the original)
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
#: prompt length the original pads and truncates to
MAX_TEXT_LENGTH = 35
#: CLIP normalisation used by the original ``_transform``
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

CHECKPOINT_FILE = "ImageReward.pt"
MED_CONFIG_FILE = "med_config.json"


class ImageRewardHead(nn.Module):
    """The reward MLP: five linear layers with no activation in between (dropout is identity at
    inference), mapping the 768-d ``[CLS]`` feature to one raw reward."""

    def __init__(self, widths: Sequence[int] = HEAD_WIDTHS):
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        for linear in self.linears:
            features = linear(features)
        return features.squeeze(-1)


class ImageRewardModel(nn.Module):
    """BLIP vision + cross-attending BERT text encoder + reward head."""

    def __init__(self, vision: BlipVisionModel, text: BlipTextModel, head: ImageRewardHead):
        super().__init__()
        self.vision = vision
        self.text = text
        self.head = head

    @classmethod
    def from_original(
        cls,
        state_dict: Mapping[str, torch.Tensor],
        med_config: Mapping[str, Any],
        vision_num_heads: int | None = None,
    ) -> "ImageRewardModel":
        """Build from an original-layout ``ImageReward.pt`` state dict and ``med_config.json``
        dict; every weight of the three parts must be present (strict load)."""
        vision_sd, text_sd, head_sd, ignored = split_original_state_dict(state_dict)
        if ignored:
            logger.info("ImageReward: ignoring %d unused checkpoint entries (%s)", len(ignored), ", ".join(ignored))
        vision_cfg = vision_config_from_state_dict(vision_sd, num_heads=vision_num_heads)
        text_cfg = text_config_from_med_config(med_config, vision_cfg.hidden_size, text_sd)
        head_sd = convert_head(head_sd)
        widths = [head_sd["linears.0.weight"].shape[1]] + [
            head_sd[f"linears.{i}.weight"].shape[0] for i in range(len(HEAD_WIDTHS) - 1)
        ]
        model = cls(
            BlipVisionModel(vision_cfg),
            BlipTextModel(text_cfg, add_pooling_layer=False),
            ImageRewardHead(widths),
        )
        model.vision.load_state_dict(convert_vision(vision_sd), strict=True)
        model.text.load_state_dict(convert_text(text_sd), strict=True)
        model.head.load_state_dict(head_sd, strict=True)
        return model.eval()

    @property
    def image_size(self) -> int:
        return int(self.vision.config.image_size)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        normalize: bool = True,
    ) -> torch.Tensor:
        """Rewards ``(B,)`` for normalised ``pixel_values`` and tokenised prompts; raw head output
        when ``normalize`` is false."""
        image_embeds = self.vision(pixel_values=pixel_values).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        text_out = self.text(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
            is_decoder=False,
        )
        features = text_out.last_hidden_state[:, 0, :].float()
        rewards = self.head(features)
        if normalize:
            rewards = (rewards - REWARD_MEAN) / REWARD_STD
        return rewards


def load_imagereward_tokenizer(path: str) -> BertTokenizer:
    """``BertTokenizer`` from a ``bert-base-uncased`` folder (``vocab.txt``) or hub id, with BLIP's
    ``[DEC]`` (bos) and ``[ENC]`` special tokens added as ``init_tokenizer`` does."""
    tokenizer = BertTokenizer.from_pretrained(path)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


def imagereward_pixels(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Normalised ``(B, 3, size, size)`` float32 pixels as the original's torchvision transform
    computes them: shorter side resized to ``size`` with PIL bicubic (longer side
    ``int(size * long / short)``), centre crop (offset ``round((L - size) / 2)``), ``/255``,
    CLIP mean/std."""
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    out = []
    for img in as_uint8(images).cpu():
        pil = Image.fromarray(img.permute(1, 2, 0).contiguous().numpy())
        w, h = pil.size
        if w <= h:
            new_w, new_h = size, int(size * h / w)
        else:
            new_w, new_h = int(size * w / h), size
        if (new_w, new_h) != (w, h):
            pil = pil.resize((new_w, new_h), Image.BICUBIC)
        top = int(round((new_h - size) / 2.0))
        left = int(round((new_w - size) / 2.0))
        pil = pil.crop((left, top, left + size, top + size))
        pixels = torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0
        out.append((pixels - mean) / std)
    return torch.stack(out)


def _resolve_checkpoint(checkpoint: str, med_config: str | None) -> tuple[str, str]:
    """Paths of ``ImageReward.pt`` and ``med_config.json`` (a folder holds both by default)."""
    if os.path.isdir(checkpoint):
        weights = os.path.join(checkpoint, CHECKPOINT_FILE)
        default_med = os.path.join(checkpoint, MED_CONFIG_FILE)
    else:
        weights = checkpoint
        default_med = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), MED_CONFIG_FILE)
    med = med_config or default_med
    for what, path in (("checkpoint", weights), ("med_config", med)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ImageReward {what} not found: {path}")
    return weights, med


class ImageRewardReward(RewardModel):
    """ImageReward-v1.0 score (normalised; typical range about -2.5..2.5).

    Options:
      checkpoint: ``ImageReward.pt`` or a folder holding it (and ``med_config.json``).
      med_config: path of ``med_config.json`` (default: next to the checkpoint).
      tokenizer: ``bert-base-uncased`` folder with ``vocab.txt`` (or a hub id where reachable).
      device: default CUDA when available (the original's default device), else CPU.
      dtype: precision of the BLIP modules (head stays float32); default fp32, as the original.
      batch_size: images per forward pass.
      vision_num_heads: ViT head count (default ``width // 64``: 16 for ViT-L).
    """

    name = "imagereward"
    score_range = (-float("inf"), float("inf"))

    def __init__(
        self,
        checkpoint: str,
        med_config: str | None = None,
        tokenizer: str = "bert-base-uncased",
        device: str | None = None,
        dtype: str | torch.dtype | None = "float32",
        batch_size: int = 16,
        vision_num_heads: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        weights_path, med_path = _resolve_checkpoint(checkpoint, med_config)
        state_dict = unwrap_checkpoint(torch.load(weights_path, map_location="cpu", weights_only=True))
        with open(med_path) as f:
            med = json.load(f)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device, cuda_default=torch.float32)
        self.batch_size = batch_size
        self.model = ImageRewardModel.from_original(state_dict, med, vision_num_heads=vision_num_heads)
        self.model.vision.to(self.device, self.dtype)
        self.model.text.to(self.device, self.dtype)
        self.model.head.to(self.device, torch.float32)
        self.tokenizer = load_imagereward_tokenizer(tokenizer)
        # the original's first step: PIL bicubic of the shorter side to the ViT's size
        self.input_size, self.input_resize = self.model.image_size, "shortest_edge_pil"
        if len(self.tokenizer) > self.model.text.config.vocab_size:
            raise ValueError(
                f"tokenizer has {len(self.tokenizer)} tokens but the text encoder only "
                f"{self.model.text.config.vocab_size}"
            )

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` / ``attention_mask`` padded and truncated to 35 tokens."""
        enc = self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=MAX_TEXT_LENGTH,
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        scores = []
        for start in range(0, images.shape[0], self.batch_size):
            chunk = images[start : start + self.batch_size]
            pixels = imagereward_pixels(chunk, self.model.image_size)
            tokens = self.tokenize(prompts[start : start + self.batch_size])
            scores.append(
                self.model(
                    pixels.to(self.device, self.dtype),
                    tokens["input_ids"].to(self.device),
                    tokens["attention_mask"].to(self.device),
                ).float().cpu()
            )
        return torch.cat(scores)
