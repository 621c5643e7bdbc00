"""Convert the original ImageReward checkpoint layout into transformers BLIP modules.

The original ``ImageReward.pt`` (THUDM/ImageReward, loaded there with
``ImageReward.load_state_dict(state_dict, strict=False)``) is a flat state dict of the
``ImageReward`` module:

- ``blip.visual_encoder.*`` - BLIP's own ViT (``vit="large"``: width 1024, 24 blocks, 16 heads,
  patch 16, 224 px, LayerNorm eps 1e-6, pre-norm blocks, exact GELU, final ``norm``);
- ``blip.text_encoder.*`` - BLIP's ``med.py`` BertModel (no pooler, no token-type embeddings,
  a cross-attention block in every layer whose key/value take the ViT width);
- ``blip.vision_proj.*`` / ``blip.text_proj.*`` - ITC projections the reward never uses;
- ``mlp.layers.{0,2,4,6,7}.*`` - the reward head. The original is
  ``nn.Sequential(Linear(768,1024), Dropout, Linear(1024,128), Dropout, Linear(128,64), Dropout,
  Linear(64,16), Linear(16,1))`` (the ReLUs are commented out and there is no dropout between the
  last two linears), so the linear layers sit at Sequential indices 0, 2, 4, 6 and **7**.

The ``blip.`` prefix is optional here (a state dict of the inner BLIP module converts too).
Key renaming into transformers 5 ``BlipVisionModel`` / ``BlipTextModel``:

=====================================================  ==============================================
original                                               transformers
=====================================================  ==============================================
``visual_encoder.cls_token``                           ``embeddings.class_embedding``
``visual_encoder.pos_embed``                           ``embeddings.position_embedding``
``visual_encoder.patch_embed.proj.{weight,bias}``      ``embeddings.patch_embedding.{weight,bias}``
``visual_encoder.blocks.i.norm1/norm2``                ``encoder.layers.i.layer_norm1/layer_norm2``
``visual_encoder.blocks.i.attn.qkv``                   ``encoder.layers.i.self_attn.qkv`` (same q/k/v
                                                       interleaving: both reshape to (3, heads, dim))
``visual_encoder.blocks.i.attn.proj``                  ``encoder.layers.i.self_attn.projection``
``visual_encoder.blocks.i.mlp.fc1/fc2``                ``encoder.layers.i.mlp.fc1/fc2``
``visual_encoder.norm``                                ``post_layernorm``
``text_encoder.<rest>``                                ``<rest>`` (BlipTextModel mirrors med.py names)
``text_encoder.embeddings.position_ids``               dropped (a non-persistent buffer in transformers)
``mlp.layers.{0,2,4,6,7}``                             head ``linears.{0,1,2,3,4}``
=====================================================  ==============================================

Head counts are not visible in tensor shapes; the vision head count defaults to ``width // 64``
(BLIP ViT-B: 768/12, ViT-L: 1024/16) and the text head count comes from ``med_config.json``.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import torch
from transformers import BlipTextConfig, BlipVisionConfig

#: original reward-head Sequential indices of the five linear layers, in order
HEAD_LINEAR_INDICES = (0, 2, 4, 6, 7)
#: the reward head's layer widths (input 768 = BERT hidden size)
HEAD_WIDTHS = (768, 1024, 128, 64, 16, 1)
#: BLIP ViT LayerNorm epsilon (``partial(nn.LayerNorm, eps=1e-6)`` in BLIP's vit.py)
VISION_LAYER_NORM_EPS = 1e-6
#: original top-level entries the reward does not use
IGNORED_PREFIXES = ("vision_proj.", "text_proj.")

_VISION_BLOCK_RENAMES = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.projection",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_VISION_TOP_RENAMES = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "norm.weight": "post_layernorm.weight",
    "norm.bias": "post_layernorm.bias",
}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$")
_HEAD_KEY = re.compile(r"^layers\.(\d+)\.(weight|bias)$")


def unwrap_checkpoint(obj: Any) -> dict[str, torch.Tensor]:
    """The flat tensor dict of a loaded ``ImageReward.pt`` (accepts a bare state dict or one
    nested under ``state_dict`` / ``model``)."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                return dict(obj[key])
        return dict(obj)
    raise TypeError(f"ImageReward checkpoint must be a state dict, got {type(obj).__name__}")


def split_original_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """Split an original-layout state dict into ``(visual_encoder, text_encoder, mlp, ignored)``
    groups with their prefixes removed (``blip.`` optional)."""
    vision: dict[str, torch.Tensor] = {}
    text: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, value in state_dict.items():
        short = key[len("blip."):] if key.startswith("blip.") else key
        if short.startswith("visual_encoder."):
            vision[short[len("visual_encoder."):]] = value
        elif short.startswith("text_encoder."):
            text[short[len("text_encoder."):]] = value
        elif short.startswith("mlp."):
            head[short[len("mlp."):]] = value
        elif short.startswith(IGNORED_PREFIXES):
            ignored.append(key)
        else:
            raise KeyError(f"unexpected key in ImageReward checkpoint: {key!r}")
    if not vision or not text or not head:
        missing = [n for n, g in (("visual_encoder", vision), ("text_encoder", text), ("mlp", head)) if not g]
        raise KeyError(f"ImageReward checkpoint lacks {', '.join(missing)} weights")
    return vision, text, head, ignored


