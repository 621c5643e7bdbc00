"""Loading FLUX components (FluxPipeline folder layout) and trained weights.

A FLUX model is a folder (or a hub id) in diffusers' ``FluxPipeline`` layout::

    transformer/      FluxTransformer2DModel
    vae/              AutoencoderKL
    text_encoder/     CLIPTextModel          tokenizer/    CLIPTokenizer
    text_encoder_2/   T5EncoderModel         tokenizer_2/  T5TokenizerFast

Hub ids are passed through to ``from_pretrained`` (they need network access and, for
FLUX.1-dev, an accepted licence); local folders are checked first so a wrong path fails with one
clear line instead of a hub lookup.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from mixgrpo_ray.common.dtypes import parse_dtype

#: the model the paper post-trains (docs/algorithm.md §11)
DEFAULT_FLUX_MODEL = "black-forest-labs/FLUX.1-dev"
SUBFOLDERS = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


def compute_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """The forward-pass precision ``model.dtype`` names: ``auto`` is bf16 on CUDA, fp32 elsewhere."""
    auto = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    try:
        return parse_dtype(name, auto=auto)
    except ValueError:
        raise ValueError(f"model.dtype must be auto, fp32, bf16 or fp16; got {name!r}") from None


def is_local(path: str) -> bool:
    """Whether ``path`` names a local folder: it exists, or it does not look like a hub id
    (``owner/name``)."""
    return Path(path).expanduser().exists() or re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", path) is None


@dataclass
class FluxComponents:
    """The parts of a FLUX pipeline that a policy needs. A learner's components
    (``load_components(..., frozen=False)``) have the transformer only: the VAE and text encoders
    are ``None`` and only their configs are read (for sizes and checks)."""

    transformer: torch.nn.Module
    vae_config: Any
    text_encoder_config: Any
    text_encoder_2_config: Any
    vae: Optional[torch.nn.Module] = None
    text_encoder: Optional[torch.nn.Module] = None
    tokenizer: Any = None
    text_encoder_2: Optional[torch.nn.Module] = None
    tokenizer_2: Any = None


def _check_folder(path: str) -> str:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"FLUX model folder {path!r} does not exist; set model.path to a FluxPipeline folder "
            f"({', '.join(SUBFOLDERS)}) or a hub id such as {DEFAULT_FLUX_MODEL}"
        )
    missing = [s for s in SUBFOLDERS if not (root / s).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"FLUX model folder {path!r} lacks {', '.join(s + '/' for s in missing)} (FluxPipeline layout expected)"
        )
    return str(root)


def load_transformer(path: str, dtype: torch.dtype) -> torch.nn.Module:
    """The ``FluxTransformer2DModel`` of ``path`` with parameters in ``dtype``."""
    from diffusers import FluxTransformer2DModel

    if is_local(path):
        path = _check_folder(path)
    return FluxTransformer2DModel.from_pretrained(path, subfolder="transformer", torch_dtype=dtype)


def load_components(path: str, transformer_dtype: torch.dtype, frozen_dtype: torch.dtype, *,
                    frozen: bool = True, transformer: Optional[torch.nn.Module] = None) -> FluxComponents:
    """The components of ``path`` on CPU: the transformer in ``transformer_dtype`` (or the given
    ``transformer``, which is not read again: a colocated worker samples with its training
    module); with ``frozen`` (rollout actors, evaluation) also the VAE and the text encoders in
    ``frozen_dtype``, without it (learners) only their configs (no weights are read)."""
    from diffusers import AutoencoderKL
    from diffusers.configuration_utils import FrozenDict
    from transformers import AutoConfig, CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    if is_local(path):
        path = _check_folder(path)
    if transformer is None:
        transformer = load_transformer(path, transformer_dtype)
    if not frozen:
        return FluxComponents(
            transformer=transformer,
            vae_config=FrozenDict(AutoencoderKL.load_config(path, subfolder="vae")),
            text_encoder_config=AutoConfig.from_pretrained(path, subfolder="text_encoder"),
            text_encoder_2_config=AutoConfig.from_pretrained(path, subfolder="text_encoder_2"),
        )
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=frozen_dtype)
    text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", dtype=frozen_dtype)
    text_encoder_2 = T5EncoderModel.from_pretrained(path, subfolder="text_encoder_2", dtype=frozen_dtype)
    return FluxComponents(
        transformer=transformer,
        vae_config=vae.config,
        text_encoder_config=text_encoder.config,
        text_encoder_2_config=text_encoder_2.config,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(path, subfolder="tokenizer"),
        text_encoder_2=text_encoder_2,
        tokenizer_2=T5TokenizerFast.from_pretrained(path, subfolder="tokenizer_2"),
    )


def check_compatible(c: FluxComponents) -> None:
    """Raise ``ValueError`` when the components' sizes do not fit together as FLUX's do."""
    tcfg = c.transformer.config
    if int(getattr(tcfg, "patch_size", 1)) != 1:
        raise ValueError(f"FLUX transformer must have patch_size 1 (latents are packed outside), got {tcfg.patch_size}")
    latent_channels = int(c.vae_config.latent_channels)
    if tcfg.in_channels != 4 * latent_channels:
        raise ValueError(
            f"transformer in_channels={tcfg.in_channels} but the VAE has {latent_channels} latent channels "
            f"(2x2 packing needs in_channels = 4 * latent_channels)"
        )
    if tcfg.joint_attention_dim != c.text_encoder_2_config.d_model:
        raise ValueError(
            f"transformer joint_attention_dim={tcfg.joint_attention_dim} does not match the T5 width "
            f"{c.text_encoder_2_config.d_model}"
        )
    if tcfg.pooled_projection_dim != c.text_encoder_config.hidden_size:
        raise ValueError(
            f"transformer pooled_projection_dim={tcfg.pooled_projection_dim} does not match the CLIP width "
            f"{c.text_encoder_config.hidden_size}"
        )


def is_lora_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a trainable state dict holds LoRA adapters rather than full transformer weights."""
    return bool(state) and all(".lora_A." in k or ".lora_B." in k for k in state)
