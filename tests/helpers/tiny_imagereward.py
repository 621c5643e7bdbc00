"""A tiny ImageReward checkpoint in the *original* layout, built offline for tests.

The real ``ImageReward.pt`` is a flat state dict of THUDM's ``ImageReward`` module: BLIP ViT-L
under ``blip.visual_encoder.*``, BLIP's med.py BERT (cross-attention in every layer) under
``blip.text_encoder.*``, unused ITC projections ``blip.vision_proj`` / ``blip.text_proj``, and the
head ``mlp.layers.{0,2,4,6,7}``. This module writes the same key names with tiny shapes (vision
width 32, 2 blocks, patch 8 on 32 px; text width 32, 2 layers, 4 heads), random values (biases and
LayerNorm affine parameters too, so a swapped mapping cannot go unnoticed), plus a
``med_config.json`` and a ``bert-base-uncased``-style ``vocab.txt`` folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "a an the of on in with and red green blue black white small big cat dog bird car tree house "
    "sky sea photo painting portrait sitting running under over two three"
).split()

VISION = {"width": 32, "depth": 2, "heads": 2, "patch": 8, "image": 32, "mlp": 64}
TEXT = {"hidden": 32, "layers": 2, "heads": 4, "intermediate": 48, "max_positions": 40}
HEAD = (32, 24, 16, 8, 4, 1)
HEAD_INDICES = (0, 2, 4, 6, 7)


def write_vocab(folder: Path) -> Path:
    """A ``vocab.txt`` folder loadable by ``BertTokenizer.from_pretrained``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return folder


def med_config() -> dict:
    """ImageReward's med_config.json with tiny sizes; vocab = ``vocab.txt`` + ``[DEC]``, ``[ENC]``."""
    return {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": TEXT["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": TEXT["intermediate"],
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": TEXT["max_positions"],
        "model_type": "bert",
        "num_attention_heads": TEXT["heads"],
        "num_hidden_layers": TEXT["layers"],
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": len(VOCAB) + 2,
        "encoder_width": 768,
        "add_cross_attention": True,
    }


def original_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the original ``ImageReward`` key names and (tiny) shapes."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    def norm(prefix: str, width: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1.0 + rnd(width, scale=0.1), f"{prefix}.bias": rnd(width, scale=0.1)}

    def linear(prefix: str, n_in: int, n_out: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": rnd(n_out, n_in, scale=n_in**-0.5), f"{prefix}.bias": rnd(n_out, scale=0.1)}

    sd: dict[str, torch.Tensor] = {}
    w, p = VISION["width"], VISION["patch"]
    n_patches = (VISION["image"] // p) ** 2
    v = "blip.visual_encoder."
    sd[v + "cls_token"] = rnd(1, 1, w)
    sd[v + "pos_embed"] = rnd(1, n_patches + 1, w)
    sd[v + "patch_embed.proj.weight"] = rnd(w, 3, p, p, scale=(3 * p * p) ** -0.5)
    sd[v + "patch_embed.proj.bias"] = rnd(w, scale=0.1)
    for i in range(VISION["depth"]):
        b = f"{v}blocks.{i}."
        sd |= norm(b + "norm1", w)
        sd |= linear(b + "attn.qkv", w, 3 * w)
        sd |= linear(b + "attn.proj", w, w)
        sd |= norm(b + "norm2", w)
        sd |= linear(b + "mlp.fc1", w, VISION["mlp"])
        sd |= linear(b + "mlp.fc2", VISION["mlp"], w)
    sd |= norm(v + "norm", w)

    h, t = TEXT["hidden"], "blip.text_encoder."
    sd[t + "embeddings.word_embeddings.weight"] = rnd(len(VOCAB) + 2, h, scale=0.5)
    sd[t + "embeddings.position_embeddings.weight"] = rnd(TEXT["max_positions"], h, scale=0.5)
    sd[t + "embeddings.position_ids"] = torch.arange(TEXT["max_positions"]).expand(1, -1).clone()
    sd |= norm(t + "embeddings.LayerNorm", h)
    for i in range(TEXT["layers"]):
        b = f"{t}encoder.layer.{i}."
        for name, kv_width in (("attention", h), ("crossattention", w)):
            sd |= linear(b + f"{name}.self.query", h, h)
            sd |= linear(b + f"{name}.self.key", kv_width, h)
            sd |= linear(b + f"{name}.self.value", kv_width, h)
            sd |= linear(b + f"{name}.output.dense", h, h)
            sd |= norm(b + f"{name}.output.LayerNorm", h)
        sd |= linear(b + "intermediate.dense", h, TEXT["intermediate"])
        sd |= linear(b + "output.dense", TEXT["intermediate"], h)
        sd |= norm(b + "output.LayerNorm", h)

    sd |= linear("blip.vision_proj", w, 16)
    sd |= linear("blip.text_proj", h, 16)
    for index, (n_in, n_out) in zip(HEAD_INDICES, zip(HEAD[:-1], HEAD[1:])):
        sd |= linear(f"mlp.layers.{index}", n_in, n_out)
    return sd


def write_checkpoint(folder: Path, seed: int = 0) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """``folder/ImageReward.pt`` + ``folder/med_config.json`` and a ``folder/bert`` vocab folder;
    returns ``(checkpoint folder, tokenizer folder, state dict)``."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = original_state_dict(seed)
    torch.save(sd, folder / "ImageReward.pt")
    (folder / "med_config.json").write_text(json.dumps(med_config(), indent=2))
    return folder, write_vocab(folder / "bert"), sd
