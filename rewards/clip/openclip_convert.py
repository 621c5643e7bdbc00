"""Convert an open_clip CLIP state dict (e.g. HPS v2.1's ViT-H-14) to a transformers ``CLIPModel``.

open_clip layout -> transformers layout, per tower (text: ``transformer.`` / vision:
``visual.transformer.``), per residual block ``resblocks.{i}`` -> ``encoder.layers.{i}``:

* ``attn.in_proj_weight/bias`` (rows q, k, v stacked) -> ``self_attn.{q,k,v}_proj.weight/bias``
* ``attn.out_proj`` -> ``self_attn.out_proj``; ``ln_1``/``ln_2`` -> ``layer_norm1``/``layer_norm2``
* ``mlp.c_fc``/``mlp.c_proj`` -> ``mlp.fc1``/``mlp.fc2``

Text: ``token_embedding`` and ``positional_embedding`` -> ``text_model.embeddings.*``,
``ln_final`` -> ``text_model.final_layer_norm``, ``text_projection`` (``x @ P``) transposed ->
``text_projection.weight``. Vision: ``visual.conv1`` -> patch embedding, ``visual.class_embedding``
and ``visual.positional_embedding`` -> embeddings, ``visual.ln_pre``/``ln_post`` ->
``pre_layrnorm``/``post_layernorm``, ``visual.proj`` transposed -> ``visual_projection.weight``.
``logit_scale`` as is. Head counts are not recoverable from shapes: the config supplies them.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_PARTS = {
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_SINGLE = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {
    "text_projection": "text_projection.weight",
    "visual.proj": "visual_projection.weight",
}
#: buffers open_clip may have saved that carry no weights
_IGNORED = {"attn_mask"}


def load_open_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an open_clip checkpoint file (``torch.load(weights_only=True)`` on CPU).

    Accepts a bare state dict or one under ``"state_dict"`` (as HPS checkpoints store it); a
    ``module.`` prefix left by DistributedDataParallel is removed.
    """
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not an open_clip state dict (expected tensors, optionally under 'state_dict')")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def convert_open_clip_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip CLIP keys/tensors -> transformers ``CLIPModel`` keys/tensors (see module doc).

    Raises ``ValueError`` listing keys it does not know (another architecture, e.g. a custom
    text tower or attention pooling), rather than silently dropping weights.
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if key in _IGNORED:
            continue
        if key in _SINGLE:
            out[_SINGLE[key]] = value
            continue
        if key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
            continue
        match = _BLOCK.match(key)
        if match is None:
            unknown.append(key)
            continue
        tower = "vision_model" if match.group(1) else "text_model"
        prefix = f"{tower}.encoder.layers.{match.group(2)}."
        part = match.group(3)
        if part in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = "weight" if part.endswith("weight") else "bias"
            for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{prefix}self_attn.{name}.{kind}"] = chunk.contiguous()
        elif part in _BLOCK_PARTS:
            out[prefix + _BLOCK_PARTS[part]] = value
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(sorted(unknown)[:8])
        raise ValueError(f"open_clip state dict has {len(unknown)} keys this converter does not map: {shown}")
    return out


def clip_model_from_open_clip(
    state: dict[str, torch.Tensor], config: CLIPConfig, dtype: torch.dtype = torch.float32
) -> CLIPModel:
    """A transformers ``CLIPModel`` (eval mode, CPU, ``dtype``) holding the converted open_clip weights.

    The model is built on the meta device (no random init of a billion parameters) and the
    converted tensors are assigned strictly: a missing, unexpected or mis-shaped tensor raises.
    """
    converted = {k: v.to(dtype) for k, v in convert_open_clip_state_dict(state).items()}
    with torch.device("meta"):
        model = CLIPModel(config)
    model.load_state_dict(converted, strict=True, assign=True)
    # non-persistent buffers are not in any state dict: rebuild them on CPU
    for embeddings in (model.text_model.embeddings, model.vision_model.embeddings):
        n = embeddings.position_embedding.weight.shape[0]
        embeddings.register_buffer("position_ids", torch.arange(n).expand((1, -1)), persistent=False)
    left_on_meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left_on_meta:
        raise RuntimeError(f"converted CLIPModel still has uninitialised tensors: {left_on_meta[:5]}")
    return model.eval()
