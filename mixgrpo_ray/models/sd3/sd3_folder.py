"""Loading a ``StableDiffusion3Pipeline`` folder (SD3 Medium, SD3.5 Medium / Large), and its
prompt encoding.

Layout (``model_index.json`` beside)::

    transformer/      SD3Transformer2DModel
    vae/              AutoencoderKL
    text_encoder/     CLIPTextModelWithProjection (CLIP-L)   tokenizer/    CLIPTokenizer
    text_encoder_2/   CLIPTextModelWithProjection (CLIP-G)   tokenizer_2/  CLIPTokenizer
    text_encoder_3/   T5EncoderModel (T5-XXL)                tokenizer_3/  T5TokenizerFast
    scheduler/        FlowMatchEulerDiscreteScheduler

The prompt encoding is ``StableDiffusion3Pipeline.encode_prompt``'s: each CLIP's penultimate hidden
states (77 tokens) concatenated along the width and zero-padded to T5's, followed along the
sequence by T5's last hidden states (``max_sequence_length`` tokens); the pooled vector is the two
CLIPs' projected text embeddings concatenated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from mixgrpo_ray.models import pipeline_folder
from mixgrpo_ray.models.flux.text import FluxPromptEncoder

SUBFOLDERS = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2",
              "tokenizer_3", "scheduler")
DEFAULT_SD3_MODEL = "stabilityai/stable-diffusion-3.5-medium"
DEFAULT_MODEL, PIPELINE = DEFAULT_SD3_MODEL, "StableDiffusion3Pipeline"


@dataclass
class SD3Components:
    transformer: torch.nn.Module
    vae_config: Any
    scheduler_config: dict
    vae: Optional[torch.nn.Module] = None
    encoders: tuple = ()  # (CLIP-L, CLIP-G, T5) text encoders
    tokenizers: tuple = ()


def check_folder(path: str) -> str:
    return pipeline_folder.check_folder(path, SUBFOLDERS, PIPELINE, "SD3")


scheduler_config = pipeline_folder.scheduler_config


def load_transformer(path: str, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel.from_pretrained(check_folder(path), subfolder="transformer", torch_dtype=dtype)


def load_components(path: str, transformer_dtype: torch.dtype, frozen_dtype: torch.dtype, *, frozen: bool = True,
                    transformer: Optional[torch.nn.Module] = None) -> SD3Components:
    """The folder's components on CPU (see :func:`mixgrpo_ray.models.flux.flux_folder.load_components`:
    ``frozen=False`` for a learner reads no encoder or VAE weights)."""
    from diffusers import AutoencoderKL
    from diffusers.configuration_utils import FrozenDict
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    path = check_folder(path)
    if transformer is None:
        transformer = load_transformer(path, transformer_dtype)
    schedule = scheduler_config(path)
    if not frozen:
        return SD3Components(transformer, FrozenDict(AutoencoderKL.load_config(path, subfolder="vae")), schedule)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=frozen_dtype)
    encoders = (CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder", dtype=frozen_dtype),
                CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2", dtype=frozen_dtype),
                T5EncoderModel.from_pretrained(path, subfolder="text_encoder_3", dtype=frozen_dtype))
    tokenizers = (CLIPTokenizer.from_pretrained(path, subfolder="tokenizer"),
                  CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2"),
                  T5TokenizerFast.from_pretrained(path, subfolder="tokenizer_3"))
    return SD3Components(transformer, vae.config, schedule, vae, encoders, tokenizers)


def check_compatible(c: SD3Components) -> None:
    t = c.transformer.config
    if t.in_channels != int(c.vae_config.latent_channels):
        raise ValueError(f"SD3 transformer in_channels={t.in_channels} but the VAE has "
                         f"{c.vae_config.latent_channels} latent channels")


class SD3PromptEncoder(FluxPromptEncoder):
    """Encodes prompts as ``StableDiffusion3Pipeline.encode_prompt`` does (see the module
    docstring), with :class:`~mixgrpo_ray.models.flux.text.FluxPromptEncoder`'s cache."""

    def __init__(self, tokenizers: Sequence, encoders: Sequence[torch.nn.Module], *, max_sequence_length: int = 256,
                 cache_size: int = 1024, batch_size: int = 16) -> None:
        super().__init__(tokenizers[0], encoders[0], tokenizers[2], encoders[2], max_sequence_length=max_sequence_length,
                         cache_size=cache_size, batch_size=batch_size)
        self.tokenizer_g = tokenizers[1]
        self.text_encoder_g = encoders[1].eval().requires_grad_(False)

    def to(self, device: torch.device | str) -> "SD3PromptEncoder":
        super().to(device)
        self.text_encoder_g.to(device)
        return self

    def _clip(self, tokenizer, encoder, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = tokenizer(prompts, padding="max_length", max_length=self.clip_length, truncation=True,
                        return_tensors="pt").input_ids
        out = encoder(ids.to(encoder.device), output_hidden_states=True)
        return out.hidden_states[-2], out.text_embeds

    @torch.no_grad()
    def encode_uncached(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = list(prompts)
        l_states, l_pooled = self._clip(self.tokenizer, self.text_encoder, prompts)
        g_states, g_pooled = self._clip(self.tokenizer_g, self.text_encoder_g, prompts)
        t5_ids = self.tokenizer_2(prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                                  return_tensors="pt").input_ids
        t5 = self.text_encoder_2(t5_ids.to(self.text_encoder_2.device))[0]
        dtype = self.text_encoder_2.dtype
        clip = torch.cat([l_states, g_states], dim=-1).to(dtype)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5.to(dtype)], dim=-2), torch.cat([l_pooled, g_pooled], dim=-1).to(self.text_encoder.dtype)
