"""How much memory a FLUX role's weights take, read from the safetensors headers of a local
FluxPipeline folder (no tensor is loaded).

Parameter counts come from each component's ``*.safetensors`` headers. From them, per role:

* rollout: every component in the compute dtype;
* learner, full fine-tuning: the transformer's fp32 master weights, fp32 gradients and AdamW's two
  fp32 moments (16 bytes per parameter); no text encoders and no VAE (learners hold only what
  they train and condition on the embeddings the trajectory carries);
* learner, LoRA: the frozen transformer in the compute dtype (the adapters are small and left out).

Weights and optimiser state only: activations, the prompt cache and allocator slack come on top.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Optional

import torch

COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2")
#: fp32 master weight + fp32 gradient + AdamW's two fp32 moments
FULL_FINE_TUNING_BYTES = 16


def safetensors_params(path: Path) -> int:
    """Number of parameters in one ``.safetensors`` file, from its header."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    total = 0
    for name, entry in header.items():
        if name != "__metadata__":
            count = 1
            for dim in entry["shape"]:
                count *= int(dim)
            total += count
    return total


def component_params(folder: str | Path) -> Optional[dict[str, int]]:
    """``component -> parameters`` of a local FluxPipeline folder; ``None`` when it is not a local
    folder with safetensors weights for every component."""
    root = Path(folder).expanduser()
    out = {}
    for name in COMPONENTS:
        files = sorted((root / name).glob("*.safetensors")) if (root / name).is_dir() else []
        if not files:
            return None
        out[name] = sum(safetensors_params(f) for f in files)
    return out


def role_weight_bytes(params: dict[str, int], role: str, compute: torch.dtype, lora: bool) -> int:
    """Bytes of weights (and optimiser state) a ``rollout`` or ``learner`` actor holds."""
    per = torch.tensor([], dtype=compute).element_size()
    if role == "learner":  # the transformer only
        return params["transformer"] * (per if lora else FULL_FINE_TUNING_BYTES)
    frozen = sum(n for name, n in params.items() if name != "transformer") * per
    return frozen + params["transformer"] * per
