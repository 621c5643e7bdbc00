"""FLUX text conditioning: T5 sequence embeddings + CLIP pooled embedding, cached per prompt.

FLUX conditions its transformer on two encodings of a prompt, computed as ``FluxPipeline.encode_prompt``
does:

* ``encoder_hidden_states``: the last hidden state of the T5 encoder (``text_encoder_2``) on the
  prompt tokenised by ``tokenizer_2``, padded / truncated to ``max_sequence_length`` tokens;
* ``pooled_projections``: the pooled output of the CLIP text model (``text_encoder``) on the prompt
  tokenised by ``tokenizer``, padded / truncated to CLIP's context length (77).

Both encoders are frozen, so a prompt's encoding never changes during training: each is computed
once and kept in a bounded least-recently-used cache (on CPU, in the encoders' dtype).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch

from mixgrpo_ray.models.policy import Cond


class FluxPromptEncoder:
    """Encodes prompts with FLUX's CLIP and T5 text encoders, with an LRU cache of ``cache_size``
    prompts (0 disables caching). The encoders are put in eval mode with gradients off."""

    #: the conditioning's keys, for the two tensors :meth:`encode_uncached` returns
    keys = ("encoder_hidden_states", "pooled_projections")

    def __init__(
        self,
        tokenizer,
        text_encoder: torch.nn.Module,
        tokenizer_2,
        text_encoder_2: torch.nn.Module,
        *,
        max_sequence_length: int = 512,
        cache_size: int = 1024,
        batch_size: int = 16,
    ) -> None:
        if max_sequence_length < 1 or cache_size < 0 or batch_size < 1:
            raise ValueError("max_sequence_length and batch_size must be >= 1 and cache_size >= 0")
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer_2 = tokenizer_2
        self.text_encoder_2 = text_encoder_2.eval().requires_grad_(False)
        self.max_sequence_length = int(max_sequence_length)
        self.cache_size = int(cache_size)
        self.batch_size = int(batch_size)
        # CLIP's context length: the tokenizer's, bounded by the model's position table
        self.clip_length = min(
            int(getattr(tokenizer, "model_max_length", 77) or 77),
            int(text_encoder.config.max_position_embeddings),
        )
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    # ------------------------------------------------------------------ encoders
    @property
    def device(self) -> torch.device:
        return next(self.text_encoder_2.parameters()).device

    def to(self, device: torch.device | str) -> "FluxPromptEncoder":
        self.text_encoder.to(device)
        self.text_encoder_2.to(device)
        return self

    @torch.no_grad()
    def encode_uncached(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t5 (B, max_sequence_length, d_t5), clip_pooled (B, d_clip))`` on the encoders'
        device and dtype, computed now (the cache is neither read nor written)."""
        prompts = list(prompts)
        t5_ids = self.tokenizer_2(
            prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True, return_tensors="pt"
        ).input_ids
        t5 = self.text_encoder_2(t5_ids.to(self.text_encoder_2.device), output_hidden_states=False)[0]
        clip_ids = self.tokenizer(
            prompts, padding="max_length", max_length=self.clip_length, truncation=True, return_tensors="pt"
        ).input_ids
        pooled = self.text_encoder(clip_ids.to(self.text_encoder.device), output_hidden_states=False).pooler_output
        return t5.to(self.text_encoder_2.dtype), pooled.to(self.text_encoder.dtype)

    # ------------------------------------------------------------------ cached access
    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        self._cache.clear()

    def encode(self, prompts: Sequence[str], device: torch.device | str | None = None) -> Cond:
        """``{"encoder_hidden_states": (B, L, d_t5), "pooled_projections": (B, d_clip)}`` for
        ``prompts`` on ``device`` (default: the encoders' device); only prompts missing from the
        cache are run through the encoders, in batches of ``batch_size``."""
        prompts = list(prompts)
        found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for p in prompts:
            if p in self._cache and p not in found:
                self._cache.move_to_end(p)
                found[p] = self._cache[p]
        missing = list(dict.fromkeys(p for p in prompts if p not in found))
        for i in range(0, len(missing), self.batch_size):
            chunk = missing[i : i + self.batch_size]
            t5, pooled = self.encode_uncached(chunk)
            t5, pooled = t5.cpu(), pooled.cpu()
            for row, p in enumerate(chunk):
                found[p] = (t5[row].clone(), pooled[row].clone())
        for p in missing:
            self._remember(p, found[p])
        dev = torch.device(device) if device is not None else self.device
        return {key: torch.stack([found[p][i] for p in prompts]).to(dev) for i, key in enumerate(self.keys)}

    def _remember(self, prompt: str, value: tuple[torch.Tensor, torch.Tensor]) -> None:
        if self.cache_size == 0:
            return
        self._cache[prompt] = value
        self._cache.move_to_end(prompt)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
