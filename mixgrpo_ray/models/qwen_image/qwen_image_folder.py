"""Loading a ``QwenImagePipeline`` folder (Qwen/Qwen-Image), and its prompt encoding.

Layout (``model_index.json`` beside)::

    transformer/    QwenImageTransformer2DModel
    vae/            AutoencoderKLQwenImage (a video VAE run on one frame; per-channel latent mean / std)
    text_encoder/   Qwen2_5_VLForConditionalGeneration (Qwen2.5-VL-7B-Instruct)
    tokenizer/      Qwen2Tokenizer
    scheduler/      FlowMatchEulerDiscreteScheduler (dynamic shift, shift_terminal)

The prompt encoding is ``QwenImagePipeline.encode_prompt``'s: the prompt is put in the pipeline's
chat template (:data:`PROMPT_TEMPLATE`), run through the language model, and the last hidden states
of its real (unpadded) tokens are kept after the template's first :data:`TEMPLATE_DROP` tokens, at
most ``max_sequence_length`` of them. The pipeline pads a batch to its longest prompt; here every
prompt is padded with zeros to ``max_sequence_length`` with a mask (``encoder_hidden_states_mask``)
that the transformer's attention applies, so prompts of any length batch together (the
unconditional rows of guidance included) and the result is the pipeline's: padded text tokens are
masked out of every attention and text positions are counted from the first token.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from mixgrpo_ray.models import pipeline_folder
from mixgrpo_ray.models.flux.text import FluxPromptEncoder

SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
DEFAULT_QWEN_IMAGE_MODEL = "Qwen/Qwen-Image"
DEFAULT_MODEL, PIPELINE = DEFAULT_QWEN_IMAGE_MODEL, "QwenImagePipeline"
#: QwenImagePipeline.prompt_template_encode and prompt_template_encode_start_idx (diffusers 0.42)
PROMPT_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
                   "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
                   "<|im_end|>\n<|im_start|>assistant\n")
TEMPLATE_DROP = 34
MAX_SEQUENCE_LENGTH = 1024  # the pipeline's bound


@dataclass
class QwenImageComponents:
    transformer: torch.nn.Module
    vae_config: Any
    scheduler_config: dict
    vae: Optional[torch.nn.Module] = None
    text_encoder: Optional[torch.nn.Module] = None
    tokenizer: Any = None


def check_folder(path: str) -> str:
    return pipeline_folder.check_folder(path, SUBFOLDERS, PIPELINE, "Qwen-Image")


scheduler_config = pipeline_folder.scheduler_config


def load_transformer(path: str, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel.from_pretrained(check_folder(path), subfolder="transformer", torch_dtype=dtype)


def load_components(path: str, transformer_dtype: torch.dtype, frozen_dtype: torch.dtype, *, frozen: bool = True,
                    transformer: Optional[torch.nn.Module] = None) -> QwenImageComponents:
    """The folder's components on CPU (``frozen=False`` for a learner reads neither the text
    encoder nor the VAE's weights, only the VAE's config)."""
    from diffusers import AutoencoderKLQwenImage
    from diffusers.configuration_utils import FrozenDict
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

    path = check_folder(path)
    if transformer is None:
        transformer = load_transformer(path, transformer_dtype)
    schedule = scheduler_config(path)
    if not frozen:
        return QwenImageComponents(transformer, FrozenDict(AutoencoderKLQwenImage.load_config(path, subfolder="vae")),
                                   schedule)
    vae = AutoencoderKLQwenImage.from_pretrained(path, subfolder="vae", torch_dtype=frozen_dtype)
    encoder = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, subfolder="text_encoder", dtype=frozen_dtype)
    tokenizer = Qwen2Tokenizer.from_pretrained(path, subfolder="tokenizer")
    return QwenImageComponents(transformer, vae.config, schedule, vae, encoder, tokenizer)


def check_compatible(c: QwenImageComponents) -> None:
    t = c.transformer.config
    z = int(c.vae_config.z_dim)
    if t.in_channels != 4 * z:
        raise ValueError(f"Qwen-Image transformer in_channels={t.in_channels} but the VAE's {z} latent channels pack "
                         f"to {4 * z}")
    if c.text_encoder is not None:
        width = int(c.text_encoder.config.text_config.hidden_size)
        if t.joint_attention_dim != width:
            raise ValueError(f"Qwen-Image transformer joint_attention_dim={t.joint_attention_dim} but the text encoder "
                             f"is {width} wide")


class QwenImagePromptEncoder(FluxPromptEncoder):
    """Encodes prompts as ``QwenImagePipeline.encode_prompt`` does (see the module docstring), with
    :class:`~mixgrpo_ray.models.flux.text.FluxPromptEncoder`'s cache. The conditioning is
    ``{"encoder_hidden_states": (B, L, d), "encoder_hidden_states_mask": (B, L)}``, L =
    ``max_sequence_length``; the mask is 1.0 on real tokens."""

    keys = ("encoder_hidden_states", "encoder_hidden_states_mask")

    def __init__(self, tokenizer, text_encoder: torch.nn.Module, *, max_sequence_length: int = 512,
                 cache_size: int = 1024, batch_size: int = 16) -> None:
        if not 1 <= max_sequence_length <= MAX_SEQUENCE_LENGTH or cache_size < 0 or batch_size < 1:
            raise ValueError(f"max_sequence_length must be in 1..{MAX_SEQUENCE_LENGTH}, batch_size >= 1 and "
                             "cache_size >= 0")
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.max_sequence_length = int(max_sequence_length)
        self.cache_size = int(cache_size)
        self.batch_size = int(batch_size)
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    def to(self, device: torch.device | str) -> "QwenImagePromptEncoder":
        self.text_encoder.to(device)
        return self

    @torch.no_grad()
    def encode_uncached(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [PROMPT_TEMPLATE.format(p) for p in prompts]
        tokens = self.tokenizer(texts, max_length=TEMPLATE_DROP + self.max_sequence_length, padding=True,
                                truncation=True, return_tensors="pt")
        device = self.device
        out = self.text_encoder(input_ids=tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device),
                                output_hidden_states=True)
        hidden = out.hidden_states[-1]
        length = self.max_sequence_length
        states = hidden.new_zeros(len(texts), length, hidden.shape[-1])
        mask = torch.zeros(len(texts), length, dtype=torch.float32)
        for row, real in enumerate(tokens.attention_mask.bool()):
            kept = hidden[row][real.to(device)][TEMPLATE_DROP:TEMPLATE_DROP + length]
            states[row, : kept.shape[0]] = kept
            mask[row, : kept.shape[0]] = 1.0
        return states.to(self.text_encoder.dtype), mask
