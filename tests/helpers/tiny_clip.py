"""Tiny CLIP tokenizers and models, built offline, for tests of the CLIP-family rewards.

A real CLIP BPE vocabulary is 49,408 tokens; the tiny one here has the same layout (the 256
byte-level symbols, their ``</w>`` end-of-word forms, the results of a few merges, then
``<|startoftext|>`` and ``<|endoftext|>`` as the two highest ids) in 522 tokens, so
``CLIPTokenizer.from_pretrained`` loads it through the same code path as a real folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

#: merges of the tiny BPE, applied in this order; each result is in the vocabulary
TINY_MERGES = ["a t</w>", "c at</w>", "o g</w>", "d og</w>", "t h", "th e</w>", "r e", "re d</w>"]
SOT, EOT = "<|startoftext|>", "<|endoftext|>"


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE, ordered as in CLIP's vocabulary."""
    from mixgrpo_ray.models.flux.flux_slice import byte_symbols as symbols

    return symbols()


def tiny_vocab() -> dict[str, int]:
    """Token -> id: byte symbols, their ``</w>`` forms, merge results, then SOT and EOT last."""
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in TINY_MERGES]
    tokens += [SOT, EOT]
    return {t: i for i, t in enumerate(tokens)}


def write_tiny_tokenizer(folder: str | Path) -> CLIPTokenizer:
    """Write ``vocab.json`` + ``merges.txt`` to ``folder``, then load and re-save it as a CLIP tokenizer."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(tiny_vocab()), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(TINY_MERGES) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def tiny_clip_config(image_size: int = 28, patch_size: int = 7, projection_dim: int = 16) -> CLIPConfig:
    """A 2-layer CLIP with the tiny vocabulary, exact GELU (as open_clip ViT-H-14), 77-token context."""
    vocab = tiny_vocab()
    text = dict(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
        bos_token_id=vocab[SOT], eos_token_id=vocab[EOT], pad_token_id=vocab[EOT],
    )
    vision = dict(
        hidden_size=48, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
        image_size=image_size, patch_size=patch_size, hidden_act="gelu",
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Overwrite every parameter with noise large enough that features depend visibly on inputs.

    LayerNorm-like weights (1-D, named ``weight``) become ``1 + noise``; the logit scale keeps its value.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                continue
            noise = torch.randn(p.shape, generator=gen) * std
            if p.ndim == 1 and name.endswith("weight"):
                noise += 1.0
            p.copy_(noise.to(p.dtype))
    return model


def save_tiny_clip(folder: str | Path, image_size: int = 28, seed: int = 0, processor: bool = True,
                   patch_size: int = 7) -> Path:
    """Save a randomised tiny ``CLIPModel``, its tokenizer and (optionally) a CLIP image processor config.

    The processor config asks for CLIP's usual shortest-edge resize to ``image_size`` and a
    centre crop of ``image_size`` square, OpenAI mean/std, bicubic resampling.
    """
    folder = Path(folder)
    write_tiny_tokenizer(folder)
    model = randomize_(CLIPModel(tiny_clip_config(image_size=image_size, patch_size=patch_size)), seed=seed)
    model.save_pretrained(str(folder))
    if processor:
        config = {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True, "size": {"shortest_edge": image_size}, "resample": 3,
            "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "do_convert_rgb": True,
        }
        (folder / "preprocessor_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    return folder