def convert_vision(vision: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BLIP ViT (``visual_encoder.*`` without prefix) -> ``BlipVisionModel`` state dict."""
    out: dict[str, torch.Tensor] = {}
    for key, value in vision.items():
        if key in _VISION_TOP_RENAMES:
            out[_VISION_TOP_RENAMES[key]] = value
            continue
        match = _BLOCK_KEY.match(key)
        if match is None or match.group(2) not in _VISION_BLOCK_RENAMES:
            raise KeyError(f"unexpected visual_encoder key: {key!r}")
        index, module, kind = match.groups()
        out[f"encoder.layers.{index}.{_VISION_BLOCK_RENAMES[module]}.{kind}"] = value
    return out


def convert_text(text: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """med.py BertModel (``text_encoder.*`` without prefix) -> ``BlipTextModel`` state dict."""
    return {k: v for k, v in text.items() if k != "embeddings.position_ids"}


def convert_head(head: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original ``mlp.layers.{0,2,4,6,7}`` -> :class:`ImageRewardHead` ``linears.{0..4}``."""
    position = {orig: new for new, orig in enumerate(HEAD_LINEAR_INDICES)}
    out: dict[str, torch.Tensor] = {}
    for key, value in head.items():
        match = _HEAD_KEY.match(key)
        if match is None or int(match.group(1)) not in position:
            raise KeyError(
                f"unexpected mlp key {key!r}; the original head has linears at layers "
                f"{list(HEAD_LINEAR_INDICES)}"
            )
        out[f"linears.{position[int(match.group(1))]}.{match.group(2)}"] = value
    return out


def vision_config_from_state_dict(
    vision: Mapping[str, torch.Tensor], num_heads: int | None = None
) -> BlipVisionConfig:
    """``BlipVisionConfig`` of an original BLIP ViT, read from its tensor shapes.

    ``num_heads`` defaults to ``width // 64`` (the head size of BLIP ViT-B and ViT-L).
    """
    width = vision["cls_token"].shape[-1]
    patch = vision["patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(vision["pos_embed"].shape[1] - 1)
    if grid * grid != vision["pos_embed"].shape[1] - 1:
        raise ValueError(f"pos_embed has {vision['pos_embed'].shape[1]} positions: not 1 + a square grid")
    depth = 1 + max(int(m.group(1)) for k in vision if (m := _BLOCK_KEY.match(k)))
    heads = num_heads if num_heads is not None else width // 64
    if heads < 1 or width % heads:
        raise ValueError(f"vision width {width} is not divisible into {heads} heads")
    return BlipVisionConfig(
        hidden_size=width,
        intermediate_size=vision["blocks.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=depth,
        num_attention_heads=heads,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="gelu",
        layer_norm_eps=VISION_LAYER_NORM_EPS,
    )


def text_config_from_med_config(
    med_config: Mapping[str, Any], encoder_width: int, text: Mapping[str, torch.Tensor] | None = None
) -> BlipTextConfig:
    """``BlipTextConfig`` from ImageReward's ``med_config.json`` (a BertConfig dict).

    As in the original, the cross-attention width is the vision width (``encoder_width`` in
    med_config is overridden). ``is_decoder=True`` only makes transformers build the
    cross-attention blocks; the reward calls the model with ``is_decoder=False`` (bidirectional
    self-attention, the original's ``mode="multimodal"`` encoder). When the text weights are given,
    vocabulary and width are checked against them.
    """
    cfg = BlipTextConfig(
        vocab_size=med_config["vocab_size"],
        hidden_size=med_config["hidden_size"],
        encoder_hidden_size=encoder_width,
        intermediate_size=med_config["intermediate_size"],
        num_hidden_layers=med_config["num_hidden_layers"],
        num_attention_heads=med_config["num_attention_heads"],
        max_position_embeddings=med_config["max_position_embeddings"],
        hidden_act=med_config.get("hidden_act", "gelu"),
        layer_norm_eps=med_config.get("layer_norm_eps", 1e-12),
        pad_token_id=med_config.get("pad_token_id", 0),
        # generation-only ids; BlipTextConfig's defaults (30522, 2, 102) assume the full BERT vocab
        bos_token_id=med_config.get("bos_token_id"),
        eos_token_id=med_config.get("eos_token_id"),
        sep_token_id=med_config.get("sep_token_id"),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        is_decoder=True,
    )
    if text is not None:
        emb = text["embeddings.word_embeddings.weight"]
        if tuple(emb.shape) != (cfg.vocab_size, cfg.hidden_size):
            raise ValueError(
                f"med_config says vocab {cfg.vocab_size} x hidden {cfg.hidden_size} but the checkpoint's "
                f"word embeddings are {tuple(emb.shape)}"
            )
        layers = 1 + max(int(k.split(".")[2]) for k in text if k.startswith("encoder.layer."))
        if layers != cfg.num_hidden_layers:
            raise ValueError(f"med_config says {cfg.num_hidden_layers} layers, checkpoint has {layers}")
    return cfg
