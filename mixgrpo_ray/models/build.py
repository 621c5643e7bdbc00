"""Build the configured policy (``model.kind``): the embedded tiny model or FLUX."""

from __future__ import annotations

import torch

from mixgrpo_ray.config import ModelConfig
from mixgrpo_ray.models.policy import Policy


def pick_device(num_gpus: float) -> torch.device:
    """CUDA when the actor was given a GPU (and one is visible), else CPU."""
    if num_gpus > 0 and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def build_policy(model: ModelConfig, device: torch.device | str = "cpu", *, trainable: bool = True) -> Policy:
    """The policy ``model`` describes, on ``device``. ``trainable=False`` (rollout actors) may
    skip optimiser-only state such as fp32 master copies."""
    if model.kind == "tiny":
        from mixgrpo_ray.models.tiny.model import TinyPolicy

        # path "random": a seeded random initialisation (tests, ablations); else the shipped weights
        policy = TinyPolicy(seed=0) if model.path == "random" else TinyPolicy.from_pretrained(model.path)
        return policy.to(device)
    if model.kind == "flux":
        from mixgrpo_ray.models.flux.policy import FluxPolicy

        return FluxPolicy.from_model_config(model, device=device, trainable=trainable)
    raise ValueError(f"unknown model.kind {model.kind!r}; choose tiny or flux")
